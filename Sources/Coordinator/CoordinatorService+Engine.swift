import ControlPlane
import CoordinatorCore
import Crypto
import Foundation
import JobModel
import Logging
import NIOCore
import RingmasterSecurity
import RingmasterWire
import X509

// MARK: - Feeding the machine

extension CoordinatorService {
    /// Feeds an event to the machine and carries out its actions, under the engine lock.
    func feed(_ event: CoordinatorMachine.Event, logger: Logger) {
        self.engine.withLock { engine in
            let actions = engine.machine.on(event, now: self.elapsed)
            self.perform(actions, engine: &engine, logger: logger)
        }
    }

    /// Applies an operator's command and carries out its actions; throws its refusal, or the
    /// failure to save it. A command is acknowledged only once what it changed is durable, and no
    /// write is waited for under the engine lock: a store that is slow to answer (an etcd without a
    /// quorum takes its 3 s timeout) must not hold up every node's heartbeats, step reports and
    /// reads behind an operator's `job resize`. Commands run one at a time, on a thread of their
    /// own (the waits block), in two turns:
    ///
    /// 1. Under the lock, the command is applied to a copy of the machine and the records it
    ///    changed are queued for the writer, behind what is queued. Off the lock, the command
    ///    waits for them to be fsynced. When that write fails (a full disk) nothing has changed:
    ///    the machine never saw the command, and the error says why.
    /// 2. Under the lock again, the command is applied to the machine as events left it meanwhile
    ///    and carried out as an event's actions are: its records queued, then its pushes. Off the
    ///    lock, it waits for those records too, and only then is it acknowledged.
    ///
    /// Whatever an event changed in between was queued after the first turn's records and pushed
    /// only once written, so the disk never holds less than agents were told; and once the second
    /// turn's records are written, the disk holds the command on the machine as it is.
    func command(_ command: CoordinatorMachine.Command, logger: Logger) async throws {
        try await onOwnThread(named: "ringmaster-command") {
            try self.commandTurns.withLock { _ in try self.carryOut(command, logger: logger) }
        }
    }

    /// The two turns of `command`, on its own thread.
    private func carryOut(_ command: CoordinatorMachine.Command, logger: Logger) throws {
        let (first, jobs) = try self.engine.withLock { engine in
            var machine = engine.machine
            let jobs = Self.persisted(try machine.apply(command, now: self.elapsed))
            return (self.writer.queue(records: jobs.compactMap { machine.record(job: $0) }), jobs)
        }
        do {
            try first.wait()
        } catch {
            logger.error(
                "could not save an operator's command; it was not carried out", metadata: [LogKey.error: "\(error)"])
            throw error
        }
        let second = StateWriter.Waiting()
        try self.engine.withLock { engine in
            do {
                let actions = try engine.machine.apply(command, now: self.elapsed)
                self.perform(actions, engine: &engine, logger: logger, waiting: second)
            } catch {
                // Refused now, though accepted by the copy: what the copy changed is on disk, so
                // the machine's own records of those jobs are written over it. (Only an event in
                // between can refuse it, a job ended say, and an event that changed a job also
                // rewrote its record; this covers what did not.)
                var batch = StateWriter.Batch()
                batch.records = jobs.compactMap { engine.machine.record(job: $0) }
                batch.durable = true
                self.writer.submit(batch)
                throw error
            }
        }
        do {
            try second.wait()
        } catch {
            logger.error(
                "an operator's command was carried out, but could not be saved",
                metadata: [LogKey.error: "\(error)"])
            throw CoordinatorError(
                .stateStore,
                "the command was carried out, but its state could not be saved, so a restart of the coordinator may undo it: \((error as? CoordinatorError)?.message ?? "\(error)")"
            )
        }
    }

    /// The jobs whose records `actions` ask to write, each once, in order.
    static func persisted(_ actions: [CoordinatorMachine.Action]) -> [String] {
        var seen: Set<String> = []
        return actions.compactMap { action in
            guard case .persist(let job) = action, seen.insert(job).inserted else { return nil }
            return job
        }
    }

