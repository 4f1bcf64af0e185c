import ControlPlane
import CoordinatorCore
import Etcd
import Foundation
import Logging
import RingmasterSecurity
import ServiceLifecycle
import Synchronization

/// One coordinator of a set that shares an etcd store (`ringmaster coordinator --store etcd://…`):
/// it campaigns for the leadership and, while another leads, stands by on its control address,
/// referring every agent and operator to the leader. Elected, it loads the state from etcd and
/// serves as `CoordinatorService`, every write fenced by its leadership; deposed (its lease lost),
/// it stops serving at once and stands by again. SIGTERM steps down and frees the leadership.
///
/// Every coordinator of the set holds the same CA (its key and certificate, copied into each
/// state directory; docs/operating.md), so the pins agents joined with hold whoever leads; the
/// set's CA pin is kept in etcd, and a coordinator with another CA refuses to start.
public final class ReplicatedCoordinator: Service {
    public let configuration: CoordinatorConfiguration
    public let endpoints: [String]
    /// The control address agents and operators reach this coordinator at.
    public let advertised: String
    public let election: LeaderElection.Settings
    let logger: Logger
    let onListening: @Sendable (Int) -> Void
    /// Where the set's keys live in etcd (one etcd cluster may hold several sets).
    public let prefix: String
    /// TLS to etcd (`etcds://`); nil: plain HTTP.
    public let tls: EtcdTLS?

    public init(
        configuration: CoordinatorConfiguration, endpoints: [String], tls: EtcdTLS? = nil,
        prefix: String = "/ringmaster/", advertised: String,
        election: LeaderElection.Settings = LeaderElection.Settings(),
        logger: Logger, onListening: @escaping @Sendable (Int) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.endpoints = endpoints
        self.tls = tls
        self.prefix = prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.advertised = advertised
        self.election = election
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        self.logger.info(
            "sharing an etcd store",
            metadata: [
                "endpoints": "\(self.endpoints.joined(separator: ","))", "prefix": "\(self.prefix)",
                "transport":
                    "\(self.tls.map { "TLS, client certificate \($0.certificateFile ?? "none")" } ?? "plain HTTP")",
            ])
        let client = EtcdClient(endpoints: self.endpoints, tls: self.tls, logger: self.logger)
        let authority = try self.sharedAuthority(client)
        let elector = try LeaderElector(
            client: EtcdClient(
                endpoints: self.endpoints, tls: self.tls, timeout: self.election.renewal * 4 / 5, logger: self.logger),
            prefix: self.prefix,
            identity: .init(
                id: "\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UUID().uuidString.prefix(8))",
                address: self.advertised),
            settings: self.election, logger: self.logger)
        var changes = elector.changes.makeAsyncIterator()
        elector.start()
        defer { elector.stop() }
        // Printed once, on the first bind: scripts and tests read the port from it.
        let listening = Once()
        let onListening: @Sendable (Int) -> Void = { port in listening.run { self.onListening(port) } }
        // SIGTERM ends what is served (the service writes what it must first), then the election
        // steps down, freeing the leadership for a standby at once. Each turn asks the election
        // afresh whether this coordinator leads, so a change that came while the last part was
        // ending is not missed.
        while true {
            if elector.leads() {
                let store = EtcdStateStore(client: client, prefix: self.prefix) { elector.fence }
                let service = try CoordinatorService(
                    configuration: self.configuration, logger: self.logger, store: store, onListening: onListening)
                guard try await self.serve(service.run, elector: elector, until: .deposed(reason: ""), from: &changes)
                else { return }
            } else {
                let standby = StandbyListener(
                    configuration: self.configuration,
                    context: try CoordinatorService.serverContext(
                        authority: authority, configuration: self.configuration, now: Date()),
                    caCertificate: authority.certificate, leader: { elector.leader?.address }, logger: self.logger,
                    onListening: onListening)
                let standing: @Sendable () async throws -> Void = {
                    try await cancelWhenGracefulShutdown { try await standby.run() }
                }
                guard try await self.serve(standing, elector: elector, until: .elected, from: &changes) else { return }
            }
        }
    }

