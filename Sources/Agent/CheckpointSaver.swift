import Checkpointing
import ControlPlane
import Foundation
import JobModel
import Logging

/// Saves this rank's shard of a checkpoint on a thread of its own, so the step loop only hands
/// over a copy of its state and goes on. One save at a time: when a save is due while the
/// previous one is still being written, the new one is skipped (and logged), never waited for,
/// so a slow or failing file system never slows training down. The job's last checkpoint is the
/// exception: it is the one the job ends with, and no training is left to slow down, so it waits
/// for the save before it (up to `lastSaveWait`).
final class CheckpointSaver: @unchecked Sendable {
    // Safe because `pending` and `busy` are guarded by `condition`.
    struct Save {
        var assignment: Assignment
        var step: UInt64
        var state: [Float]
        var parameterCount: Int
        /// The state's tensors, when the workload names them (a PyTorch worker's).
        var tensors: [StateTensor] = []
    }

    let outbox: Outbox
    let logger: Logger
    let condition = NSCondition()
    var pending: Save?
    var busy = false
    var closed = false

    /// How long the job's last checkpoint waits for the save before it.
    static let lastSaveWait: TimeInterval = 30

    init(outbox: Outbox, logger: Logger) {
        self.outbox = outbox
        self.logger = logger
        let thread = Thread { [self] in self.run() }
        thread.name = "ringmaster-checkpoint"
        thread.start()
    }

    /// Hands over the state at `step` to be saved; false (and nothing queued) while a save is busy.
    @discardableResult
    func offer(_ save: Save) -> Bool {
        self.condition.lock()
        defer { self.condition.unlock() }
        if save.step >= save.assignment.training.steps {
            let deadline = Date().addingTimeInterval(Self.lastSaveWait)
            while (self.busy || self.pending != nil) && !self.closed && self.condition.wait(until: deadline) {}
        }
        guard !self.busy && self.pending == nil else {
            self.logger.warning(
                "skipped a checkpoint: the previous save is still being written",
                metadata: [LogKey.job: "\(save.assignment.job)", "step": "\(save.step)"]
            )
            return false
        }
        self.pending = save
        self.condition.broadcast()
        return true
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
            while self.pending == nil && !self.closed { self.condition.wait() }
            guard let save = self.pending else {
                self.condition.unlock()
                return
            }
            self.pending = nil
            self.busy = true
            self.condition.unlock()
            self.write(save)
            self.condition.lock()
            self.busy = false
            self.condition.broadcast()
            self.condition.unlock()
        }
    }

    func write(_ save: Save) {
        let assignment = save.assignment
        let rank = assignment.rank
        let world = assignment.worldSize
        let slice = CheckpointLayout.slice(elements: save.state.count, rank: rank, worldSize: world)
        var report = ShardReport(
            step: save.step, rank: rank, worldSize: world, stateCount: save.state.count,
            parameterCount: save.parameterCount, firstElement: slice.lowerBound, elements: slice.count, path: "",
            bytes: 0, sha256: "", tensors: save.tensors)
        let started = ContinuousClock.now
        do {
            let record = try save.state.withUnsafeBufferPointer { buffer in
                try CheckpointWriter.writeShard(
                    root: assignment.training.checkpointDirectory ?? "",
                    step: save.step,
                    rank: rank,
                    worldSize: world,
                    firstElement: slice.lowerBound,
                    elements: UnsafeBufferPointer(rebasing: buffer[slice])
                )
            }
            report.path = record.file
            report.bytes = record.bytes
            report.sha256 = record.sha256
            self.logger.debug(
                "checkpoint shard durable",
                metadata: [
                    LogKey.job: "\(assignment.job)", "step": "\(save.step)", "bytes": "\(record.bytes)",
                    "milliseconds": "\((ContinuousClock.now - started).milliseconds)",
                ]
            )
        } catch {
            report.error = "\(error)"
            self.logger.error(
                "could not save a checkpoint shard; training goes on",
                metadata: [LogKey.job: "\(assignment.job)", "step": "\(save.step)", LogKey.reason: "\(error)"]
            )
        }
        self.outbox.post(report, job: assignment.job, generation: assignment.generation)
    }
}
