import Testing

@testable import Coordinator

@Suite("Connection budget")
struct ConnectionBudgetTests {
    static let limits = ConnectionBudget.Limits(maximumConnections: 6, maximumUnauthenticated: 4, maximumUnauthenticatedPerAddress: 2)

    func admitted(_ budget: inout ConnectionBudget, _ address: String) throws -> ConnectionBudget.Ticket {
        try budget.admit(from: address).get()
    }

    @Test func oneAddress_getsItsShareOfUnauthenticatedSlots_andOthersStillGetIn() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        _ = try self.admitted(&budget, "10.0.0.9")
        _ = try self.admitted(&budget, "10.0.0.9")
        #expect(throws: ConnectionBudget.Refusal.tooManyFromAddress) { try budget.admit(from: "10.0.0.9").get() }
        _ = try self.admitted(&budget, "10.0.0.1")
        _ = try self.admitted(&budget, "10.0.0.2")
        #expect(throws: ConnectionBudget.Refusal.tooManyUnauthenticated) { try budget.admit(from: "10.0.0.3").get() }
        #expect(budget.unauthenticated == 4 && budget.connections == 4)
    }

    @Test func anAuthenticatedConnection_freesItsUnauthenticatedSlot_butCountsUntilItCloses() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        var tickets: [ConnectionBudget.Ticket] = []
        for index in 0..<6 {
            let ticket = try self.admitted(&budget, "10.0.0.\(index)")
            budget.authenticated(ticket)
            tickets.append(ticket)
        }
        #expect(budget.unauthenticated == 0)
        #expect(throws: ConnectionBudget.Refusal.tooManyConnections) { try budget.admit(from: "10.0.0.7").get() }
        budget.closed(tickets[0])
        _ = try self.admitted(&budget, "10.0.0.7")
        #expect(budget.connections == 6 && budget.unauthenticated == 1)
    }

    @Test func closingTwice_orAuthenticatingAfterClose_changesNothing() throws {
        var budget = ConnectionBudget(limits: Self.limits)
        let ticket = try self.admitted(&budget, "10.0.0.1")
        budget.closed(ticket)
        budget.closed(ticket)
        budget.authenticated(ticket)
        #expect(budget.connections == 0 && budget.unauthenticated == 0)
        _ = try self.admitted(&budget, "10.0.0.1")
        _ = try self.admitted(&budget, "10.0.0.1")
        #expect(budget.unauthenticated == 2)
    }

    @Test(arguments: [64, 1024, 20000, 1 << 20])
    func limitsFromADescriptorLimit_leaveAReserve_andCapUnauthenticatedConnections(descriptors: Int) {
        let limits = ConnectionBudget.Limits.forDescriptorLimit(descriptors)
        #expect(limits.maximumConnections < descriptors)
        #expect(descriptors - limits.maximumConnections >= min(64, descriptors / 2))
        #expect(limits.maximumUnauthenticated <= 1024 && limits.maximumUnauthenticated <= limits.maximumConnections)
        #expect(limits.maximumUnauthenticatedPerAddress <= 64 && limits.maximumUnauthenticatedPerAddress <= limits.maximumUnauthenticated)
    }
}
