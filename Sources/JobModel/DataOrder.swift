/// The order in which a job consumes its data set: which samples global step `s` holds, and
/// which of them rank `r` of `w` takes.
///
/// Each epoch visits every sample exactly once, in a permutation seeded by the job's seed and the
/// epoch number (a Fisher-Yates shuffle driven by SplitMix64, so every agent and the coordinator
/// compute the same order with no data exchanged). An epoch is cut into global batches of a fixed
/// size; the last batch of an epoch holds the remainder, so no sample is dropped. A batch is cut
/// into one contiguous slice per rank; slices differ in size by at most one sample.
///
/// The global batch does not depend on the world size, so a step's samples are the same whether
/// 1 or 64 agents run it: membership changes move slices between ranks, never samples between steps.
public struct DataOrder: Sendable, Hashable, Codable {
    /// Samples in the data set.
    public let datasetSize: Int
    /// Samples in one global batch (the last batch of an epoch may be smaller).
    public let globalBatchSize: Int
    /// Seed of the per-epoch permutations.
    public let seed: UInt64

    /// Makes an order; `datasetSize` and `globalBatchSize` must be positive.
    public init(datasetSize: Int, globalBatchSize: Int, seed: UInt64) {
        precondition(datasetSize > 0 && globalBatchSize > 0)
        self.datasetSize = datasetSize
        self.globalBatchSize = globalBatchSize
        self.seed = seed
    }

    /// Global steps in one epoch (the last may be a partial batch).
    public var stepsPerEpoch: Int {
        (self.datasetSize + self.globalBatchSize - 1) / self.globalBatchSize
    }

    /// The epoch that global step `step` belongs to.
    public func epoch(ofStep step: UInt64) -> UInt64 {
        step / UInt64(self.stepsPerEpoch)
    }

    /// Positions (in the epoch's permutation) of the samples of global step `step`.
    public func batchRange(ofStep step: UInt64) -> Range<Int> {
        let inEpoch = Int(step % UInt64(self.stepsPerEpoch))
        let start = inEpoch * self.globalBatchSize
        return start..<min(start + self.globalBatchSize, self.datasetSize)
    }

    /// The part of a batch of `batchSize` samples that rank `rank` of `worldSize` takes: an offset
    /// into the batch and a count. The first `batchSize % worldSize` ranks take one more sample.
    public static func slice(batchSize: Int, rank: Int, worldSize: Int) -> (offset: Int, count: Int) {
        precondition(worldSize > 0 && rank >= 0 && rank < worldSize)
        let base = batchSize / worldSize
        let extra = batchSize % worldSize
        return (rank * base + min(rank, extra), base + (rank < extra ? 1 : 0))
    }

    /// Positions (in the epoch's permutation) that rank `rank` of `worldSize` takes at `step`.
    public func positions(step: UInt64, rank: Int, worldSize: Int) -> Range<Int> {
        let batch = self.batchRange(ofStep: step)
        let slice = Self.slice(batchSize: batch.count, rank: rank, worldSize: worldSize)
        return (batch.lowerBound + slice.offset)..<(batch.lowerBound + slice.offset + slice.count)
    }

    /// The sample ids of `epoch`, in the order the epoch visits them.
    public func permutation(epoch: UInt64) -> [Int] {
        var generator = SplitMix64(seed: self.seed ^ (epoch &* 0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
        var order = Array(0..<self.datasetSize)
        var index = order.count - 1
        while index > 0 {
            let other = Int(generator.next() % UInt64(index + 1))
            order.swapAt(index, other)
            index -= 1
        }
        return order
    }

    /// The sample ids rank `rank` of `worldSize` trains on at `step`, given that epoch's permutation.
    public func samples(step: UInt64, rank: Int, worldSize: Int, permutation: [Int]) -> ArraySlice<Int> {
        permutation[self.positions(step: step, rank: rank, worldSize: worldSize)]
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, fast, well-distributed generator whose whole state
/// is one integer, so the same seed gives the same sequence on every machine.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64

    /// Starts the sequence at `seed`.
    public init(seed: UInt64) {
        self.state = seed
    }

    public mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        return Self.mix(self.state)
    }

    /// The SplitMix64 finaliser: a bijective scramble of 64 bits.
    @inline(__always)
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A Float uniformly distributed in `0 ..< 1`, from the top 24 bits of the next output.
    public mutating func nextUnitFloat() -> Float {
        Float(self.next() >> 40) * 0x1p-24
    }
}
