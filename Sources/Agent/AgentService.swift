import Checkpointing
import ControlPlane
import Foundation
import JobModel
import Logging
import NIOCore
import RingmasterSecurity
import RingmasterWire
import ServiceLifecycle
import Synchronization
import Workload
import X509

/// Settings of a node agent.
public struct AgentConfiguration: Sendable {
    /// The coordinators' control addresses: one, or every coordinator of a set sharing an etcd
    /// store (the agent finds the leader among them, and follows it when it changes).
    public var coordinators: [ControlAddress]
    /// The first coordinator address.
    public var coordinator: ControlAddress { self.coordinators[0] }
    /// Where the agent keeps its key and certificates (created 0700).
    public var dataDirectory: String
    /// The node name asked for when joining (a DNS label; default: the host name).
    public var nodeName: String
    /// A join token, needed only on the first start (when the data directory has no certificate).
    public var joinToken: JoinToken?
    /// The CA pin that comes with the token.
    public var caPin: CAPin?
    /// Addresses the agent's data plane listens on, announced to the coordinator.
    public var dataPlaneAddresses: [String] = []
    /// Where to open the data-plane listener (`host:port`, port 0 picks one); nil: no data plane.
    /// Its address is announced unless `dataPlaneAddresses` is given.
    public var dataPlaneListen: String?
    /// Which RDMA ports the data plane announces (and a job over RDMA uses).
    public var rdma: RDMASelection = .all
    /// GPUs on this host.
    public var gpus: UInt32 = 0
    /// First delay before reconnecting after the control connection drops.
    public var reconnectInitialDelaySeconds: Double = 0.1
    /// Longest delay between reconnection attempts.
    public var reconnectMaximumDelaySeconds: Double = 5
    /// On SIGTERM or a drain: how long the step in flight may take to finish before it is
    /// abandoned and the agent leaves anyway.
    public var gracePeriodSeconds: Double = 30
    /// Longest wait for one collective operation.
    public var collectiveTimeoutSeconds: Double = 60

    /// Settings with defaults.
    public init(coordinator: ControlAddress, dataDirectory: String, nodeName: String) {
        self.init(coordinators: [coordinator], dataDirectory: dataDirectory, nodeName: nodeName)
    }

    /// Settings with defaults, for a set of coordinators (at least one).
    public init(coordinators: [ControlAddress], dataDirectory: String, nodeName: String) {
        precondition(!coordinators.isEmpty, "an agent needs at least one coordinator address")
        self.coordinators = coordinators
        self.dataDirectory = dataDirectory
        self.nodeName = nodeName
    }
}

/// The node agent as a service: joins the coordinator once with a token, then holds a
/// mutual-TLS session (hello, heartbeats, certificate renewal) and reconnects with backoff
/// whenever it drops, until graceful shutdown.
public final class AgentService: Service, Sendable {
    let configuration: AgentConfiguration
    let logger: Logger
    let now: @Sendable () -> Date
    let dataPlane = Mutex<DataPlane?>(nil)
    let trainer = Mutex<Trainer?>(nil)
    let checkpoints = Mutex<CheckpointSaver?>(nil)
    let outbox = Outbox()
    /// Set on graceful shutdown; `leaveReady` once the trainer stopped at a step boundary and
    /// queued its leave.
    let leaving = Mutex(false)
    let leaveReady = Mutex<(ready: Bool, deadline: ContinuousClock.Instant?)>((false, nil))
    /// Which coordinator to reach next.
    let addresses: CoordinatorAddresses

    /// Makes the service; starts nothing.
    public init(configuration: AgentConfiguration, logger: Logger, now: @escaping @Sendable () -> Date = { Date() }) {
        self.configuration = configuration
        self.addresses = CoordinatorAddresses(configuration.coordinators)
        var logger = logger
        logger[metadataKey: LogKey.node] = "\(configuration.nodeName)"
        self.logger = logger
        self.now = now
    }

    // MARK: - Joining

