import Checkpointing
import Collectives
import ControlPlane
import Foundation
import JobModel
import Logging
import RingmasterSecurity
import RingmasterWire
import Workload

/// The agent's step loop: for each generation it connects the data plane, agrees with its peers
/// on the training state at the resume step, then trains step after step, reporting each.
///
/// ## Elastic, in place
/// The trainer keeps copies of the whole training state (parameters and optimizer state) at the
/// last few step boundaries. A generation resumes at the coordinator's cursor, the first step not
/// completed by every member, which is never later than any survivor's own boundary. So on a
/// failure a survivor rolls back to the copy at the cursor, in memory, and nothing is read from
/// disk. At the start of each generation the members gather who holds that copy and the member
/// whose copy comes from the latest generation broadcasts it to all, so a newcomer starts from the
/// same state as the survivors and every replica is bit-identical afterwards.
///
/// ## One step
/// Each rank takes its slice of the global batch (`DataOrder`: the same samples at any world
/// size), sums the gradient over it, and hands each layer's bucket to a communication thread that
/// all-reduces it while backward goes on with the next layer. The global sums are scaled by
/// 1 / global batch, so the update does not depend on how many agents share the batch.
///
/// It runs on a thread of its own: the work blocks (compute, sockets), and never on the
/// cooperative pool that serves the control session.
final class Trainer: @unchecked Sendable {
    // Safe because every `var` below the mailbox mark is guarded by `condition`, and the job
    // state is touched only by the trainer thread.

    /// Settings of the step loop.
    struct Settings: Sendable {
        /// Longest wait for one collective (a dead peer fails it at once; a hung one is aborted
        /// by the coordinator when its lease expires).
        var collectiveTimeout: Duration = .seconds(60)
        /// Longest wait for the members of a generation to connect.
        var connectTimeout: Duration = .seconds(30)
        /// Memory for copies of the training state at recent step boundaries, kept for rolling
        /// back. The coordinator's cursor trails the agents by the time step reports take to
        /// arrive, a few steps when steps take milliseconds; between `minimumSnapshots` and
        /// `maximumSnapshots` copies are kept, as many as fit.
        var snapshotBudgetBytes = 512 << 20
        var minimumSnapshots = 4
        var maximumSnapshots = 64
        /// Steps between parameter hashes sent to the coordinator (and at the last step).
        var hashIntervalSteps: UInt64 = 50
        /// Where finished models are written.
        var modelDirectory: String
    }

    /// A request to stop at the next step boundary, then run `then`.
    struct StopRequest {
        var reason: String
        var then: @Sendable (_ held: Ringmaster_V1_Assignment?) -> Void
    }

    let settings: Settings
    let dataPlane: DataPlane
    let outbox: Outbox
    let logger: Logger

    // MARK: Mailbox (guarded by `condition`)
    let condition = NSCondition()
    var pending: Ringmaster_V1_Assignment?
    /// The newest assignment, and whether the coordinator aborted it.
    var latest: Ringmaster_V1_Assignment?
    var latestAborted = false
    var communicator: Communicator?
    var stopRequest: StopRequest?
    var stopped = false
    /// The coordinator's cursor in the latest generation: every step before it is committed.
    var cursor: UInt64 = 0

    // MARK: Trainer thread only
    var job: JobState?
    let checkpoints: CheckpointSaver

    init(settings: Settings, dataPlane: DataPlane, outbox: Outbox, logger: Logger) {
        self.settings = settings
        self.dataPlane = dataPlane
        self.outbox = outbox
        self.logger = logger
        self.checkpoints = CheckpointSaver(outbox: outbox, logger: logger)
    }

