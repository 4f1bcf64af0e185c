import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The agent's data-plane listening socket. It lives as long as the agent (one port across
/// generations), runs the acceptor's side of every handshake (`DataPlaneHandshake`) on one thread
/// of its own, and hands each proved connection to the transport of the generation it belongs to.
///
/// ## Floods
/// Anyone who can reach the port can open connections to it, so nothing about them is allowed to
/// grow with their number. All pending handshakes share one `poll` loop (no thread per
/// connection); at most `maximumPending` are pending at once, each for at most
/// `handshakeTimeout`; a connection that sends anything but the protocol's magic is closed as soon
/// as its first bytes arrive. When a new connection finds every slot taken, the oldest pending
/// handshake is dropped for it: a peer of the job proves itself within a round trip of its
/// connect, so under a flood it loses only to connections newer than itself, and an idle
/// connection holds a slot only until `maximumPending` newer ones arrive. Every refused or dropped
/// connection is counted (`refused`) and the last reason kept (`lastRefusal`).
public final class DataPlaneListener: @unchecked Sendable {
    // Safe because `secrets`, `ready`, `closed`, `stopped`, `refused`, `dropped` and `lastRefusal`
    // are guarded by `lock`; the file descriptors are set once; the pending handshakes belong to
    // the listener's thread alone.
    let fd: Int32
    let wakeRead: Int32
    let wakeWrite: Int32
    /// The bound port.
    public let port: Int
    /// Handshakes pending at once, at most.
    public let maximumPending: Int
    /// Longest a connection may take to prove itself.
    public let handshakeTimeout: Duration
    let lock = NSCondition()
    var secrets: [UInt64: (rank: Int, secret: [UInt8])] = [:]
    var ready: [Key: Int32] = [:]
    var closed = false
    var stopped = false
    /// Connections refused so far (wrong MAC, stranger, old generation, garbage, too slow, or
    /// dropped for a newer one when every slot was taken).
    public private(set) var refused = 0
    /// Of `refused`, those dropped for a newer connection.
    public private(set) var dropped = 0
    /// Why the last refusal happened.
    public private(set) var lastRefusal: String?

    struct Key: Hashable {
        let generation: UInt64
        let from: Int
    }

    /// Binds `host:port` (an IPv4 or IPv6 address, `[v6]` too; port 0 picks one) and starts
    /// accepting. `::` takes IPv4 connections as well, unless the system makes IPv6 sockets
    /// IPv6-only.
    public init(
        host: String = "127.0.0.1", port: Int = 0, maximumPending: Int = 64, handshakeTimeout: Duration = .seconds(2)
    ) throws {
        var endpoint = try Socket.endpoint(host: host, port: port)
        let fd = socket(
            endpoint.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
            0)
        guard fd >= 0 else { throw Socket.error("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        // A long backlog: while the loop is busy, a flood fills the kernel's queue, and a full
        // queue drops a peer's SYN (retried only after a second).
        guard endpoint.withAddress({ bind(fd, $0, $1) }) == 0, listen(fd, SOMAXCONN) == 0 else {
            let error = Socket.error("bind \(host):\(port)")
            Glibc.close(fd)
            throw error
        }
        _ = endpoint.withMutableAddress { getsockname(fd, $0, $1) }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            let error = Socket.error("pipe")
            Glibc.close(fd)
            throw error
        }
        for end in ends { Socket.makeNonBlockingAndCloseOnExec(end) }
        self.fd = fd
        self.wakeRead = ends[0]
        self.wakeWrite = ends[1]
        self.port = endpoint.port
        self.maximumPending = max(1, maximumPending)
        self.handshakeTimeout = handshakeTimeout
        let thread = Thread { [self] in self.serve() }
        thread.name = "ringmaster-dataplane-accept"
        thread.start()
    }

    /// Stops accepting; closes the listening socket, the pending handshakes and the connections
    /// not yet claimed. Returns once the listener's thread has let go of them (at most a second).
    public func close() {
        self.lock.lock()
        let first = !self.closed
        self.closed = true
        for fd in self.ready.values { Glibc.close(fd) }
        self.ready = [:]
        self.lock.broadcast()
        self.lock.unlock()
        guard first else { return }
        self.wake()
        self.lock.lock()
        let deadline = Date().addingTimeInterval(1)
        while !self.stopped && self.lock.wait(until: deadline) {}
        self.lock.unlock()
    }

    /// Accepts connections for `generation`, as rank `rank`, proved with `secret`.
    func expect(generation: UInt64, rank: Int, secret: [UInt8]) {
        self.lock.lock()
        self.secrets[generation] = (rank, secret)
        // Older generations are over: their connections will never be claimed.
        for key in self.ready.keys where key.generation < generation {
            Glibc.close(self.ready.removeValue(forKey: key)!)
        }
        self.secrets = self.secrets.filter { $0.key >= generation }
        self.lock.broadcast()
        self.lock.unlock()
        // A handshake may be waiting for this generation's secret.
        self.wake()
    }

    /// Waits for the authenticated connection from `from` in `generation`.
    func claim(
        generation: UInt64,
        from: Int,
        deadline: ContinuousClock.Instant,
        isCancelled: @Sendable () -> Bool = { false }
    ) throws -> Int32 {
        self.lock.lock()
        defer { self.lock.unlock() }
        while true {
            if let fd = self.ready.removeValue(forKey: Key(generation: generation, from: from)) { return fd }
            if self.closed {
                throw CollectiveError(.io, operation: "connect", peer: from, "the data-plane listener is closed")
            }
            if isCancelled() {
                throw CollectiveError(.aborted, operation: "connect", peer: from, "connecting was cancelled")
            }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw CollectiveError(
                    .deadlineExceeded, operation: "connect", peer: from,
                    "rank \(from) did not connect to this rank's data port in time")
            }
            _ = self.lock.wait(until: Date().addingTimeInterval(min(Socket.seconds(remaining), 0.02)))
        }
    }

