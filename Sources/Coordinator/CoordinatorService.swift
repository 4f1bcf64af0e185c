import ControlPlane
import CoordinatorCore
import Crypto
import Foundation
import JobModel
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import RingmasterSecurity
import RingmasterWire
import ServiceLifecycle
import Synchronization
import X509

/// Settings of a coordinator.
public struct CoordinatorConfiguration: Sendable {
    /// Address the control listener binds.
    public var listenHost: String = "127.0.0.1"
    /// Port the control listener binds (0: any free port, reported through `onListening`).
    public var listenPort: Int = 7600
    /// Directory of the CA and the state database (created 0700).
    public var stateDirectory: String
    /// DNS names the coordinator's server certificate carries.
    public var serverDNSNames: [String] = ["localhost"]
    /// IP addresses the coordinator's server certificate carries.
    public var serverIPAddresses: [String] = ["127.0.0.1", "::1"]
    /// Lifetime of the certificates issued to agents.
    public var agentCertificateLifetimeSeconds: Double = 24 * 3600
    /// Largest control frame accepted.
    public var maximumFrameBytes: Int = FrameLimits.defaultMaximumPayloadBytes
    /// How often agents heartbeat.
    public var heartbeatIntervalMilliseconds: UInt32 = 500
    /// How long a node's lease lasts without a heartbeat.
    public var leaseMilliseconds: UInt32 = 2000
    /// Time a new connection has to finish its TLS handshake.
    public var handshakeTimeoutSeconds: Double = 10
    /// Time a connection without a client certificate has, from the end of its TLS handshake, to
    /// finish its join; then it is closed.
    public var joinTimeoutSeconds: Double = 5
    /// Caps on connections (see `ConnectionBudget`); nil: derived from the descriptor limit, which
    /// the service raises to the hard limit when it starts.
    public var connectionLimits: ConnectionBudget.Limits?
    /// How long a job that could start below its target waits for more nodes.
    public var settleWindowMilliseconds: UInt32 = 1000
    /// After a restart, how long running jobs wait for their members to come back.
    public var recoveryWindowMilliseconds: UInt32 = 5000
    /// How long a drained node has to leave its job.
    public var drainGraceSeconds: UInt32 = 30
    /// How long a job that nodes could not run waits for other nodes before it fails.
    public var unrunnableJobMilliseconds: UInt32 = 60_000
    /// How often leases and windows are checked.
    public var tickMilliseconds: UInt32 = 100
    /// Where `/metrics` is served (host and port; port 0 picks one); nil: not served.
    public var metricsHost: String? = nil
    /// Port of `/metrics`.
    public var metricsPort: Int = 9600

    /// Settings with defaults and a state directory.
    public init(stateDirectory: String) {
        self.stateDirectory = stateDirectory
    }
}

/// The coordinator as a service: a mutual-TLS control listener in front of the CA, the state
/// database and the `CoordinatorMachine`.
///
/// Each connection is served by its own task: the TLS handshake (client certificates checked by
/// a `PeerVerifier`), then a loop over the connection's `Envelope`s. Every message passes the
/// `AccessPolicy` before it is handled; a refused message, a bad frame or a failed handshake is
/// logged with its reason and closes the connection without being acted on.
///
/// Agent messages and operator commands become machine events and commands. The machine and
/// the table of live agent sessions sit behind one lock; the actions an event produces are handed,
/// before the lock is released, to the one `StateWriter`, which writes what they changed and then
/// pushes what they tell agents, in event order: every agent receives its aborts and assignments
/// in generation order, each after it is durable, and no write holds up the lock.
public final class CoordinatorService: Service, Sendable {
    let configuration: CoordinatorConfiguration
    let logger: Logger
    let now: @Sendable () -> Date
    let onListening: @Sendable (Int) -> Void
    let store: any StateStore
    let authority: CertificateAuthority
    let serverContext: NIOSSLContext
    let engine: Mutex<Engine>
    let started = ContinuousClock.now
    let dataPlaneKey: SymmetricKey
    let nextSessionID = Atomic<UInt64>(1)
    /// The coordinator's metrics.
    public let metrics = CoordinatorMetrics()
    /// Writes job records, progress and checkpoint manifests in event order, off the engine lock.
    let writer: StateWriter
    /// The process's descriptor limit, raised at start.
    let descriptorLimit: Int
    /// Held by the operator's command being carried out: commands go one at a time (`command`).
    let commandTurns = Mutex<Void>(())
    /// The connections held, and which new ones are refused at accept.
    let connections: Mutex<ConnectionBudget>
    /// The unauthenticated connections' channels, to close one a newcomer displaces.
    let unauthenticatedChannels = Mutex<[ConnectionBudget.Ticket: any Channel]>([:])
    /// Refusals at accept not yet logged (they are logged in summary, at most every 5 s).
    let refusalsToLog = Mutex<(count: Int, loggedAt: ContinuousClock.Instant?)>((0, nil))