    /// Starts the trainer's thread.
    func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = "ringmaster-trainer"
        thread.start()
    }

    // MARK: - From the control session (any thread)

    /// A new generation: aborts the one in flight and trains in this one.
    func assign(_ assignment: Ringmaster_V1_Assignment) {
        let previous = self.locked { () -> Communicator? in
            self.pending = assignment
            self.latest = assignment
            self.latestAborted = false
            self.cursor = assignment.resumeStep
            self.condition.broadcast()
            return self.communicator
        }
        previous?.abort(reason: "generation \(assignment.generation) replaces it")
    }

    /// The coordinator committed every step before `cursor`.
    func cursorMoved(job: String, generation: UInt64, cursor: UInt64) {
        self.locked {
            guard self.latest?.jobID == job, self.latest?.generation == generation, cursor > self.cursor else { return }
            self.cursor = cursor
            self.condition.broadcast()
        }
    }

    /// Waits until step `step` is within `window` steps of the coordinator's cursor, so that the
    /// copy of the state at the cursor is always among those kept. False when the generation ended
    /// or a stop was requested meanwhile.
    func waitForWindow(step: UInt64, window: UInt64, _ assignment: Ringmaster_V1_Assignment) -> Bool {
        self.locked {
            while step >= self.cursor + window {
                if self.stopped || self.latestAborted || self.latest?.generation != assignment.generation
                    || self.stopRequest != nil
                {
                    return false
                }
                _ = self.condition.wait(until: Date().addingTimeInterval(0.5))
            }
            return true
        }
    }

    /// The coordinator ended `generation`: fail its collectives at once.
    func abort(job: String, generation: UInt64, reason: String) {
        let communicator = self.locked { () -> Communicator? in
            guard self.latest?.jobID == job, self.latest?.generation == generation else { return nil }
            self.latestAborted = true
            if self.pending?.generation == generation { self.pending = nil }
            self.condition.broadcast()
            return self.communicator
        }
        communicator?.abort(reason: reason)
    }

    /// Stops at the next step boundary (at once when no step is running), then calls `then` with
    /// the assignment held, on the trainer's thread or the caller's.
    func stopAtStepBoundary(reason: String, then: @escaping @Sendable (Ringmaster_V1_Assignment?) -> Void) {
        let runNow = self.locked { () -> Ringmaster_V1_Assignment?? in
            if self.communicator == nil || self.latestAborted {
                // Nothing in flight: no step to finish.
                return .some(self.latestAborted ? nil : self.latest)
            }
            self.stopRequest = StopRequest(reason: reason, then: then)
            self.condition.broadcast()
            return .none
        }
        if case .some(let held) = runNow { then(held) }
    }

    /// Abandons the step in flight when a stop request still waits for it (its grace period ran out).
    func abandon(reason: String) {
        let communicator = self.locked { self.stopRequest == nil ? nil : self.communicator }
        communicator?.abort(reason: reason)
    }

    /// Stops the thread.
    func shutdown() {
        let communicator = self.locked { () -> Communicator? in
            self.stopped = true
            self.condition.broadcast()
            return self.communicator
        }
        communicator?.abort(reason: "the agent is stopping")
        self.checkpoints.close()
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        self.condition.lock()
        defer { self.condition.unlock() }
        return try body()
    }

    /// Whether `assignment` is no longer the one to train in.
    func isStale(_ assignment: Ringmaster_V1_Assignment) -> Bool {
        self.locked {
            self.stopped || self.latestAborted || self.latest?.generation != assignment.generation
                || self.latest?.jobID != assignment.jobID
        }
    }

    // MARK: - The trainer thread

    func run() {
        while let assignment = self.next() {
            self.train(assignment)
        }
    }

    func next() -> Ringmaster_V1_Assignment? {
        self.locked {
            while self.pending == nil && !self.stopped {
                _ = self.condition.wait(until: Date().addingTimeInterval(1))
            }
            defer { self.pending = nil }
            return self.stopped ? nil : self.pending
        }
    }

    func metadata(_ assignment: Ringmaster_V1_Assignment) -> Logger.Metadata {
        [
            LogKey.job: "\(assignment.jobID)", LogKey.generation: "\(assignment.generation)",
            LogKey.rank: "\(assignment.rank)", "world_size": "\(assignment.worldSize)",
        ]
    }

    /// Trains in one generation until it ends (finished, aborted, failed, or asked to stop).
    func train(_ assignment: Ringmaster_V1_Assignment) {
        let state: JobState
        do {
            state = try self.prepare(assignment)
        } catch {
            // Told to the coordinator as such: this node stays available for other jobs, and the
            // job's status shows why this node cannot run it.
            self.logger.error(
                "cannot run the job's workload; leaving the job",
                metadata: self.metadata(assignment).merging([LogKey.reason: "\(error)"]) { $1 })
            self.postLeave(assignment, reason: "cannot run the workload: \(error)", cannotRun: true)
            return
        }
        let started = ContinuousClock.now
        let communicator: Communicator
        do {
            communicator = try self.dataPlane.connect(assignment, timeout: self.settings.connectTimeout) { [self] in
                self.isStale(assignment)
            }
        } catch {
            if !self.isStale(assignment) {
                self.logger.warning(
                    "data plane not connected",
                    metadata: self.metadata(assignment).merging([LogKey.reason: "\(error)"]) { $1 })
            }
            return
        }
        let current = self.locked { () -> Bool in
            guard !self.stopped, !self.latestAborted, self.latest?.generation == assignment.generation else {
                return false
            }
            self.communicator = communicator
            return true
        }
        defer {
            self.locked { if self.communicator === communicator { self.communicator = nil } }
            communicator.transport.close()
        }
        guard current else { return }
        do {
            try communicator.barrier(timeout: self.settings.connectTimeout)
            let elapsed = ContinuousClock.now - started
            self.logger.info(
                "data plane ready",
                metadata: self.metadata(assignment).merging(["milliseconds": "\(elapsed.milliseconds)"]) { $1 }
            )
            try self.synchronise(state, assignment, communicator)
            try self.steps(state, assignment, communicator)
        } catch {
            if self.isStale(assignment) {
                self.logger.info(
                    "generation ended; rolling back to the coordinator's cursor in the next",
                    metadata: self.metadata(assignment).merging([
                        "boundary": "\(state.boundary)", LogKey.reason: "\(error)",
                    ]) { $1 }
                )
            } else {
                self.logger.warning(
                    "training stopped", metadata: self.metadata(assignment).merging([LogKey.reason: "\(error)"]) { $1 })
            }
        }
        self.fulfilStopRequest()
    }

    /// The job's state on this agent, made when the agent first trains in the job.
    func prepare(_ assignment: Ringmaster_V1_Assignment) throws -> JobState {
        if let job = self.job, job.matches(assignment) { return job }
        let workload = try WorkloadCatalog.make(
            kind: assignment.workloadKind,
            parameters: try WorkloadCatalog.parameters(fromYAML: assignment.workloadSpec),
            datasetPath: assignment.datasetPath,
            datasetSamples: Int(assignment.datasetSamples),
            seed: assignment.permutationSeed
        )
        guard workload.trainingSamples == Int(assignment.datasetSamples) else {
            throw AgentError(
                .protocolViolation,
                "the job says its data set has \(assignment.datasetSamples) samples, but \(assignment.datasetPath) has \(workload.trainingSamples) training samples here; fix dataset.samples in the job spec"
            )
        }
        let stateBytes = max(1, workload.stateCount * MemoryLayout<Float>.size)
        let kept = min(
            self.settings.maximumSnapshots,
            max(self.settings.minimumSnapshots, self.settings.snapshotBudgetBytes / stateBytes))
        let state = JobState(assignment: assignment, workload: workload, snapshotsKept: kept)
        self.job = state
        self.logger.info(
            "workload ready",
            metadata: [
                LogKey.job: "\(assignment.jobID)", "kind": "\(assignment.workloadKind)",
                "parameters": "\(workload.parameterCount)", "buckets": "\(workload.buckets.count)",
                "snapshots_kept": "\(kept)",
            ]
        )
        return state
    }

    /// Agrees on the training state at the resume step: every rank says whether it holds a copy
    /// (and from which generation); the newest copy is broadcast from the lowest rank holding it.
    func synchronise(_ state: JobState, _ assignment: Ringmaster_V1_Assignment, _ communicator: Communicator) throws {
        let resume = assignment.resumeStep
        let world = Int(assignment.worldSize)
        let held = state.snapshots[resume]
        var mine: [UInt64] = [held == nil ? 0 : 1, held?.generation ?? 0]
        var all = [UInt64](repeating: 0, count: 2 * world)
        try mine.withUnsafeMutableBytes { input in
            try all.withUnsafeMutableBytes { output in
                try communicator.allGather(
                    UnsafeRawBufferPointer(input), into: output, timeout: self.settings.collectiveTimeout)
            }
        }
        let holders = (0..<world).filter { all[2 * $0] == 1 }
        if holders.isEmpty && !assignment.checkpointDirectory.isEmpty {
            try self.loadCheckpoint(state, assignment, communicator)
            return
        }
        guard let root = holders.max(by: { (all[2 * $0 + 1], -$0) < (all[2 * $1 + 1], -$1) }) else {
            throw AgentError(
                .protocolViolation,
                "no member holds the training state at step \(resume) (they were restarted, or the coordinator's cursor trailed this agent's step \(state.boundary) by more than the \(state.snapshotsKept) copies kept); the job can resume only from a checkpoint"
            )
        }
        var buffer = held?.state ?? [Float](repeating: 0, count: state.workload.stateCount)
        if world > 1 {
            try buffer.withUnsafeMutableBytes { raw in
                try communicator.broadcast(raw, root: root, timeout: self.settings.collectiveTimeout)
            }
        }
        let rolledBack = state.boundary - min(state.boundary, resume)
        state.restore(step: resume, generation: all[2 * root + 1], state: buffer)
        self.logger.info(
            "training state agreed",
            metadata: self.metadata(assignment).merging(
                ["resume_step": "\(resume)", "source_rank": "\(root)", "steps_rolled_back": "\(rolledBack)"]
            ) { $1 }
        )
    }

    /// No member holds the state at the resume step (the job was resumed from a checkpoint, or all
    /// its agents restarted): rank 0 loads the committed checkpoint at that step, verifying every
    /// shard's checksum, and broadcasts it; a checkpoint that fails verification is never used.
    func loadCheckpoint(_ state: JobState, _ assignment: Ringmaster_V1_Assignment, _ communicator: Communicator) throws
    {
        let resume = assignment.resumeStep
        let expected = state.workload.stateCount
        var buffer = [Float](repeating: 0, count: expected)
        var failure: String?
        if assignment.rank == 0 {
            do {
                let loaded = try CheckpointReader.load(root: assignment.checkpointDirectory, step: resume)
                if loaded.state.count == expected {
                    buffer = loaded.state
                } else {
                    failure =
                        "the checkpoint at step \(resume) holds \(loaded.state.count) values, but this workload's state has \(expected)"
                }
            } catch {
                failure = "\(error)"
            }
        }
        var ok: [UInt64] = [failure == nil ? 1 : 0]
        if Int(assignment.worldSize) > 1 {
            try ok.withUnsafeMutableBytes {
                try communicator.broadcast($0, root: 0, timeout: self.settings.collectiveTimeout)
            }
        }
        guard ok[0] == 1 else {
            throw AgentError(
                .protocolViolation,
                failure
                    ?? "rank 0 could not load the checkpoint at step \(resume) from \(assignment.checkpointDirectory) (its log says why)"
            )
        }
        if Int(assignment.worldSize) > 1 {
            try buffer.withUnsafeMutableBytes { raw in
                try communicator.broadcast(raw, root: 0, timeout: self.settings.collectiveTimeout)
            }
        }
        state.restore(step: resume, generation: assignment.generation, state: buffer)
        self.logger.notice(
            "training state loaded from a checkpoint",
            metadata: self.metadata(assignment).merging([
                "resume_step": "\(resume)", "directory": "\(assignment.checkpointDirectory)",
            ]) { $1 }
        )
    }

    /// Trains from the resume step until the job's last step, a stop request, or a failure.
    func steps(_ state: JobState, _ assignment: Ringmaster_V1_Assignment, _ communicator: Communicator) throws {
        let rank = Int(assignment.rank)
        let world = Int(assignment.worldSize)
        let total = assignment.totalSteps
        let workload = state.workload
        let parameters = workload.parameterCount
        let reducer = BucketReducer(communicator: communicator, timeout: self.settings.collectiveTimeout)
        defer { reducer.close() }
        var step = assignment.resumeStep
        // Two copies of slack: the state at the cursor must still be kept when a step completes.
        let window = UInt64(max(1, state.snapshotsKept - 2))
        while step < total {
            if self.locked({ self.stopRequest != nil }) { return }
            guard self.waitForWindow(step: step, window: window, assignment) else {
                if self.isStale(assignment) {
                    throw AgentError(.protocolViolation, "generation \(assignment.generation) ended")
                }
                return
            }
            let ids = state.samples(step: step, rank: rank, worldSize: world)
            let batch = state.order.batchRange(ofStep: step).count
            let lossSum = try state.gradients.withUnsafeMutableBufferPointer { buffer -> Double in
                let base = UnsafeMutableRawBufferPointer(buffer)
                var submitted = 0
                let loss = workload.accumulateGradients(
                    samples: ids, into: UnsafeMutableBufferPointer(rebasing: buffer[0..<parameters])
                ) { bucket in
                    // Buckets are all-reduced in order; the workload finishes them in that order.
                    while submitted <= bucket {
                        reducer.submit(base, range: workload.buckets[submitted])
                        submitted += 1
                    }
                }
                while submitted < workload.buckets.count {
                    reducer.submit(base, range: workload.buckets[submitted])
                    submitted += 1
                }
                buffer[parameters] = Float(loss)
                reducer.submit(base, range: parameters..<(parameters + 1))
                try reducer.finish()
                return Double(buffer[parameters])
            }
            state.gradients.withUnsafeBufferPointer { buffer in
                workload.applyGradients(UnsafeBufferPointer(rebasing: buffer[0..<parameters]), scale: 1 / Float(batch))
            }
            step += 1
            state.record(step: step, generation: assignment.generation)
            let last = step == total
            self.report(
                assignment,
                step: step - 1,
                loss: lossSum / Double(batch),
                samples: ids,
                hash: (last || step % self.settings.hashIntervalSteps == 0)
                    ? parameterHash(workload.parameters()) : nil,
                testAccuracy: last && rank == 0 ? workload.evaluate().accuracy : nil
            )
            if step % 500 == 0 || last {
                self.logger.info(
                    "trained",
                    metadata: self.metadata(assignment).merging([
                        "step": "\(step)", "loss": "\(lossSum / Double(batch))",
                    ]) { $1 }
                )
            }
            if !assignment.checkpointDirectory.isEmpty, assignment.checkpointIntervalSteps > 0,
                step % assignment.checkpointIntervalSteps == 0 || last, let saved = state.snapshots[step]
            {
                // The copy just kept is handed over as is: no extra copy on the step's path.
                self.checkpoints.offer(
                    .init(assignment: assignment, step: step, state: saved.state, parameterCount: parameters))
            }
            if last { self.saveModel(state, assignment) }
        }
    }

    func report(
        _ assignment: Ringmaster_V1_Assignment,
        step: UInt64,
        loss: Double,
        samples: ArraySlice<Int>,
        hash: UInt64?,
        testAccuracy: Double?
    ) {
        var envelope = Envelope()
        envelope.stepReport = .with {
            $0.jobID = assignment.jobID
            $0.generation = assignment.generation
            $0.step = step
            $0.loss = loss
            $0.samples = UInt64(samples.count)
            $0.sampleIds = samples.map { UInt32($0) }
            if let hash { $0.parameterHash = withUnsafeBytes(of: hash.bigEndian) { Data($0) } }
            if let testAccuracy { $0.testAccuracy = testAccuracy }
        }
        self.outbox.post(envelope)
    }

    func postLeave(_ assignment: Ringmaster_V1_Assignment, reason: String, cannotRun: Bool = false) {
        var envelope = Envelope()
        envelope.leave = .with {
            $0.jobID = assignment.jobID
            $0.generation = assignment.generation
            $0.reason = reason
            $0.cannotRun = cannotRun
        }
        self.outbox.post(envelope)
    }

    func fulfilStopRequest() {
        let request = self.locked { () -> (StopRequest, Ringmaster_V1_Assignment?)? in
            guard let request = self.stopRequest else { return nil }
            self.stopRequest = nil
            return (request, self.latestAborted ? nil : self.latest)
        }
        guard let (request, held) = request else { return }
        self.logger.notice(
            "stopped at a step boundary",
            metadata: [LogKey.reason: "\(request.reason)", "boundary": "\(self.job?.boundary ?? 0)"])
        request.then(held)
    }

    /// Writes the trained parameters (raw little-endian Float32) and a description beside them.
    func saveModel(_ state: JobState, _ assignment: Ringmaster_V1_Assignment) {
        let parameters = state.workload.parameters()
        let directory = self.settings.modelDirectory
        do {
            try SecureFile.createDirectory(directory, mode: 0o755)
            let bytes = parameters.withUnsafeBytes { Array($0) }
            try SecureFile.write(bytes, to: "\(directory)/\(assignment.jobID).f32", mode: 0o644)
            let description: [String: Any] = [
                "job": assignment.jobID, "kind": assignment.workloadKind, "steps": assignment.totalSteps,
                "parameters": parameters.count, "parameter_hash": String(parameterHash(parameters), radix: 16),
                "format": "little-endian float32, layer by layer (weights then bias)",
            ]
            let json = try JSONSerialization.data(withJSONObject: description, options: [.prettyPrinted, .sortedKeys])
            try SecureFile.write(Array(json), to: "\(directory)/\(assignment.jobID).json", mode: 0o644)
            self.logger.info(
                "saved the trained model",
                metadata: [LogKey.job: "\(assignment.jobID)", "path": "\(directory)/\(assignment.jobID).f32"])
        } catch {
            self.logger.error(
                "could not save the trained model",
                metadata: [LogKey.job: "\(assignment.jobID)", LogKey.error: "\(error)"])
        }
    }
}

