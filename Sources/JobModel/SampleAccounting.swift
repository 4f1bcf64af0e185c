/// Which samples a job's committed steps trained, counted from the sample ids members reported.
///
/// The coordinator does not assume that agents train what `DataOrder` says: each member reports
/// the ids it trained on with every step, and the ids of a step count when the step is committed
/// (every member completed it in one generation). Within an epoch an id counted twice is a
/// repeat; an id that an epoch reached (up to the cursor) but never counted is a skip. One bit per
/// sample of the current epoch is kept, so the record stays small and can be saved with the job.
public struct SampleAccounting: Sendable, Hashable, Codable {
    /// The epoch whose ids `bits` holds.
    public private(set) var epoch: UInt64 = 0
    /// One bit per sample id: counted in `epoch`.
    var bits: [UInt64] = []
    /// Ids counted (repeats included).
    public private(set) var seen: UInt64 = 0
    /// Ids counted more than once within an epoch.
    public private(set) var repeated: UInt64 = 0
    /// Ids that finished epochs never counted.
    var skippedInClosedEpochs: UInt64 = 0
    /// Reported ids outside the data set (a bug in an agent).
    public private(set) var outOfRange: UInt64 = 0

    /// An empty account.
    public init() {}

    /// Counts the ids of committed step `step`.
    public mutating func record(step: UInt64, ids: [Int], order: DataOrder) {
        let words = (order.datasetSize + 63) / 64
        if self.bits.count != words { self.bits = [UInt64](repeating: 0, count: words) }
        let stepEpoch = order.epoch(ofStep: step)
        if stepEpoch > self.epoch {
            // The epoch is over: whatever it did not count was skipped, and so was every sample of
            // an epoch passed over entirely.
            self.skippedInClosedEpochs += UInt64(order.datasetSize - self.counted)
            self.skippedInClosedEpochs += UInt64(order.datasetSize) * (stepEpoch - self.epoch - 1)
            self.bits = [UInt64](repeating: 0, count: words)
            self.epoch = stepEpoch
        }
        for id in ids {
            guard id >= 0, id < order.datasetSize else {
                self.outOfRange += 1
                continue
            }
            let (word, bit) = (id / 64, UInt64(1) << UInt64(id % 64))
            if self.bits[word] & bit != 0 {
                self.repeated += 1
            } else {
                self.bits[word] |= bit
            }
            self.seen += 1
        }
    }

    /// Distinct ids counted in the current epoch.
    var counted: Int { self.bits.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Ids skipped so far: those of finished epochs never counted, and those of the current epoch
    /// before `cursor` (the first step not committed) never counted.
    public func skipped(order: DataOrder, cursor: UInt64) -> UInt64 {
        let expected: Int
        if order.epoch(ofStep: cursor) > self.epoch {
            expected = order.datasetSize
        } else {
            expected = order.batchRange(ofStep: cursor).lowerBound
        }
        return self.skippedInClosedEpochs + UInt64(max(0, expected - self.counted))
    }
}
