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
    /// failure to save it. A command is acknowledged only once what it changed is durable: it is
    /// applied to a copy of the machine, the records it changed are written in one fsynced
    /// transaction, and only then does the copy replace the machine. When the write fails (a full
    /// disk), the machine is left as the disk has it and nothing is pushed or acknowledged.
    func command(_ command: CoordinatorMachine.Command, logger: Logger) throws {
        try self.engine.withLock { engine in
            var machine = engine.machine
            let actions = try machine.apply(command, now: self.elapsed)
            let jobs = Self.persisted(actions)
            do {
                try self.store.save(jobs: jobs.compactMap { machine.record(job: $0) }, durable: true)
            } catch {
                logger.error(
                    "could not save an operator's command; it was not carried out", metadata: [LogKey.error: "\(error)"]
                )
                throw error
            }
            engine.machine = machine
            for job in jobs { self.markSaved(job, .record, engine: &engine, logger: logger) }
            self.perform(actions, engine: &engine, logger: logger, recordsSaved: true)
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

    /// A job's record (or progress) was written: if that was what could not be saved, say it is
    /// saved again. (Only the same kind of write clears it: near a full disk a small record may fit
    /// where the progress beside it does not, and the log must not flip at every step.)
    func markSaved(_ job: String, _ kind: JobProgress.Write, engine: inout Engine, logger: Logger) {
        guard engine.progress[job]?.notSaved?.kind == kind else { return }
        engine.progress[job]?.notSaved = nil
        logger.notice("the job's state is being saved again", metadata: [LogKey.job: "\(job)"])
    }

    /// A write of a job's record (or progress) failed: the job goes on, and says (in `job status`
    /// and, once, in the log) that what it does now is lost to a restart.
    func markNotSaved(
        _ job: String, _ kind: JobProgress.Write, _ error: any Error, engine: inout Engine, logger: Logger
    ) {
        guard engine.progress[job]?.notSaved == nil else { return }
        let reason = (error as? CoordinatorError)?.message ?? "\(error)"
        engine.progress[job, default: JobProgress()].notSaved = (kind, self.now(), reason)
        logger.error(
            "the job's state is not being saved: it goes on, but its progress from now on is lost if the coordinator restarts",
            metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"]
        )
    }

    /// A member's step report: its training figures, then the step itself to the machine.
    func stepReported(_ report: Ringmaster_V1_StepReport, node: String, logger: Logger) {
        self.engine.withLock { engine in
            guard let record = engine.machine.record(job: report.jobID), record.generation == report.generation else {
                // The machine refuses (and counts) reports from another generation.
                let actions = engine.machine.on(
                    .stepCompleted(node: node, job: report.jobID, generation: report.generation, step: report.step),
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

    /// Saves the progress of `jobs` (see `JobProgress.Saved`), under the engine lock. A job's
    /// milestones (a generation, a checkpoint, a divergence, a test accuracy) are saved as they
    /// happen; the loss alone at most once a second, since encoding and writing it at every step
    /// cost the demo a fifth of its throughput. Jobs in `forcing` are saved regardless (a
    /// generation's start, a job's end).
    func saveProgress(of jobs: [String], forcing: Set<String> = [], engine: inout Engine, logger: Logger) {
        let now = ContinuousClock.now
        var encoded: [String: Data] = [:]
        for job in Set(jobs) {
            guard var progress = engine.progress[job] else { continue }
            let milestones = progress.milestones
            if !forcing.contains(job), progress.savedMilestones == milestones, let saved = progress.savedAt,
                now - saved < .seconds(1)
            {
                continue
            }
            do {
                encoded[job] = try progress.encoded()
            } catch {
                logger.error(
                    "could not encode a job's progress", metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"])
                continue
            }
            progress.savedMilestones = milestones
            progress.savedAt = now
            engine.progress[job] = progress
        }
        do {
            try self.store.save(progress: encoded)
            for job in encoded.keys { self.markSaved(job, .progress, engine: &engine, logger: logger) }
        } catch {
            for job in encoded.keys.sorted() {
                self.markNotSaved(job, .progress, error, engine: &engine, logger: logger)
            }
        }
    }

    /// Carries out actions. Runs under the engine lock: nothing here may block for long.
    ///
    /// Durable records are written first, before any push or log line of the same event: what an
    /// agent has been told (a generation, a cursor) is on disk before it can hear it, so a crash
    /// never makes a restarted coordinator reissue a generation number or move a cursor back.
    /// (`recordsSaved`: the caller wrote them, as `command` does.) An event has happened whether or
    /// not it can be saved, so a failed write does not stop the job: the job is marked as not
    /// being saved (`markNotSaved`) until a write of it succeeds again.
    func perform(
        _ actions: [CoordinatorMachine.Action], engine: inout Engine, logger: Logger, recordsSaved: Bool = false
    ) {
        if !recordsSaved {
            // A step commit alone is written without an fsync (it happens hundreds of times a
            // second); anything else that changes a job (a generation, a phase) is fsynced.
            let cursorOnly = actions.allSatisfy {
                switch $0 {
                case .stepCommitted, .persist, .replicasAgree, .replicasDiverged, .commitCheckpoint, .shardFailed,
                    .shardRefused, .staleRefused:
                    return true
                case .assign, .abort, .drain, .generationStarted, .jobWaiting, .jobFinished, .jobFailed, .leaseExpired:
                    return false
                }
            }
            let jobs = Self.persisted(actions)
            do {
                try self.store.save(jobs: jobs.compactMap { engine.machine.record(job: $0) }, durable: !cursorOnly)
                for job in jobs { self.markSaved(job, .record, engine: &engine, logger: logger) }
            } catch {
                for job in jobs { self.markNotSaved(job, .record, error, engine: &engine, logger: logger) }
            }
        }
        var cursors: [String: (generation: UInt64, cursor: UInt64)] = [:]
        // Saved after the loop, so that it includes what these actions change (a generation
        // started, a step's loss).
        // (A generation's start is saved in its case below, before it is logged.)
        defer {
            var touched: [String] = []
            var finished: Set<String> = []
            for action in actions {
                switch action {
                case .persist(let job), .stepCommitted(let job, _, _), .replicasAgree(let job, _, _),
                    .replicasDiverged(let job, _, _, _), .shardFailed(_, let job, _, _):
                    touched.append(job)
                case .jobFinished(let job), .jobFailed(let job, _):
                    touched.append(job)
                    finished.insert(job)
                case .assign, .abort, .drain, .generationStarted, .jobWaiting, .staleRefused, .leaseExpired,
                    .commitCheckpoint, .shardRefused:
                    break
                }
            }
            self.saveProgress(of: touched, forcing: finished, engine: &engine, logger: logger)
        }
        for action in actions {
            switch action {
            case .assign(let node, let assignment):
                if let envelope = self.envelope(assigning: assignment, to: node) {
                    engine.sessions[node]?.channel.writeAndFlush(envelope, promise: nil)
                }
            case .abort(let node, let job, let generation, let reason):
                var envelope = Envelope()
                envelope.abort = .with {
                    $0.jobID = job
                    $0.generation = generation
                    $0.reason = reason
                }
                engine.sessions[node]?.channel.writeAndFlush(envelope, promise: nil)
            case .drain(let node, let job, let generation, let grace):
                var envelope = Envelope()
                envelope.drain = .with {
                    $0.jobID = job
                    $0.generation = generation
                    $0.graceSeconds = grace
                }
                engine.sessions[node]?.channel.writeAndFlush(envelope, promise: nil)
            case .generationStarted(let job, let generation, let cause, let members, let rendezvous):
                self.metrics.generationsStarted.increment()
                engine.progress[job, default: JobProgress()].pendingLoss = [:]
                engine.progress[job, default: JobProgress()].history.append(
                    .with {
                        $0.generation = generation
                        $0.cause = cause.rawValue
                        $0.worldSize = UInt32(members.count)
                        $0.resumeStep = engine.machine.record(job: job)?.cursor ?? 0
                        $0.startedUnixMs = Int64((self.now().timeIntervalSince1970 * 1000).rounded())
                    }
                )
                // Saved before it is logged, so that whoever sees the log line finds it saved.
                self.saveProgress(of: [job], forcing: [job], engine: &engine, logger: logger)
                if let rendezvous {
                    self.metrics.rendezvousSeconds.record(
                        Double(rendezvous.components.seconds) + Double(rendezvous.components.attoseconds) / 1e18)
                }
                logger.info(
                    "generation started",
                    metadata: [
                        LogKey.job: "\(job)", LogKey.generation: "\(generation)", "cause": "\(cause.rawValue)",
                        "world_size": "\(members.count)", "members": "\(members.joined(separator: ","))",
                    ]
                )
            case .jobWaiting(let job, let reason):
                logger.warning("job waits for nodes", metadata: [LogKey.job: "\(job)", LogKey.reason: "\(reason)"])
            case .jobFinished(let job):
                logger.info("job finished", metadata: [LogKey.job: "\(job)"])
            case .jobFailed(let job, let reason):
                logger.error("job failed", metadata: [LogKey.job: "\(job)", LogKey.reason: "\(reason)"])
            case .stepCommitted(let job, let generation, let step):
                self.metrics.stepsCommitted.increment()
                cursors[job] = (generation, step + 1)
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
            case .persist:
                continue  // written above, before anything else
            case .replicasAgree(let job, let step, let hash):
                engine.progress[job, default: JobProgress()].lastHash = (
                    step, withUnsafeBytes(of: hash.bigEndian) { Data($0) }
                )
            case .replicasDiverged(let job, let generation, let step, let hashes):
                engine.progress[job, default: JobProgress()].divergences += 1
                self.metrics.divergences.increment()
                logger.error(
                    "replicas diverged: members report different parameters for the same step",
                    metadata: [
                        LogKey.job: "\(job)", LogKey.generation: "\(generation)", "step": "\(step)",
                        "hashes":
                            "\(hashes.sorted { $0.key < $1.key }.map { "\($0.key)=\(String(format: "%016llx", $0.value).prefix(8))" }.joined(separator: ","))",
                    ]
                )
            case .commitCheckpoint(let commit):
                self.commitCheckpoint(commit, logger: logger)
            case .shardFailed(let node, let job, let step, let reason):
                engine.progress[job, default: JobProgress()].checkpointFailures += 1
                engine.progress[job, default: JobProgress()].lastCheckpointError = "step \(step), \(node): \(reason)"
                self.metrics.checkpointFailures.increment()
                logger.error(
                    "a checkpoint shard could not be saved; the previous checkpoint stays the latest",
                    metadata: [
                        LogKey.job: "\(job)", "step": "\(step)", LogKey.node: "\(node)", LogKey.reason: "\(reason)",
                    ]
                )
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
        // The members' flow control: one update per job, with the newest cursor.
        for (job, moved) in cursors {
            guard let record = engine.machine.record(job: job), record.generation == moved.generation else { continue }
            var envelope = Envelope()
            envelope.cursorUpdate = .with {
                $0.jobID = job
                $0.generation = moved.generation
                $0.cursor = moved.cursor
            }
            for member in record.members {
                engine.sessions[member]?.channel.writeAndFlush(envelope, promise: nil)
            }
        }
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
            rdmaDevices: hello.rdmaDevices
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

    func envelope(assigning assignment: CoordinatorMachine.Assignment, to node: String) -> Envelope? {
        let secret = self.dataPlaneSecret(job: assignment.job, generation: assignment.generation)
        guard let member = assignment.assignment(for: node, dataPlaneSecret: secret) else { return nil }
        var envelope = Envelope()
        envelope.assignment = Ringmaster_V1_Assignment(member)
        return envelope
    }

    // MARK: - Status

    func jobStatus(_ job: String?) throws -> Ringmaster_V1_JobStatusReply {
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
                        if let notSaved = training.notSaved {
                            $0.notSaved = "since \(notSaved.since): \(notSaved.reason)"
                        }
                    }
                    $0.refusals = record.refusals.keys.sorted().map { node in
                        .with {
                            $0.nodeID = node
                            $0.reason = record.refusals[node] ?? ""
                        }
                    }
                    $0.failure = record.failure ?? ""
                }
            }
        }
    }

    func nodeList() throws -> Ringmaster_V1_NodeListReply {
        let admitted = try self.store.nodes()
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