    /// Loads the agent's credentials, or joins with the configured token when there are none (or
    /// when the stored certificate has expired and a new token was given). A join that cannot reach
    /// the coordinator is retried with backoff; a refused one is not.
    public func credentials() async throws -> Credentials {
        let directory = self.configuration.dataDirectory
        if let existing = try Credentials.load(directory: directory) {
            let expired = existing.certificate.notValidAfter <= self.now()
            if !expired {
                if self.configuration.joinToken != nil {
                    self.logger.info("already joined; the join token is not needed and was not used")
                }
                return existing
            }
            guard self.configuration.joinToken != nil else {
                throw AgentError(
                    .certificateExpired,
                    "the certificate in \(directory) expired at \(existing.certificate.notValidAfter) (the agent was offline past its renewal); join again with a new token from `ringmaster token create`"
                )
            }
            self.logger.warning(
                "the stored certificate has expired; joining again with the given token",
                metadata: ["certificate_not_after": "\(existing.certificate.notValidAfter)"]
            )
        }
        guard let token = self.configuration.joinToken, let pin = self.configuration.caPin else {
            throw AgentError(
                .notJoined,
                "\(directory) holds no certificate: join first with the token and CA pin from `ringmaster token create` (--token or RINGMASTER_TOKEN, --ca-pin or RINGMASTER_CA_PIN)"
            )
        }
        var delay = self.configuration.reconnectInitialDelaySeconds
        while true {
            let address = self.addresses.current
            do {
                return try await self.join(token: token, pin: pin, at: address)
            } catch let error as ControlClientError {
                // An unreachable coordinator, or a connection closed before the join's reply (a
                // busy coordinator drops the oldest unfinished joins under a flood), is retried;
                // a refusal would be refused again. A standby names the leader: asked at once.
                switch error {
                case .connect:
                    if !self.addresses.unreachable(address) { continue }
                case .closed: break
                case .notLeader(_, let leader):
                    // A live standby: no backoff, and no wait before the next of the set.
                    delay = self.configuration.reconnectInitialDelaySeconds
                    if !self.addresses.referred(to: leader, by: address) { continue }
                case .refused, .noLeader: throw error
                }
                self.logger.warning(
                    "could not reach the coordinator to join; retrying",
                    metadata: [LogKey.reason: "\(error)", "retry_in_seconds": "\(delay)"]
                )
            }
            try await Task.sleep(for: .milliseconds(Int(delay * Double.random(in: 0.8...1.2) * 1000)))
            delay = min(delay * 2, self.configuration.reconnectMaximumDelaySeconds)
        }
    }

    /// Joins the coordinator: a fresh key, a CSR, and proof of the token's secret bound to the
    /// coordinator's nonce. Saves and returns the credentials.
    public func join(token: JoinToken, pin: CAPin, at address: ControlAddress? = nil) async throws -> Credentials {
        let address = address ?? self.addresses.current
        let nodeName = self.configuration.nodeName
        let request = try KeyAndRequest.make(name: nodeName)
        let client = ControlClient(host: address.host, port: address.port, credentials: nil, serverTrust: .pin(pin))
        let reply: Ringmaster_V1_JoinReply = try await client.withConnection { session in
            var begin = Envelope()
            begin.joinBegin = .with {
                $0.tokenID = token.id
                $0.nodeName = nodeName
            }
            let challenge = try await session.request(begin)
            guard case .joinChallenge(let challengeBody) = challenge.body else {
                throw AgentError(.protocolViolation, "expected a join challenge, got \(challenge.kind)")
            }
            var join = Envelope()
            join.joinRequest = .with {
                $0.tokenID = token.id
                $0.nodeName = nodeName
                $0.csrDer = Data(request.csrDER)
                $0.proof = Data(
                    JoinProof.compute(
                        secret: token.secret,
                        nonce: Array(challengeBody.nonce),
                        nodeName: nodeName,
                        csrDER: request.csrDER
                    )
                )
            }
            let answer = try await session.request(join)
            guard case .joinReply(let reply) = answer.body else {
                throw AgentError(.protocolViolation, "expected a join reply, got \(answer.kind)")
            }
            return reply
        }
        let certificate = try Certificate(derEncoded: Array(reply.certificateDer))
        let ca = try Certificate(derEncoded: Array(reply.caCertificateDer))
        guard pin.matches(ca) else {
            throw AgentError(.protocolViolation, "the coordinator returned a CA that does not match the pin \(pin)")
        }
        let credentials = try Credentials(privateKey: request.privateKey, certificate: certificate, caCertificate: ca)
        try credentials.save(directory: self.configuration.dataDirectory)
        self.logger.info(
            "joined the coordinator",
            metadata: [LogKey.node: "\(reply.nodeID)", "certificate_not_after": "\(certificate.notValidAfter)"]
        )
        return credentials
    }

