import CReduction
import Foundation
import Synchronization
import Testing

@testable import Collectives

@Suite("All-reduce over the in-process transport")
struct InProcessAllReduceTests {
    static let counts = [0, 1, 2, 7, 13, 97, 1000, 1009, 65_537]

    /// Runs an all-reduce on every rank and returns each rank's result as Float32.
    static func allReduce(
        worldSize: Int,
        count: Int,
        type: DataType,
        operation: ReduceOperation,
        algorithm: Communicator.Algorithm
    ) throws -> [[Float]] {
        let fabric = InProcessFabric(worldSize: worldSize)
        let results = Mutex<[[Float]]>(Array(repeating: [], count: worldSize))
        try runRanks(worldSize) { rank in
            let communicator = Communicator(transport: fabric.transport(rank: rank))
            communicator.algorithm = algorithm
            var bytes = encode(input(rank: rank, count: count), as: type)
            try bytes.withUnsafeMutableBytes { buffer in
                try communicator.allReduce(
                    buffer, count: count, type: type, operation: operation, timeout: .seconds(20))
            }
            let values = decode(bytes, as: type)
            results.withLock { $0[rank] = values }
        }
        return results.withLock { $0 }
    }

    @Test(arguments: 1...8, [Communicator.Algorithm.ring, .recursiveDoubling])
    func float32Sums_areExact_onEveryRank(worldSize: Int, algorithm: Communicator.Algorithm) throws {
        for count in Self.counts {
            let reference = referenceSum(worldSize: worldSize, count: count)
            let results = try Self.allReduce(
                worldSize: worldSize, count: count, type: .float32, operation: .sum, algorithm: algorithm)
            for (rank, result) in results.enumerated() {
                #expect(result == reference, "world \(worldSize), \(count) elements, rank \(rank)")
            }
        }
    }

