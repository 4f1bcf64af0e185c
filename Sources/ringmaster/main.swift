print("ringmaster")
