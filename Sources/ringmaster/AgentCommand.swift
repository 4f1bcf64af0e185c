import Agent
import ArgumentParser
import ControlPlane
import Foundation
import Logging
import RingmasterSecurity
import ServiceLifecycle

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run a node agent, or join it to a coordinator.",
        subcommands: [Run.self, Join.self],
        defaultSubcommand: Run.self
    )

    struct Options: ParsableArguments {
        @Option(
            help:
                "The coordinator's control address; for a set of coordinators sharing an etcd store, every one, comma-separated (HOST:PORT,HOST:PORT,...): the agent finds the leader and follows it."
        )
        var coordinator: String

        @Option(help: "Directory for the agent's key and certificates.")
        var dataDir: String

        @Option(help: "Node name to join as (default: this host's name).")
        var name: String?

        @Option(help: "Join token from `ringmaster token create` (or set RINGMASTER_TOKEN, which `ps` does not show).")
        var token: String?

        @Option(help: "CA pin printed with the token (sha256:...), or set RINGMASTER_CA_PIN.")
        var caPin: String?

        @Option(help: "Data-plane address to announce (repeatable; default: the listener's).")
        var dataPlaneAddress: [String] = []

        @Option(help: "Open the data-plane listener at HOST:PORT (port 0 picks one); needed to train.")
        var dataPlaneListen: String?

        @Option(
            help:
                "On SIGTERM, how long the step in flight may take before it is abandoned, e.g. 30s (a drain has the coordinator's 30 s)."
        )
        var gracePeriod: DurationArgument = DurationArgument(seconds: 30)

        @Option(help: "Longest wait for one collective operation, e.g. 60s (a dead peer fails it at once).")
        var collectiveTimeout: DurationArgument = DurationArgument(seconds: 60)

        @Option(
            help:
                "RDMA ports to announce for the data plane: auto (every device found), off, or a device name such as mlx5_0."
        )
        var rdma: String = "auto"

        @OptionGroup var logging: LoggingOptions

        func makeService(logger: Logger) throws -> AgentService {
            let environment = ProcessInfo.processInfo.environment
            let nodeName = self.name ?? Self.hostName()
            var configuration = AgentConfiguration(
                coordinators: try CoordinatorAddresses(parsing: self.coordinator).all,
                dataDirectory: self.dataDir,
                nodeName: nodeName
            )
            try PeerIdentity.validate(name: nodeName)
            // Empty values count as unset, so a blanked line in an environment file is harmless.
            func given(_ flag: String?, _ variable: String) -> String? {
                let value = flag ?? environment[variable]
                return value?.isEmpty == false ? value : nil
            }
            if let token = given(self.token, "RINGMASTER_TOKEN") {
                configuration.joinToken = try JoinToken(parsing: token)
            }
            if let pin = given(self.caPin, "RINGMASTER_CA_PIN") {
                configuration.caPin = try CAPin(parsing: pin)
            }
            configuration.dataPlaneAddresses = self.dataPlaneAddress
            // Empty (an unset variable in a unit file) means no listener, like leaving the flag out.
            configuration.dataPlaneListen = self.dataPlaneListen?.isEmpty == false ? self.dataPlaneListen : nil
            configuration.gracePeriodSeconds = self.gracePeriod.seconds
            configuration.collectiveTimeoutSeconds = self.collectiveTimeout.seconds
            configuration.rdma = RDMASelection(parsing: self.rdma.isEmpty ? "auto" : self.rdma)
            return AgentService(configuration: configuration, logger: logger)
        }

        static func hostName() -> String {
            let host = ProcessInfo.processInfo.hostName.lowercased()
            return String(host.prefix { $0 != "." })
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run",
            abstract: "Run the agent (joining first if its data directory has no certificate)."
        )

        @OptionGroup var options: Options

        func run() async throws {
            let logger = self.options.logging.bootstrap(label: "ringmaster.agent")
            let service = try self.options.makeService(logger: logger)
            try await runUntilSignalled(service, logger: logger)
        }
    }

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "join",
            abstract: "Join the coordinator with a one-time token, store the certificate, and exit."
        )

        @OptionGroup var options: Options

        func run() async throws {
            let logger = self.options.logging.bootstrap(label: "ringmaster.agent")
            let service = try self.options.makeService(logger: logger)
            let credentials = try await service.credentials()
            print(
                "joined as \(try credentials.identity.name); certificate valid until \(credentials.certificate.notValidAfter)"
            )
        }
    }
}
