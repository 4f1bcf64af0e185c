#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import Synchronization

// MARK: - Handshake

/// The data-plane handshake: proves a connection belongs to this job's generation before any
/// payload is read, in both directions.
///
/// 1. The acceptor sends a fresh 32-byte nonce.
/// 2. The connector sends `RMDP`, version 1, generation, its rank, the acceptor's rank, its own
///    nonce, and HMAC-SHA256(secret, "connect" | both nonces | generation | ranks).
/// 3. The acceptor checks the MAC with that generation's secret and answers
///    HMAC-SHA256(secret, "accept" | both nonces | generation | ranks), which the connector checks.
///
/// The secret is per job and generation (from the coordinator's assignment), so a connection from
/// another job or an older generation, or from anyone without the secret, fails at step 3 and is
/// closed without disturbing anything else.
enum DataPlaneHandshake {
    static let magic: [UInt8] = Array("RMDP".utf8)
    static let version: UInt8 = 1
    static let nonceBytes = 32
    /// magic, version, generation, from, to, nonce, mac
    static let helloBytes = 4 + 1 + 8 + 4 + 4 + 32 + 32

    static func mac(_ label: String, secret: [UInt8], acceptorNonce: [UInt8], connectorNonce: [UInt8], generation: UInt64, from: Int, to: Int) -> [UInt8] {
        var message = Array("ringmaster data plane \(label) v1".utf8)
        message += acceptorNonce + connectorNonce
        withUnsafeBytes(of: generation.bigEndian) { message += $0 }
        withUnsafeBytes(of: UInt32(from).bigEndian) { message += $0 }
        withUnsafeBytes(of: UInt32(to).bigEndian) { message += $0 }
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret)))
    }

    /// A fresh random nonce: four draws of 64 bits (one system call each), not one per byte.
    static func nonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(nonceBytes)
        for _ in 0..<(nonceBytes / 8) { withUnsafeBytes(of: generator.next()) { bytes += $0 } }
        return bytes
    }
}

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
                    addresses[peer], from: rank, to: peer, generation: generation, secret: secret, deadline: deadline, isCancelled: isCancelled
                )
            }
            for peer in (rank + 1)..<max(rank + 1, worldSize) {
                sockets[peer] = try listener.claim(generation: generation, from: peer, deadline: deadline, isCancelled: isCancelled)
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
            throw CollectiveError(.invalidArgument, operation: "connect", peer: to, "\"\(address)\" is not HOST:PORT (or [IPV6]:PORT)")
        }
        let target = try Socket.endpoint(host: String(address[..<colon]), port: port)
        var lastError: CollectiveError?
        while ContinuousClock.now < deadline {
            if isCancelled() { throw CollectiveError(.aborted, operation: "connect", peer: to, "connecting was cancelled") }
            let fd = socket(target.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Socket.error("socket") }
            let connected = target.withAddress { connect(fd, $0, $1) }
            if connected != 0 {
                lastError = CollectiveError(.io, operation: "connect", peer: to, "connecting to \(address): \(String(cString: strerror(errno)))")
                Glibc.close(fd)
                usleep(20_000)
                continue
            }
            do {
                let acceptorNonce = try Socket.readExactly(fd, DataPlaneHandshake.nonceBytes, deadline: deadline)
                let connectorNonce = DataPlaneHandshake.nonce()
                var hello = DataPlaneHandshake.magic + [DataPlaneHandshake.version]
                withUnsafeBytes(of: generation.bigEndian) { hello += $0 }
                withUnsafeBytes(of: UInt32(from).bigEndian) { hello += $0 }
                withUnsafeBytes(of: UInt32(to).bigEndian) { hello += $0 }
                hello += connectorNonce
                hello += Array(
                    HMAC<SHA256>.authenticationCode(
                        for: DataPlaneListener.connectMessage(acceptorNonce, connectorNonce, generation, from, to),
                        using: SymmetricKey(data: secret)
                    )
                )
                try Socket.writeAll(fd, hello, deadline: deadline)
                let answer = try Socket.readExactly(fd, 32, deadline: deadline)
                let expected = DataPlaneHandshake.mac("accept", secret: secret, acceptorNonce: acceptorNonce, connectorNonce: connectorNonce, generation: generation, from: from, to: to)
                guard answer == expected else {
                    throw CollectiveError(.handshakeRefused, operation: "connect", peer: to, "rank \(to) did not prove this generation's secret")
                }
                return fd
            } catch let error as CollectiveError {
                Glibc.close(fd)
                // The peer refused (e.g. it has not registered this generation yet): retry.
                lastError = error
                usleep(20_000)
            }
        }
        throw lastError ?? CollectiveError(.deadlineExceeded, operation: "connect", peer: to, "could not connect to rank \(to) at \(address) in time")
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
            if let error = self.abortError(operation, peer: receive?.peer ?? send?.peer, done: sent + got) { throw error }
            // Try the I/O first; poll only when both directions would block.
            var progressed = false
            if sent < toSend {
                let count = Glibc.send(sendFD, send!.bytes.baseAddress! + sent, toSend - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                if count > 0 {
                    sent += count
                    progressed = true
                } else if count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(.peerClosed, operation: operation, peer: send!.peer, bytesDone: sent + got, "sending to rank \(send!.peer): \(String(cString: strerror(errno)))")
                }
            }
            if got < toReceive {
                let count = recv(receiveFD, receive!.bytes.baseAddress! + got, toReceive - got, Int32(MSG_DONTWAIT))
                if count > 0 {
                    got += count
                    progressed = true
                    try received(got)
                } else if count == 0 {
                    throw CollectiveError(.peerClosed, operation: operation, peer: receive!.peer, bytesDone: sent + got, "rank \(receive!.peer) closed its connection")
                } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(.peerClosed, operation: operation, peer: receive!.peer, bytesDone: sent + got, "receiving from rank \(receive!.peer): \(String(cString: strerror(errno)))")
                }
            }
            if progressed { continue }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw CollectiveError(.deadlineExceeded, operation: operation, peer: receive?.peer ?? send?.peer, bytesDone: sent + got, "the operation's deadline passed")
            }
            self.waitForIO(sendFD: sendFD, writable: sent < toSend, receiveFD: receiveFD, readable: got < toReceive, remaining: remaining)
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
            if let error = self.abortError(operation, peer: receiving ? receivePeer : sendPeer, done: done) { throw error }
            var progressed = false
            var canSend = false
            if sending {
                let limit = min(outgoing.count, sendable(sendIndex))
                if sent < limit {
                    canSend = true
                    let count = Glibc.send(sendFD, outgoing.baseAddress! + sent, limit - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    if count > 0 {
                        sent += count
                        done += count
                        progressed = true
                    } else if count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                        throw CollectiveError(.peerClosed, operation: operation, peer: sendPeer, bytesDone: done, "sending to rank \(sendPeer): \(String(cString: strerror(errno)))")
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
                    throw CollectiveError(.peerClosed, operation: operation, peer: receivePeer, bytesDone: done, "rank \(receivePeer) closed its connection")
                } else if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    throw CollectiveError(.peerClosed, operation: operation, peer: receivePeer, bytesDone: done, "receiving from rank \(receivePeer): \(String(cString: strerror(errno)))")
                }
            }
            if progressed { continue }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                throw CollectiveError(.deadlineExceeded, operation: operation, peer: receiving ? receivePeer : sendPeer, bytesDone: done, "the operation's deadline passed")
            }
            // Wait only for what can go on: writability when there is something sendable (else
            // the send waits on the receive side), readability while pieces remain to fill.
            self.waitForIO(sendFD: sendFD, writable: canSend, receiveFD: receiveFD, readable: receiving, remaining: remaining)
        }
    }
}

