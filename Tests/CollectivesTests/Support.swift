import Foundation
import Synchronization
import Testing

@testable import Collectives

/// Runs `body` once per rank, each on its own thread (ranks block on each other, so a shared
/// pool of 2 threads would deadlock), and waits for all of them, at most `seconds`.
func runRanks(_ worldSize: Int, within seconds: Double = 60, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let failures = Mutex<[String]>([])
    let finished = DispatchSemaphore(value: 0)
    for rank in 0..<worldSize {
        let thread = Thread {
            do {
                try body(rank)
            } catch {
                failures.withLock { $0.append("rank \(rank): \(error)") }
            }
            finished.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
    for rank in 0..<worldSize {
        if finished.wait(timeout: .now() + seconds) == .timedOut {
            throw TestFailure("rank threads did not all finish within \(seconds) s (\(rank) of \(worldSize) finished)")
        }
    }
    let messages = failures.withLock { $0 }
    if !messages.isEmpty { throw TestFailure(messages.joined(separator: "; ")) }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Rank `rank`'s input: small integers, so Float32 sums are exact.
func input(rank: Int, count: Int) -> [Float] {
    (0..<count).map { Float(($0 * 7 + rank * 13) % 23) - 11 }
}

/// The exact elementwise sum of every rank's input.
func referenceSum(worldSize: Int, count: Int) -> [Float] {
    var sum = [Float](repeating: 0, count: count)
    for rank in 0..<worldSize {
        for (index, value) in input(rank: rank, count: count).enumerated() { sum[index] += value }
    }
    return sum
}

/// Encodes Float32 values as `type` bytes.
func encode(_ values: [Float], as type: DataType) -> [UInt8] {
    switch type {
    case .float32:
        return values.withUnsafeBytes { Array($0) }
    case .float16:
        return values.map { Float16($0) }.withUnsafeBytes { Array($0) }
    case .bfloat16:
        return values.map { BFloat16.bits($0) }.withUnsafeBytes { Array($0) }
    }
}

/// Decodes `type` bytes to Float32 values.
func decode(_ bytes: [UInt8], as type: DataType) -> [Float] {
    bytes.withUnsafeBytes { raw in
        switch type {
        case .float32: return Array(raw.bindMemory(to: Float.self))
        case .float16: return raw.bindMemory(to: Float16.self).map { Float($0) }
        case .bfloat16: return raw.bindMemory(to: UInt16.self).map { BFloat16.float($0) }
        }
    }
}

/// A small deterministic generator, so failures reproduce (the same as RingmasterWireTests' own:
/// test targets share no code).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
