import Crypto
import Foundation
import Synchronization
import Testing

@testable import Collectives

#if canImport(Glibc)
    import Glibc
#endif

/// Real loopback TCP: every rank has its own data-plane listener and connections.
@Suite("All-reduce over loopback TCP", .timeLimit(.minutes(3)))
struct TCPTransportTests {
    static let secret = Array(SHA256.hash(data: Array("test generation secret".utf8)))

    /// Listeners for `worldSize` ranks on `host` and their addresses.
    static func listeners(_ worldSize: Int, host: String = "127.0.0.1") throws -> ([DataPlaneListener], [String]) {
        let listeners = try (0..<worldSize).map { _ in try DataPlaneListener(host: host, port: 0) }
        return (listeners, listeners.map { "\(host):\($0.port)" })
    }

    static func run(
        worldSize: Int,
        counts: [Int],
        type: DataType,
        operation: ReduceOperation = .sum,
        generation: UInt64 = 1,
        host: String = "127.0.0.1"
    ) throws -> [[[Float]]] {
        let (listeners, addresses) = try Self.listeners(worldSize, host: host)
        defer { for listener in listeners { listener.close() } }
        let results = Mutex<[[[Float]]]>(Array(repeating: [], count: worldSize))
        try runRanks(worldSize) { rank in
            let transport = try TCPTransport.establish(
                rank: rank,
                addresses: addresses,
                generation: generation,
                secret: Self.secret,
                listener: listeners[rank],
                timeout: .seconds(20)
            )
            defer { transport.close() }
            let communicator = Communicator(transport: transport)
            var mine: [[Float]] = []
            for count in counts {
                var bytes = encode(input(rank: rank, count: count), as: type)
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce(
                        $0, count: count, type: type, operation: operation, timeout: .seconds(30))
                }
                mine.append(decode(bytes, as: type))
            }
            results.withLock { $0[rank] = mine }
        }
        return results.withLock { $0 }
    }

    /// IPv6 loopback, the address written as agents announce it (`[::1]:PORT`); and a listener
    /// on `::` takes an IPv4 connection too.
    @Test func overIPv6_sumsAreExact_andTheListenerOnAnyAddressTakesIPv4() throws {
        let counts = [1, 1009, 300_007]
        let results = try Self.run(worldSize: 3, counts: counts, type: .float32, host: "[::1]")
        for (index, count) in counts.enumerated() {
            for rank in 0..<3 {
                #expect(
                    results[rank][index] == referenceSum(worldSize: 3, count: count), "\(count) elements, rank \(rank)")
            }
        }
        let any = try DataPlaneListener(host: "::", port: 0)
        defer { any.close() }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        let connected = try Socket.endpoint(host: "127.0.0.1", port: any.port).withAddress { connect(fd, $0, $1) }
        #expect(connected == 0, "an IPv4 client reaches a listener on ::: \(String(cString: strerror(errno)))")
        #expect(throws: CollectiveError.self) { try DataPlaneListener(host: "ringmaster.invalid", port: 0) }
    }

    @Test(arguments: 1...8)
    func float32Sums_areExact(worldSize: Int) throws {
        let counts = [0, 1, 13, 1009, 65_537]
        let results = try Self.run(worldSize: worldSize, counts: counts, type: .float32)
        for (index, count) in counts.enumerated() {
            let reference = referenceSum(worldSize: worldSize, count: count)
            for rank in 0..<worldSize {
                #expect(results[rank][index] == reference, "world \(worldSize), \(count) elements, rank \(rank)")
            }
        }
    }

    @Test(arguments: [2, 4])
    func oneMebiElement_andHalfTypes(worldSize: Int) throws {
        let count = 1 << 20
        let reference = referenceSum(worldSize: worldSize, count: count)
        #expect(try Self.run(worldSize: worldSize, counts: [count], type: .float32).allSatisfy { $0[0] == reference })
        for type in [DataType.float16, .bfloat16] {
            let results = try Self.run(worldSize: worldSize, counts: [4099], type: type, operation: .average)
            let expected = referenceSum(worldSize: worldSize, count: 4099).map { $0 / Float(worldSize) }
            for result in results {
                let worst = zip(result[0], expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
                #expect(worst <= (type == .float16 ? 0.001 : 0.004 * Float(worldSize)), "\(type): \(worst)")
            }
        }
    }

    @Test func aStrangerWithTheWrongSecret_isRefused_withoutDisturbingTheJob() throws {
        let (listeners, addresses) = try Self.listeners(2)
        defer { for listener in listeners { listener.close() } }
        let results = Mutex<[[Float]]>([[], []])
        let started = DispatchSemaphore(value: 0)
        let stranger = Thread {
            started.wait()
            // Knows the port, the generation and the protocol, but not the secret.
            _ = try? TCPTransport.dial(
                addresses[0], from: 1, to: 0, generation: 1, secret: Array(repeating: 7, count: 32),
                deadline: .now + .milliseconds(300))
            // And one that speaks no protocol at all.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = try! Socket.endpoint(host: "127.0.0.1", port: listeners[0].port).withAddress { connect(fd, $0, $1) }
            _ = Glibc.send(fd, "GET / HTTP/1.1\r\n\r\n", 18, Int32(MSG_NOSIGNAL))
            Glibc.close(fd)
        }
        stranger.start()
        let reference = referenceSum(worldSize: 2, count: 100_000)
        try runRanks(2) { rank in
            let transport = try TCPTransport.establish(
                rank: rank, addresses: addresses, generation: 1, secret: Self.secret, listener: listeners[rank])
            let communicator = Communicator(transport: transport)
            if rank == 0 { started.signal() }
            // The job keeps all-reducing until rank 0 has seen both strangers refused (at most
            // 10 s); rank 0 broadcasts whether to go on, so both ranks stop together.
            let deadline = ContinuousClock.now + .seconds(10)
            var rounds = 0
            while true {
                var goOn: Int32 = rank == 0 && (listeners[0].refused < 2 && ContinuousClock.now < deadline) ? 1 : 0
                try withUnsafeMutableBytes(of: &goOn) { try communicator.broadcast($0, root: 0) }
                if goOn == 0 && rounds > 0 { break }
                var bytes = input(rank: rank, count: 100_000)
                try bytes.withUnsafeMutableBytes { try communicator.allReduce($0, count: 100_000, type: .float32) }
                #expect(bytes == reference, "round \(rounds) on rank \(rank)")
                rounds += 1
                results.withLock { $0[rank] = bytes }
            }
        }
        #expect(results.withLock { $0 }.allSatisfy { $0 == reference }, "the job's results are untouched")
        #expect(listeners[0].refused >= 2, "both strangers were refused")
        #expect(listeners[0].lastRefusal != nil)
    }

    @Test func abortFromAnotherThread_failsABlockedTCPOperation_within100ms() throws {
        let (listeners, addresses) = try Self.listeners(2)
        defer { for listener in listeners { listener.close() } }
        let transports = Mutex<[TCPTransport?]>([nil, nil])
        try runRanks(2) { rank in
            let transport = try TCPTransport.establish(
                rank: rank, addresses: addresses, generation: 1, secret: Self.secret, listener: listeners[rank])
            transports.withLock { $0[rank] = transport }
        }
        let rank0 = transports.withLock { $0[0]! }
        let communicator = Communicator(transport: rank0)
        let outcome = Mutex<CollectiveError?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            var bytes = [Float](repeating: 1, count: 1 << 20)
            do {
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce($0, count: 1 << 20, type: .float32, timeout: .seconds(30))
                }
            } catch let error as CollectiveError {
                outcome.withLock { $0 = error }
            } catch {}
            done.signal()
        }
        thread.start()
        // Rank 1 never takes part, so rank 0 stays blocked: its operation must not end by itself.
        #expect(done.wait(timeout: .now() + .milliseconds(100)) == .timedOut, "rank 0 is blocked waiting for rank 1")
        let aborted = ContinuousClock.now
        communicator.abort(reason: "generation 1 ended")
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(ContinuousClock.now - aborted < .milliseconds(100))
        let error = outcome.withLock { $0 }
        #expect(error?.code == .aborted && error?.peer == 1 && error?.message == "generation 1 ended")
    }

    @Test func aPeerThatCloses_failsTheOperationAtOnce_namingIt() throws {
        let (listeners, addresses) = try Self.listeners(3)
        defer { for listener in listeners { listener.close() } }
        let errors = Mutex<[Int: CollectiveError]>([:])
        let start = ContinuousClock.now
        try runRanks(3) { rank in
            let transport = try TCPTransport.establish(
                rank: rank, addresses: addresses, generation: 1, secret: Self.secret, listener: listeners[rank])
            let communicator = Communicator(transport: transport)
            if rank == 2 {
                transport.close()  // as a killed process's sockets close
                return
            }
            var bytes = [Float](repeating: 1, count: 1 << 20)
            do {
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce($0, count: 1 << 20, type: .float32, timeout: .seconds(30))
                }
            } catch let error as CollectiveError {
                errors.withLock { $0[rank] = error }
            }
        }
        #expect(ContinuousClock.now - start < .seconds(5), "failed at once, not at the 30 s deadline")
        let failures = errors.withLock { $0 }
        #expect(failures.count == 2)
        for (rank, error) in failures {
            #expect(error.code == .peerClosed || error.code == .aborted, "rank \(rank): \(error)")
            #expect(error.peer != nil)
        }
        #expect(failures.values.contains { $0.peer == 2 }, "the closed rank is named")
    }
}
