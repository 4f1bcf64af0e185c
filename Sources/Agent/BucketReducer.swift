import Collectives
import Foundation

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
