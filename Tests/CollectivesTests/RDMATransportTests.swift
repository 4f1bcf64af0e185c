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