// MARK: - Sockets

/// An IPv4 or IPv6 socket address.
struct Endpoint {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)

    /// AF_INET or AF_INET6.
    var family: Int32 { Int32(self.storage.ss_family) }

    /// The port, in host order.
    var port: Int {
        withUnsafeBytes(of: self.storage) { raw in
            self.family == AF_INET6
                ? Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
                : Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port))
        }
    }

    /// Calls `body` with the address as a `sockaddr` and its length (bind, connect).
    func withAddress<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> Result) -> Result {
        withUnsafeBytes(of: self.storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), self.length) }
    }

    /// Calls `body` with room for an address and its length, which it fills (getsockname).
    mutating func withMutableAddress<Result>(_ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Result) -> Result {
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutableBytes(of: &self.storage) { body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length) }
        self.length = length
        return result
    }
}

enum Socket {
    static func error(_ what: String) -> CollectiveError {
        CollectiveError(.io, operation: "socket", "\(what): \(String(cString: strerror(errno)))")
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// The socket address of `host` (an IPv4 or IPv6 literal, `[v6]` too, or `localhost`) and
    /// `port`. Names other than `localhost` are not resolved: data-plane addresses are what the
    /// agents announced, which are addresses.
    static func endpoint(host: String, port: Int) throws -> Endpoint {
        var text = host
        if text.hasPrefix("[") && text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        if text == "localhost" { text = "127.0.0.1" }
        var endpoint = Endpoint()
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET, text, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            withUnsafeBytes(of: v4) { source in withUnsafeMutableBytes(of: &endpoint.storage) { $0.copyMemory(from: source) } }
            endpoint.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, text, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            withUnsafeBytes(of: v6) { source in withUnsafeMutableBytes(of: &endpoint.storage) { $0.copyMemory(from: source) } }
            endpoint.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            throw CollectiveError(.invalidArgument, operation: "socket", "\"\(host)\" is not an IPv4 or IPv6 address")
        }
        return endpoint
    }

    /// TCP_NODELAY and 1 MiB socket buffers (the kernel doubles them). Over loopback on the
    /// 2-core machine, 1 MiB beat 512 KiB, 2 MiB and 4 MiB (bench/README.md): 4 ranks 0.69 to 0.87
    /// GB/s busbw at 16 MiB, 2 ranks 1.27 to 1.58; bytes queued in socket buffers are bytes the
    /// receiver's copy no longer finds in cache.
    static func tune(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var size: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// O_NONBLOCK and FD_CLOEXEC on `fd`.
    static func makeNonBlockingAndCloseOnExec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: ContinuousClock.Instant) throws {
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if count > 0 { done += count; continue }
            if count < 0 && errno != EAGAIN && errno != EINTR {
                throw CollectiveError(.handshakeRefused, operation: "handshake", "the peer closed the connection")
            }
            try self.wait(fd, events: Int16(POLLOUT), deadline: deadline)
        }
    }

    static func readExactly(_ fd: Int32, _ count: Int, deadline: ContinuousClock.Instant) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, Int32(MSG_DONTWAIT)) }
            if n > 0 { done += n; continue }
            if n == 0 || (errno != EAGAIN && errno != EINTR) {
                throw CollectiveError(.handshakeRefused, operation: "handshake", "the peer closed the connection during the handshake")
            }
            try self.wait(fd, events: Int16(POLLIN), deadline: deadline)
        }
        return bytes
    }

    static func wait(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant) throws {
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else {
            throw CollectiveError(.deadlineExceeded, operation: "handshake", "the handshake took too long")
        }
        var descriptor = pollfd(fd: fd, events: events, revents: 0)
        _ = poll(&descriptor, 1, Int32(min(self.seconds(remaining) * 1000 + 1, 1000)))
    }
}
