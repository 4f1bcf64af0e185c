import Crypto
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Transport

/// The TCP transport of one generation: one connection per peer (rank i dials every lower rank
/// and accepts from every higher one), TCP_NODELAY, 1 MiB socket buffers, non-blocking sockets
/// driven by `poll` on the calling thread, straight into and out of the caller's buffers. No
/// event loop is shared with the control plane. `abort` writes to a pipe that every poll watches
/// (and that stays readable, since an abort is final), so a blocked operation fails at once.
public final class TCPTransport: Transport, @unchecked Sendable {
    // Safe because `sockets` is written only while establishing (before the transport is
    // returned) and in `close`, and read by the single thread running operations; `aborted` is
    // atomic and `abortReason` is guarded by `lock`; writing the abort pipe is thread-safe.
    public let rank: Int
    public let worldSize: Int
    var sockets: [Int32]
    let abortFD: Int32
    let abortWriteFD: Int32
    let lock = NSLock()
    var abortReason: String?
    /// Set once by `abort`; read on every turn of `exchange`, so an atomic rather than the lock.
    let aborted = Atomic<Bool>(false)

    /// Connects rank `rank` of a generation: dials every lower rank at `addresses[peer]`
    /// (`host:port`) and claims every higher rank's connection from `listener`. Gives up when
    /// `timeout` passes or `isCancelled` turns true (checked at least every 20 ms).
    public static func establish(
        rank: Int,
        addresses: [String],
        generation: UInt64,
        secret: [UInt8],
        listener: DataPlaneListener,
        timeout: Duration = .seconds(30),
        isCancelled: @escaping @Sendable () -> Bool = { false }
    ) throws -> TCPTransport {
        let deadline = ContinuousClock.now + timeout
        let worldSize = addresses.count
        listener.expect(generation: generation, rank: rank, secret: secret)
        var sockets = [Int32](repeating: -1, count: worldSize)
        do {
            for peer in 0..<rank {
                sockets[peer] = try Self.dial(
                    addresses[peer], from: rank, to: peer, generation: generation, secret: secret, deadline: deadline,
                    isCancelled: isCancelled
                )
            }
            for peer in (rank + 1)..<max(rank + 1, worldSize) {
                sockets[peer] = try listener.claim(
                    generation: generation, from: peer, deadline: deadline, isCancelled: isCancelled)
            }
        } catch {
            for fd in sockets where fd >= 0 { Glibc.close(fd) }
            throw error
        }
        for fd in sockets where fd >= 0 { Socket.tune(fd) }
        return TCPTransport(rank: rank, sockets: sockets)
    }

    init(rank: Int, sockets: [Int32]) {
        self.rank = rank
        self.worldSize = sockets.count
        self.sockets = sockets
        var ends: [Int32] = [-1, -1]
        _ = pipe(&ends)
        self.abortFD = ends[0]
        self.abortWriteFD = ends[1]
    }

    deinit {
        self.close()
        Glibc.close(self.abortFD)
        Glibc.close(self.abortWriteFD)
    }

