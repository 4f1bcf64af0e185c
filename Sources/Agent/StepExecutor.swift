import AgentCore
import Checkpointing
import Collectives
import ControlPlane
import Foundation
import JobModel
import Logging
import Synchronization
import Workload

/// What the executor reaches outside itself: the workload catalog, the data plane, checkpoint
/// storage and the model directory. The agent passes the real ones; the in-process cluster of the
/// tests passes in-process ones.
struct TrainingEnvironment: Sendable {
    /// Builds the workload of a job's plan (a PyTorch job's starts its worker process).
    var makeWorkload: @Sendable (_ job: String, TrainingPlan) throws -> any TrainingWorkload
    /// Connects this rank of the assignment's generation to every other member, giving up when the
    /// closure turns true.
    var connect: @Sendable (Assignment, _ isCancelled: @escaping @Sendable () -> Bool) throws -> Communicator
    /// Loads and verifies the committed checkpoint at `step` under `directory`.
    var loadCheckpoint: @Sendable (_ directory: String, _ step: UInt64) throws -> [Float]
    /// Hands the state at step boundary `step` to the checkpoint writer (which never blocks the step).
    var offerCheckpoint:
        @Sendable (
            Assignment, _ step: UInt64, _ state: [Float], _ parameterCount: Int, _ tensors: [StateTensor]
        ) -> Void
    /// Writes the trained model.
    var saveModel: @Sendable (Assignment, any TrainingWorkload) -> Void
}

/// Carries out the agent core's blocking work (`AgentMachine.Work`) on the trainer's thread: it
/// holds the job's workload, the copies of its training state at recent step boundaries, and the
/// generation's communicator, and answers each piece of work with the event that ends it.
///
/// ## One step
/// Each rank takes its slice of the global batch (the core hands it the sample ids), sums the
/// gradient over it, and hands each layer's bucket to a communication thread that all-reduces it
/// while backward goes on with the next layer. The global sums are scaled by 1 / global batch, so
/// the update does not depend on how many agents share the batch.
final class StepExecutor: @unchecked Sendable {
    // Safe because `job` is touched only by the trainer's thread (one piece of work at a time);
    // `link`, which other threads abort, is a Mutex.

    /// Settings of the work.
    struct Settings: Sendable {
        /// Longest wait for one collective (a dead peer fails it at once; a hung one is aborted
        /// by the coordinator when its lease expires).
        var collectiveTimeout: Duration = .seconds(60)
        /// Longest wait for the members of a generation to connect.
        var connectTimeout: Duration = .seconds(30)
    }

    let settings: Settings
    let environment: TrainingEnvironment
    let logger: Logger
    /// The generation's communicator, once connected, with the reducer (and its thread) that
    /// all-reduces its steps' buckets, made once per generation.
    let link = Mutex<(generation: UInt64, communicator: Communicator, reducer: BucketReducer)?>(nil)
    var job: JobState?

    init(settings: Settings, environment: TrainingEnvironment, logger: Logger) {
        self.settings = settings
        self.environment = environment
        self.logger = logger
    }

    /// The workload of the job held, for tests that compare replicas.
    var workload: (any TrainingWorkload)? { self.job?.workload }

    /// Does `work` and returns the event that ends it. `isCancelled` turns true when the core
    /// abandons the work (the collectives in flight are aborted beside it).
    func perform(_ work: AgentMachine.Work, isCancelled: @escaping @Sendable () -> Bool) -> AgentMachine.Event {
        let generation = work.generation
        if isCancelled() {
            return .failed(generation: generation, reason: "abandoned before it started")
        }
        do {
            switch work {
            case .prepare(let assignment):
                do {
                    try self.prepare(assignment)
                    return .prepared(generation: generation)
                } catch {
                    return .cannotRun(generation: generation, reason: "\(error)")
                }
            case .connect(let assignment):
                try self.connect(assignment, isCancelled: isCancelled)
                return .connected(generation: generation)
            case .gather:
                return .gathered(generation: generation, holders: try self.gather())
            case .broadcast(_, let step, let root, let source):
                try self.broadcast(step: step, root: root, sourceGeneration: source, generation: generation)
                return .synchronised(generation: generation, step: step)
            case .loadCheckpoint(_, let step, let directory):
                try self.loadCheckpoint(step: step, directory: directory, generation: generation)
                return .synchronised(generation: generation, step: step)
            case .train(_, let step, let samples, let batch, let hash, let evaluate):
                let (loss, hashValue, accuracy) = try self.train(
                    step: step, samples: samples, batch: batch, hash: hash, evaluate: evaluate, generation: generation)
                return .stepDone(
                    generation: generation, step: step, loss: loss, hash: hashValue, testAccuracy: accuracy)
            case .saveModel:
                if let job = self.job, let assignment = job.assignment {
                    self.environment.saveModel(assignment, job.workload)
                }
                return .modelSaved(generation: generation)
            }
        } catch let error as RDMASetUpFailure {
            return .failed(generation: generation, reason: "\(error)", rdmaSetUp: true)
        } catch let error as WorkloadError where error.code == .workerFailed {
            // The worker is gone or unusable: end it (a hung one too) and drop its state.
            self.release()
            return .workloadFailed(generation: generation, reason: error.message)
        } catch {
            return .failed(generation: generation, reason: "\(error)")
        }
    }