// MARK: - Job state

/// One job's model on this agent, with the training state at recent step boundaries.
final class JobState {
    let jobID: String
    let identity: [String]
    let workload: any TrainingWorkload
    let order: DataOrder
    let snapshotsKept: Int
    /// Steps applied to the workload's state.
    var boundary: UInt64 = 0
    /// Training state by step boundary, with the generation that computed the step before it.
    var snapshots: [UInt64: (generation: UInt64, state: [Float])] = [:]
    /// The flat gradient buffer, with one more element for the loss.
    var gradients: [Float]
    var permutation: (epoch: UInt64, ids: [Int])?

    init(assignment: Ringmaster_V1_Assignment, workload: any TrainingWorkload, snapshotsKept: Int) {
        self.jobID = assignment.jobID
        self.identity = Self.identity(assignment)
        self.workload = workload
        self.order = DataOrder(
            datasetSize: Int(assignment.datasetSamples),
            globalBatchSize: Int(assignment.globalBatchSize),
            seed: assignment.permutationSeed
        )
        self.snapshotsKept = max(2, snapshotsKept)
        self.gradients = [Float](repeating: 0, count: workload.parameterCount + 1)
        // The initial state (from the seed) is the state at step 0 on every agent.
        var initial = [Float](repeating: 0, count: workload.stateCount)
        initial.withUnsafeMutableBufferPointer { workload.saveState(into: $0) }
        self.snapshots[0] = (0, initial)
    }