    static func dial(
        _ address: String,
        from: Int,
        to: Int,
        generation: UInt64,
        secret: [UInt8],
        deadline: ContinuousClock.Instant,
        isCancelled: @Sendable () -> Bool = { false }
    ) throws -> Int32 {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw CollectiveError(
                .invalidArgument, operation: "connect", peer: to, "\"\(address)\" is not HOST:PORT (or [IPV6]:PORT)")
        }
        let target = try Socket.endpoint(host: String(address[..<colon]), port: port)
        var lastError: CollectiveError?
        while ContinuousClock.now < deadline {
            if isCancelled() {
                throw CollectiveError(.aborted, operation: "connect", peer: to, "connecting was cancelled")
            }
            let fd = socket(target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Socket.error("socket") }
            let connected = target.withAddress { connect(fd, $0, $1) }
            if connected != 0 {
                lastError = CollectiveError(
                    .io, operation: "connect", peer: to, "connecting to \(address): \(String(cString: strerror(errno)))"
                )
                Glibc.close(fd)
                usleep(20_000)
                continue
            }
            do {
                let acceptorNonce = try Socket.readExactly(fd, DataPlaneHandshake.nonceBytes, deadline: deadline)
                let hello = DataPlaneHello.proving(
                    secret: secret, acceptorNonce: acceptorNonce, generation: generation, from: from, to: to)
                try Socket.writeAll(fd, hello.encoded(), deadline: deadline)
                let answer = try Socket.readExactly(fd, DataPlaneHandshake.macBytes, deadline: deadline)
                guard hello.isValidAnswer(answer, secret: secret, acceptorNonce: acceptorNonce) else {
                    throw CollectiveError(
                        .handshakeRefused, operation: "connect", peer: to,
                        "rank \(to) did not prove this generation's secret")
                }
                return fd
            } catch let error as CollectiveError {
                Glibc.close(fd)
                // The peer refused (e.g. it has not registered this generation yet): retry.
                lastError = error
                usleep(20_000)
            }
        }
        throw lastError
            ?? CollectiveError(
                .deadlineExceeded, operation: "connect", peer: to,
                "could not connect to rank \(to) at \(address) in time")
    }

    public func abort(reason: String) {
        self.lock.lock()
        if self.abortReason == nil { self.abortReason = reason }
        self.lock.unlock()
        self.aborted.store(true, ordering: .releasing)
        var one: UInt8 = 1
        _ = Glibc.write(self.abortWriteFD, &one, 1)
    }

    public func close() {
        for index in self.sockets.indices where self.sockets[index] >= 0 {
            Glibc.close(self.sockets[index])
            self.sockets[index] = -1
        }
    }

    func abortError(_ operation: String, peer: Int?, done: Int) -> CollectiveError? {
        guard self.aborted.load(ordering: .acquiring) else { return nil }
        self.lock.lock()
        defer { self.lock.unlock() }
        return self.abortReason.map { CollectiveError(.aborted, operation: operation, peer: peer, bytesDone: done, $0) }
    }

    /// Blocks until `sendFD` is writable (if `writable`), `receiveFD` readable (if `readable`),
    /// the transport is aborted, or `remaining` (at most 1 s) passes; the caller then retries its
    /// I/O and checks the deadline. Only the directions still pending are watched: a writable
    /// socket with nothing left to send would wake poll at once, a busy spin.
    func waitForIO(sendFD: Int32, writable: Bool, receiveFD: Int32, readable: Bool, remaining: Duration) {
        let milliseconds = Int32(min(Socket.seconds(remaining) * 1000 + 1, 1000))
        withUnsafeTemporaryAllocation(of: pollfd.self, capacity: 3) { fds in
            var count = 0
            if writable && readable && sendFD == receiveFD {
                fds[count] = pollfd(fd: sendFD, events: Int16(POLLOUT | POLLIN), revents: 0)
                count += 1
            } else {
                if writable {
                    fds[count] = pollfd(fd: sendFD, events: Int16(POLLOUT), revents: 0)
                    count += 1
                }
                if readable {
                    fds[count] = pollfd(fd: receiveFD, events: Int16(POLLIN), revents: 0)
                    count += 1
                }
            }
            fds[count] = pollfd(fd: self.abortFD, events: Int16(POLLIN), revents: 0)
            count += 1
            _ = poll(fds.baseAddress, nfds_t(count), milliseconds)
        }
    }

    public func exchange(
        send: (peer: Int, bytes: UnsafeRawBufferPointer)?,
        receive: (peer: Int, bytes: UnsafeMutableRawBufferPointer)?,
        deadline: ContinuousClock.Instant,
        operation: String,
        received: (Int) throws -> Void
    ) throws {
        var sent = 0
        var got = 0
        let toSend = send?.bytes.count ?? 0
        let toReceive = receive?.bytes.count ?? 0
        let sendFD = send.map { self.sockets[$0.peer] } ?? -1
        let receiveFD = receive.map { self.sockets[$0.peer] } ?? -1
        while sent < toSend || got < toReceive {
            if let error = self.abortError(operation, peer: receive?.peer ?? send?.peer, done: sent + got) {
                throw error
            }
            // Try the I/O first; poll only when both directions would block.
            var progressed = false
            if sent < toSend {
                let count = Glibc.send(
                    sendFD, send!.bytes.baseAddress! + sent, toSend - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                if count > 0 {
                    sent += count
                    progressed = true
                } else if count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(
                        .peerClosed, operation: operation, peer: send!.peer, bytesDone: sent + got,
                        "sending to rank \(send!.peer): \(String(cString: strerror(errno)))")
                }
            }
            if got < toReceive {
                let count = recv(receiveFD, receive!.bytes.baseAddress! + got, toReceive - got, Int32(MSG_DONTWAIT))
                if count > 0 {
                    got += count
                    progressed = true
                    try received(got)
                } else if count == 0 {
                    throw CollectiveError(
                        .peerClosed, operation: operation, peer: receive!.peer, bytesDone: sent + got,
                        "rank \(receive!.peer) closed its connection")
                } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(
                        .peerClosed, operation: operation, peer: receive!.peer, bytesDone: sent + got,
                        "receiving from rank \(receive!.peer): \(String(cString: strerror(errno)))")
                }
            }
            if progressed { continue }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw CollectiveError(
                    .deadlineExceeded, operation: operation, peer: receive?.peer ?? send?.peer, bytesDone: sent + got,
                    "the operation's deadline passed")
            }
            self.waitForIO(
                sendFD: sendFD, writable: sent < toSend, receiveFD: receiveFD, readable: got < toReceive,
                remaining: remaining)
        }
    }
}