    /// A member's step report: its training figures, then the step itself to the machine.
    func stepReported(_ report: Ringmaster_V1_StepReport, node: String, logger: Logger) {
        self.engine.withLock { engine in
            if report.hasResumedAt {
                let actions = engine.machine.on(
                    .resumed(node: node, job: report.jobID, generation: report.generation, step: report.resumedAt),
                    now: self.elapsed)
                self.perform(actions, engine: &engine, logger: logger)
                return
            }
            guard let record = engine.machine.record(job: report.jobID), record.generation == report.generation else {
                // The machine refuses (and counts) reports from another generation, keeping their
                // sample ids for the steps a later generation may roll forward.
                let actions = engine.machine.on(
                    .stepCompleted(
                        node: node, job: report.jobID, generation: report.generation, step: report.step,
                        samples: report.sampleIds.map { Int($0) }),
                    now: self.elapsed
                )
                self.perform(actions, engine: &engine, logger: logger)
                return
            }
            var progress = engine.progress[report.jobID, default: JobProgress()]
            progress.pendingLoss[report.step] = report.loss
            if report.hasTestAccuracy { progress.testAccuracy = report.testAccuracy }
            engine.progress[report.jobID] = progress
            let actions = engine.machine.on(
                .stepCompleted(
                    node: node,
                    job: report.jobID,
                    generation: report.generation,
                    step: report.step,
                    samples: report.sampleIds.map { Int($0) },
                    // Agents send the 64-bit hash big-endian; shorter ones compare as numbers too.
                    parameterHash: (1...8).contains(report.parameterHash.count)
                        ? report.parameterHash.reduce(0) { $0 << 8 | UInt64($1) } : nil
                ),
                now: self.elapsed
            )
            self.perform(actions, engine: &engine, logger: logger)
        }
    }

    /// Ticks the machine until cancelled, so that leases, settle windows and recovery windows
    /// end on time.
    func tickUntilCancelled() async throws {
        let interval = Duration.milliseconds(Int(self.configuration.tickMilliseconds))
        while !Task.isCancelled {
            try await Task.sleep(for: interval)
            self.feed(.tick, logger: self.logger)
        }
    }

    /// The progress of `jobs` due to be saved now (see `JobProgress.Saved`), under the engine
    /// lock; the writer encodes and writes it. A job's milestones (a generation, a checkpoint, a
    /// divergence, a test accuracy) are saved as they happen; the loss alone at most once a second,
    /// since writing it at every step cost the demo a fifth of its throughput. Jobs in `forcing`
    /// are saved regardless (a generation's start, a job's end).
    func progressDue(of jobs: [String], forcing: Set<String> = [], engine: inout Engine)
        -> [String: JobProgress]
    {
        let now = ContinuousClock.now
        var due: [String: JobProgress] = [:]
        for job in Set(jobs) {
            guard var progress = engine.progress[job] else { continue }
            let milestones = progress.milestones
            if !forcing.contains(job), progress.savedMilestones == milestones, let saved = progress.savedAt,
                now - saved < .seconds(1)
            {
                continue
            }
            progress.savedMilestones = milestones
            progress.savedAt = now
            engine.progress[job] = progress
            due[job] = progress
        }
        return due
    }