    @Test(arguments: [2, 3, 5, 8])
    func oneMebiElement_float32Sum_isExact(worldSize: Int) throws {
        let count = 1 << 20
        let reference = referenceSum(worldSize: worldSize, count: count)
        let results = try Self.allReduce(
            worldSize: worldSize, count: count, type: .float32, operation: .sum, algorithm: .automatic)
        for result in results { #expect(result == reference) }
    }

    @Test(arguments: [DataType.float16, .bfloat16], [1, 2, 3, 4, 6, 8])
    func halfTypes_matchTheReference_withinOneRoundingPerHop(type: DataType, worldSize: Int) throws {
        // Sums of small integers are exact in Float32; in a half type every partial sum of at most
        // 8 values of magnitude <= 11 stays below 2^8, exactly representable in float16 (11-bit
        // significand), while bfloat16 (8-bit significand) rounds. The stated tolerance: for
        // float16 exact; for bfloat16 a relative error of 2^-8 per addition, (n - 1) additions.
        for count in [0, 1, 31, 1009, 4096] {
            let reference = referenceSum(worldSize: worldSize, count: count)
            for operation in [ReduceOperation.sum, .average] {
                let results = try Self.allReduce(
                    worldSize: worldSize, count: count, type: type, operation: operation, algorithm: .automatic)
                let expected = operation == .sum ? reference : reference.map { $0 / Float(worldSize) }
                let tolerance: Float = type == .float16 ? (operation == .sum ? 0 : 0.001) : 0.004 * Float(worldSize)
                for (rank, result) in results.enumerated() {
                    #expect(result.count == count)
                    let worst = zip(result, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
                    #expect(
                        worst <= tolerance,
                        "\(type) \(operation) world \(worldSize) count \(count) rank \(rank): relative error \(worst)")
                    #expect(result == results[0], "every rank ends with the same bits")
                }
            }
        }
    }

    @Test(arguments: 1...8)
    func average_isTheSumDividedByTheWorldSize(worldSize: Int) throws {
        let count = 1013
        let reference = referenceSum(worldSize: worldSize, count: count).map { $0 / Float(worldSize) }
        let results = try Self.allReduce(
            worldSize: worldSize, count: count, type: .float32, operation: .average, algorithm: .automatic)
        for result in results {
            #expect(zip(result, reference).allSatisfy { abs($0 - $1) <= 1e-6 * max(1, abs($1)) })
        }
    }
}

@Suite("Broadcast, barrier and all-gather over the in-process transport")
struct InProcessCollectiveTests {
    @Test(arguments: 1...8)
    func broadcast_copiesTheRootsBufferToEveryRank(worldSize: Int) throws {
        for root in 0..<worldSize {
            let fabric = InProcessFabric(worldSize: worldSize)
            let results = Mutex<[[UInt8]]>(Array(repeating: [], count: worldSize))
            try runRanks(worldSize) { rank in
                let communicator = Communicator(transport: fabric.transport(rank: rank))
                var bytes = [UInt8](repeating: rank == root ? 0 : 0xEE, count: 1001)
                if rank == root {
                    for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index &* 31 &+ root) }
                }
                try bytes.withUnsafeMutableBytes { try communicator.broadcast($0, root: root, timeout: .seconds(10)) }
                results.withLock { $0[rank] = bytes }
            }
            let all = results.withLock { $0 }
            #expect(all.allSatisfy { $0 == all[root] }, "world \(worldSize) root \(root)")
        }
    }

    @Test(arguments: 1...8)
    func allGather_concatenatesInRankOrder(worldSize: Int) throws {
        let fabric = InProcessFabric(worldSize: worldSize)
        let results = Mutex<[[UInt8]]>(Array(repeating: [], count: worldSize))
        try runRanks(worldSize) { rank in
            let communicator = Communicator(transport: fabric.transport(rank: rank))
            let input = [UInt8](repeating: UInt8(rank + 1), count: 37)
            var output = [UInt8](repeating: 0, count: 37 * worldSize)
            try input.withUnsafeBytes { source in
                try output.withUnsafeMutableBytes {
                    try communicator.allGather(source, into: $0, timeout: .seconds(10))
                }
            }
            try communicator.barrier(timeout: .seconds(10))
            results.withLock { $0[rank] = output }
        }
        let expected = (0..<worldSize).flatMap { [UInt8](repeating: UInt8($0 + 1), count: 37) }
        #expect(results.withLock { $0 }.allSatisfy { $0 == expected })
    }

    @Test func abortFromAnotherThread_failsTheWaitingRank_within100ms() throws {
        let fabric = InProcessFabric(worldSize: 2)
        let communicator = Communicator(transport: fabric.transport(rank: 0))
        let failed = Mutex<(CollectiveError?, Duration)>((nil, .zero))
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            var bytes = [Float](repeating: 1, count: 1000)
            let start = ContinuousClock.now
            do {
                try bytes.withUnsafeMutableBytes {
                    try communicator.allReduce($0, count: 1000, type: .float32, timeout: .seconds(30))
                }
            } catch let error as CollectiveError {
                failed.withLock { $0 = (error, ContinuousClock.now - start) }
            } catch {}
            done.signal()
        }
        thread.start()
        // Rank 1 never joins, so rank 0 stays blocked: its operation must not end by itself.
        #expect(done.wait(timeout: .now() + .milliseconds(100)) == .timedOut, "rank 0 is blocked waiting for rank 1")
        let aborted = ContinuousClock.now
        communicator.abort(reason: "the generation ended")
        #expect(done.wait(timeout: .now() + 5) == .success, "the aborted rank returned")
        let (error, _) = failed.withLock { $0 }
        #expect(error?.code == .aborted)
        #expect(error?.message == "the generation ended")
        #expect(error?.peer == 1)
        #expect(ContinuousClock.now - aborted < .milliseconds(100))
    }

    @Test func aDeadline_failsTheOperation_namingThePeer() throws {
        let fabric = InProcessFabric(worldSize: 2)
        let communicator = Communicator(transport: fabric.transport(rank: 0))
        var bytes = [Float](repeating: 1, count: 10)
        #expect {
            try bytes.withUnsafeMutableBytes {
                try communicator.allReduce($0, count: 10, type: .float32, timeout: .milliseconds(200))
            }
        } throws: { error in
            guard let error = error as? CollectiveError else { return false }
            return error.code == .deadlineExceeded && error.peer == 1 && error.operation == "allReduce"
        }
    }
}