extension TCPTransport {
    /// Both streams in one poll loop: a send piece goes out as far as `sendable` allows while the
    /// receive side fills its pieces in order, so consecutive pieces overlap on the wire.
    public func stream(
        pieces: Int,
        sendPeer: Int,
        receivePeer: Int,
        deadline: ContinuousClock.Instant,
        operation: String,
        sendPiece: (Int) -> UnsafeRawBufferPointer,
        receivePiece: (Int) -> UnsafeMutableRawBufferPointer,
        sendable: (Int) -> Int,
        received: (Int, Int) throws -> Void
    ) throws {
        let sendFD = self.sockets[sendPeer]
        let receiveFD = self.sockets[receivePeer]
        var sendIndex = 0
        var outgoing = sendPiece(0)
        var sent = 0  // in the current send piece
        var receiveIndex = 0
        var incoming = receivePiece(0)
        var got = 0  // in the current receive piece
        var done = 0  // bytes moved either way, for error messages
        while true {
            // Move past finished (and empty) pieces.
            while sendIndex < pieces && sent == outgoing.count {
                sendIndex += 1
                sent = 0
                if sendIndex < pieces { outgoing = sendPiece(sendIndex) }
            }
            while receiveIndex < pieces && got == incoming.count {
                if got == 0 { try received(receiveIndex, 0) }
                receiveIndex += 1
                got = 0
                if receiveIndex < pieces { incoming = receivePiece(receiveIndex) }
            }
            let sending = sendIndex < pieces
            let receiving = receiveIndex < pieces
            if !sending && !receiving { return }
            if let error = self.abortError(operation, peer: receiving ? receivePeer : sendPeer, done: done) {
                throw error
            }
            var progressed = false
            var canSend = false
            if sending {
                let limit = min(outgoing.count, sendable(sendIndex))
                if sent < limit {
                    canSend = true
                    let count = Glibc.send(
                        sendFD, outgoing.baseAddress! + sent, limit - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    if count > 0 {
                        sent += count
                        done += count
                        progressed = true
                    } else if count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                        throw CollectiveError(
                            .peerClosed, operation: operation, peer: sendPeer, bytesDone: done,
                            "sending to rank \(sendPeer): \(String(cString: strerror(errno)))")
                    }
                }
            }
            if receiving {
                let count = recv(receiveFD, incoming.baseAddress! + got, incoming.count - got, Int32(MSG_DONTWAIT))
                if count > 0 {
                    got += count
                    done += count
                    progressed = true
                    try received(receiveIndex, got)
                } else if count == 0 {
                    throw CollectiveError(
                        .peerClosed, operation: operation, peer: receivePeer, bytesDone: done,
                        "rank \(receivePeer) closed its connection")
                } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(
                        .peerClosed, operation: operation, peer: receivePeer, bytesDone: done,
                        "receiving from rank \(receivePeer): \(String(cString: strerror(errno)))")
                }
            }
            if progressed { continue }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw CollectiveError(
                    .deadlineExceeded, operation: operation, peer: receiving ? receivePeer : sendPeer, bytesDone: done,
                    "the operation's deadline passed")
            }
            // Wait only for what can go on: writability when there is something sendable (else
            // the send waits on the receive side), readability while pieces remain to fill.
            self.waitForIO(
                sendFD: sendFD, writable: canSend, receiveFD: receiveFD, readable: receiving, remaining: remaining)
        }
    }
}