    /// The machine and the live agent sessions, guarded together.
    struct Engine: ~Copyable {
        var machine: CoordinatorMachine
        var sessions: [String: Session] = [:]
        /// What members reported about each job's training. What `job status` shows of it is
        /// saved with every cursor commit and restored at start (`JobProgress.Saved`).
        var progress: [String: JobProgress] = [:]
    }

    /// A job's training as its members report it.
    struct JobProgress {
        /// Mean loss over the global batch, by step, for steps not yet committed.
        var pendingLoss: [UInt64: Double] = [:]
        /// Loss of the last committed step.
        var loss: Double = 0
        var testAccuracy: Double?
        var lastHash: (step: UInt64, hash: Data)?
        var divergences: UInt64 = 0
        /// Generations in the order they started.
        var history: [Ringmaster_V1_GenerationRecord] = []
        var lastCheckpointStep: UInt64 = 0
        var checkpointFailures: UInt64 = 0
        var lastCheckpointError = ""
        /// When the progress was last saved, and its milestones then.
        var savedAt: ContinuousClock.Instant?
        var savedMilestones: Milestones?

        /// What changes rarely and is saved at once when it does.
        struct Milestones: Equatable {
            var generations: Int
            var lastCheckpointStep: UInt64
            var checkpointFailures: UInt64
            var divergences: UInt64
            var testAccuracy: Double?
        }

        var milestones: Milestones {
            Milestones(
                generations: self.history.count, lastCheckpointStep: self.lastCheckpointStep,
                checkpointFailures: self.checkpointFailures, divergences: self.divergences,
                testAccuracy: self.testAccuracy
            )
        }

        /// What is kept across coordinator restarts: what `job status` shows.
        struct Saved: Codable {
            var loss: Double
            var testAccuracy: Double?
            var divergences: UInt64
            /// `Ringmaster_V1_GenerationRecord`s, serialized.
            var history: [Data]
            var lastCheckpointStep: UInt64
            var checkpointFailures: UInt64
            var lastCheckpointError: String
        }

        init() {}

        /// Progress restored from `saved` (nothing pending: reports in flight are reported again
        /// in the next generation).
        init(restoring saved: Saved) throws {
            self.loss = saved.loss
            self.testAccuracy = saved.testAccuracy
            self.divergences = saved.divergences
            self.history = try saved.history.map { try Ringmaster_V1_GenerationRecord(serializedBytes: $0) }
            self.lastCheckpointStep = saved.lastCheckpointStep
            self.checkpointFailures = saved.checkpointFailures
            self.lastCheckpointError = saved.lastCheckpointError
        }

        /// The part to keep, encoded.
        func encoded() throws -> Data {
            let saved = Saved(
                loss: self.loss,
                testAccuracy: self.testAccuracy,
                divergences: self.divergences,
                history: try self.history.map { try $0.serializedBytes() },
                lastCheckpointStep: self.lastCheckpointStep,
                checkpointFailures: self.checkpointFailures,
                lastCheckpointError: self.lastCheckpointError
            )
            return try JSONEncoder().encode(saved)
        }
    }

    /// One agent's live control connection.
    struct Session {
        let id: UInt64
        let channel: any Channel
    }

