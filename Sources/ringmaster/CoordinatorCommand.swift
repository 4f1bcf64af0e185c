import ArgumentParser
import ControlPlane
import Coordinator
import Etcd
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

    @Option(
        help:
            "Where the state lives: sqlite (in the state directory, the default), or etcds://HOST:PORT[,HOST:PORT...] (TLS; etcd:// for plain HTTP on loopback) to share it with other coordinators, one of which leads (docs/operating.md)."
    )
    var store: String = "sqlite"

    @Option(
        help:
            "With --store etcds: the CA file (PEM) that signed the etcd members' server certificates (default: the system's trust roots)."
    )
    var etcdCa: String?

    @Option(
        help:
            "With --store etcds: the client certificate (PEM) this coordinator shows etcd (for etcd's --client-cert-auth)."
    )
    var etcdCert: String?

    @Option(help: "With --store etcds: the client certificate's key (PEM, mode 0600).")
    var etcdKey: String?

    @Flag(
        help:
            "With --store etcd://: allow plain HTTP to endpoints that are not this machine's loopback. Join-token secrets and the data-plane key then cross that network unencrypted."
    )
    var etcdPlaintext: Bool = false

    @Option(help: "With --store etcd: the prefix of the set's keys (several sets may share one etcd cluster).")
    var etcdPrefix: String = "/ringmaster/"

    @Option(
        help:
            "With --store etcd: the control address agents and operators reach this coordinator at, which standbys name when they refer them to the leader (default: the listening address)."
    )
    var advertise: String?

    @Option(
        help:
            "With --store etcd: the leader's lease; a standby leads within it (plus its retry) once the leader is gone, e.g. 2s. Whole seconds, at least 2."
    )
    var leaderLease: DurationArgument = DurationArgument(seconds: 2)

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if self.store == "sqlite" {
            guard self.etcdCa == nil, self.etcdCert == nil, self.etcdKey == nil, !self.etcdPlaintext else {
                throw ValidationError(
                    "--etcd-ca, --etcd-cert, --etcd-key and --etcd-plaintext go with --store etcds:// or etcd://")
            }
        } else {
            try self.checkEtcdTransport(try Self.etcdAddress(self.store))
            guard self.etcdPrefix.hasPrefix("/"), !self.etcdPrefix.contains(" ") else {
                throw ValidationError("--etcd-prefix must start with / and hold no spaces, not \(self.etcdPrefix)")
            }
            guard self.leaderLease.seconds >= 2, self.leaderLease.seconds == self.leaderLease.seconds.rounded() else {
                throw ValidationError(
                    "--leader-lease must be whole seconds, at least 2 (etcd grants leases in seconds), not \(self.leaderLease.seconds) s"
                )
            }
        }
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
        let onListening: @Sendable (Int) -> Void = { port in
            // The one line on standard output: scripts and tests read the bound port from it.
            FileHandle.standardOutput.write(Data("listening \(ControlAddress(host: host, port: port))\n".utf8))
        }
        guard self.store != "sqlite" else {
            let service = try CoordinatorService(configuration: configuration, logger: logger, onListening: onListening)
            try await runUntilSignalled(service, logger: logger)
            return
        }
        let etcd = try Self.etcdAddress(self.store)
        let tls: EtcdTLS?
        do {
            tls =
                etcd.secure
                ? try EtcdTLS(caFile: self.etcdCa, certificateFile: self.etcdCert, keyFile: self.etcdKey) : nil
        } catch {
            throw ValidationError("\(error)")
        }
        guard address.port != 0 || self.advertise != nil else {
            throw ValidationError(
                "--store etcd needs a fixed port to name this coordinator to the others: give --listen HOST:PORT with a port, or --advertise"
            )
        }
        let service = ReplicatedCoordinator(
            configuration: configuration, endpoints: etcd.endpoints, tls: tls, prefix: self.etcdPrefix,
            advertised: self.advertise ?? self.listen,
            election: .init(lease: .seconds(Int64(self.leaderLease.seconds))), logger: logger,
            onListening: onListening)
        try await runUntilSignalled(service, logger: logger)
    }

    /// The address of `--store etcd(s)://...`, or a message that says what the option takes.
    static func etcdAddress(_ store: String) throws -> EtcdAddress {
        do {
            return try EtcdAddress(parsing: store)
        } catch {
            throw ValidationError("--store takes sqlite, etcds://HOST:PORT[,HOST:PORT...] or etcd://...: \(error)")
        }
    }

    /// TLS files go with `etcds://`; plain HTTP is for loopback unless `--etcd-plaintext` says
    /// otherwise, since the state in etcd holds join-token secrets and the data-plane key.
    func checkEtcdTransport(_ address: EtcdAddress) throws {
        if address.secure {
            guard !self.etcdPlaintext else {
                throw ValidationError("--etcd-plaintext goes with --store etcd:// (plain HTTP), not \(address)")
            }
            return
        }
        guard self.etcdCa == nil, self.etcdCert == nil, self.etcdKey == nil else {
            throw ValidationError(
                "--etcd-ca, --etcd-cert and --etcd-key are for TLS: give the store as etcds://\(address.endpoints.joined(separator: ","))"
            )
        }
        guard address.isLoopback || self.etcdPlaintext else {
            throw ValidationError(
                "--store \(address) would send join-token secrets and the data-plane key to etcd unencrypted over the network: run etcd with TLS and give --store etcds://\(address.endpoints.joined(separator: ",")) with --etcd-ca, --etcd-cert and --etcd-key (docs/operating.md), or, on a network only the coordinators reach, add --etcd-plaintext"
            )
        }
    }
}