    /// Carries out actions. Runs under the engine lock: nothing here may block for long.
    ///
    /// What the actions change is written by the writer, in event order (`StateWriter`): durable
    /// records first, then progress, then manifests, and only then are the pushes and log lines of
    /// the same event carried out. What an agent has been told (a generation, a cursor) is on disk
    /// before it can hear it, so a crash never makes a restarted coordinator reissue a generation
    /// number or move a cursor back. An event has happened whether or not it can be saved, so a
    /// failed write does not stop the job: the job is marked as not being saved until a write of it
    /// succeeds again. (`waiting`: told once the batch is carried out, as `command` asks.)
    func perform(
        _ actions: [CoordinatorMachine.Action], engine: inout Engine, logger: Logger,
        waiting: StateWriter.Waiting? = nil
    ) {
        var batch = StateWriter.Batch()
        batch.records = Self.persisted(actions).compactMap { engine.machine.record(job: $0) }
        // A step commit alone is written without an fsync (it happens hundreds of times a
        // second); anything else that changes a job (a generation, a phase) is fsynced, and so is
        // what a command waits for, which it acknowledges as durable.
        batch.durable =
            waiting != nil
            || !actions.allSatisfy {
                switch $0 {
                case .stepCommitted, .announceCursor, .persist, .replicasAgree, .replicasDiverged, .commitCheckpoint,
                    .shardFailed, .shardRefused, .staleRefused:
                    return true
                case .assign, .abort, .drain, .generationStarted, .jobWaiting, .jobFinished, .jobFailed, .leaseExpired,
                    .stepsRolledForward:
                    return false
                }
            }
        // The progress the actions touched, saved once they have all changed it (a generation
        // started, a step's loss); a generation's start and a job's end are saved regardless.
        var touched: [String] = []
        var forcing: Set<String> = []
        // Each generation's assignments, serialized once for all its members.
        var frames: [String: GenerationFrames] = [:]
        for action in actions {
            switch action {
            case .assign(let node, let assignment):
                if frames[assignment.job]?.generation != assignment.generation {
                    frames[assignment.job] = self.frames(of: assignment, logger: logger)
                }
                if let generation = frames[assignment.job], let rank = generation.ranks[node],
                    let frame = generation.frames?.frame(rank: UInt32(rank))
                {
                    batch.push(frame: frame, to: engine.sessions[node])
                }
            case .abort(let node, let job, let generation, let reason):
                var envelope = Envelope()
                envelope.abort = .with {
                    $0.jobID = job
                    $0.generation = generation
                    $0.reason = reason
                }
                batch.push(envelope, to: engine.sessions[node])
            case .drain(let node, let job, let generation, let grace):
                var envelope = Envelope()
                envelope.drain = .with {
                    $0.jobID = job
                    $0.generation = generation
                    $0.graceSeconds = grace
                }
                batch.push(envelope, to: engine.sessions[node])
            case .generationStarted(let job, let generation, let cause, let members, let transport, let rendezvous):
                self.metrics.generationsStarted.increment()
                engine.progress[job, default: JobProgress()].pendingLoss = [:]
                engine.progress[job, default: JobProgress()].history.append(
                    .with {
                        $0.generation = generation
                        $0.cause = cause.rawValue
                        $0.worldSize = UInt32(members.count)
                        $0.resumeStep = engine.machine.record(job: job)?.cursor ?? 0
                        $0.startedUnixMs = Int64((self.now().timeIntervalSince1970 * 1000).rounded())
                        $0.transport = transport.transport.rawValue
                        $0.transportReason = transport.reason
                    }
                )
                // Saved before it is logged, so that whoever sees the log line finds it saved.
                touched.append(job)
                forcing.insert(job)
                if let rendezvous {
                    self.metrics.rendezvousSeconds.record(
                        Double(rendezvous.components.seconds) + Double(rendezvous.components.attoseconds) / 1e18)
                }
                let fellBack =
                    transport.transport == .tcp && engine.machine.record(job: job)?.spec.transport != .tcp
                batch.then {
                    logger.info(
                        "generation started",
                        metadata: [
                            LogKey.job: "\(job)", LogKey.generation: "\(generation)", "cause": "\(cause.rawValue)",
                            "world_size": "\(members.count)", "members": "\(members.joined(separator: ","))",
                            "transport": "\(transport.transport.rawValue)",
                        ]
                    )
                    if fellBack {
                        logger.warning(
                            "data plane falls back to TCP",
                            metadata: [
                                LogKey.job: "\(job)", LogKey.generation: "\(generation)",
                                LogKey.reason: "\(transport.reason)",
                            ])
                    }
                }
            case .jobWaiting(let job, let reason):
                batch.then {
                    logger.warning("job waits for nodes", metadata: [LogKey.job: "\(job)", LogKey.reason: "\(reason)"])
                }
            case .jobFinished(let job):
                touched.append(job)
                forcing.insert(job)
                batch.then { logger.info("job finished", metadata: [LogKey.job: "\(job)"]) }
            case .jobFailed(let job, let reason):
                touched.append(job)
                forcing.insert(job)
                batch.then {
                    logger.error("job failed", metadata: [LogKey.job: "\(job)", LogKey.reason: "\(reason)"])
                }
            case .stepCommitted(let job, let generation, let step):
                self.metrics.stepsCommitted.increment()
                touched.append(job)
                if var progress = engine.progress[job] {
                    if let loss = progress.pendingLoss.removeValue(forKey: step) { progress.loss = loss }
                    if let last = progress.history.indices.last, progress.history[last].generation == generation,
                        progress.history[last].firstStepUnixMs == 0
                    {
                        progress.history[last].firstStepUnixMs = Int64(
                            (self.now().timeIntervalSince1970 * 1000).rounded())
                    }
                    engine.progress[job] = progress
                }
            case .stepsRolledForward(let job, let generation, let from, let to, let inferred):
                self.metrics.stepsCommitted.increment(by: Int64(to - from))
                touched.append(job)
                if var progress = engine.progress[job] {
                    if let last = progress.history.indices.last, progress.history[last].generation == generation {
                        progress.history[last].resumeStep = to
                    }
                    engine.progress[job] = progress
                }
                batch.then {
                    logger.info(
                        "generation resumed past the cursor",
                        metadata: [
                            LogKey.job: "\(job)", LogKey.generation: "\(generation)", "cursor": "\(from)",
                            "resume_step": "\(to)", "sample_ids_inferred": "\(inferred)",
                        ])
                }
            case .announceCursor(let job, let generation, let cursor):
                // The members' flow control.
                guard let record = engine.machine.record(job: job), record.generation == generation else { break }
                var envelope = Envelope()
                envelope.cursorUpdate = .with {
                    $0.jobID = job
                    $0.generation = generation
                    $0.cursor = cursor
                }
                for member in record.members { batch.push(envelope, to: engine.sessions[member]) }
            case .staleRefused(let node, let job, let generation, let current):
                // Counted, and logged at debug only: reports in flight when a generation ends
                // are refused by the dozen at every change.
                self.metrics.staleRefused.increment()
                logger.debug(
                    "refused a message from an older generation",
                    metadata: [
                        LogKey.node: "\(node)", LogKey.job: "\(job)", LogKey.generation: "\(generation)",
                        "current": "\(current)",
                    ]
                )
            case .leaseExpired(let node):
                self.metrics.leaseExpiries.increment()
                logger.warning("lease expired", metadata: [LogKey.node: "\(node)"])
                // Close its connection: if it is alive it reconnects and says hello anew.
                engine.sessions.removeValue(forKey: node)?.channel.close(promise: nil)
            case .persist(let job):
                touched.append(job)  // the record itself is in the batch, written first
            case .replicasAgree(let job, let step, let hash):
                touched.append(job)
                engine.progress[job, default: JobProgress()].lastHash = (
                    step, withUnsafeBytes(of: hash.bigEndian) { Data($0) }
                )
            case .replicasDiverged(let job, let generation, let step, let hashes):
                touched.append(job)
                engine.progress[job, default: JobProgress()].divergences += 1
                self.metrics.divergences.increment()
                batch.then {
                    logger.error(
                        "replicas diverged: members report different parameters for the same step",
                        metadata: [
                            LogKey.job: "\(job)", LogKey.generation: "\(generation)", "step": "\(step)",
                            "hashes":
                                "\(hashes.sorted { $0.key < $1.key }.map { "\($0.key)=\(String(format: "%016llx", $0.value).prefix(8))" }.joined(separator: ","))",
                        ]
                    )
                }
            case .commitCheckpoint(let commit):
                if let root = commit.spec.checkpointDirectory, !commit.shards.isEmpty {
                    batch.manifests.append(
                        StateWriter.ManifestWrite(
                            manifest: self.manifest(commit), root: root, keep: commit.spec.checkpointKeep
                        ) { outcome in self.checkpointCommitted(outcome, logger: logger) })
                }
            case .shardFailed(let node, let job, let step, let reason):
                touched.append(job)
                engine.progress[job, default: JobProgress()].checkpointFailures += 1
                engine.progress[job, default: JobProgress()].lastCheckpointError = "step \(step), \(node): \(reason)"
                self.metrics.checkpointFailures.increment()
                batch.then {
                    logger.error(
                        "a checkpoint shard could not be saved; the previous checkpoint stays the latest",
                        metadata: [
                            LogKey.job: "\(job)", "step": "\(step)", LogKey.node: "\(node)", LogKey.reason: "\(reason)",
                        ]
                    )
                }
            case .shardRefused(let node, let job, let generation, let step):
                logger.notice(
                    "refused a checkpoint shard from another generation",
                    metadata: [
                        LogKey.job: "\(job)", LogKey.generation: "\(generation)", "step": "\(step)",
                        LogKey.node: "\(node)",
                    ]
                )
            }
        }
        batch.progress = self.progressDue(of: touched, forcing: forcing, engine: &engine)
        self.writer.submit(batch, waiting: waiting)
    }