    static func identity(_ assignment: Ringmaster_V1_Assignment) -> [String] {
        [
            assignment.jobID, assignment.workloadKind, assignment.workloadSpec, assignment.datasetPath,
            "\(assignment.datasetSamples)", "\(assignment.globalBatchSize)", "\(assignment.permutationSeed)",
        ]
    }

    func matches(_ assignment: Ringmaster_V1_Assignment) -> Bool {
        self.identity == Self.identity(assignment)
    }

    /// The sample ids rank `rank` of `worldSize` trains on at `step`.
    func samples(step: UInt64, rank: Int, worldSize: Int) -> ArraySlice<Int> {
        let epoch = self.order.epoch(ofStep: step)
        if self.permutation?.epoch != epoch {
            self.permutation = (epoch, self.order.permutation(epoch: epoch))
        }
        return self.order.samples(step: step, rank: rank, worldSize: worldSize, permutation: self.permutation!.ids)
    }

    /// Loads the agreed state at `step`; copies of later boundaries (steps being redone) are dropped.
    func restore(step: UInt64, generation: UInt64, state: [Float]) {
        state.withUnsafeBufferPointer { self.workload.loadState(from: $0) }
        self.boundary = step
        self.snapshots = self.snapshots.filter { $0.key < step }
        self.snapshots[step] = (generation, state)
    }

