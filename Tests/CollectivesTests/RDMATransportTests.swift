import Foundation
import Synchronization
import Testing
import Verbs

@testable import Collectives

/// The all-reduce over RDMA verbs. These run where an RDMA device exists (scripts/test.sh runs
/// them in a qemu guest against Soft-RoCE, rxe0) and skip themselves, saying so, where none does.
@Suite(
    "All-reduce over RDMA", .serialized, .timeLimit(.minutes(5)),
    .enabled(
        if: RDMADevice.all().contains { $0.usable },
        "no RDMA device on this machine: scripts/rdma-guest.sh runs these tests against Soft-RoCE (rxe0) in a qemu guest"
    ))
struct RDMATransportTests {
    /// Rank `rank`'s input for case `index`: random floats (so that the sums round, and any
    /// difference in the order of additions would show), as `type`.
    static func randomInput(rank: Int, index: Int, count: Int, type: DataType) -> [UInt8] {
        var generator = SplitMix64(seed: UInt64(rank * 1_000_003 + index * 7919 + 1))
        let values = (0..<count).map { _ in Float(Int64(generator.next() % 2_000_001) - 1_000_000) / 977.0 }
        return encode(values, as: type)
    }

    /// Every case's result bytes, by rank, over TCP alone or over RDMA set up through TCP.
    static func run(worldSize: Int, rdma: Bool, cases: [(DataType, ReduceOperation, Int)]) throws -> [[[UInt8]]] {
        let (listeners, addresses) = try TCPTransportTests.listeners(worldSize)
        defer { for listener in listeners { listener.close() } }
        let results = Mutex<[[[UInt8]]]>(Array(repeating: [], count: worldSize))
        try runRanks(worldSize, within: 240) { rank in
            let tcp = try TCPTransport.establish(
                rank: rank, addresses: addresses, generation: 1, secret: TCPTransportTests.secret,
                listener: listeners[rank], timeout: .seconds(20))
            let transport: any Transport = rdma ? try RDMATransport.establish(over: tcp) : tcp
            defer { transport.close() }
            let communicator = Communicator(transport: transport)
            var mine: [[UInt8]] = []
            for (index, (type, operation, count)) in cases.enumerated() {
                var bytes = Self.randomInput(rank: rank, index: index, count: count, type: type)
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce(
                        $0, count: count, type: type, operation: operation, timeout: .seconds(60))
                }
                mine.append(bytes)
            }
            results.withLock { $0[rank] = mine }
        }
        return results.withLock { $0 }
    }

    /// Every type and operation at counts 0, 1 and a prime, and float32 sums of a larger prime;
    /// the guest's emulated CPUs make more slow (1 Mi elements has a test of its own).
    static var cases: [(DataType, ReduceOperation, Int)] {
        var cases: [(DataType, ReduceOperation, Int)] = []
        for type in DataType.allCases {
            for operation in ReduceOperation.allCases {
                for count in [0, 1, 1009] { cases.append((type, operation, count)) }
            }
        }
        return cases + [(.float32, .sum, 65_537)]
    }

    @Test func allReduce_overRDMA_isBitEqualToTCP_forEveryTypeOperationAndCount_inWorldsOf2To4() throws {
        for worldSize in 2...4 { try self.compare(worldSize: worldSize, cases: Self.cases) }
    }

    @Test func allReduce_ofOneMiElements_overRDMA_isBitEqualToTCP_forEveryType() throws {
        try self.compare(
            worldSize: 2,
            cases: [
                (.float32, .sum, 1 << 20), (.float32, .average, 1 << 20), (.float16, .sum, 1 << 20),
                (.float16, .average, 1 << 20), (.bfloat16, .sum, 1 << 20), (.bfloat16, .average, 1 << 20),
            ])
        try self.compare(worldSize: 4, cases: [(.float32, .sum, 1 << 20)])
    }

    /// This guest's rank when scripts/rdma-pair.sh runs the suite in two guests joined by a virtual
    /// link (guest r is 192.0.2.(r+1), with rxe0 over that link).
    static let pairRank = ProcessInfo.processInfo.environment["RINGMASTER_RDMA_PAIR"].flatMap { Int($0) }

    @Test(
        .enabled(
            if: Self.pairRank != nil,
            "runs in two guests joined by a virtual link, each with its own rxe0: scripts/rdma-pair.sh runs it"))
    func allReduce_betweenTwoGuestsOverAVirtualLink_isBitEqualToTCP_andBothRanksAgree() throws {
        let rank = try #require(Self.pairRank)
        let hosts = ["192.0.2.1", "192.0.2.2"]
        let listener = try DataPlaneListener(host: hosts[rank], port: 7701)
        defer { listener.close() }
        let cases = Self.cases + [(.float32, .sum, 1 << 18)]
        // One generation over TCP, then one over RDMA set up through its own TCP connections; the
        // other guest may boot later, so connecting waits up to two minutes.
        func run(generation: UInt64, rdma: Bool) throws -> ([[UInt8]], any Transport) {
            let tcp = try TCPTransport.establish(
                rank: rank, addresses: hosts.map { "\($0):7701" }, generation: generation,
                secret: TCPTransportTests.secret, listener: listener, timeout: .seconds(120))
            let transport: any Transport = rdma ? try RDMATransport.establish(over: tcp) : tcp
            let communicator = Communicator(transport: transport)
            var results: [[UInt8]] = []
            for (index, (type, operation, count)) in cases.enumerated() {
                var bytes = Self.randomInput(rank: rank, index: index, count: count, type: type)
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce(
                        $0, count: count, type: type, operation: operation, timeout: .seconds(60))
                }
                results.append(bytes)
            }
            return (results, transport)
        }
        let (overTCP, tcp) = try run(generation: 1, rdma: false)
        tcp.close()
        let (overRDMA, rdma) = try run(generation: 2, rdma: true)
        for (index, (type, operation, count)) in cases.enumerated() {
            #expect(overRDMA[index].count == count * type.size)
            #expect(
                overRDMA[index] == overTCP[index], "\(count) \(type) \(operation), rank \(rank): RDMA differs from TCP")
        }
        // Both guests hold the same results: their digests, all-gathered over the link.
        var digest = overRDMA.joined().reduce(UInt64(14_695_981_039_346_656_037)) {
            ($0 ^ UInt64($1)) &* 1_099_511_628_211
        }
        var digests = [UInt64](repeating: 0, count: 2)
        try withUnsafeBytes(of: &digest) { source in
            try digests.withUnsafeMutableBytes {
                try Communicator(transport: rdma).allGather(source, into: $0, timeout: .seconds(60))
            }
        }
        #expect(digests[0] == digests[1], "the two guests' results differ")
        rdma.close()
        #expect(VerbsResources.live == [:], "every queue pair, region, queue and context released")
    }

    func compare(worldSize: Int, cases: [(DataType, ReduceOperation, Int)]) throws {
        let overTCP = try Self.run(worldSize: worldSize, rdma: false, cases: cases)
        let overRDMA = try Self.run(worldSize: worldSize, rdma: true, cases: cases)
        for (index, (type, operation, count)) in cases.enumerated() {
            for rank in 0..<worldSize {
                #expect(overRDMA[rank][index].count == count * type.size)
                #expect(
                    overRDMA[rank][index] == overTCP[rank][index],
                    "\(count) \(type) \(operation), rank \(rank) of \(worldSize): RDMA differs from TCP")
            }
            #expect(Set(overRDMA.map { $0[index] }).count == 1, "every rank holds the same result")
        }
        #expect(VerbsResources.live == [:], "every queue pair, region, queue and context released")
    }
}