    /// Fails the collectives of `generation` at once.
    func abandon(generation: UInt64, reason: String) {
        let communicator = self.link.withLock { $0?.generation == generation ? $0?.communicator : nil }
        communicator?.abort(reason: reason)
    }

    /// Closes `generation`'s data plane.
    func disconnect(generation: UInt64) {
        let closed = self.link.withLock { link -> (Communicator, BucketReducer)? in
            guard let current = link, current.generation == generation else { return nil }
            link = nil
            return (current.communicator, current.reducer)
        }
        closed?.1.close()
        closed?.0.transport.close()
    }

    /// Fails whatever is in flight and closes the data plane (the agent is stopping).
    func close(reason: String) {
        let closed = self.link.withLock { link -> (Communicator, BucketReducer)? in
            defer { link = nil }
            return link.map { ($0.communicator, $0.reducer) }
        }
        closed?.0.abort(reason: reason)
        closed?.1.close()
        closed?.0.transport.close()
    }

    /// Ends the held job's workload (its worker process, for a torch job): the agent is stopping.
    func release() {
        self.job?.workload.release()
        self.job = nil
    }

    /// Hands a copy of the live state, at step boundary `step`, to the checkpoint writer (the
    /// only copy of the whole state a step takes, and only at a checkpoint's step).
    func offerCheckpoint(step: UInt64) {
        guard let job = self.job, let assignment = job.assignment, job.held.boundary == step else { return }
        do {
            let saved = try job.copyState()
            self.environment.offerCheckpoint(
                assignment, step, saved, job.workload.parameterCount, job.workload.stateTensors)
        } catch {
            self.logger.error(
                "could not copy the training state for the checkpoint",
                metadata: self.metadata(assignment).merging(["step": "\(step)", "error": "\(error)"]) { $1 })
        }
    }

    // MARK: - The work

    func metadata(_ assignment: Assignment?) -> Logger.Metadata {
        guard let assignment else { return [:] }
        return [
            LogKey.job: "\(assignment.job)", LogKey.generation: "\(assignment.generation)",
            LogKey.rank: "\(assignment.rank)", "world_size": "\(assignment.worldSize)",
        ]
    }

    /// Builds the job's workload.
    func prepare(_ assignment: Assignment) throws {
        let plan = assignment.training
        let workload = try self.environment.makeWorkload(assignment.job, plan)
        guard workload.trainingSamples == plan.datasetSamples else {
            throw AgentError(
                .protocolViolation,
                "the job says its data set has \(plan.datasetSamples) samples, but \(plan.datasetPath) has \(workload.trainingSamples) training samples here; fix dataset.samples in the job spec"
            )
        }
        self.job?.workload.release()
        self.job = JobState(workload: workload)
        self.job?.assignment = assignment
        self.logger.info(
            "workload ready",
            metadata: [
                LogKey.job: "\(assignment.job)", "kind": "\(plan.workloadKind)",
                "parameters": "\(workload.parameterCount)", "buckets": "\(workload.buckets.count)",
            ]
        )
    }