    /// Keeps a copy of the state after a step, forgetting the oldest beyond `snapshotsKept`.
    func record(step: UInt64, generation: UInt64) {
        self.boundary = step
        var buffer: [Float]
        if self.snapshots.count >= self.snapshotsKept, let oldest = self.snapshots.keys.min() {
            buffer = self.snapshots.removeValue(forKey: oldest)!.state  // reuse its storage
        } else {
            buffer = [Float](repeating: 0, count: self.workload.stateCount)
        }
        buffer.withUnsafeMutableBufferPointer { self.workload.saveState(into: $0) }
        self.snapshots[step] = (generation, buffer)
    }
}

// MARK: - Bucketed all-reduce

/// All-reduces gradient buckets on a thread of its own, in the order they are submitted, so that
/// communication of one bucket overlaps the computation of the next.
final class BucketReducer: @unchecked Sendable {
    // Safe because every `var` is guarded by `condition`.
    let communicator: Communicator
    let timeout: Duration
    let condition = NSCondition()
    var queue: [(base: UnsafeMutableRawBufferPointer, range: Range<Int>)] = []
    var inFlight = 0
    var failure: (any Error)?
    var closed = false

    init(communicator: Communicator, timeout: Duration) {
        self.communicator = communicator
        self.timeout = timeout
        let thread = Thread { [self] in self.run() }
        thread.name = "ringmaster-reducer"
        thread.start()
    }

