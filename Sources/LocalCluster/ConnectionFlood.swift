import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// A flood of plain TCP connections to one port, as a port scan or a misconfigured peer makes:
/// half of them send garbage as soon as they connect, the other half never say anything. Each one
/// the other side closes is opened again after `reopenAfter`, so the flood keeps its size until
/// `stop`. For tests and benchmarks against the project's own listeners on loopback.
public final class ConnectionFlood: Sendable {
    let stopped = NIOLockedValueBox(false)
    let counts = NIOLockedValueBox((opened: 0, closedByPeer: 0, failed: 0))
    let finished = DispatchSemaphore(value: 0)

    /// Opens `connections` connections to `host:port` (an IPv4 address), on a thread of its own.
    public init(host: String, port: Int, connections: Int, reopenAfter: Duration = .seconds(1)) {
        let thread = Thread { [self] in
            self.run(host: host, port: port, connections: connections, reopenAfter: reopenAfter)
            self.finished.signal()
        }
        thread.name = "ringmaster-connection-flood"
        thread.start()
    }

    /// Connections opened so far (reopened ones included), closed by the other side, and connects
    /// that failed.
    public var statistics: (opened: Int, closedByPeer: Int, failed: Int) { self.counts.withLockedValue { $0 } }

    /// Closes every connection and stops (within a second).
    public func stop() {
        self.stopped.withLockedValue { $0 = true }
        _ = self.finished.wait(timeout: .now() + 5)
    }

    func run(host: String, port: Int, connections: Int, reopenAfter: Duration) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        _ = inet_pton(AF_INET, host, &address.sin_addr)
        // One slot per connection: its descriptor (-1 while closed) and when to open it again.
        var slots = [(fd: Int32, reopenAt: ContinuousClock.Instant)](repeating: (-1, .now), count: connections)
        defer { for slot in slots where slot.fd >= 0 { Glibc.close(slot.fd) } }
        let garbage = Array("GET / HTTP/1.1\r\nHost: ringmaster\r\n\r\n".utf8)
        var descriptors: [pollfd] = []
        var sink = [UInt8](repeating: 0, count: 4096)
        while !self.stopped.withLockedValue({ $0 }) {
            let now = ContinuousClock.now
            for index in slots.indices where slots[index].fd < 0 && slots[index].reopenAt <= now {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                guard fd >= 0, connected == 0 else {
                    if fd >= 0 { Glibc.close(fd) }
                    slots[index].reopenAt = now + reopenAfter
                    self.counts.withLockedValue { $0.failed += 1 }
                    continue
                }
                if index % 2 == 1 {
                    _ = garbage.withUnsafeBytes {
                        Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                    }
                }
                slots[index].fd = fd
                self.counts.withLockedValue { $0.opened += 1 }
            }
            descriptors = slots.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            _ = poll(&descriptors, nfds_t(descriptors.count), 100)
            for (index, descriptor) in descriptors.enumerated() where descriptor.fd >= 0 && descriptor.revents != 0 {
                // Whatever the listener sent (its nonce) is read and dropped; an end of file or an
                // error means it closed the connection.
                let count = recv(descriptor.fd, &sink, sink.count, Int32(MSG_DONTWAIT))
                if count == 0 || (count < 0 && errno != EAGAIN && errno != EINTR) {
                    Glibc.close(descriptor.fd)
                    slots[index] = (-1, .now + reopenAfter)
                    self.counts.withLockedValue { $0.closedByPeer += 1 }
                }
            }
        }
    }
}
