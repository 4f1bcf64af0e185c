import Checkpointing
import ControlPlane
import Foundation
import JobModel
import Logging
import RingmasterWire

/// Saves this rank's shard of a checkpoint on a thread of its own, so the step loop only hands
/// over a copy of its state and goes on. One save at a time: when a save is due while the
/// previous one is still being written, the new one is skipped (and logged), never waited for,
/// so a slow or failing file system never slows training down.
final class CheckpointSaver: @unchecked Sendable {
    // Safe because `pending` and `busy` are guarded by `condition`.
    struct Save {
        var assignment: Assignment
        var step: UInt64
        var state: [Float]
        var parameterCount: Int
    }

    let outbox: Outbox
    let logger: Logger
    let condition = NSCondition()
    var pending: Save?
    var busy = false
    var closed = false

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
            self.condition.unlock()
        }
    }

    func write(_ save: Save) {
        let assignment = save.assignment
        let rank = assignment.rank
        let world = assignment.worldSize
        let slice = CheckpointLayout.slice(elements: save.state.count, rank: rank, worldSize: world)
        var envelope = Envelope()
        envelope.shardReady = .with {
            $0.jobID = assignment.job
            $0.generation = assignment.generation
            $0.step = save.step
            $0.rank = UInt32(rank)
            $0.worldSize = UInt32(world)
            $0.stateCount = UInt64(save.state.count)
            $0.parameterCount = UInt64(save.parameterCount)
            $0.firstElement = UInt64(slice.lowerBound)
            $0.elements = UInt64(slice.count)
        }
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
            envelope.shardReady.path = record.file
            envelope.shardReady.sizeBytes = UInt64(record.bytes)
            envelope.shardReady.sha256 = Data(hex: record.sha256)
            self.logger.debug(
                "checkpoint shard durable",
                metadata: [
                    LogKey.job: "\(assignment.job)", "step": "\(save.step)", "bytes": "\(record.bytes)",
                    "milliseconds": "\((ContinuousClock.now - started).milliseconds)",
                ]
            )
        } catch {
            envelope.shardReady.error = "\(error)"
            self.logger.error(
                "could not save a checkpoint shard; training goes on",
                metadata: [LogKey.job: "\(assignment.job)", "step": "\(save.step)", LogKey.reason: "\(error)"]
            )
        }
        self.outbox.post(envelope)
    }
}

extension Data {
    /// Bytes from lowercase or uppercase hex text (pairs of digits; anything else is skipped).
    init(hex: String) {
        var bytes: [UInt8] = []
        var high: UInt8?
        for character in hex.utf8 {
            let value: UInt8
            switch character {
            case 48...57: value = character - 48
            case 97...102: value = character - 87
            case 65...70: value = character - 55
            default: continue
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        self.init(bytes)
    }
}
