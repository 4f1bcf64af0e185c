import Checkpointing
import ControlPlane
import CoordinatorCore
import Dispatch
import Foundation
import Logging
import Synchronization

/// The one writer of the coordinator's job state: job records and progress in the state database,
/// checkpoint manifests on shared storage, in the order the events that asked for them happened,
/// on a thread of its own rather than under the engine lock.
///
/// Each event's actions become one `Batch`: what to write, then what may be done only once it is
/// written (pushes to agents, the log lines that say so). The engine submits batches while it
/// holds its lock, so they queue in event order; the writer writes each, then carries out its
/// `then` part. So what an agent is told (a generation, a cursor) is on disk before it can hear
/// it, as when the writes were made under the lock, but an fsync no longer holds up every other
/// connection's events.
///
/// The writer never takes the engine lock. Its own state (which jobs cannot be saved) sits behind
/// its own lock, and what the engine must learn of a manifest write is handed to `outcomes`, a
/// queue of its own, so an operator's command may wait for the writer (`write(records:)`) while it
/// holds the engine lock without a cycle.
final class StateWriter: Sendable {
    /// What one event asks to write, and what may be done only once it is written.
    struct Batch: Sendable {
        /// Job records to save in one transaction.
        var records: [CoordinatorMachine.JobRecord] = []
        /// Whether the records' transaction is fsynced (anything but a cursor move).
        var durable = false
        /// Progress to save, by job; encoded on the writer.
        var progress: [String: CoordinatorService.JobProgress] = [:]
        /// Checkpoints to commit, in order.
        var manifests: [ManifestWrite] = []
        /// Done once all of the above is written (or failed and was recorded as not saved).
        var then: [@Sendable () -> Void] = []

        /// Adds something to do once the batch is written.
        mutating func then(_ body: @escaping @Sendable () -> Void) { self.then.append(body) }
    }

    /// A checkpoint's manifest to write (the commit), how many checkpoints its root keeps, and
    /// who hears how it ended (on `outcomes`; it may take the engine lock).
    struct ManifestWrite: Sendable {
        var manifest: CheckpointManifest
        var root: String
        var keep: Int
        var outcome: @Sendable (ManifestOutcome) -> Void
    }

    /// How a manifest write ended, for the engine.
    enum ManifestOutcome: Sendable {
        /// Committed; `pruned` older checkpoints were deleted.
        case committed(CheckpointManifest, root: String, pruned: Int)
        /// Not committed: the previous checkpoint stays the latest.
        case failed(CheckpointManifest, reason: String)
    }

    /// The two things saved of a job: its durable record, and its progress beside it.
    enum Write: Sendable { case record, progress }

    /// A job whose writes fail: which kind failed, since when and why.
    struct NotSaved: Sendable {
        var kind: Write
        var since: Date
        var reason: String
    }

    let store: StateStore
    let logger: Logger
    let now: @Sendable () -> Date
    let queue = DispatchQueue(label: "ringmaster.state-writer")
    /// Where manifest outcomes are delivered, one at a time, in order.
    let outcomes = DispatchQueue(label: "ringmaster.checkpoint-outcomes")
    let failing = Mutex<[String: NotSaved]>([:])

    /// A writer to `store`.
    init(store: StateStore, logger: Logger, now: @escaping @Sendable () -> Date) {
        self.store = store
        self.logger = logger
        self.now = now
    }

    /// Queues `batch` behind every batch submitted before it.
    func submit(_ batch: Batch) {
        self.queue.async { self.carryOut(batch) }
    }

    /// Writes `records` durably once everything queued before them is written, and returns when
    /// they are (or throws, having written none of them). For operators' commands, which are
    /// acknowledged only once durable.
    func write(records: [CoordinatorMachine.JobRecord]) throws {
        try self.queue.sync {
            try self.store.save(jobs: records, durable: true)
            for record in records { self.saved(record.spec.name, .record) }
        }
    }

    /// Returns once everything submitted before the call is written and carried out, and the
    /// manifest outcomes it caused are handled (and what they submitted is written too). Never
    /// called under the engine lock, which the outcomes take.
    func drain() {
        self.queue.sync {}
        self.outcomes.sync {}
        self.queue.sync {}
    }

    /// Why a job's state is not being saved, if it is not.
    func notSaved(_ job: String) -> NotSaved? {
        self.failing.withLock { $0[job] }
    }

    func carryOut(_ batch: Batch) {
        if !batch.records.isEmpty {
            do {
                try self.store.save(jobs: batch.records, durable: batch.durable)
                for record in batch.records { self.saved(record.spec.name, .record) }
            } catch {
                for record in batch.records { self.failed(record.spec.name, .record, error) }
            }
        }
        if !batch.progress.isEmpty {
            var encoded: [String: Data] = [:]
            for (job, progress) in batch.progress {
                do {
                    encoded[job] = try progress.encoded()
                } catch {
                    self.logger.error(
                        "could not encode a job's progress", metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"])
                }
            }
            do {
                try self.store.save(progress: encoded)
                for job in encoded.keys { self.saved(job, .progress) }
            } catch {
                for job in encoded.keys.sorted() { self.failed(job, .progress, error) }
            }
        }
        for write in batch.manifests {
            let outcome = Self.commit(write, logger: self.logger)
            self.outcomes.async { write.outcome(outcome) }
        }
        for body in batch.then { body() }
    }

    /// Writes a manifest (temporary name, fsync, rename, directory fsync), then prunes old
    /// checkpoints.
    static func commit(_ write: ManifestWrite, logger: Logger) -> ManifestOutcome {
        do {
            try CheckpointWriter.commit(write.manifest, root: write.root)
        } catch {
            return .failed(write.manifest, reason: "\(error)")
        }
        do {
            return .committed(
                write.manifest, root: write.root,
                pruned: try CheckpointRetention.prune(root: write.root, keep: write.keep).count)
        } catch {
            logger.warning(
                "could not delete old checkpoints",
                metadata: [LogKey.job: "\(write.manifest.job)", "directory": "\(write.root)", LogKey.reason: "\(error)"]
            )
            return .committed(write.manifest, root: write.root, pruned: 0)
        }
    }

    /// A job's record (or progress) was written: if that was what could not be saved, say it is
    /// saved again. (Only the same kind of write clears it: near a full disk a small record may fit
    /// where the progress beside it does not, and the log must not flip at every step.)
    func saved(_ job: String, _ kind: Write) {
        let cleared = self.failing.withLock { failing in
            guard failing[job]?.kind == kind else { return false }
            failing[job] = nil
            return true
        }
        if cleared {
            self.logger.notice("the job's state is being saved again", metadata: [LogKey.job: "\(job)"])
        }
    }

    /// A write of a job's record (or progress) failed: the job goes on, and says (in `job status`
    /// and, once, in the log) that what it does now is lost to a restart.
    func failed(_ job: String, _ kind: Write, _ error: any Error) {
        let reason = (error as? CoordinatorError)?.message ?? "\(error)"
        let first = self.failing.withLock { failing in
            guard failing[job] == nil else { return false }
            failing[job] = NotSaved(kind: kind, since: self.now(), reason: reason)
            return true
        }
        if first {
            self.logger.error(
                "the job's state is not being saved: it goes on, but its progress from now on is lost if the coordinator restarts",
                metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"]
            )
        }
    }
}