    // MARK: - Running

    /// Joins if needed, then keeps a session with the coordinator until graceful shutdown.
    public func run() async throws {
        let initial = try await self.credentials()
        if let listen = self.configuration.dataPlaneListen {
            let address = try ControlAddress(parsing: listen)
            let plane = try DataPlane(host: address.host, port: address.port, rdma: self.configuration.rdma)
            self.dataPlane.withLock { $0 = plane }
            self.logger.info(
                "data plane listening",
                metadata: [
                    "address": "\(plane.address)", "descriptor_limit": "\(DescriptorLimit.raise())",
                    "max_pending_handshakes": "\(plane.listener.maximumPending)",
                    "rdma_ports":
                        "\(plane.rdmaPorts.isEmpty ? "none" : plane.rdmaPorts.map(\.description).joined(separator: ", "))",
                ]
            )
            let checkpoints = CheckpointSaver(outbox: self.outbox, logger: self.logger)
            self.checkpoints.withLock { $0 = checkpoints }
            let models = ModelWriter(directory: "\(self.configuration.dataDirectory)/models", logger: self.logger)
            let connectTimeout = Duration.seconds(30)
            let trainer = Trainer(
                settings: .init(
                    collectiveTimeout: .milliseconds(Int(self.configuration.collectiveTimeoutSeconds * 1000)),
                    connectTimeout: connectTimeout
                ),
                environment: TrainingEnvironment(
                    makeWorkload: {
                        [
                            logger = self.logger, workers = "\(self.configuration.dataDirectory)/workers",
                            node = self.configuration.nodeName
                        ] job, plan in
                        if plan.workloadKind == "torch" {
                            return try TorchWorkload.start(
                                job: job, node: node, plan: plan, directory: workers, logger: logger)
                        }
                        return try WorkloadCatalog.make(
                            kind: plan.workloadKind,
                            parameters: try WorkloadCatalog.parameters(fromYAML: plan.workloadParameters),
                            datasetPath: plan.datasetPath,
                            datasetSamples: plan.datasetSamples,
                            seed: plan.seed
                        )
                    },
                    connect: { assignment, isCancelled in
                        // A failed RDMA set-up is told to the coordinator by the core
                        // (`GenerationFailure.rdmaSetUp`), which then runs the job on TCP.
                        try plane.connect(assignment, timeout: connectTimeout, isCancelled: isCancelled)
                    },
                    loadCheckpoint: { directory, step in try CheckpointReader.load(root: directory, step: step).state },
                    offerCheckpoint: { assignment, step, state, parameterCount, tensors in
                        checkpoints.offer(
                            .init(
                                assignment: assignment, step: step, state: state, parameterCount: parameterCount,
                                tensors: tensors))
                    },
                    saveModel: { assignment, workload in models.save(assignment, workload) }
                ),
                outbox: self.outbox,
                logger: self.logger
            )
            trainer.start()
            self.trainer.withLock { $0 = trainer }
        }
        defer {
            self.trainer.withLock { $0 }?.shutdown()
            self.checkpoints.withLock { $0 }?.close()
            self.dataPlane.withLock { $0 }?.close()
        }
        do {
            try await self.keepSession(initial)
        } catch is CancellationError {
            // Graceful shutdown cancels the session loop: the orderly way to stop.
        }
        self.logger.info("agent stopped")
    }