    // MARK: - The listener's thread

    func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(self.wakeWrite, &byte, 1)
    }

    /// The poll loop: accepts, moves every pending handshake on as its socket allows, expires the
    /// slow ones, until `close`.
    func serve() {
        var pending: [PendingHandshake] = []
        defer {
            for handshake in pending { Glibc.close(handshake.fd) }
            Glibc.close(self.fd)
            Glibc.close(self.wakeRead)
            Glibc.close(self.wakeWrite)
            self.lock.lock()
            self.stopped = true
            self.lock.broadcast()
            self.lock.unlock()
        }
        var descriptors: [pollfd] = []
        while !self.isClosed {
            descriptors.removeAll(keepingCapacity: true)
            descriptors.append(pollfd(fd: self.fd, events: Int16(POLLIN), revents: 0))
            descriptors.append(pollfd(fd: self.wakeRead, events: Int16(POLLIN), revents: 0))
            for handshake in pending {
                descriptors.append(pollfd(fd: handshake.fd, events: handshake.events, revents: 0))
            }
            let now = ContinuousClock.now
            let nearest = pending.map(\.deadline).min().map { max(.zero, $0 - now) } ?? .seconds(1)
            _ = poll(&descriptors, nfds_t(descriptors.count), Int32(min(Socket.seconds(nearest) * 1000 + 1, 1000)))
            if descriptors[1].revents != 0 { self.drainWake() }
            // Handshakes first (their slots may free up), then new connections.
            var index = 0
            var position = 2
            let secrets = self.lock.withLock { self.secrets }
            while index < pending.count {
                let events = descriptors[position].revents
                position += 1
                switch pending[index].advance(
                    readable: events & Int16(POLLIN | POLLHUP | POLLERR) != 0, writable: events & Int16(POLLOUT) != 0,
                    secrets: secrets, now: ContinuousClock.now)
                {
                case .waiting:
                    index += 1
                case .proved(let key):
                    self.file(pending.remove(at: index).fd, as: key)
                case .refused(let reason):
                    self.refuse(pending.remove(at: index).fd, reason)
                }
            }
            if descriptors[0].revents != 0 { self.acceptAll(into: &pending) }
        }
    }

    var isClosed: Bool { self.lock.withLock { self.closed } }

    func drainWake() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while Glibc.read(self.wakeRead, &bytes, bytes.count) > 0 {}
    }

    /// Accepts every connection waiting in the backlog, dropping the oldest pending handshake for
    /// each one that finds every slot taken.
    func acceptAll(into pending: inout [PendingHandshake]) {
        while true {
            let client = accept(self.fd, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                // EAGAIN: the backlog is empty. EMFILE/ENFILE: out of descriptors; the waiting
                // connections stay queued until some are freed (the loop wakes within a second).
                return
            }
            Socket.makeNonBlockingAndCloseOnExec(client)
            if pending.count >= self.maximumPending {
                let oldest = pending.removeFirst()
                self.lock.withLock { self.dropped += 1 }
                self.refuse(oldest.fd, "dropped for a newer connection: \(self.maximumPending) handshakes were pending")
            }
            var handshake = PendingHandshake(fd: client, deadline: .now + self.handshakeTimeout)
            // The nonce goes out at once (it fits any socket buffer): most handshakes need no
            // write readiness at all.
            if case .refused(let reason) = handshake.advance(
                readable: false, writable: true, secrets: [:], now: ContinuousClock.now)
            {
                self.refuse(client, reason)
                continue
            }
            pending.append(handshake)
        }
    }

    func file(_ fd: Int32, as key: Key) {
        self.lock.lock()
        if self.closed {
            Glibc.close(fd)
        } else if let old = self.ready.updateValue(fd, forKey: key) {
            Glibc.close(old)
        }
        self.lock.broadcast()
        self.lock.unlock()
    }

    /// Counts a refusal, then closes the connection (in that order, so that whoever sees the close
    /// finds it counted).
    func refuse(_ fd: Int32, _ reason: String) {
        self.lock.withLock {
            self.refused += 1
            self.lastRefusal = reason
        }
        Glibc.close(fd)
    }
}

// MARK: - One pending handshake