    /// Brings the derived gauges (nodes by state) up to date; called when `/metrics` is scraped,
    /// not after every event, because counting is a pass over every node.
    func refreshGauges() {
        let counts = self.engine.withLock { $0.machine.nodeCounts }
        self.metrics.record(nodeCounts: counts)
        let (connections, unauthenticated) = self.connections.withLock { ($0.connections, $0.unauthenticated) }
        self.metrics.connections.record(connections)
        self.metrics.unauthenticatedConnections.record(unauthenticated)
    }

    // MARK: - Sessions

    /// An agent said hello: register its session (replacing an older one), answer, and tell the machine.
    func sessionStarted(
        _ hello: Ringmaster_V1_AgentHello,
        peer: (identity: PeerIdentity, certificate: Certificate),
        requestID: UInt64,
        context: ConnectionContext
    ) {
        let node = peer.identity.name
        var reply = Envelope()
        reply.requestID = requestID
        reply.helloReply = .with {
            $0.nodeID = node
            $0.heartbeatIntervalMs = self.configuration.heartbeatIntervalMilliseconds
            $0.leaseMs = self.configuration.leaseMilliseconds
            $0.certificateNotAfterUnix = Int64(peer.certificate.notValidAfter.timeIntervalSince1970)
        }
        context.logger.info(
            "agent session started",
            metadata: [LogKey.node: "\(node)", "data_plane": "\(hello.dataPlaneAddresses.joined(separator: ","))"]
        )
        let capabilities = CoordinatorMachine.Capabilities(
            gpus: hello.gpus,
            dataPlaneAddresses: hello.dataPlaneAddresses,
            rdmaPorts: hello.rdmaPorts.map(RDMAPort.init(wire:)),
            stepsAhead: hello.stepsAhead
        )
        self.engine.withLock { engine in
            if let old = engine.sessions[node], old.id != context.sessionID {
                old.channel.close(promise: nil)
            }
            engine.sessions[node] = Session(id: context.sessionID, channel: context.channel)
            // The reply goes first, through the same channel as the pushes that may follow.
            context.channel.writeAndFlush(reply, promise: nil)
            let actions = engine.machine.on(.nodeOnline(node: node, capabilities), now: self.elapsed)
            self.perform(actions, engine: &engine, logger: context.logger)
        }
    }

