import ArgumentParser

/// The one executable: every subcommand parses its options and wires library pieces together.
@main
struct Ringmaster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringmaster",
        abstract: "Distributed training coordinator and node agent.",
        subcommands: [
            CoordinatorCommand.self,
            AgentCommand.self,
            TokenCommand.self,
            CertCommand.self,
            JobCommand.self,
            NodeCommand.self,
            DemoCommand.self,
            BenchCommand.self,
            CheckpointCommand.self,
        ]
    )
}