@Suite("Reduction kernels")
struct ReductionTests {
    /// Every kernel implementation this CPU runs (AVX2 and the portable loops, here).
    static let kernels = Reduction.available

    @Test(arguments: DataType.allCases, Self.kernels)
    func add_matchesScalarAddition_forEveryLengthAroundTheVectorWidth(type: DataType, kernels: Reduction.Kernels) {
        for count in Array(0..<40) + [1000, 4099] {
            let a = (0..<count).map { Float($0) * 0.5 - 3 }
            let b = (0..<count).map { Float($0 % 5) + 0.25 }
            var destination = encode(a, as: type)
            let source = encode(b, as: type)
            source.withUnsafeBytes { s in
                destination.withUnsafeMutableBytes { d in
                    Reduction.add(
                        s.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!,
                        into: d.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 1)!,
                        count: count, type: type, kernels: kernels
                    )
                }
            }
            let expected = zip(decode(encode(a, as: type), as: type), decode(source, as: type)).map { $0 + $1 }
            #expect(
                decode(destination, as: type) == decode(encode(expected, as: type), as: type),
                "\(type) \(kernels) count \(count)")
        }
    }

    @Test(arguments: Self.kernels)
    func sum_ofNSources_isTheScalarSumInSourceOrder_forEveryLengthAroundTheBlock(kernels: Reduction.Kernels) {
        for sources in [1, 2, 3, 4, 7] {
            for count in Array(0..<70) + [1000, 4099] {
                let inputs: [[Float]] = (0..<sources).map { k in
                    (0..<count).map { i -> Float in
                        let step = Float((i * 7 + k * 13) % 29)
                        return step * 0.37 - 4
                    }
                }
                var destination = [Float](repeating: .nan, count: count + 1)
                let pointers: [UnsafeMutablePointer<Float>] = inputs.map { input in
                    let copy = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count))
                    copy.initialize(from: input, count: count)
                    return copy
                }
                defer { for pointer in pointers { pointer.deallocate() } }
                destination.withUnsafeMutableBufferPointer {
                    Reduction.sum(
                        pointers.map { UnsafePointer<Float>($0) }, into: $0.baseAddress!, count: count,
                        kernels: kernels)
                }
                let expected: [Float] = (0..<count).map { i in
                    inputs.dropFirst().reduce(inputs[0][i]) { partial, input in partial + input[i] }
                }
                #expect(Array(destination.prefix(count)) == expected, "\(kernels): \(sources) sources, count \(count)")
                #expect(destination[count].isNaN, "nothing past the end is written")
            }
        }
    }

    /// Sums of awkward half values: subnormals, the largest finite ones, sums that overflow to
    /// infinity, exact ties, NaN and infinities; every kernel must round exactly as one Float32
    /// addition rounded once by Swift's own conversion.
    @Test(arguments: [DataType.float16, .bfloat16], Self.kernels)
    func halfAddition_roundsLikeOneFloat32AdditionRoundedOnce(type: DataType, kernels: Reduction.Kernels) {
        var generator = SplitMix64(seed: 7)
        let count = 4096 + 13
        let pick: () -> UInt16 = {
            switch generator.next() % 8 {
            case 0: return UInt16(truncatingIfNeeded: generator.next() % 0x0400)  // subnormal or zero
            case 1: return 0x7BFF  // largest finite binary16
            case 2: return 0x7C00  // infinity
            case 3: return 0x7E00 | UInt16(truncatingIfNeeded: generator.next() % 0x100)  // NaN
            case 4: return 0x7F7F  // largest finite bfloat16
            default: return UInt16(truncatingIfNeeded: generator.next())
            }
        }
        var destination = (0..<count).map { _ in pick() ^ (generator.next() % 2 == 0 ? 0 : 0x8000) }
        let source = (0..<count).map { _ in pick() }
        let widen: (UInt16) -> Float = { type == .float16 ? Float(Float16(bitPattern: $0)) : BFloat16.float($0) }
        let narrow: (Float) -> UInt16 = { type == .float16 ? Float16($0).bitPattern : BFloat16.bits($0) }
        let expected = zip(destination, source).map { narrow(widen($0) + widen($1)) }
        source.withUnsafeBytes { s in
            destination.withUnsafeMutableBytes { d in
                Reduction.add(s.baseAddress!, into: d.baseAddress!, count: count, type: type, kernels: kernels)
            }
        }
        let wrong = (0..<count).filter {
            destination[$0] != expected[$0] && !(widen(destination[$0]).isNaN && widen(expected[$0]).isNaN)
        }
        let shown = wrong.prefix(5).map {
            "element \($0): 0x\(String(destination[$0], radix: 16)), expected 0x\(String(expected[$0], radix: 16))"
        }
        #expect(wrong.isEmpty, "\(type) \(kernels): \(wrong.count) wrong, e.g. \(shown)")
    }

    @Test(arguments: DataType.allCases, Self.kernels)
    func scale_matchesScalarMultiplication(type: DataType, kernels: Reduction.Kernels) {
        let count = 1000 + 7
        let values = (0..<count).map { Float($0) * 0.37 - 100 }
        var buffer = encode(values, as: type)
        buffer.withUnsafeMutableBytes {
            Reduction.scale($0.baseAddress!, count: count, type: type, by: 1 / 3, kernels: kernels)
        }
        let expected = decode(encode(values, as: type), as: type).map { $0 * (1 / 3) }
        #expect(decode(buffer, as: type) == decode(encode(expected, as: type), as: type), "\(type) \(kernels)")
    }

    /// The portable conversions against Swift's `Float16`: every binary16 value widened, and the
    /// narrowing of every binary16 value, of every midpoint between neighbours (ties go to even),
    /// of the points just either side of each midpoint, and of a million Float32 bit patterns
    /// spread over the whole range (overflow, underflow, subnormals, NaN).
    @Test func portableBinary16Conversions_equalSwiftFloat16_exhaustively() {
        var mismatches: [String] = []
        func check(_ value: Float) {
            let got = rm_float_to_half(value)
            let expected = Float16(value).bitPattern
            if got != expected && !(value.isNaN && Float16(bitPattern: got).isNaN) && mismatches.count < 10 {
                mismatches.append(
                    "narrowing \(value) (0x\(String(value.bitPattern, radix: 16))): 0x\(String(got, radix: 16)), expected 0x\(String(expected, radix: 16))"
                )
            }
        }
        for bits in 0...UInt16.max {
            let half = Float16(bitPattern: bits)
            let widened = rm_half_to_float(bits)
            if widened.bitPattern != Float(half).bitPattern && !(half.isNaN && widened.isNaN) && mismatches.count < 10 {
                mismatches.append("widening 0x\(String(bits, radix: 16)): \(widened), expected \(Float(half))")
            }
            check(Float(half))
            if half.isFinite && bits & 0x7FFF != 0x7BFF {
                let next = Float(Float16(bitPattern: bits + 1))
                let middle = (Float(half) + next) / 2  // exact in Float32
                check(middle)
                check(middle.nextUp)
                check(middle.nextDown)
            }
        }
        for bits in stride(from: UInt32(0), through: UInt32.max - 4099, by: 4099) {
            check(Float(bitPattern: bits))
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
    }

    @Test func portableBFloat16Conversions_equalTheSwiftReference() {
        var mismatches = 0
        for bits in stride(from: UInt32(0), through: UInt32.max - 4099, by: 4099) {
            let value = Float(bitPattern: bits)
            let got = rm_float_to_bfloat16(value)
            if got != BFloat16.bits(value) && !(value.isNaN && BFloat16.float(got).isNaN) { mismatches += 1 }
        }
        for bits in 0...UInt16.max where rm_bfloat16_to_float(bits).bitPattern != BFloat16.float(bits).bitPattern {
            mismatches += 1
        }
        #expect(mismatches == 0)
    }

    @Test func bfloat16_roundsToNearestEven() {
        #expect(BFloat16.bits(1.0) == 0x3F80)
        #expect(BFloat16.float(BFloat16.bits(1.00390625)) == 1.0)  // halfway: ties to even
        #expect(BFloat16.float(BFloat16.bits(1.01171875)) == 1.015625)  // halfway: ties to even, up
        #expect(BFloat16.bits(.nan) & 0x7FFF > 0x7F80)
    }
}
