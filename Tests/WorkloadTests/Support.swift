import JobModel
import Workload

/// Shared fixtures and a small in-process "trainer" that plays the part of the distributed one.
enum Fixture {
    /// The bundled data set, parsed once per test process.
    static let digits: DigitsDataset = {
        do {
            return try DigitsDataset.bundled()
        } catch {
            fatalError("the bundled digits data set does not load: \(error)")
        }
    }()

    /// The order of epoch `epoch`: a Fisher-Yates shuffle of `0..<count` seeded by `seed` and the epoch.
    static func epochOrder(epoch: Int, count: Int, seed: UInt64) -> [Int] {
        var order = Array(0..<count)
        var generator = SplitMix64(seed: seed ^ (UInt64(epoch) &* 0x9e37_79b9_7f4a_7c15))
        for index in stride(from: count - 1, to: 0, by: -1) {
            let other = Int(generator.next() % UInt64(index + 1))
            order.swapAt(index, other)
        }
        return order
    }

    /// How the slices' gradients are added up, as different all-reduce algorithms would.
    enum Grouping: String, CaseIterable, Sendable {
        /// `((g0 + g1) + g2) + g3`: a ring that starts at rank 0.
        case inOrder
        /// `(g0 + g1) + (g2 + g3)`: a tree.
        case pairwise
        /// `g3 + (g2 + (g1 + g0))`: a ring that starts at the last rank.
        case reversed
    }

    /// `destination[i] += source[i]`.
    static func add(_ source: [Float], into destination: inout [Float]) {
        source.withUnsafeBufferPointer { source in
            destination.withUnsafeMutableBufferPointer { destination in
                guard let s = source.baseAddress, let d = destination.baseAddress else { return }
                for index in 0..<destination.count { d[index] += s[index] }
            }
        }
    }

    /// The global sum of the gradients of `batch` cut into `slices` contiguous slices (one per
    /// imaginary rank, sizes differing by at most one), added up as `grouping` says; and the
    /// summed loss.
    static func globalGradient(
        _ workload: some TrainingWorkload,
        batch: ArraySlice<Int>,
        slices: Int,
        grouping: Grouping
    ) throws -> (gradient: [Float], loss: Double) {
        var parts: [[Float]] = []
        var loss = 0.0
        for rank in 0..<slices {
            let base = batch.count / slices
            let extra = batch.count % slices
            let start = batch.startIndex + rank * base + min(rank, extra)
            let size = base + (rank < extra ? 1 : 0)
            var part = [Float](repeating: .nan, count: workload.parameterCount)
            loss += try part.withUnsafeMutableBufferPointer { buffer in
                try workload.accumulateGradients(
                    samples: batch[start..<(start + size)], into: buffer, bucketReady: { _ in })
            }
            parts.append(part)
        }
        switch grouping {
        case .inOrder:
            var sum = parts[0]
            for part in parts.dropFirst() { Self.add(part, into: &sum) }
            return (sum, loss)
        case .reversed:
            var sum = parts[parts.count - 1]
            for part in parts.dropLast().reversed() { Self.add(part, into: &sum) }
            return (sum, loss)
        case .pairwise:
            var level = parts
            while level.count > 1 {
                var next: [[Float]] = []
                for pair in stride(from: 0, to: level.count, by: 2) {
                    var sum = level[pair]
                    if pair + 1 < level.count { Self.add(level[pair + 1], into: &sum) }
                    next.append(sum)
                }
                level = next
            }
            return (level[0], loss)
        }
    }

    /// Trains global steps `steps` with batches of `batchSize` taken in turn from each epoch's
    /// shuffled order (the last batch of an epoch holds the remainder), each computed as `slices`
    /// slices added up as `grouping` says; returns the mean loss of the last step.
    @discardableResult
    static func train(
        _ workload: some TrainingWorkload,
        steps: Range<Int>,
        batchSize: Int = 64,
        slices: Int = 1,
        grouping: Grouping = .inOrder,
        seed: UInt64 = 7
    ) throws -> Double {
        let count = workload.trainingSamples
        let stepsPerEpoch = (count + batchSize - 1) / batchSize
        var lastLoss = 0.0
        var epoch = -1
        var order: [Int] = []
        for step in steps {
            if step / stepsPerEpoch != epoch {
                epoch = step / stepsPerEpoch
                order = Self.epochOrder(epoch: epoch, count: count, seed: seed)
            }
            let start = (step % stepsPerEpoch) * batchSize
            let batch = order[start..<min(start + batchSize, count)]
            let (gradient, loss) = try Self.globalGradient(workload, batch: batch, slices: slices, grouping: grouping)
            try gradient.withUnsafeBufferPointer { try workload.applyGradients($0, scale: 1 / Float(batch.count)) }
            lastLoss = loss / Double(batch.count)
        }
        return lastLoss
    }

    /// The workload's whole state.
    static func state(_ workload: some TrainingWorkload) throws -> [Float] {
        var state = [Float](repeating: .nan, count: workload.stateCount)
        try state.withUnsafeMutableBufferPointer { try workload.saveState(into: $0) }
        return state
    }

    /// Bit patterns, so that comparisons are bit for bit (NaN and -0 included).
    static func bits(_ values: [Float]) -> [UInt32] {
        values.map(\.bitPattern)
    }
}
