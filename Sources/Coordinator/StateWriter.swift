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
/// Batches that queue while a write is in progress are written together, in one transaction
/// (group commit): under load the writer falls behind by one write, not by one write per event.
///
/// The writer never takes the engine lock. Its own state (which jobs cannot be saved) sits behind
/// its own lock, and what the engine must learn of a manifest write is handed to `outcomes`, a
/// queue of its own. An operator's command, which is acknowledged only once durable, queues its
/// writes under the engine lock and waits for them (`Waiting`) after releasing it.
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
        /// Done once all of the above is written (or failed and was recorded as not saved); never
        /// done when the store refused the writes because this coordinator no longer leads.
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

    let store: any StateStore
    let logger: Logger
    let now: @Sendable () -> Date
    /// Batches waiting for the writer's thread, and whether it was told to end.
    let pending = Pending()
    /// Where manifest outcomes are delivered, one at a time, in order.
    let outcomes = DispatchQueue(label: "ringmaster.checkpoint-outcomes")
    let failing = Mutex<[String: NotSaved]>([:])

    /// The queue between the engine and the writer's thread: a list under a condition variable.
    final class Pending: @unchecked Sendable {
        // Safe because `batches` and `ended` are touched only with `condition` locked.
        let condition = NSCondition()
        var batches: [Queued] = []
        var ended = false
    }

    /// A batch as queued: an event's, or a command's records (written on their own), with the
    /// caller waiting for it (a command, a drain).
    struct Queued {
        var batch = Batch()
        var command: [CoordinatorMachine.JobRecord]?
        var waiting: Waiting?
    }

    /// A caller waiting for its place in the queue to be written.
    final class Waiting: Sendable {
        let done = DispatchSemaphore(value: 0)
        /// Why the records could not be written (for a batch: why its transaction failed, or why
        /// this coordinator does not tell agents of it).
        let error = Mutex<(any Error)?>(nil)

        /// Returns once the writer got this far, or throws why the records were not written.
        /// Waits at most `timeout`: a state database that does not answer in that long is reported
        /// as such (the write may still land later). Never called under the engine lock.
        func wait(timeout: Duration = .seconds(120)) throws {
            guard self.done.wait(timeout: .now() + .seconds(Int(timeout.components.seconds))) == .success else {
                throw CoordinatorError(
                    .stateStore,
                    "the state database did not finish a write within \(timeout); the change may still be saved: check with `ringmaster job status`"
                )
            }
            if let failure = self.error.withLock({ $0 }) { throw failure }
        }
    }

    /// A writer to `store`, with its thread started; `stop` ends it.
    init(store: any StateStore, logger: Logger, now: @escaping @Sendable () -> Date) {
        self.store = store
        self.logger = logger
        self.now = now
        let thread = Thread { [pending = self.pending, weak self] in
            while let taken = Self.take(from: pending) {
                guard let self else { return }
                self.carryOut(taken)
            }
        }
        thread.name = "ringmaster-state-writer"
        thread.start()
    }

    deinit { self.stop() }

    /// Ends the writer's thread once what is queued is written.
    func stop() {
        self.pending.condition.lock()
        self.pending.ended = true
        self.pending.condition.signal()
        self.pending.condition.unlock()
    }

    /// Every batch queued, once there is one; nil once ended with nothing left.
    static func take(from pending: Pending) -> [Queued]? {
        pending.condition.lock()
        defer { pending.condition.unlock() }
        while pending.batches.isEmpty {
            if pending.ended { return nil }
            pending.condition.wait()
        }
        defer { pending.batches.removeAll(keepingCapacity: true) }
        return pending.batches
    }

    func enqueue(_ queued: Queued) {
        self.pending.condition.lock()
        self.pending.batches.append(queued)
        self.pending.condition.signal()
        self.pending.condition.unlock()
    }

    /// Queues `batch` behind every batch submitted before it. An empty batch (an event that
    /// changed nothing to save and told nobody anything) is not queued at all, unless someone
    /// waits for it: `waiting` learns once it is carried out, with the failure of its records'
    /// transaction if that failed (its `then` runs all the same where the store acts on failed
    /// writes, as an event's does).
    func submit(_ batch: Batch, waiting: Waiting? = nil) {
        guard
            waiting != nil || !batch.records.isEmpty || !batch.progress.isEmpty || !batch.manifests.isEmpty
                || !batch.then.isEmpty
        else { return }
        self.enqueue(Queued(batch: batch, waiting: waiting))
    }

    /// Queues `records` to be written durably, in a transaction of their own, once everything
    /// queued before them is written; the `Waiting` returned says when they are, or why none of
    /// them was written. For operators' commands, which are acknowledged only once durable.
    func queue(records: [CoordinatorMachine.JobRecord]) -> Waiting {
        let waiting = Waiting()
        if records.isEmpty {
            waiting.done.signal()
        } else {
            self.enqueue(Queued(command: records, waiting: waiting))
        }
        return waiting
    }

    /// Writes `records` as `queue(records:)` does and waits for them (`Waiting.wait`).
    func write(records: [CoordinatorMachine.JobRecord], timeout: Duration = .seconds(120)) throws {
        try self.queue(records: records).wait(timeout: timeout)
    }

    /// Returns once everything submitted before the call is written and carried out, and the
    /// manifest outcomes it caused are handled (and what they submitted is written too), or
    /// after `timeout`. Never called under the engine lock, which the outcomes take.
    func drain(timeout: Duration = .seconds(30)) {
        let deadline = DispatchTime.now() + .seconds(Int(timeout.components.seconds))
        for step in 0..<2 {
            let waiting = Waiting()
            self.enqueue(Queued(waiting: waiting))
            guard waiting.done.wait(timeout: deadline) == .success else { return }
            if step == 0 { self.outcomes.sync {} }
        }
    }

    /// Why a job's state is not being saved, if it is not.
    func notSaved(_ job: String) -> NotSaved? {
        self.failing.withLock { $0[job] }
    }

    /// Writes what `queued` asks, as few transactions as it takes: consecutive batches' records
    /// in one transaction (the newest record of each job; fsynced if any batch asked), then the
    /// progress likewise, then the manifests; then every batch's `then`, in order. A command's
    /// records are written on their own, in their place, so that their failure is theirs alone.
    func carryOut(_ queued: [Queued]) {
        var start = 0
        while start < queued.count {
            if let records = queued[start].command {
                do {
                    try self.store.save(jobs: records, durable: true)
                    for record in records { self.saved(record.spec.name, .record) }
                } catch {
                    queued[start].waiting?.error.withLock { $0 = error }
                }
                queued[start].waiting?.done.signal()
                start += 1
                continue
            }
            var end = start
            while end < queued.count, queued[end].command == nil { end += 1 }
            let failure = self.carryOut(batches: queued[start..<end].map(\.batch))
            for waiting in queued[start..<end].compactMap(\.waiting) {
                if let failure { waiting.error.withLock { $0 = failure } }
                waiting.done.signal()
            }
            start = end
        }
    }

    /// Carries out `batches` as one: returns why their records were not written, or why agents
    /// are not told of them (this coordinator may no longer lead), if either.
    @discardableResult
    func carryOut(batches: [Batch]) -> (any Error)? {
        var records: [String: CoordinatorMachine.JobRecord] = [:]
        var order: [String] = []
        var durable = false
        var progress: [String: CoordinatorService.JobProgress] = [:]
        for batch in batches {
            for record in batch.records {
                if records.updateValue(record, forKey: record.spec.name) == nil { order.append(record.spec.name) }
            }
            durable = durable || (batch.durable && !batch.records.isEmpty)
            progress.merge(batch.progress) { $1 }
        }
        // A coordinator that no longer leads (its etcd fence failed), or that cannot tell (a
        // shared store's write failed), tells agents nothing more: what it would push is the
        // leader's to decide.
        var deposed = false
        var failure: (any Error)?
        if !records.isEmpty {
            let written = order.compactMap { records[$0] }
            do {
                try self.store.save(jobs: written, durable: durable)
                for record in written { self.saved(record.spec.name, .record) }
            } catch let error as CoordinatorError where error.code == .notLeading {
                deposed = true
                failure = error
            } catch {
                for record in written { self.failed(record.spec.name, .record, error) }
                if !self.store.actsOnFailedWrites { deposed = true }
                failure = error
            }
        }
        if !progress.isEmpty {
            var encoded: [String: Data] = [:]
            for (job, progress) in progress {
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
            } catch let error as CoordinatorError where error.code == .notLeading {
                deposed = true
                failure = failure ?? error
            } catch {
                // Progress is what `job status` shows: its loss alone stops nothing.
                for job in encoded.keys.sorted() { self.failed(job, .progress, error) }
            }
        }
        if deposed {
            self.logger.warning(
                "not leading, or not sure of it: the state was not saved, and agents are not told of it",
                metadata: ["batches": "\(batches.count)"])
            return failure
        }
        for batch in batches {
            for write in batch.manifests {
                let outcome = Self.commit(write, logger: self.logger)
                self.outcomes.async { write.outcome(outcome) }
            }
        }
        for batch in batches {
            for body in batch.then { body() }
        }
        return failure
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
                metadata: [
                    LogKey.job: "\(write.manifest.job)", "directory": "\(write.root)", LogKey.reason: "\(error)",
                ]
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
