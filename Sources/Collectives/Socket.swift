import Foundation

#if canImport(Glibc)
    import Glibc
#endif

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
    mutating func withMutableAddress<Result>(
        _ body: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Result
    ) -> Result {
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutableBytes(of: &self.storage) {
            body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
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
            withUnsafeBytes(of: v4) { source in
                withUnsafeMutableBytes(of: &endpoint.storage) { $0.copyMemory(from: source) }
            }
            endpoint.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, text, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
            withUnsafeBytes(of: v6) { source in
                withUnsafeMutableBytes(of: &endpoint.storage) { $0.copyMemory(from: source) }
            }
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
            let count = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if count > 0 {
                done += count
                continue
            }
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
            if n > 0 {
                done += n
                continue
            }
            if n == 0 || (errno != EAGAIN && errno != EINTR) {
                throw CollectiveError(
                    .handshakeRefused, operation: "handshake", "the peer closed the connection during the handshake")
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
