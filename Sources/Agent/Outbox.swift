import JobModel
import RingmasterWire
import Synchronization

/// Messages for the coordinator that outlive a control session: the trainer posts step reports
/// (and the agent its leave) from any thread; whichever session is live sends them, in order.
/// Held while the agent is disconnected (the coordinator refuses those of a past generation);
/// beyond `capacity` the oldest are dropped.
final class Outbox: Sendable {
    struct State {
        var queue: [Envelope] = []
        var waiter: CheckedContinuation<[Envelope], Never>?
    }

    let state = Mutex(State())
    let capacity: Int

    init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    /// Queues an envelope and wakes the session that waits for one.
    func post(_ envelope: Envelope) {
        let wake = self.state.withLock { state -> (CheckedContinuation<[Envelope], Never>, [Envelope])? in
            state.queue.append(envelope)
            if state.queue.count > self.capacity {
                state.queue.removeFirst(state.queue.count - self.capacity)
            }
            guard let waiter = state.waiter else { return nil }
            state.waiter = nil
            defer { state.queue = [] }
            return (waiter, state.queue)
        }
        if let (waiter, envelopes) = wake { waiter.resume(returning: envelopes) }
    }

    /// Everything queued, waiting until there is something; empty when the task is cancelled.
    func take() async -> [Envelope] {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[Envelope], Never>) in
                let ready = self.state.withLock { state -> [Envelope]? in
                    if !state.queue.isEmpty || Task.isCancelled {
                        defer { state.queue = [] }
                        return state.queue
                    }
                    // One session takes at a time; a stale waiter (from a session that ended) is released.
                    state.waiter?.resume(returning: [])
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = self.state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: [])
        }
    }

    // The domain messages the trainer and the checkpoint saver post, converted to their wire
    // form here, at the session edge.

    /// Queues a step report.
    func post(_ report: StepReport) {
        self.post(Envelope(report))
    }

    /// Queues a leave.
    func post(_ leave: Leave) {
        self.post(Envelope(leave))
    }

    /// Queues a member's report that its work in a generation failed.
    func post(_ failure: GenerationFailure) {
        self.post(Envelope(failure))
    }

    /// Queues a shard report of `job`'s `generation`.
    func post(_ shard: ShardReport, job: String, generation: UInt64) {
        self.post(Envelope(shard, job: job, generation: generation))
    }

    /// Puts back envelopes a session could not send, ahead of newer ones.
    func putBack(_ envelopes: [Envelope]) {
        self.state.withLock { $0.queue.insert(contentsOf: envelopes, at: 0) }
    }
}
