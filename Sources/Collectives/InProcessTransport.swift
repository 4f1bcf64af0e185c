#if canImport(Glibc)
    import Glibc
#endif

/// Connects `worldSize` in-process ranks through byte queues, one per ordered pair, so that
/// algorithm tests run many ranks in one process with no sockets. Sends never block (queues
/// grow), so any exchange pattern that would work over sockets works here.
public final class InProcessFabric: Sendable {
    /// Ranks.
    public let worldSize: Int
    let mailboxes: [Mailbox]  // index from * worldSize + to

    /// Makes the queues for `worldSize` ranks.
    public init(worldSize: Int) {
        self.worldSize = worldSize
        self.mailboxes = (0..<(worldSize * worldSize)).map { _ in Mailbox() }
    }

    /// The transport of `rank`.
    public func transport(rank: Int) -> InProcessTransport {
        InProcessTransport(rank: rank, fabric: self)
    }

    func mailbox(from: Int, to: Int) -> Mailbox {
        self.mailboxes[from * self.worldSize + to]
    }

    /// Fails every rank's operations (as a dying process would fail its peers').
    public func abortAll(reason: String) {
        for mailbox in self.mailboxes { mailbox.abort(reason) }
    }
}

/// One rank's view of an `InProcessFabric`.
public final class InProcessTransport: Transport {
    public let rank: Int
    public var worldSize: Int { self.fabric.worldSize }
    let fabric: InProcessFabric

    init(rank: Int, fabric: InProcessFabric) {
        self.rank = rank
        self.fabric = fabric
    }

    public func exchange(
        send: (peer: Int, bytes: UnsafeRawBufferPointer)?,
        receive: (peer: Int, bytes: UnsafeMutableRawBufferPointer)?,
        deadline: ContinuousClock.Instant,
        operation: String,
        received: (Int) throws -> Void
    ) throws {
        if let send {
            try self.fabric.mailbox(from: self.rank, to: send.peer).put(
                send.bytes, operation: operation, peer: send.peer)
        }
        if let receive {
            try self.fabric.mailbox(from: receive.peer, to: self.rank).take(
                into: receive.bytes,
                deadline: deadline,
                operation: operation,
                peer: receive.peer,
                received: received
            )
        }
    }

    public func abort(reason: String) {
        // Wake this rank's receives: the queues into it.
        for from in 0..<self.worldSize {
            self.fabric.mailbox(from: from, to: self.rank).abort(reason)
        }
    }

    /// Closes this rank's queues to its peers: their receives from it fail, as they would when a
    /// TCP peer closes its sockets.
    public func close() {
        for peer in 0..<self.worldSize where peer != self.rank {
            self.fabric.mailbox(from: self.rank, to: peer).abort("rank \(self.rank) closed its connections")
        }
    }
}

/// A byte queue with a condition variable.
final class Mailbox: @unchecked Sendable {
    // Safe because every field is read and written only with `mutex` held.
    var mutex = pthread_mutex_t()
    var condition = pthread_cond_t()
    var bytes: [UInt8] = []
    var readIndex = 0
    var aborted: String?

    init() {
        pthread_mutex_init(&self.mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&self.condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(&self.condition)
        pthread_mutex_destroy(&self.mutex)
    }

    func put(_ data: UnsafeRawBufferPointer, operation: String, peer: Int) throws {
        pthread_mutex_lock(&self.mutex)
        defer { pthread_mutex_unlock(&self.mutex) }
        if let reason = self.aborted {
            throw CollectiveError(.aborted, operation: operation, peer: peer, reason)
        }
        self.bytes.append(contentsOf: data)
        pthread_cond_broadcast(&self.condition)
    }

    func take(
        into destination: UnsafeMutableRawBufferPointer,
        deadline: ContinuousClock.Instant,
        operation: String,
        peer: Int,
        received: (Int) throws -> Void
    ) throws {
        var done = 0
        while done < destination.count {
            pthread_mutex_lock(&self.mutex)
            while self.readIndex == self.bytes.count && self.aborted == nil {
                let remaining = deadline - ContinuousClock.now
                if remaining <= .zero {
                    pthread_mutex_unlock(&self.mutex)
                    throw CollectiveError(
                        .deadlineExceeded, operation: operation, peer: peer, bytesDone: done,
                        "no data from rank \(peer) before the deadline")
                }
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                let wait = min(remaining, .milliseconds(100))
                var until = timespec(
                    tv_sec: now.tv_sec + Int(wait.components.seconds),
                    tv_nsec: now.tv_nsec + Int(wait.components.attoseconds / 1_000_000_000)
                )
                if until.tv_nsec >= 1_000_000_000 {
                    until.tv_sec += 1
                    until.tv_nsec -= 1_000_000_000
                }
                pthread_cond_timedwait(&self.condition, &self.mutex, &until)
            }
            if let reason = self.aborted {
                pthread_mutex_unlock(&self.mutex)
                throw CollectiveError(.aborted, operation: operation, peer: peer, bytesDone: done, reason)
            }
            let count = min(self.bytes.count - self.readIndex, destination.count - done)
            self.bytes.withUnsafeBytes { source in
                (destination.baseAddress! + done).copyMemory(
                    from: source.baseAddress! + self.readIndex, byteCount: count)
            }
            self.readIndex += count
            if self.readIndex == self.bytes.count {
                self.bytes.removeAll(keepingCapacity: true)
                self.readIndex = 0
            }
            pthread_mutex_unlock(&self.mutex)
            done += count
            try received(done)
        }
    }

    func abort(_ reason: String) {
        pthread_mutex_lock(&self.mutex)
        if self.aborted == nil { self.aborted = reason }
        pthread_cond_broadcast(&self.condition)
        pthread_mutex_unlock(&self.mutex)
    }
}