    func connect(_ assignment: Assignment, isCancelled: @escaping @Sendable () -> Bool) throws {
        let started = ContinuousClock.now
        self.job?.assignment = assignment
        let communicator = try self.environment.connect(assignment, isCancelled)
        let reducer = BucketReducer(communicator: communicator, timeout: self.settings.collectiveTimeout)
        let replaced = self.link.withLock { link -> BucketReducer? in
            defer { link = (assignment.generation, communicator, reducer) }
            return link?.reducer
        }
        replaced?.close()
        if isCancelled() {
            // Abandoned while connecting: the abort found no communicator yet.
            communicator.abort(reason: "abandoned while connecting")
        }
        try communicator.barrier(timeout: self.settings.connectTimeout)
        self.logger.info(
            "data plane ready",
            metadata: self.metadata(assignment).merging([
                "milliseconds": "\((ContinuousClock.now - started).milliseconds)"
            ]) { $1 }
        )
    }

    /// The communicator of the generation connected.
    func communicator() throws -> Communicator {
        guard let communicator = self.link.withLock({ $0?.communicator }) else {
            throw AgentError(.protocolViolation, "no data plane is connected")
        }
        return communicator
    }

    func heldJob() throws -> JobState {
        guard let job = self.job else { throw AgentError(.protocolViolation, "no workload is prepared") }
        return job
    }

    /// Every rank says what it holds of the job's state: whether it holds it, its step boundary
    /// and the generation that trained the step before (this workload's own record of it, which a
    /// step updates only once its update is applied).
    func gather() throws -> [AgentMachine.Held?] {
        let communicator = try self.communicator()
        let world = communicator.worldSize
        let held = self.job?.held
        var mine: [UInt64] = [held == nil ? 0 : 1, held?.boundary ?? 0, held?.generation ?? 0]
        var all = [UInt64](repeating: 0, count: 3 * world)
        try mine.withUnsafeMutableBytes { input in
            try all.withUnsafeMutableBytes { output in
                try communicator.allGather(
                    UnsafeRawBufferPointer(input), into: output, timeout: self.settings.collectiveTimeout)
            }
        }
        return (0..<world).map {
            all[3 * $0] == 1 ? AgentMachine.Held(boundary: all[3 * $0 + 1], generation: all[3 * $0 + 2]) : nil
        }
    }

    /// The state at boundary `step`, trained by `sourceGeneration`, from `root` to every rank; the
    /// ranks that hold another state load it.
    func broadcast(step: UInt64, root: Int, sourceGeneration: UInt64, generation: UInt64) throws {
        let job = try self.heldJob()
        let communicator = try self.communicator()
        let source = AgentMachine.Held(boundary: step, generation: sourceGeneration)
        let isRoot = communicator.rank == root
        guard !isRoot || job.held == source else {
            throw AgentError(
                .protocolViolation,
                "chosen to send the state at step \(step) of generation \(sourceGeneration), but this agent holds step \(job.held.boundary) of generation \(job.held.generation)"
            )
        }
        var buffer = isRoot ? try job.copyState() : [Float](repeating: 0, count: job.workload.stateCount)
        if communicator.worldSize > 1 {
            try buffer.withUnsafeMutableBytes { raw in
                try communicator.broadcast(raw, root: root, timeout: self.settings.collectiveTimeout)
            }
        }
        let caughtUp = step - min(step, job.held.boundary)
        let loaded = job.held != source
        if loaded { try job.restore(state: buffer, held: source) }
        self.logger.info(
            "training state agreed",
            metadata: self.metadata(job.assignment).merging(
                [
                    "resume_step": "\(step)", "source_rank": "\(root)", "loaded": "\(loaded)",
                    "steps_caught_up": "\(caughtUp)",
                ]
            ) { $1 }
        )
    }

    /// No member holds the state at the resume step (the job was resumed from a checkpoint, or all
    /// its agents restarted): rank 0 loads the committed checkpoint at that step, verifying every
    /// shard's checksum, and broadcasts it; a checkpoint that fails verification is never used.
    func loadCheckpoint(step: UInt64, directory: String, generation: UInt64) throws {
        let job = try self.heldJob()
        let communicator = try self.communicator()
        let expected = job.workload.stateCount
        var buffer = [Float](repeating: 0, count: expected)
        var failure: String?
        if communicator.rank == 0 {
            do {
                let loaded = try self.environment.loadCheckpoint(directory, step)
                if loaded.count == expected {
                    buffer = loaded
                } else {
                    failure =
                        "the checkpoint at step \(step) holds \(loaded.count) values, but this workload's state has \(expected)"
                }
            } catch {
                failure = "\(error)"
            }
        }
        var ok: [UInt64] = [failure == nil ? 1 : 0]
        if communicator.worldSize > 1 {
            try ok.withUnsafeMutableBytes {
                try communicator.broadcast($0, root: 0, timeout: self.settings.collectiveTimeout)
            }
        }
        guard ok[0] == 1 else {
            throw AgentError(
                .protocolViolation,
                failure ?? "rank 0 could not load the checkpoint at step \(step) from \(directory) (its log says why)"
            )
        }
        if communicator.worldSize > 1 {
            try buffer.withUnsafeMutableBytes { raw in
                try communicator.broadcast(raw, root: 0, timeout: self.settings.collectiveTimeout)
            }
        }
        try job.restore(state: buffer, held: .init(boundary: step, generation: generation))
        self.logger.notice(
            "training state loaded from a checkpoint",
            metadata: self.metadata(job.assignment).merging([
                "resume_step": "\(step)", "directory": "\(directory)",
            ]) { $1 }
        )
    }