    /// Runs `body` until the election's next change of the kind of `change` (true: go on), or
    /// until `body` ends by itself or the changes end (false: stop). Returns once `body` has ended.
    func serve(
        _ body: @escaping @Sendable () async throws -> Void, elector: LeaderElector, until change: LeaderElector.Change,
        from changes: inout AsyncStream<LeaderElector.Change>.Iterator
    ) async throws -> Bool {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                defer { elector.interrupt() }
                do {
                    try await body()
                } catch is CancellationError {
                    // Cancelled here on a change, or by graceful shutdown: the orderly end.
                }
            }
            defer { group.cancelAll() }
            var goOn = false
            waiting: while let next = await changes.next() {
                switch (next, change) {
                case (.elected, .elected), (.deposed, .deposed):
                    goOn = true
                    group.cancelAll()
                case (.interrupted, _):
                    break waiting
                case (.sawLeader(let leader), _):
                    self.logger.info("another coordinator leads", metadata: ["leader": "\(leader.address)"])
                case (.elected, _), (.deposed, _):
                    continue
                }
            }
            // The body has ended (its end put the `.interrupted` just taken), or the changes did.
            try await group.waitForAll()
            return goOn
        }
    }

    /// The CA this coordinator serves with, checked against the set's: the first coordinator of a
    /// set records its CA's pin in etcd; the others must hold the same CA.
    func sharedAuthority(_ client: EtcdClient) throws -> CertificateAuthority {
        let key = self.prefix + "ca-pin"
        let directory = self.configuration.stateDirectory
        let recorded: EtcdKeyValue?
        do {
            recorded = try client.get(key)
        } catch {
            throw CoordinatorError(
                .stateStore, "could not read the set's CA pin from etcd at \(self.endpoints.joined(separator: ","))",
                underlying: error)
        }
        let local = try CertificateAuthority.load(directory: directory)
        if let recorded {
            let pin = String(decoding: recorded.value, as: UTF8.self)
            guard let local else {
                throw CoordinatorError(
                    .configuration,
                    "this coordinator has no CA in \(directory), and the set sharing this etcd store has one (\(pin)): copy ca.key and ca.crt from the state directory of a coordinator of the set into \(directory) (0600), then start it again"
                )
            }
            guard "\(local.pin)" == pin else {
                throw CoordinatorError(
                    .configuration,
                    "this coordinator's CA in \(directory) (\(local.pin)) is not the one of the set sharing this etcd store (\(pin)): agents pinned to the set's CA would refuse it; copy ca.key and ca.crt from a coordinator of the set into \(directory) in place of these"
                )
            }
            return local
        }
        let authority = try local ?? CertificateAuthority.loadOrCreate(directory: directory, now: Date())
        do {
            let result = try client.transaction(
                if: [.createRevision(key: key, equals: 0)],
                then: [.put(key: key, value: Array("\(authority.pin)".utf8))],
                else: [.get(key: key)], doing: "recording the set's CA pin")
            if !result.succeeded, let other = result.reads.first?.first,
                String(decoding: other.value, as: UTF8.self) != "\(authority.pin)"
            {
                throw CoordinatorError(
                    .configuration,
                    "another coordinator recorded a different CA for this etcd store at the same moment: start the coordinators of a set with the same ca.key and ca.crt"
                )
            }
        } catch let error as EtcdError {
            throw CoordinatorError(.stateStore, "could not record the set's CA pin in etcd", underlying: error)
        }
        return authority
    }
}

/// Runs a closure at most once, from any thread.
final class Once: Sendable {
    let done = Mutex(false)

    func run(_ body: () -> Void) {
        let first = self.done.withLock { done in
            defer { done = true }
            return !done
        }
        if first { body() }
    }
}
