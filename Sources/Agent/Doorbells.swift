import CDoorbell
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The fast path of a step's hand-overs between the agent and its workers: counters and flags in
/// the node's result region (docs/worker-protocol.md, "Doorbells"), one cache line per writer.
///
/// Over the socket alone each hand-over (a worker's buckets and gradients to the agent, the agent's
/// `apply` back, the worker's `applied`) costs a send, the wake-up of the side that sleeps in a
/// read, and JSON on both sides: tens of microseconds each on a busy machine, most of the
/// node-local sum of a 1 MiB model. With doorbells, the side that waits spins on the other's
/// counter for a moment; only if that is not enough does it raise its `sleeping` flag and sleep on
/// the socket, and the side that rings sends its message only when it sees that flag:
/// - a worker raises its `events` counter for each `bucket`, `gradients` (with `loss_sum` beside
///   it) and `applied`, and sends the message, with the event's number, only when the agent
///   sleeps. The agent spins for the next event for `agentSpin`, then sleeps, looking at the
///   counter again from time to time (`recheck`). A message that crossed the flag is a wake-up,
///   not the event twice: `TorchWorker.receive` skips it by its number.
/// - the agent raises `apply` (with the scale beside it) and sends `apply`, with the counter's
///   value as `seq`, to each worker whose flag is up; a worker that has sent its gradients spins
///   for it for `workerSpinMicroseconds`, then sleeps. A worker that has not answered within
///   `recheck` is sent the message anyway (it skips a `seq` it has applied).
///
/// Each side stores its flag or counter, then reads the other's, with a full fence between, so that
/// of two sides crossing at least one sees the other; the rechecks (after 1 ms, then twice as late
/// each time up to 32 ms) bound what a lost wake-up could cost, never a hang.
///
/// Offered on x86-64 only, whose stores are seen in the order they are made: the Python worker
/// stores its counter plainly after the gradients it announces, and its fence is a lock's atomic
/// exchange; on a weaker memory model the counter could be seen before the gradients.
///
/// A worker does not spin for its next request: with more processes than cores (a 2-core machine
/// running 2 workers and the agent), workers spinning while the agent turned to the next step took
/// the agent's core, and an iteration of the node-sum benchmark at 1 MiB went from 155 to 400 us.
/// `sched_yield` does not hand the core over reliably enough for that under Linux's EEVDF
/// scheduler; the spins that are kept wait for work that another process does at once.
final class Doorbells {
    /// One line per writer, so that the agent's and each worker's stores never share a cache line.
    static let lineBytes = 64
    /// How long the agent spins for a worker's next event before it sleeps: long enough to cover a
    /// worker's wake-up and reply when the event is close (the last buckets, a step without
    /// backward, `applied`), short against the backward of any real model.
    static let agentSpin: Duration = .microseconds(200)
    /// How long a worker that sent its gradients spins for `apply` before it sleeps: long enough
    /// for the node's sum when the job has one node.
    static let workerSpinMicroseconds = 200
    /// How soon the agent, asleep on the socket, looks at the doorbell again; each later look
    /// comes twice as late, up to `longestRecheck`.
    static let recheck: Duration = .milliseconds(1)
    static let longestRecheck: Duration = .milliseconds(32)

    /// Whether this machine offers doorbells (see the type's comment).
    static var supported: Bool {
        #if arch(x86_64)
            true
        #else
            false
        #endif
    }

    /// The bytes the doorbells of `workers` workers take.
    static func bytes(workers: Int) -> Int { Self.lineBytes * (1 + workers) }

    /// Where the doorbells start in a result region whose floats take `floatBytes`.
    static func offset(afterFloatBytes floatBytes: Int) -> Int {
        (floatBytes + Self.lineBytes - 1) / Self.lineBytes * Self.lineBytes
    }

    let base: UnsafeMutableRawPointer
    /// The `apply` counter's value: how many times the agent rang it.
    var applied: UInt32 = 0

    /// The doorbells at `base`: zeroed (a new region is), `bytes(workers:)` long.
    init(base: UnsafeMutableRawPointer) {
        self.base = base
    }

    func word(line: Int, _ index: Int) -> UnsafeMutablePointer<UInt32> {
        (self.base + line * Self.lineBytes).assumingMemoryBound(to: UInt32.self) + index
    }

    /// Worker `worker`'s events counter.
    func events(of worker: Int) -> UInt32 { rm_bell_read(self.word(line: 1 + worker, 0)) }

    /// Whether worker `worker`'s `sleeping` flag is up (read after a fence, by `ringApply`'s caller).
    func sleeps(_ worker: Int) -> Bool { rm_bell_read(self.word(line: 1 + worker, 1)) != 0 }

    /// The loss sum the worker stored with its last `gradients` event (read after its counter).
    func lossSum(of worker: Int) -> Double {
        (self.base + (1 + worker) * Self.lineBytes).load(fromByteOffset: 8, as: Double.self)
    }

    /// Whether worker `worker` rang the event after `taken` within `spin`.
    func hasEvent(of worker: Int, after taken: UInt32, spin: Duration = Doorbells.agentSpin) -> Bool {
        let target = taken &+ 1
        // Wrapping: the counter runs for ever.
        let rang = { Int32(bitPattern: self.events(of: worker) &- target) >= 0 }
        if rang() { return true }
        guard spin > .zero else { return false }
        let deadline = ContinuousClock.now + spin
        while true {
            for _ in 0..<32 {
                if rang() { return true }
                rm_cpu_relax()
            }
            if ContinuousClock.now >= deadline { return false }
            // Gives the core to a worker that waits for it (more processes than cores).
            sched_yield()
        }
    }

    /// Raises or lowers the agent's `sleeping` flag; after raising it, a fence, so that the counter
    /// the caller reads next is at least as new as any worker's look at the flag.
    func agentSleeps(_ sleeping: Bool) {
        rm_bell_ring(self.word(line: 0, 2), sleeping ? 1 : 0)
        if sleeping { rm_fence() }
    }

    /// Rings `apply` with `scale`, then a fence, so that `sleeps` reads each worker's flag as it
    /// stood after the ring; returns the counter's new value, which the message carries.
    func ringApply(scale: Float) -> UInt32 {
        self.applied &+= 1
        (self.base).storeBytes(of: scale, toByteOffset: 4, as: Float.self)
        rm_bell_ring(self.word(line: 0, 0), self.applied)
        rm_fence()
        return self.applied
    }
}