/// The acceptor's side of one connection's handshake, moved on by the listener's loop with
/// non-blocking sends and receives: send the nonce, read the connector's hello (refusing it at its
/// first wrong byte), wait for the generation's secret if it is not registered yet, check the
/// proof, send the answer.
struct PendingHandshake {
    let fd: Int32
    let deadline: ContinuousClock.Instant
    let nonce = DataPlaneHandshake.nonce()
    var phase = Phase.sendingNonce(sent: 0)
    /// The hello's bytes as they arrive.
    var hello: [UInt8] = []

    enum Phase {
        case sendingNonce(sent: Int)
        case readingHello
        case awaitingSecret(DataPlaneHello)
        case sendingAnswer(answer: [UInt8], sent: Int, key: DataPlaneListener.Key)
    }

    enum Outcome {
        case waiting
        case proved(DataPlaneListener.Key)
        case refused(String)
    }

    /// What to poll for.
    var events: Int16 {
        switch self.phase {
        case .sendingNonce, .sendingAnswer: return Int16(POLLOUT)
        case .readingHello: return Int16(POLLIN)
        case .awaitingSecret: return 0  // woken by `expect`
        }
    }

    mutating func advance(
        readable: Bool,
        writable: Bool,
        secrets: [UInt64: (rank: Int, secret: [UInt8])],
        now: ContinuousClock.Instant
    ) -> Outcome {
        while true {
            switch self.phase {
            case .sendingNonce(let sent):
                guard writable || sent == 0 else { return self.expired(now) }
                switch self.send(self.nonce, from: sent) {
                case .failure(let refusal): return .refused(refusal.reason)
                case .success(let done) where done < self.nonce.count:
                    self.phase = .sendingNonce(sent: done)
                    return self.expired(now)
                case .success:
                    self.phase = .readingHello
                    return self.expired(now)
                }
            case .readingHello:
                guard readable else { return self.expired(now) }
                var buffer = [UInt8](repeating: 0, count: DataPlaneHello.byteCount - self.hello.count)
                let count = buffer.withUnsafeMutableBytes {
                    recv(self.fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT))
                }
                if count == 0 { return .refused("the peer closed the connection during the handshake") }
                if count < 0 {
                    if errno == EAGAIN || errno == EINTR { return self.expired(now) }
                    return .refused("the connection failed during the handshake: \(String(cString: strerror(errno)))")
                }
                self.hello += buffer[0..<count]
                // Garbage is refused at its first wrong byte, not after a full hello or the deadline.
                guard DataPlaneHello.couldStart(self.hello) else {
                    return .refused("not a ringmaster data-plane connection")
                }
                guard self.hello.count == DataPlaneHello.byteCount else { return self.expired(now) }
                guard let hello = DataPlaneHello(decoding: self.hello) else {
                    return .refused("not a ringmaster data-plane connection")
                }
                self.phase = .awaitingSecret(hello)
            case .awaitingSecret(let hello):
                let generation = hello.generation
                guard let expected = secrets[generation] else {
                    // The generation's secret may be registered a moment after a fast peer connects.
                    if secrets.keys.contains(where: { $0 > generation }) {
                        return .refused("generation \(generation) is not one this rank is joining")
                    }
                    if now >= self.deadline {
                        return .refused("generation \(generation) is not one this rank is joining")
                    }
                    return .waiting
                }
                guard expected.rank == hello.to else {
                    return .refused("addressed to rank \(hello.to), but this is rank \(expected.rank)")
                }
                guard hello.isValid(secret: expected.secret, acceptorNonce: self.nonce) else {
                    return .refused("the connection's proof does not match generation \(generation)'s secret")
                }
                let answer = hello.answer(secret: expected.secret, acceptorNonce: self.nonce)
                self.phase = .sendingAnswer(
                    answer: answer, sent: 0, key: .init(generation: generation, from: hello.from))
            case .sendingAnswer(let answer, let sent, let key):
                switch self.send(answer, from: sent) {
                case .failure(let refusal): return .refused(refusal.reason)
                case .success(let done) where done < answer.count:
                    self.phase = .sendingAnswer(answer: answer, sent: done, key: key)
                    return self.expired(now)
                case .success:
                    return .proved(key)
                }
            }
        }
    }

    /// Waiting, unless the deadline has passed.
    func expired(_ now: ContinuousClock.Instant) -> Outcome {
        now >= self.deadline ? .refused("the handshake took longer than allowed") : .waiting
    }

    /// Sends what is left of `bytes` without blocking; how far it got.
    func send(_ bytes: [UInt8], from start: Int) -> Result<Int, HandshakeRefusal> {
        var done = start
        while done < bytes.count {
            let count = bytes.withUnsafeBytes {
                Glibc.send(self.fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if count > 0 {
                done += count
            } else if errno == EAGAIN || errno == EINTR {
                break
            } else {
                return .failure(HandshakeRefusal("the peer closed the connection during the handshake"))
            }
        }
        return .success(done)
    }

    struct HandshakeRefusal: Error {
        let reason: String
        init(_ reason: String) { self.reason = reason }
    }
}
