import Crypto
import Foundation
import Synchronization
import Testing

@testable import Collectives

#if canImport(Glibc)
    import Glibc
#endif

/// The data-plane listener under a flood of connections that are not the job's: idle ones that
/// never speak, and ones that send garbage. Pending handshakes are bounded and share one thread,
/// the flood is counted, and the job's own ranks still connect, generation after generation.
@Suite("Data-plane listener under a flood", .timeLimit(.minutes(2)))
struct ListenerFloodTests {
    static let secret = Array(SHA256.hash(data: Array("flood test secret".utf8)))

    /// Threads of this process.
    static func threads() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
    }

    /// Opens `count` connections to `port`: odd ones send garbage, even ones stay silent. Returns
    /// their descriptors (closed by the caller).
    static func flood(port: Int, count: Int) throws -> [Int32] {
        var descriptors: [Int32] = []
        for index in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw TestFailure("socket: \(String(cString: strerror(errno)))") }
            let connected = try Socket.endpoint(host: "127.0.0.1", port: port).withAddress { connect(fd, $0, $1) }
            guard connected == 0 else {
                throw TestFailure("flood connect \(index): \(String(cString: strerror(errno)))")
            }
            if index % 2 == 1 { _ = Glibc.send(fd, "GARBAGE GARBAGE GARBAGE", 23, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            descriptors.append(fd)
        }
        return descriptors
    }

    @Test func aThousandStrangers_costNoThreads_andTheJobConnectsThroughThem_generationAfterGeneration() throws {
        let listeners = try (0..<3).map { _ in
            try DataPlaneListener(host: "127.0.0.1", port: 0, maximumPending: 64, handshakeTimeout: .seconds(2))
        }
        defer { for listener in listeners { listener.close() } }
        let addresses = listeners.map { "127.0.0.1:\($0.port)" }
        let before = Self.threads()
        // 1,000 connections at once to every rank's port, half of them garbage, and they stay open.
        var flood: [Int32] = []
        defer { for fd in flood { Glibc.close(fd) } }
        for listener in listeners { flood += try Self.flood(port: listener.port, count: 1000) }
        let during = Self.threads()
        // Other suites run beside this one, and their threads come and go (dozens at most); a
        // thread per pending handshake would be 3,000 here.
        #expect(during - before < 100, "threads grew from \(before) to \(during) under the flood")

        // Three generations connect and all-reduce while the flood's connections are held, and a
        // second flood arrives between them.
        let reference = referenceSum(worldSize: 3, count: 10_007)
        for generation in UInt64(1)...3 {
            try runRanks(3, within: 30) { rank in
                let transport = try TCPTransport.establish(
                    rank: rank, addresses: addresses, generation: generation, secret: Self.secret,
                    listener: listeners[rank], timeout: .seconds(20)
                )
                defer { transport.close() }
                var bytes = input(rank: rank, count: 10_007)
                try bytes.withUnsafeMutableBytes {
                    try Communicator(transport: transport).allReduce(
                        $0, count: 10_007, type: .float32, timeout: .seconds(20))
                }
                if bytes != reference { throw TestFailure("generation \(generation), rank \(rank): wrong sum") }
            }
            for listener in listeners { flood += try Self.flood(port: listener.port, count: 200) }
        }
        #expect(Self.threads() - before < 100)
        for listener in listeners {
            // Garbage is refused at its first bytes; idle ones are dropped for newer connections
            // or time out; at most `maximumPending` are left pending.
            #expect(listener.refused >= 1000, "refused \(listener.refused) of 1,600 strangers")
            #expect(listener.dropped > 0)
        }
    }

    @Test func anIdleConnection_isClosedAtTheHandshakeDeadline() throws {
        let listener = try DataPlaneListener(
            host: "127.0.0.1", port: 0, maximumPending: 4, handshakeTimeout: .milliseconds(300))
        defer { listener.close() }
        let fd = try Self.flood(port: listener.port, count: 1)[0]
        defer { Glibc.close(fd) }
        // The listener sends its nonce, then closes the silent connection at its deadline.
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var bytes = [UInt8](repeating: 0, count: 64)
        var received = 0
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            _ = poll(&descriptor, 1, 100)
            let count = recv(fd, &bytes, bytes.count, Int32(MSG_DONTWAIT))
            if count == 0 { break }
            if count > 0 { received += count }
        }
        #expect(received == DataPlaneHandshake.nonceBytes, "the nonce, then the close")
        #expect(listener.refused == 1)
        #expect(listener.lastRefusal?.contains("longer than allowed") == true, "\(listener.lastRefusal ?? "none")")
    }
}