    /// Holds a session with the coordinator, reconnecting with backoff, until cancelled.
    func keepSession(_ initial: Credentials) async throws {
        // Graceful shutdown (SIGTERM, preemption) does not cancel the session: it marks the agent
        // as leaving, and the session tells the coordinator before it closes (see `heartbeat`).
        try await withGracefulShutdownHandler {
            var credentials = initial
            var delay = self.configuration.reconnectInitialDelaySeconds
            while !Task.isCancelled && !self.isLeaving {
                guard credentials.certificate.notValidAfter > self.now() else {
                    throw AgentError(
                        .certificateExpired,
                        "the agent certificate expired at \(credentials.certificate.notValidAfter) before it could be renewed; restart the agent with a new token from `ringmaster token create`"
                    )
                }
                let address = self.addresses.current
                let end = await self.session(credentials: credentials, at: address)
                if let renewed = end.credentials { credentials = renewed }
                if end.connected {
                    delay = self.configuration.reconnectInitialDelaySeconds
                    self.addresses.connected(address)
                }
                if Task.isCancelled || self.isLeaving { break }
                // Among several coordinators: an unreachable one gives way to the next at once,
                // and a standby's referral is followed at once; the agent waits only once every
                // address has had its turn, backing off only when none answered at all.
                switch end.reason as? ControlClientError {
                case .connect?:
                    if self.configuration.coordinators.count > 1, !self.addresses.unreachable(address) {
                        continue
                    }
                case .notLeader(_, let leader)?:
                    delay = self.configuration.reconnectInitialDelaySeconds
                    if !self.addresses.referred(to: leader, by: address) { continue }
                case .closed?, .refused?, .noLeader?, nil:
                    break
                }
                self.logger.warning(
                    "control session ended; reconnecting",
                    metadata: [LogKey.reason: "\(end.reason)", "retry_in_seconds": "\(delay)"]
                )
                let jittered = delay * Double.random(in: 0.8...1.2)
                try await Task.sleep(for: .milliseconds(Int(jittered * 1000)))
                delay = min(delay * 2, self.configuration.reconnectMaximumDelaySeconds)
            }
        } onGracefulShutdown: {
            self.leaving.withLock { $0 = true }
            let grace = Duration.milliseconds(Int(self.configuration.gracePeriodSeconds * 1000))
            self.leaveReady.withLock { $0.deadline = .now + grace }
            self.logger.notice(
                "shutting down: finishing the step in flight, leaving the job, then stopping",
                metadata: ["grace_seconds": "\(self.configuration.gracePeriodSeconds)"]
            )
            self.stopTraining(reason: "the agent is shutting down", grace: grace) { [self] in
                self.leaveReady.withLock { $0.ready = true }
            }
        }
    }

    /// Whether graceful shutdown has begun.
    var isLeaving: Bool { self.leaving.withLock { $0 } }

    /// Stops training at the next step boundary (abandoning the step in flight after `grace`); the
    /// trainer queues a leave for the job held (after the last step report, through the same
    /// outbox), then `then` is called.
    func stopTraining(reason: String, grace: Duration?, then: @escaping @Sendable () -> Void) {
        if let trainer = self.trainer.withLock({ $0 }) {
            trainer.stopAtStepBoundary(reason: reason, grace: grace, then: then)
        } else {
            then()
        }
    }

    func postLeave(job: String, generation: UInt64, reason: String) {
        self.outbox.post(Leave(job: job, generation: generation, reason: reason))
    }

    /// The data-plane addresses announced in hello: the configured ones, or the listener's.
    var announcedDataPlaneAddresses: [String] {
        if !self.configuration.dataPlaneAddresses.isEmpty { return self.configuration.dataPlaneAddresses }
        return self.dataPlane.withLock { $0 }.map { [$0.address] } ?? []
    }

    /// How a session ended.
    struct SessionEnd: Sendable {
        /// Whether the session got as far as the coordinator's hello reply.
        var connected: Bool
        /// Credentials renewed during the session, if any.
        var credentials: Credentials?
        /// Why it ended.
        var reason: any Error
    }

    /// State a session shares between its reader, its heartbeat loop and the loop that runs it.
    final class SessionProgress: Sendable {
        struct State {
            var connected = false
            var credentials: Credentials?
            var lastAck = ContinuousClock.now
            var assignment: Assignment?
            var pendingRenewal: KeyAndRequest?
        }

        let state = Mutex(State())
    }