    /// Loads or creates the CA and the state database. Starts nothing: `run` does.
    /// A coordinator over `store` (default: SQLite in the state directory).
    public init(
        configuration: CoordinatorConfiguration,
        logger: Logger,
        now: @escaping @Sendable () -> Date = { Date() },
        store: (any StateStore)? = nil,
        onListening: @escaping @Sendable (Int) -> Void = { _ in }
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.now = now
        self.onListening = onListening
        self.descriptorLimit = DescriptorLimit.raise()
        self.connections = Mutex(
            ConnectionBudget(limits: configuration.connectionLimits ?? .forDescriptorLimit(self.descriptorLimit)))
        let current = now()
        self.authority = try CertificateAuthority.loadOrCreate(directory: configuration.stateDirectory, now: current)
        let store = try store ?? SQLiteStateStore(path: "\(configuration.stateDirectory)/state.sqlite")
        self.store = store
        self.writer = StateWriter(store: store, logger: logger, now: now)
        self.serverContext = try Self.serverContext(
            authority: self.authority, configuration: configuration, now: current)
        self.dataPlaneKey = SymmetricKey(data: try self.store.secret(named: "data-plane"))
        let settings = CoordinatorMachine.Settings(
            lease: .milliseconds(Int(configuration.leaseMilliseconds)),
            settleWindow: .milliseconds(Int(configuration.settleWindowMilliseconds)),
            recoveryWindow: .milliseconds(Int(configuration.recoveryWindowMilliseconds)),
            drainGrace: .seconds(Int(configuration.drainGraceSeconds)),
            unrunnableTimeout: .milliseconds(Int(configuration.unrunnableJobMilliseconds))
        )
        let records = try self.store.jobs()
        var engine = Engine(machine: CoordinatorMachine(settings: settings, restoring: records, now: .zero))
        for (job, data) in try self.store.progress() {
            do {
                engine.progress[job] = try JobProgress(
                    restoring: JSONDecoder().decode(JobProgress.Saved.self, from: data))
            } catch {
                // Only what status shows is lost; the job itself is in its record.
                logger.error(
                    "could not restore a job's progress; its status starts afresh",
                    metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"])
            }
        }
        self.engine = Mutex(engine)
        for record in records where record.phase == .running || record.phase == .waiting {
            logger.info(
                "restored a job",
                metadata: [
                    LogKey.job: "\(record.spec.name)", LogKey.generation: "\(record.generation)",
                    "phase": "\(record.phase.rawValue)", "cursor": "\(record.cursor)",
                ]
            )
        }
    }

    /// The TLS context the control listener serves with: a fresh key and a certificate from the
    /// CA for the configured names and addresses (a standby serves with one of its own as well).
    static func serverContext(
        authority: CertificateAuthority, configuration: CoordinatorConfiguration, now: Date
    ) throws -> NIOSSLContext {
        let key = KeyAndRequest.makeKey()
        let certificate = try authority.issue(
            publicKey: key.publicKey,
            identity: try PeerIdentity(role: .coordinator, name: "coordinator"),
            notBefore: now.addingTimeInterval(-300),
            notAfter: now.addingTimeInterval(365 * 24 * 3600),
            dnsNames: configuration.serverDNSNames,
            ipAddresses: configuration.serverIPAddresses
        )
        return try ControlTLS.serverContext(
            credentials: try Credentials(
                privateKey: key, certificate: certificate, caCertificate: authority.certificate)
        )
    }

    /// Time since this service started, the machine's clock.
    var elapsed: Duration { ContinuousClock.now - self.started }

    /// The CA's pin, which joining agents check.
    public var caPin: CAPin { self.authority.pin }

    /// The state database (for the CLI and tests on the same host).
    public var state: any StateStore { self.store }

    // MARK: - Listening

    /// Serves control connections until graceful shutdown (SIGTERM) or cancellation.
    public func run() async throws {
        let context = self.serverContext
        let verifier = PeerVerifier(
            trust: .certificate(self.authority.certificate),
            allowedRoles: [.agent, .operator],
            now: self.now
        )
        let maximumFrameBytes = self.configuration.maximumFrameBytes
        let joinTimeout = TimeAmount.milliseconds(Int64(self.configuration.joinTimeoutSeconds * 1000))
        let handshakeTimeout = TimeAmount.milliseconds(Int64(self.configuration.handshakeTimeoutSeconds * 1000))
        let logger = self.logger
        let accepted = AcceptedChannels()
        let server: NIOAsyncChannel<Admission, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: self.configuration.listenHost, port: self.configuration.listenPort) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        accepted.register(channel)
                        guard let (ticket, deadline) = self.admit(channel, handshakeTimeout: handshakeTimeout) else {
                            return .refused
                        }
                        let peer = channel.remoteAddress?.description ?? "unknown"
                        let tls = NIOSSLServerHandler(
                            context: context,
                            customVerificationCallback: verifier.callback { error in
                                logger.warning(
                                    "refused a client certificate",
                                    metadata: [LogKey.peer: "\(peer)", LogKey.reason: "\(error.message)"]
                                )
                            }
                        )
                        try channel.pipeline.syncOperations.addHandler(tls)
                        let (connection, handshake) = try ControlPipeline.wrap(
                            channel: channel, maximumFrameBytes: maximumFrameBytes)
                        // On the event loop, at the handshake's end, not when `serve` gets to it:
                        // meanwhile a flood could displace a connection that has authenticated.
                        handshake.whenSuccess { certificate in
                            deadline.cancel()
                            if certificate == nil {
                                // Without a certificate, the join must be done within the join deadline.
                                self.connections.withLock { $0.handshakeCompletedWithoutCertificate(ticket) }
                                channel.eventLoop.scheduleTask(in: joinTimeout) { channel.close(promise: nil) }
                            } else {
                                self.connections.withLock { $0.authenticated(ticket) }
                                self.unauthenticatedChannels.withLock { $0[ticket] = nil }
                            }
                        }
                        return .admitted(connection, handshake: handshake, ticket: ticket)
                    }
                }
        } catch {
            throw CoordinatorError(
                .listen,
                "could not listen on \(self.configuration.listenHost):\(self.configuration.listenPort); is another coordinator running?",
                underlying: error
            )
        }
        let port = server.channel.localAddress?.port ?? self.configuration.listenPort
        let limits = self.connections.withLock { $0.limits }
        self.logger.info(
            "coordinator listening",
            metadata: [
                "address": "\(self.configuration.listenHost):\(port)",
                "ca_pin": "\(self.caPin)",
                "state_directory": "\(self.configuration.stateDirectory)",
                "descriptor_limit": "\(self.descriptorLimit)",
                "max_connections": "\(limits.maximumConnections)",
                "max_unauthenticated": "\(limits.maximumUnauthenticated)",
                "max_unauthenticated_per_address": "\(limits.maximumUnauthenticatedPerAddress)",
            ]
        )
        self.onListening(port)
        var metricsChannel: (any Channel)?
        if let host = self.configuration.metricsHost {
            let channel = try await MetricsEndpoint.bind(
                host: host, port: self.configuration.metricsPort, metrics: self.metrics
            ) {
                [weak self] in self?.refreshGauges()
            }
            self.logger.info(
                "serving metrics", metadata: ["address": "http://\(host):\(channel.localAddress?.port ?? 0)/metrics"])
            metricsChannel = channel
        }
        do {
            // Graceful shutdown cancels the listener, the ticker and every connection's task.
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await self.tickUntilCancelled() }
                    try await server.executeThenClose { inbound in
                        // Deposed or stopped: every connection still open is closed, those accepted
                        // and not yet handed over among them (see `AcceptedChannels`).
                        defer { accepted.closeAll() }
                        for try await admission in inbound {
                            guard case .admitted(let connection, let handshake, let ticket) = admission else {
                                continue
                            }
                            group.addTask { await self.serve(connection, handshake: handshake, ticket: ticket) }
                        }
                    }
                }
            }
        } catch is CancellationError {
            // The orderly way to stop.
        }
        try? await metricsChannel?.close()
        // What the last events asked to write is written before the service says it stopped.
        try await onOwnThread(named: "ringmaster-state-drain") { self.writer.drain() }
        self.logger.info("coordinator stopped")
    }

    // MARK: - Admission

    /// A connection as the listener hands it over: admitted (with its slot in the budget), or
    /// refused and already closed.
    enum Admission: Sendable {
        case admitted(
            ControlPipeline.Connection, handshake: EventLoopFuture<NIOSSLCertificate?>, ticket: ConnectionBudget.Ticket)
        case refused
    }

    /// Takes a slot in the connection budget for a connection just accepted, and arms its handshake
    /// deadline (cancelled when the handshake ends; a connection without a certificate then has the
    /// join deadline to finish its join); nil when the budget
    /// refuses it, closed before any TLS work (no handler, no task, its descriptor freed now). A
    /// displaced older connection is closed.
    func admit(_ channel: any Channel, handshakeTimeout: TimeAmount) -> (ConnectionBudget.Ticket, Scheduled<Void>)? {
        let address = channel.remoteAddress?.ipAddress ?? "unknown"
        let admission: ConnectionBudget.Admission
        switch self.connections.withLock({ $0.admit(from: address) }) {
        case .success(let admitted):
            admission = admitted
        case .failure(let refusal):
            self.refused(refusal, from: address)
            channel.close(promise: nil)
            return nil
        }
        if let displaced = admission.displaced {
            self.refused(.displaced, from: displaced.address)
            self.unauthenticatedChannels.withLock { $0.removeValue(forKey: displaced) }?.close(promise: nil)
        }
        let ticket = admission.ticket
        self.unauthenticatedChannels.withLock { $0[ticket] = channel }
        channel.closeFuture.whenComplete { _ in
            self.connections.withLock { $0.closed(ticket) }
            self.unauthenticatedChannels.withLock { $0[ticket] = nil }
        }
        return (ticket, channel.eventLoop.scheduleTask(in: handshakeTimeout) { channel.close(promise: nil) })
    }

    /// Counts a refusal at accept, and logs refusals in summary: a flood must not flood the log.
    func refused(_ refusal: ConnectionBudget.Refusal, from address: String) {
        self.metrics.connectionsRefused[refusal]?.increment()
        let count = self.refusalsToLog.withLock { state -> Int? in
            state.count += 1
            let now = ContinuousClock.now
            if let logged = state.loggedAt, now - logged < .seconds(5) { return nil }
            defer {
                state.count = 0
                state.loggedAt = now
            }
            return state.count
        }
        if let count {
            let held = self.connections.withLock { ($0.connections, $0.unauthenticated) }
            self.logger.warning(
                "refused connections at accept",
                metadata: [
                    "refused": "\(count)", LogKey.reason: "\(refusal.rawValue)", "last_from": "\(address)",
                    "connections": "\(held.0)", "unauthenticated": "\(held.1)",
                ]
            )
        }
    }

    // MARK: - One connection

    func serve(
        _ connection: ControlPipeline.Connection, handshake: EventLoopFuture<NIOSSLCertificate?>,
        ticket: ConnectionBudget.Ticket
    ) async {
        let channel = connection.channel
        var logger = self.logger
        logger[metadataKey: LogKey.peer] = "\(channel.remoteAddress?.description ?? "unknown")"
        let peer: (identity: PeerIdentity, certificate: Certificate)?
        do {
            let certificate = try await withDeadline(
                seconds: self.configuration.handshakeTimeoutSeconds,
                waitingFor: "the TLS handshake"
            ) {
                try await handshake.get()
            }
            peer = try certificate.map { certificate in
                let parsed = try Certificate(derEncoded: try certificate.toDERBytes())
                return (try PeerIdentity(certificate: parsed), parsed)
            }
        } catch {
            logger.warning(
                "closed a connection before its TLS handshake completed", metadata: [LogKey.reason: "\(error)"])
            try? await channel.close()
            return
        }
        let identity = peer?.identity
        if let identity { logger[metadataKey: LogKey.identity] = "\(identity)" }
        let context = ConnectionContext(
            sessionID: self.nextSessionID.wrappingAdd(1, ordering: .relaxed).oldValue,
            channel: channel,
            logger: logger
        )
        defer {
            if identity?.role == .agent, let node = identity?.name { self.sessionEnded(node: node, context: context) }
        }

        do {
            try await connection.executeThenClose { inbound, outbound in
                var join = JoinExchange()
                // False once a reply could not be written: the peer has gone, but what it sent
                // before it went (a last step report, a Leave) is still read and acted on.
                var replying = true
                for try await envelope in inbound {
                    if identity == nil, case .joinBegin = envelope.body {
                        self.connections.withLock { $0.joining(ticket) }
                    }
                    if case .refuse(let reason) = AccessPolicy.decide(role: identity?.role, envelope: envelope) {
                        logger.warning(
                            "refused a control message",
                            metadata: [LogKey.message: "\(envelope.kind)", LogKey.reason: "\(reason)"]
                        )
                        try await outbound.write(.error(.permissionDenied, reason, requestID: envelope.requestID))
                        return
                    }
                    let outcome = await self.handle(envelope, from: peer, join: &join, context: context)
                    for reply in outcome.replies where replying {
                        do {
                            try await outbound.write(reply)
                        } catch {
                            replying = false
                            logger.debug(
                                "could not reply; reading what the peer sent before it went",
                                metadata: [LogKey.reason: "\(error)"])
                        }
                    }
                    if outcome.close { return }
                }
            }
        } catch {
            logger.warning("closed a control connection", metadata: [LogKey.reason: "\(error)"])
        }
    }

    // MARK: - Messages

    /// What to send back, and whether to close the connection after.
    struct Outcome {
        var replies: [Envelope]
        var close = false
    }

    /// What a connection's handlers need besides the message.
    struct ConnectionContext: Sendable {
        let sessionID: UInt64
        let channel: any Channel
        let logger: Logger
    }

    func handle(
        _ envelope: Envelope,
        from peer: (identity: PeerIdentity, certificate: Certificate)?,
        join: inout JoinExchange,
        context: ConnectionContext
    ) async -> Outcome {
        let requestID = envelope.requestID
        let identity = peer?.identity
        let logger = context.logger
        switch envelope.body {
        case .joinBegin(let begin):
            return await self.joinBegin(begin, requestID: requestID, join: &join, logger: logger)
        case .joinRequest(let request):
            return await self.joinRequest(request, requestID: requestID, join: &join, logger: logger)
        case .agentHello(let hello):
            guard let peer else { return Outcome(replies: [], close: true) }
            self.sessionStarted(hello, peer: peer, requestID: requestID, context: context)
            return Outcome(replies: [])
        case .heartbeat(let heartbeat):
            guard let node = identity?.name else { return Outcome(replies: [], close: true) }
            self.feed(
                .heartbeat(
                    node: node, job: heartbeat.jobID.isEmpty ? nil : heartbeat.jobID, generation: heartbeat.generation),
                logger: logger
            )
            var reply = Envelope()
            reply.requestID = requestID
            reply.heartbeatAck = .with {
                $0.jobID = heartbeat.jobID
                $0.generation = heartbeat.generation
            }
            return Outcome(replies: [reply])
        case .stepReport(let report):
            guard let node = identity?.name else { return Outcome(replies: [], close: true) }
            self.stepReported(report, node: node, logger: logger)
            return Outcome(replies: [])
        case .leave(let leave):
            guard let node = identity?.name else { return Outcome(replies: [], close: true) }
            if leave.cannotRun {
                logger.warning(
                    "a node cannot run its job",
                    metadata: [LogKey.job: "\(leave.jobID)", LogKey.reason: "\(leave.reason)"])
                // Bounded: a reason is for job status and the log, not a channel for megabytes.
                let reason = leave.reason.count > 500 ? "\(leave.reason.prefix(500))..." : leave.reason
                self.feed(
                    .cannotRun(node: node, job: leave.jobID, generation: leave.generation, reason: reason),
                    logger: logger)
                return Outcome(replies: [])
            }
            logger.info(
                "node leaves its job", metadata: [LogKey.job: "\(leave.jobID)", LogKey.reason: "\(leave.reason)"])
            self.feed(.left(node: node, job: leave.jobID, generation: leave.generation), logger: logger)
            return Outcome(replies: [])
        case .generationFailed(let failure):
            guard let node = identity?.name else { return Outcome(replies: [], close: true) }
            // Bounded: a reason is for job status and the log, not a channel for megabytes.
            let reason = failure.reason.count > 500 ? "\(failure.reason.prefix(500))..." : failure.reason
            logger.warning(
                failure.rdmaSetUp ? "a member's RDMA set-up failed" : "a member's work in its generation failed",
                metadata: [
                    LogKey.job: "\(failure.jobID)", LogKey.generation: "\(failure.generation)",
                    LogKey.reason: "\(reason)",
                ])
            self.feed(
                .generationFailed(
                    node: node, job: failure.jobID, generation: failure.generation, reason: reason,
                    rdmaSetUp: failure.rdmaSetUp),
                logger: logger)
            return Outcome(replies: [])
        case .renewRequest(let renew):
            guard let identity else { return Outcome(replies: [], close: true) }
            return await self.renew(renew, identity: identity, requestID: requestID, logger: logger)
        case .adminRequest(let admin):
            return await self.admin(admin, requestID: requestID, logger: logger)
        case .shardReady(let shard):
            guard let node = identity?.name else { return Outcome(replies: [], close: true) }
            self.shardReported(shard, node: node, logger: logger)
            return Outcome(replies: [])
        case .joinChallenge, .joinReply, .helloReply, .renewReply, .heartbeatAck, .assignment, .drain, .abort,
            .cursorUpdate,
            .checkpointCommitted, .adminReply, .error, .none:
            // The access policy refuses these before they get here.
            return Outcome(replies: [], close: true)
        }
    }

    func joinBegin(_ begin: Ringmaster_V1_JoinBegin, requestID: UInt64, join: inout JoinExchange, logger: Logger)
        async -> Outcome
    {
        var logger = logger
        logger[metadataKey: LogKey.tokenID] = "\(begin.tokenID)"
        logger[metadataKey: LogKey.node] = "\(begin.nodeName)"
        do {
            try PeerIdentity.validate(name: begin.nodeName)
            let (id, now) = (begin.tokenID, self.now())
            _ = try await self.stored { try $0.usableToken(id: id, now: now) }
        } catch {
            return self.refuseJoin(error, requestID: requestID, logger: logger)
        }
        switch join.begin(tokenID: begin.tokenID, nodeName: begin.nodeName, nonce: JoinProof.makeNonce()) {
        case .success(let nonce):
            var reply = Envelope()
            reply.requestID = requestID
            reply.joinChallenge = .with { $0.nonce = Data(nonce) }
            return Outcome(replies: [reply])
        case .failure(let refusal):
            return self.refuseJoin(refusal, requestID: requestID, logger: logger)
        }
    }

    func joinRequest(_ request: Ringmaster_V1_JoinRequest, requestID: UInt64, join: inout JoinExchange, logger: Logger)
        async -> Outcome
    {
        var logger = logger
        logger[metadataKey: LogKey.tokenID] = "\(request.tokenID)"
        logger[metadataKey: LogKey.node] = "\(request.nodeName)"
        do {
            let nonce = try join.request(tokenID: request.tokenID, nodeName: request.nodeName).get()
            let now = self.now()
            let id = request.tokenID
            let token = try await self.stored { try $0.usableToken(id: id, now: now) }
            let csrDER = Array(request.csrDer)
            guard
                JoinProof.isValid(
                    Array(request.proof),
                    secret: token.secret,
                    nonce: nonce,
                    nodeName: request.nodeName,
                    csrDER: csrDER
                )
            else {
                throw SecurityError(
                    .invalidToken,
                    "the proof for join token \(request.tokenID) does not verify: the agent does not hold this token's secret"
                )
            }
            let identity = try PeerIdentity(role: .agent, name: request.nodeName)
            let certificate = try self.authority.issue(
                csrDER: csrDER,
                identity: identity,
                notBefore: now.addingTimeInterval(-self.clockSkewAllowance),
                notAfter: now.addingTimeInterval(self.configuration.agentCertificateLifetimeSeconds)
            )
            let notAfter = certificate.notValidAfter
            try await self.stored {
                try $0.redeem(tokenID: id, node: identity.name, certificateNotAfter: notAfter, now: now)
            }
            logger.info("agent joined", metadata: ["certificate_not_after": "\(certificate.notValidAfter)"])
            var reply = Envelope()
            reply.requestID = requestID
            reply.joinReply = .with {
                $0.nodeID = identity.name
                $0.certificateDer = Data((try? PEM.der(certificate)) ?? [])
                $0.caCertificateDer = Data((try? PEM.der(self.authority.certificate)) ?? [])
            }
            return Outcome(replies: [reply], close: true)
        } catch {
            return self.refuseJoin(error, requestID: requestID, logger: logger)
        }
    }

    func refuseJoin(_ error: any Error, requestID: UInt64, logger: Logger) -> Outcome {
        let message: String
        switch error {
        case let error as SecurityError: message = error.message
        case let error as JoinRefusal: message = error.reason
        default: message = "the join could not be completed: \(error)"
        }
        logger.warning("refused a join", metadata: [LogKey.reason: "\(message)"])
        return Outcome(replies: [.error(.invalidToken, message, requestID: requestID)], close: true)
    }

    func renew(_ renew: Ringmaster_V1_RenewRequest, identity: PeerIdentity, requestID: UInt64, logger: Logger)
        async -> Outcome
    {
        let now = self.now()
        do {
            let certificate = try self.authority.issue(
                csrDER: Array(renew.csrDer),
                identity: identity,
                notBefore: now.addingTimeInterval(-self.clockSkewAllowance),
                notAfter: now.addingTimeInterval(self.configuration.agentCertificateLifetimeSeconds)
            )
            let notAfter = certificate.notValidAfter
            try await self.stored {
                try $0.renewed(node: identity.name, certificateNotAfter: notAfter, now: now)
            }
            logger.info(
                "renewed an agent certificate", metadata: ["certificate_not_after": "\(certificate.notValidAfter)"])
            var reply = Envelope()
            reply.requestID = requestID
            reply.renewReply = .with { $0.certificateDer = Data((try? PEM.der(certificate)) ?? []) }
            return Outcome(replies: [reply])
        } catch {
            logger.warning("refused a certificate renewal", metadata: [LogKey.reason: "\(error)"])
            return Outcome(replies: [.error(.invalidRequest, "renewal refused: \(error)", requestID: requestID)])
        }
    }

    func admin(_ admin: Ringmaster_V1_AdminRequest, requestID: UInt64, logger: Logger) async -> Outcome {
        var reply = Envelope()
        reply.requestID = requestID
        do {
            switch admin.request {
            case .tokenCreate(let create):
                let ttl = create.ttlSeconds == 0 ? 3600 : create.ttlSeconds
                let now = self.now()
                let token = JoinToken.generate()
                let expires = now.addingTimeInterval(Double(ttl))
                try await self.stored { try $0.add(token: token, expires: expires, now: now) }
                logger.info("created a join token", metadata: [LogKey.tokenID: "\(token.id)", "expires": "\(expires)"])
                reply.adminReply.tokenCreate = .with {
                    $0.token = token.encoded
                    $0.caPin = self.caPin.description
                    $0.expiresUnix = Int64(expires.timeIntervalSince1970)
                }
            case .nodeList:
                reply.adminReply.nodeList = try await self.nodeList()
            case .jobSubmit(let submit):
                let spec: JobSpec
                do {
                    // Off the connection's thread: a spec's parse is bounded (`JobSpecScreen`), but
                    // still must not hold up the threads that serve every other request.
                    let text = submit.specYaml
                    spec = try await onOwnThread(named: "ringmaster-job-spec") { try JobSpecParser.parse(yaml: text) }
                } catch {
                    logger.warning("refused a job spec", metadata: [LogKey.reason: "\(error)"])
                    return Outcome(replies: [.error(.invalidRequest, "\(error)", requestID: requestID)])
                }
                let start: CoordinatorMachine.JobStart?
                do {
                    start = try await self.resumePointAwaitingVerification(for: spec, logger: logger)
                } catch {
                    logger.error(
                        "refused to resume a job", metadata: [LogKey.job: "\(spec.name)", LogKey.reason: "\(error)"])
                    return Outcome(replies: [.error(.invalidRequest, "\(error)", requestID: requestID)])
                }
                try await self.command(.submit(spec, start: start), logger: logger)
                logger.info(
                    "job submitted",
                    metadata: [LogKey.job: "\(spec.name)", "nodes": "\(spec.minNodes)..\(spec.maxNodes)"])
                reply.adminReply.jobStatus = try await self.jobStatus(spec.name)
            case .jobStatus(let request):
                reply.adminReply.jobStatus = try await self.jobStatus(request.jobID.isEmpty ? nil : request.jobID)
            case .jobResize(let resize):
                try await self.command(.resize(job: resize.jobID, nodes: Int(resize.nodes)), logger: logger)
                logger.info("job resized", metadata: [LogKey.job: "\(resize.jobID)", "nodes": "\(resize.nodes)"])
                reply.adminReply.jobStatus = try await self.jobStatus(resize.jobID)
            case .jobCancel(let cancel):
                try await self.command(.cancel(job: cancel.jobID), logger: logger)
                logger.info("job cancelled", metadata: [LogKey.job: "\(cancel.jobID)"])
                reply.adminReply.jobStatus = try await self.jobStatus(cancel.jobID)
            case .nodeDrain(let drain):
                try await self.command(.drain(node: drain.nodeID), logger: logger)
                logger.info("node drained", metadata: [LogKey.node: "\(drain.nodeID)"])
                reply.adminReply.nodeList = try await self.nodeList()
            case .none:
                return Outcome(replies: [
                    .error(.invalidRequest, "an admin request with no request in it", requestID: requestID)
                ])
            }
        } catch let error as CoordinatorMachine.CommandError {
            logger.warning("refused an admin command", metadata: [LogKey.reason: "\(error.message)"])
            return Outcome(replies: [.error(.invalidRequest, error.message, requestID: requestID)])
        } catch let error as CoordinatorError where error.code == .stateFull || error.code == .stateStore {
            // Logged where the write failed; nothing was changed.
            return Outcome(replies: [.error(.unavailable, error.message, requestID: requestID)])
        } catch {
            logger.error("an admin request failed", metadata: [LogKey.error: "\(error)"])
            return Outcome(replies: [.error(.internal, "\(error)", requestID: requestID)])
        }
        return Outcome(replies: [reply])
    }

    /// Runs a state-store call on a thread of its own. With etcd a call is a network round trip, and
    /// takes up to its timeout when etcd is slow or has no quorum (SQLite's may wait for an fsync):
    /// on the connection's task it would hold up one of the few threads (as many as cores) that
    /// serve every connection and heartbeat, and a few joins at once would stall them all.
    func stored<T: Sendable>(_ call: @escaping @Sendable (any StateStore) throws -> T) async throws
        -> T
    {
        let store = self.store
        return try await onOwnThread(named: "ringmaster-store") { try call(store) }
    }

    /// How far back an issued certificate's validity starts, so that a peer whose clock is a
    /// little behind accepts it: a minute, or a twentieth of a (short, test) lifetime.
    var clockSkewAllowance: TimeInterval {
        min(60, self.configuration.agentCertificateLifetimeSeconds / 20)
    }
}
