import Collectives

/// The reduction kernels alone: `destination += source` on one thread, per kernel implementation
/// this CPU runs and per element type, at a
/// size that stays in the core's cache and at one that does not, against a memory copy of the
/// same bytes. Rates are buffer bytes per second (10^9 B/s): an addition reads two buffers and
/// writes one, a copy reads one and writes one, so an addition at memory bandwidth runs at about
/// two thirds of the copy's rate.
public enum ReductionBenchmark {
    /// One type at one size.
    public struct Row: Sendable {
        public var kernels: String
        public var type: String
        public var bytes: Int
        public var addGBps: Double
        public var copyGBps: Double
    }

    /// Measures every type in `types` at every size in `sizes`, each for about `seconds`.
    public static func run(types: [DataType], sizes: [Int], seconds: Double = 0.3) -> [Row] {
        var rows: [Row] = []
        for size in sizes {
            Self.withBuffers(bytes: size) { source, destination in
                let copy = Self.copyRate(source, destination, seconds: seconds)
                for kernels in Reduction.available {
                    for type in types {
                        let add = Self.rate(bytes: size, seconds: seconds) {
                            Reduction.add(
                                source.baseAddress!, into: destination.baseAddress!, count: size / type.size,
                                type: type, kernels: kernels)
                        }
                        rows.append(
                            Row(kernels: "\(kernels)", type: type.rawValue, bytes: size, addGBps: add, copyGBps: copy))
                    }
                }
            }
        }
        return rows
    }

    /// One thread's memory copy rate from `source` to `destination` (the same size), over about
    /// `seconds`, in 10^9 B/s.
    public static func copyRate(
        _ source: UnsafeMutableRawBufferPointer, _ destination: UnsafeMutableRawBufferPointer, seconds: Double
    ) -> Double {
        Self.rate(bytes: source.count, seconds: seconds) {
            destination.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count)
        }
    }

    /// Calls `body` with two zeroed 64-byte-aligned buffers of `bytes`, freed after.
    public static func withBuffers<Result>(
        bytes: Int,
        _ body: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) throws -> Result
    ) rethrows -> Result {
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 64)
        defer {
            source.deallocate()
            destination.deallocate()
        }
        source.initializeMemory(as: UInt8.self, repeating: 0)
        destination.initializeMemory(as: UInt8.self, repeating: 0)
        return try body(source, destination)
    }

    /// Runs `body` (which processes `bytes`) repeatedly for about `seconds`; returns 10^9 B/s.
    static func rate(bytes: Int, seconds: Double, _ body: () -> Void) -> Double {
        body()  // warm the caches and the pages
        let start = ContinuousClock.now
        var rounds = 0
        while AllReduceBenchmark.seconds(ContinuousClock.now - start) < seconds {
            body()
            rounds += 1
        }
        return Double(bytes * rounds) / AllReduceBenchmark.seconds(ContinuousClock.now - start) / 1e9
    }
}