    /// An agent's connection ended: if it was the node's live session, the node is offline.
    func sessionEnded(node: String, context: ConnectionContext) {
        self.engine.withLock { engine in
            guard engine.sessions[node]?.id == context.sessionID else { return }
            engine.sessions[node] = nil
            context.logger.info("agent session ended", metadata: [LogKey.node: "\(node)"])
            let actions = engine.machine.on(.nodeOffline(node: node), now: self.elapsed)
            self.perform(actions, engine: &engine, logger: context.logger)
        }
    }

    // MARK: - Messages

    /// The data-plane secret of one generation: HMAC-SHA256 under the coordinator's data-plane key,
    /// so it is fresh per generation and needs no storage.
    func dataPlaneSecret(job: String, generation: UInt64) -> [UInt8] {
        var message = Array("ringmaster data plane v1".utf8)
        message += Array(job.utf8) + [0]
        withUnsafeBytes(of: generation.bigEndian) { message += $0 }
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: self.dataPlaneKey))
    }

    /// A generation's assignments as frames (nil when they cannot be encoded, which is logged),
    /// and each member's rank.
    struct GenerationFrames {
        var generation: UInt64
        var frames: AssignmentFrames?
        var ranks: [String: Int]
    }

    func frames(of assignment: CoordinatorMachine.Assignment, logger: Logger) -> GenerationFrames {
        let secret = self.dataPlaneSecret(job: assignment.job, generation: assignment.generation)
        var frames: AssignmentFrames?
        if let first = assignment.members.first?.node,
            let member = assignment.assignment(for: first, dataPlaneSecret: secret)
        {
            do {
                frames = try AssignmentFrames(
                    Ringmaster_V1_Assignment(member), maximumPayloadBytes: self.configuration.maximumFrameBytes)
            } catch {
                logger.error(
                    "could not encode a generation's assignment; its members are not told",
                    metadata: [
                        LogKey.job: "\(assignment.job)", LogKey.generation: "\(assignment.generation)",
                        LogKey.reason: "\(error)",
                    ])
            }
        }
        return GenerationFrames(
            generation: assignment.generation, frames: frames,
            ranks: Dictionary(assignment.members.map { ($0.node, $0.rank) }, uniquingKeysWith: { first, _ in first }))
    }

    // MARK: - Status

    func jobStatus(_ job: String?) async throws -> Ringmaster_V1_JobStatusReply {
        // What happened before the request is shown once it is written, as it is pushed. (The
        // wait blocks: off the threads that serve connections, like every wait on the store.)
        try await onOwnThread(named: "ringmaster-state-drain") { self.writer.drain() }
        let (records, progress) = self.engine.withLock { ($0.machine.records, $0.progress) }
        let selected = job.map { name in records.filter { $0.spec.name == name } } ?? records
        if let job, selected.isEmpty {
            throw CoordinatorMachine.CommandError(
                code: .unknownJob, message: "no job is named \(job); `ringmaster job status` lists the jobs")
        }
        return .with {
            $0.jobs = selected.map { record in
                .with {
                    $0.jobID = record.spec.name
                    $0.phase = record.phase.rawValue
                    $0.generation = record.generation
                    $0.members = record.members.enumerated().map { rank, node in
                        .with {
                            $0.nodeID = node
                            $0.rank = UInt32(rank)
                        }
                    }
                    $0.minNodes = UInt32(record.spec.minNodes)
                    $0.maxNodes = UInt32(record.spec.maxNodes)
                    $0.targetNodes = UInt32(record.targetNodes)
                    $0.cursorStep = record.cursor
                    $0.cursorEpoch = record.spec.order.epoch(ofStep: record.cursor)
                    $0.totalSteps = record.spec.steps
                    $0.generationsStarted = record.generationsStarted
                    $0.lastCause = record.lastCause?.rawValue ?? ""
                    if let resumed = record.resumedFrom { $0.resumedFromStep = resumed }
                    let samples = record.samples ?? SampleAccounting()
                    $0.samples = .with {
                        $0.seen = samples.seen
                        $0.repeated = samples.repeated
                        $0.skipped = samples.skipped(order: record.spec.order, cursor: record.cursor)
                    }
                    if let training = progress[record.spec.name] {
                        $0.loss = training.loss
                        if let accuracy = training.testAccuracy { $0.testAccuracy = accuracy }
                        if let hash = training.lastHash {
                            $0.parameterHash = hash.hash
                            $0.parameterHashStep = hash.step
                        }
                        $0.divergences = training.divergences
                        $0.history = training.history
                        $0.lastCheckpointStep = training.lastCheckpointStep
                        $0.checkpointFailures = training.checkpointFailures
                        $0.lastCheckpointError = training.lastCheckpointError
                    }
                    $0.refusals = record.refusals.keys.sorted().map { node in
                        .with {
                            $0.nodeID = node
                            $0.reason = record.refusals[node] ?? ""
                        }
                    }
                    $0.failure = record.failure ?? ""
                    $0.transport = record.spec.transport.rawValue
                    if let notSaved = self.writer.notSaved(record.spec.name) {
                        $0.notSaved = "since \(notSaved.since): \(notSaved.reason)"
                    }
                }
            }
        }
    }

    func nodeList() async throws -> Ringmaster_V1_NodeListReply {
        let admitted = try await self.stored { try $0.nodes() }
        let live = Dictionary(
            uniqueKeysWithValues: self.engine.withLock { $0.machine.nodeStatuses }.map { ($0.node, $0) })
        return .with {
            $0.nodes = admitted.map { node in
                let status = live[node.id]
                return .with {
                    $0.nodeID = node.id
                    $0.state = (status?.state ?? .offline).rawValue
                    $0.connected = status.map { $0.state != .offline } ?? false
                    $0.joinedUnix = Int64(node.joined.timeIntervalSince1970)
                    $0.certificateNotAfterUnix = Int64(node.certificateNotAfter.timeIntervalSince1970)
                    $0.dataPlaneAddresses = status?.dataPlaneAddresses ?? []
                    $0.jobID = status?.job ?? ""
                    $0.rank = UInt32(status?.rank ?? 0)
                }
            }
        }
    }
}

extension Data {
    /// The first 8 bytes in hex, for log lines.
    var hexPrefix: String { self.prefix(8).map { String(format: "%02x", $0) }.joined() }
}

extension StateWriter.Batch {
    /// Sends `envelope` to a session once the batch is written (nothing when it has none).
    mutating func push(_ envelope: Envelope, to session: CoordinatorService.Session?) {
        guard let channel = session?.channel else { return }
        self.then { channel.writeAndFlush(envelope, promise: nil) }
    }

    /// Sends a frame encoded already to a session once the batch is written.
    mutating func push(frame: ByteBuffer, to session: CoordinatorService.Session?) {
        guard let channel = session?.channel else { return }
        self.then { ControlPipeline.writeAndFlush(frame: frame, to: channel) }
    }
}