    /// One mutual-TLS session: hello; then a reader that handles what the coordinator sends
    /// (assignments, aborts, drains, heartbeat acks, renewals) beside a loop that heartbeats each
    /// interval (and asks for a new certificate two thirds through the current one's life). Ends
    /// when the connection does, or when the coordinator is silent for a lease.
    func session(credentials: Credentials, at address: ControlAddress) async -> SessionEnd {
        let client = ControlClient(address: address, credentials: credentials)
        let progress = SessionProgress()
        do {
            try await client.withConnection { session in
                var hello = Envelope()
                hello.agentHello = .with {
                    $0.agentVersion = RingmasterVersion.current
                    $0.gpus = self.configuration.gpus
                    $0.dataPlaneAddresses = self.announcedDataPlaneAddresses
                    $0.rdmaPorts = (self.dataPlane.withLock { $0 }?.rdmaPorts ?? []).map(Ringmaster_V1_RdmaPort.init)
                    $0.stepsAhead = self.trainer.withLock { $0 }?.stepsAhead ?? 0
                }
                let reply = try await session.request(hello)
                guard case .helloReply(let helloReply) = reply.body else {
                    throw AgentError(.protocolViolation, "expected a hello reply, got \(reply.kind)")
                }
                progress.state.withLock {
                    $0.connected = true
                    $0.lastAck = .now
                }
                self.logger.info("connected to the coordinator", metadata: [LogKey.node: "\(helloReply.nodeID)"])
                let interval = Duration.milliseconds(max(Int(helloReply.heartbeatIntervalMs), 10))
                let lease = Duration.milliseconds(max(Int(helloReply.leaseMs), 100))
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await self.read(session, progress: progress, credentials: credentials) }
                    group.addTask {
                        try await self.heartbeat(
                            session, progress: progress, credentials: credentials, interval: interval, lease: lease)
                    }
                    group.addTask { try await self.forward(session) }
                    // Either ending ends the session.
                    _ = try await group.next()
                    group.cancelAll()
                }
            }
            return self.end(
                progress,
                reason: ControlClientError.closed(peer: "\(address)", waitingFor: "the next message"))
        } catch {
            return self.end(progress, reason: error)
        }
    }

    func end(_ progress: SessionProgress, reason: any Error) -> SessionEnd {
        progress.state.withLock { SessionEnd(connected: $0.connected, credentials: $0.credentials, reason: reason) }
    }

    /// Handles everything the coordinator sends until the connection ends.
    func read(_ session: ControlSession, progress: SessionProgress, credentials: Credentials) async throws {
        while true {
            let envelope = try await session.next()
            switch envelope.body {
            case .heartbeatAck:
                progress.state.withLock { $0.lastAck = .now }
            case .assignment(let wire):
                let assignment: Assignment
                do {
                    assignment = try Assignment(wire: wire)
                } catch {
                    self.logger.error("refused an assignment", metadata: [LogKey.reason: "\(error)"])
                    continue
                }
                progress.state.withLock { $0.assignment = assignment }
                if let trainer = self.trainer.withLock({ $0 }) {
                    trainer.assign(assignment)
                } else {
                    self.logger.warning(
                        "assigned to a job, but this agent has no data plane (--data-plane-listen); it cannot train")
                }
                self.logger.info(
                    "holding an assignment",
                    metadata: [
                        LogKey.job: "\(assignment.job)", LogKey.generation: "\(assignment.generation)",
                        LogKey.rank: "\(assignment.rank)", "world_size": "\(assignment.worldSize)",
                        "resume_step": "\(assignment.resumeStep)",
                    ]
                )
            case .cursorUpdate(let update):
                self.trainer.withLock { $0 }?.cursorMoved(
                    job: update.jobID, generation: update.generation, cursor: update.cursor)
            case .abort(let abort):
                let dropped = progress.state.withLock { state -> Bool in
                    guard state.assignment?.job == abort.jobID, state.assignment?.generation == abort.generation
                    else { return false }
                    state.assignment = nil
                    return true
                }
                self.trainer.withLock { $0 }?.abort(
                    job: abort.jobID, generation: abort.generation, reason: abort.reason)
                if dropped {
                    self.logger.info(
                        "aborted a generation",
                        metadata: [
                            LogKey.job: "\(abort.jobID)", LogKey.generation: "\(abort.generation)",
                            LogKey.reason: "\(abort.reason)",
                        ]
                    )
                }
            case .drain(let drain):
                self.logger.notice(
                    "drained by the coordinator; leaving the job after the step in flight",
                    metadata: [LogKey.job: "\(drain.jobID)", "grace_seconds": "\(drain.graceSeconds)"]
                )
                if self.trainer.withLock({ $0 }) == nil {
                    self.postLeave(job: drain.jobID, generation: drain.generation, reason: "drained")
                } else {
                    // Past the grace period the step in flight is abandoned, and the leave follows.
                    let grace = drain.graceSeconds > 0 ? Duration.seconds(Int(drain.graceSeconds)) : nil
                    self.stopTraining(reason: "drained", grace: grace) {}
                }
            case .renewReply(let renewal):
                guard let pending = progress.state.withLock({ $0.pendingRenewal }) else { continue }
                let renewed = try Credentials(
                    privateKey: pending.privateKey,
                    certificate: try Certificate(derEncoded: Array(renewal.certificateDer)),
                    caCertificate: credentials.caCertificate
                )
                try renewed.save(directory: self.configuration.dataDirectory)
                progress.state.withLock {
                    $0.credentials = renewed
                    $0.pendingRenewal = nil
                }
                self.logger.info(
                    "renewed the agent certificate",
                    metadata: ["certificate_not_after": "\(renewed.certificate.notValidAfter)"]
                )
            case .error(let error):
                self.logger.warning("the coordinator reported an error", metadata: [LogKey.reason: "\(error.message)"])
            default:
                self.logger.warning("ignored an unexpected message", metadata: [LogKey.message: "\(envelope.kind)"])
            }
        }
    }

    /// Sends what the outbox holds (step reports, leaves), in order. After sending a leave while
    /// shutting down, ends the session.
    func forward(_ session: ControlSession) async throws {
        while !Task.isCancelled {
            let envelopes = await self.outbox.take()
            for (index, envelope) in envelopes.enumerated() {
                do {
                    try await session.send(envelope)
                } catch {
                    self.outbox.putBack(Array(envelopes[index...]))
                    throw error
                }
                if case .leave(let leave) = envelope.body {
                    self.logger.notice(
                        "left the job",
                        metadata: [
                            LogKey.job: "\(leave.jobID)", LogKey.generation: "\(leave.generation)",
                            LogKey.reason: "\(leave.reason)",
                        ])
                    if self.isLeaving {
                        self.outbox.putBack(Array(envelopes[(index + 1)...]))
                        throw AgentError(.leaving, "the agent is shutting down")
                    }
                }
            }
        }
    }

    /// Heartbeats every `interval`; asks for renewal when due; gives up when no ack came for a lease.
    func heartbeat(
        _ session: ControlSession,
        progress: SessionProgress,
        credentials: Credentials,
        interval: Duration,
        lease: Duration
    ) async throws {
        while true {
            let (lastAck, held, current, renewing) = progress.state.withLock {
                ($0.lastAck, $0.assignment, $0.credentials ?? credentials, $0.pendingRenewal != nil)
            }
            if self.isLeaving {
                // The leave goes out through the outbox once the trainer stopped at a step
                // boundary (`forward` then ends the session); past the grace period the trainer
                // abandons the step in flight itself.
                let (ready, deadline) = self.leaveReady.withLock { ($0.ready, $0.deadline) }
                let late = deadline.map { ContinuousClock.now >= $0 } ?? false
                if self.trainer.withLock({ $0 }) == nil {
                    // Nothing trains here: leave the job held at once.
                    guard let held else { throw AgentError(.leaving, "the agent is shutting down") }
                    self.postLeave(job: held.job, generation: held.generation, reason: "the agent is shutting down")
                    progress.state.withLock { $0.assignment = nil }
                } else if ready && (held == nil || late) {
                    throw AgentError(.leaving, "the agent is shutting down")
                }
            }
            guard ContinuousClock.now - lastAck <= lease + interval else {
                throw AgentError(
                    .protocolViolation,
                    "the coordinator has not acknowledged a heartbeat for \(ContinuousClock.now - lastAck)")
            }
            if !renewing && current.renewalDue(now: self.now()) {
                let request = try KeyAndRequest.make(name: self.configuration.nodeName)
                progress.state.withLock { $0.pendingRenewal = request }
                var renew = Envelope()
                renew.renewRequest = .with { $0.csrDer = Data(request.csrDER) }
                try await session.send(renew)
            }
            var heartbeat = Envelope()
            heartbeat.heartbeat = .with {
                $0.jobID = held?.job ?? ""
                $0.generation = held?.generation ?? 0
            }
            try await session.send(heartbeat)
            try await Task.sleep(for: interval)
        }
    }
}

/// The version an agent announces.
public enum RingmasterVersion {
    /// This build's version.
    public static let current = "0.1.0"
}

/// An error from the agent.
public struct AgentError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Code: String, Sendable, Hashable {
        /// The agent has no certificate and no token to join with.
        case notJoined
        /// The coordinator sent something out of order.
        case protocolViolation
        /// The stored certificate expired and no token was given to join again.
        case certificateExpired
        /// The agent is shutting down.
        case leaving
        /// The agent's settings name something this host does not have.
        case configuration
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text.
    public var message: String

    /// Makes an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}
