import CDoorbell
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The fast path of a step's hand-overs between the agent and its workers: counters in the node's
/// result region (docs/worker-protocol.md, "Doorbells"), one cache line each, that a waiting side
/// spins on for a moment before it sleeps on the socket.
///
/// Every message stays on the socket, which is still what wakes a sleeping side and what carries
/// errors and the ends of processes; a doorbell only lets a side that is still spinning go on
/// before the message arrives (or without being woken by it), without the wake-ups that cost tens
/// of microseconds each on a busy machine. So:
/// - a worker raises its line's `events` counter (with `loss_sum` beside it, for `gradients`)
///   before it sends each `bucket`, `gradients` and `applied` message. The agent, waiting for the
///   next one, spins on the counter for `agentSpin`, then reads the socket. An event taken from the
///   counter leaves its message to come; the worker's connection skips it then, checking it is the
///   one the counter announced (`TorchWorker.duplicates`).
/// - the agent raises line 0's `apply` counter (with the scale beside it) before it sends `apply`
///   (which carries the counter's value as `seq`); a worker that has sent its gradients spins on it
///   for `workerSpinMicroseconds` before it reads the socket, and skips the `apply` whose `seq` it
///   has applied already.
///
/// A worker does not spin for its next request: with more processes than cores (a 2-core machine
/// running 2 workers and the agent), workers spinning while the agent turns to the next step took
/// the agent's core, and an iteration of the node-sum benchmark at 1 MiB went from 155 to 400 us.
/// `sched_yield` does not hand the core over reliably enough for that under Linux's EEVDF
/// scheduler; the spins that are kept wait for work that another process does at once.
///
/// Offered on x86-64 only, whose stores are seen in the order they are made: the Python worker
/// writes the counters without a fence (it has none to call), so on a weaker memory model the
/// counter could be seen before the gradients it announces.
final class Doorbells {
    /// One line per counter, so that the agent's and each worker's stores never share a cache line.
    static let lineBytes = 64
    /// How long the agent spins for a worker's next event before it sleeps on the socket: long
    /// enough to cover a worker's wake-up and its reply when the event is close (the last buckets,
    /// a step without backward), short against the backward of any real model.
    static let agentSpin: Duration = .microseconds(200)
    /// How long a worker that sent its gradients spins for `apply` before it sleeps on the socket:
    /// long enough for the node's sum when the job has one node.
    static let workerSpinMicroseconds = 200

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
    let workers: Int
    /// The `apply` counter's value: how many times the agent rang it.
    var applied: UInt32 = 0
    /// Per worker, the events the agent has taken, from its counter or from its messages.
    var taken: [UInt32]

    /// The doorbells at `base` (zeroed: a new region is), for `workers` workers.
    init(base: UnsafeMutableRawPointer, workers: Int) {
        self.base = base
        self.workers = workers
        self.taken = [UInt32](repeating: 0, count: workers)
    }

    func line(_ index: Int) -> UnsafeMutableRawPointer { self.base + index * Self.lineBytes }

    /// Worker `worker`'s events counter.
    func events(of worker: Int) -> UInt32 {
        rm_bell_read(self.line(1 + worker).assumingMemoryBound(to: UInt32.self))
    }

    /// The loss sum the worker stored with its last `gradients` event (read after its counter).
    func lossSum(of worker: Int) -> Double {
        self.line(1 + worker).load(fromByteOffset: 8, as: Double.self)
    }

    /// Whether worker `worker` rang its next event (the one after `taken[worker]`) within `spin`;
    /// counts it taken when it did.
    func takeEvent(of worker: Int, spin: Duration = Doorbells.agentSpin) -> Bool {
        let target = self.taken[worker] &+ 1
        let rang = {
            // Wrapping: the counter runs for ever.
            Int32(bitPattern: self.events(of: worker) &- target) >= 0
        }
        var reached = rang()
        if !reached {
            let deadline = ContinuousClock.now + spin
            spinning: while true {
                for _ in 0..<32 {
                    if rang() {
                        reached = true
                        break spinning
                    }
                    rm_cpu_relax()
                }
                if ContinuousClock.now >= deadline { break }
                // Gives the core to a worker that waits for it (more processes than cores).
                sched_yield()
            }
        }
        if reached { self.taken[worker] = target }
        return reached
    }

    /// Counts worker `worker`'s next event taken from its message.
    func tookMessage(of worker: Int) { self.taken[worker] &+= 1 }

    /// Rings `apply` with `scale`; returns the counter's new value, which the message carries.
    func ringApply(scale: Float) -> UInt32 {
        self.applied &+= 1
        self.line(0).storeBytes(of: scale, toByteOffset: 4, as: Float.self)
        rm_bell_ring(self.line(0).assumingMemoryBound(to: UInt32.self), self.applied)
        return self.applied
    }
}