    /// Queues Float32 elements `range` of `base` for an in-place sum over all ranks.
    func submit(_ base: UnsafeMutableRawBufferPointer, range: Range<Int>) {
        self.condition.lock()
        self.queue.append((base, range))
        self.inFlight += 1
        self.condition.broadcast()
        self.condition.unlock()
    }

    /// Waits until every submitted bucket is reduced; throws the first failure.
    func finish() throws {
        self.condition.lock()
        defer { self.condition.unlock() }
        while self.inFlight > 0 { self.condition.wait() }
        if let failure = self.failure {
            self.failure = nil
            throw failure
        }
    }

    func close() {
        self.condition.lock()
        self.closed = true
        self.condition.broadcast()
        self.condition.unlock()
    }

    func run() {
        while true {
            self.condition.lock()
            while self.queue.isEmpty && !self.closed { self.condition.wait() }
            if self.queue.isEmpty {
                self.condition.unlock()
                return
            }
            let item = self.queue.removeFirst()
            let failed = self.failure != nil
            self.condition.unlock()
            var failure: (any Error)?
            if !failed {
                // After a failure the rest are skipped: the step is lost either way.
                do {
                    let bytes = UnsafeMutableRawBufferPointer(
                        rebasing: item.base[(item.range.lowerBound * 4)..<(item.range.upperBound * 4)]
                    )
                    try self.communicator.allReduce(
                        bytes, count: item.range.count, type: .float32, operation: .sum, timeout: self.timeout)
                } catch {
                    failure = error
                }
            }
            self.condition.lock()
            if let failure, self.failure == nil { self.failure = failure }
            self.inFlight -= 1
            self.condition.broadcast()
            self.condition.unlock()
        }
    }
}

extension Duration {
    /// Whole milliseconds.
    var milliseconds: Int64 {
        self.components.seconds * 1000 + self.components.attoseconds / 1_000_000_000_000_000
    }
}
