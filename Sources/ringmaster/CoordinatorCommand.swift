import ArgumentParser
import ControlPlane
import Coordinator
import Foundation
import Logging
import ServiceLifecycle

struct CoordinatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator (creates its CA in the state directory on first start)."
    )

    @Option(help: "Directory for the CA and the state database.")
    var stateDir: String

    @Option(help: "Address to listen on; port 0 picks a free port (printed on standard output).")
    var listen: String = "127.0.0.1:7600"

    @Option(
        help:
            "DNS name in the coordinator's certificate, for tools that check host names (repeatable). Ringmaster's own clients check the CA and the coordinator role instead."
    )
    var serverName: [String] = ["localhost"]

    @Option(help: "IP address in the coordinator's certificate, for tools that check host names (repeatable).")
    var serverAddress: [String] = ["127.0.0.1", "::1"]

    @Option(help: "Lifetime of agent certificates, e.g. 24h.")
    var agentCertificateTTL: DurationArgument = DurationArgument(seconds: 24 * 3600)

    @Option(help: "Largest control frame accepted, in bytes.")
    var maxFrameBytes: Int = 16 * 1024 * 1024

    @Option(help: "How often agents heartbeat, e.g. 500ms.")
    var heartbeatInterval: DurationArgument = DurationArgument(seconds: 0.5)

    @Option(help: "How long a node stays alive without a heartbeat, e.g. 2s.")
    var lease: DurationArgument = DurationArgument(seconds: 2)

    @Option(help: "How long a job that could start with fewer than nodes.max waits for more, e.g. 1s.")
    var settleWindow: DurationArgument = DurationArgument(seconds: 1)

    @Option(help: "After a restart, how long running jobs wait for their members to reconnect, e.g. 5s.")
    var recoveryWindow: DurationArgument = DurationArgument(seconds: 5)

    @Option(
        help:
            "How long a job that nodes could not run (a missing data set, say) waits for other nodes before it fails, e.g. 60s."
    )
    var unrunnableJobTimeout: DurationArgument = DurationArgument(seconds: 60)

    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one).")
    var metricsListen: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard self.lease.seconds > self.heartbeatInterval.seconds else {
            throw ValidationError(
                "--lease (\(self.lease.seconds) s) must be longer than --heartbeat-interval (\(self.heartbeatInterval.seconds) s)"
            )
        }
    }

    func run() async throws {
        let logger = self.logging.bootstrap(label: "ringmaster.coordinator")
        let address = try ControlAddress(parsing: self.listen)
        var configuration = CoordinatorConfiguration(stateDirectory: self.stateDir)
        configuration.listenHost = address.host
        configuration.listenPort = address.port
        configuration.serverDNSNames = self.serverName
        configuration.serverIPAddresses = self.serverAddress
        configuration.agentCertificateLifetimeSeconds = self.agentCertificateTTL.seconds
        configuration.maximumFrameBytes = self.maxFrameBytes
        configuration.heartbeatIntervalMilliseconds = self.heartbeatInterval.milliseconds
        configuration.leaseMilliseconds = self.lease.milliseconds
        configuration.settleWindowMilliseconds = self.settleWindow.milliseconds
        configuration.recoveryWindowMilliseconds = self.recoveryWindow.milliseconds
        configuration.unrunnableJobMilliseconds = self.unrunnableJobTimeout.milliseconds
        if let metrics = self.metricsListen {
            let address = try ControlAddress(parsing: metrics)
            configuration.metricsHost = address.host
            configuration.metricsPort = address.port
        }
        let host = address.host
        let service = try CoordinatorService(
            configuration: configuration, logger: logger,
            onListening: { port in
                // The one line on standard output: scripts and tests read the bound port from it.
                FileHandle.standardOutput.write(Data("listening \(ControlAddress(host: host, port: port))\n".utf8))
            })
        try await runUntilSignalled(service, logger: logger)
    }
}