    /// Trains one step; returns its mean loss, and the parameters' hash and the test accuracy when
    /// asked for.
    func train(
        step: UInt64, samples: [Int], batch: Int, hash: Bool, evaluate: Bool, generation: UInt64
    ) throws -> (Double, UInt64?, Double?) {
        let job = try self.heldJob()
        guard let reducer = self.link.withLock({ $0?.reducer }) else {
            throw AgentError(.protocolViolation, "no data plane is connected")
        }
        let workload = job.workload
        let parameters = workload.parameterCount
        workload.beginStep(step)
        let lossSum = try job.withGradients { buffer -> Double in
            let base = UnsafeMutableRawBufferPointer(buffer)
            var submitted = 0
            let loss = try workload.accumulateGradients(
                samples: samples[...], into: UnsafeMutableBufferPointer(rebasing: buffer[0..<parameters])
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
        try job.withGradients { buffer in
            try workload.applyGradients(UnsafeBufferPointer(rebasing: buffer[0..<parameters]), scale: 1 / Float(batch))
        }
        // Applied: the state is at the next boundary (a failure from here on leaves it there).
        job.held = .init(boundary: step + 1, generation: generation)
        let loss = lossSum / Double(batch)
        let total = job.assignment?.training.steps ?? 0
        if (step + 1) % 500 == 0 || step + 1 == total {
            self.logger.info(
                "trained",
                metadata: self.metadata(job.assignment).merging(["step": "\(step + 1)", "loss": "\(loss)"]) { $1 }
            )
        }
        return (
            loss, hash ? parameterHash(try workload.parameters()) : nil,
            evaluate ? try workload.evaluate().accuracy : nil
        )
    }
}

// MARK: - Job state

/// One job's model on this agent: the workload, whose live training state is the only one kept
/// (no copy per step), and what that state is.
final class JobState {
    let workload: any TrainingWorkload
    /// The assignment trained in.
    var assignment: Assignment?
    /// The live state's step boundary and the generation that trained the step before it.
    var held = AgentMachine.Held(boundary: 0, generation: 0)
    /// The flat gradient buffer, with one more element for the loss: the workload's when it gives
    /// one, else this job's own (`gradients`).
    let workloadGradients: UnsafeMutableBufferPointer<Float>?
    var gradients: [Float]

    init(workload: any TrainingWorkload) {
        self.workload = workload
        self.workloadGradients = workload.gradientBuffer.flatMap {
            $0.count == workload.parameterCount + 1 ? $0 : nil
        }
        self.gradients = [Float](repeating: 0, count: self.workloadGradients == nil ? workload.parameterCount + 1 : 0)
    }

    /// Runs `body` on the gradient buffer: the workload's, if it gives one, else this job's own.
    func withGradients<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        if let buffer = self.workloadGradients { return try body(buffer) }
        return try self.gradients.withUnsafeMutableBufferPointer { try body($0) }
    }

    /// Loads `state`, which is `held`.
    func restore(state: [Float], held: AgentMachine.Held) throws {
        try state.withUnsafeBufferPointer { try self.workload.loadState(from: $0) }
        self.held = held
    }

    /// A copy of the live state (for a broadcast's root or a checkpoint).
    func copyState() throws -> [Float] {
        var buffer = [Float](repeating: 0, count: self.workload.stateCount)
        try buffer.withUnsafeMutableBufferPointer { try self.workload.saveState(into: $0) }
        return buffer
    }
}
