import JobModel

/// A workload with as many parameters as asked for and almost no computation, for exercising the
/// all-reduce and checkpointing with a big model.
///
/// Each sample `s` pulls the parameters towards its own target vector `c(s) * u`, where `u[i]` is a
/// fixed pseudo-random value in `-1 ..< 1` (a hash of `i` and the seed) and `c(s)` a per-sample
/// coefficient in `0.5 ..< 1.5` (a hash of `s` and the seed). The loss of a sample is
/// `sum_i (p[i] - c(s) * u[i])^2 / 2`, so the summed gradient over samples `S` is
/// `g[i] = |S| * p[i] - (sum_s c(s)) * u[i]`, and the summed loss expands into three sums over the
/// parameters (`p^2`, `p * u`, `u^2`). One step therefore reads the parameters once and writes the
/// gradient once, whatever the number of samples, and its result depends on which samples were
/// used (through `sum_s c(s)` and `sum_s c(s)^2`), so a lost or doubled slice shows. Training is
/// plain SGD; the optimum is `p[i] = mean(c) * u[i]`.
///
/// Buckets are equal parts of the vector, handed out last part first, as backward would.
public final class SyntheticWorkload: TrainingWorkload {
    /// Trainable parameters.
    public let parameterCount: Int
    /// Equal parts of the parameter vector, last part first.
    public let buckets: [Range<Int>]
    /// Samples in the (imaginary) training set.
    public let trainingSamples: Int
    /// Seed of the initial parameters, the targets and the sample coefficients.
    public let seed: UInt64
    /// SGD's learning rate.
    public let learningRate: Float

    /// The state is the parameters alone (plain SGD keeps nothing else).
    public var stateCount: Int { self.parameterCount }

    let weights: UnsafeMutableBufferPointer<Float>
    /// Seed of the target vector `u`.
    let targetSeed: UInt32

    /// A workload of `parameterCount` parameters in `buckets` equal parts; `parameterCount` and
    /// `trainingSamples` must be positive, and `buckets` in `1...parameterCount`.
    public init(parameterCount: Int, buckets: Int, trainingSamples: Int, seed: UInt64, learningRate: Float = 0.1) {
        precondition(parameterCount > 0, "SyntheticWorkload needs at least one parameter")
        precondition(
            buckets >= 1 && buckets <= parameterCount,
            "SyntheticWorkload needs 1...\(parameterCount) buckets, not \(buckets)")
        precondition(trainingSamples > 0, "SyntheticWorkload needs at least one training sample")
        self.parameterCount = parameterCount
        self.trainingSamples = trainingSamples
        self.seed = seed
        self.learningRate = learningRate
        self.buckets = (0..<buckets).reversed().map { part in
            (part * parameterCount / buckets)..<((part + 1) * parameterCount / buckets)
        }
        self.targetSeed = UInt32(truncatingIfNeeded: SplitMix64.mix(seed))
        let parameterSeed = UInt32(truncatingIfNeeded: SplitMix64.mix(seed ^ 0x5eed_0f_9a7a_3e7e5))
        self.weights = .allocate(capacity: parameterCount)
        for index in 0..<parameterCount {
            self.weights.initializeElement(
                at: index, to: Self.unit(Self.hash(UInt32(truncatingIfNeeded: index) ^ parameterSeed)))
        }
    }

    deinit {
        self.weights.deallocate()
    }

    // MARK: - TrainingWorkload

    public func accumulateGradients(
        samples: ArraySlice<Int>,
        into gradients: UnsafeMutableBufferPointer<Float>,
        bucketReady: (Int) -> Void
    ) -> Double {
        guard gradients.count == self.parameterCount, let gradient = gradients.baseAddress,
            let parameter = self.weights.baseAddress
        else {
            fatalError(
                "accumulateGradients: the gradient buffer holds \(gradients.count) values; the model has \(self.parameterCount)"
            )
        }
        var coefficientSum = 0.0
        var coefficientSquares = 0.0
        for id in samples {
            guard id >= 0 && id < self.trainingSamples else {
                fatalError(
                    "accumulateGradients: sample id \(id) is outside the training set 0..<\(self.trainingSamples)")
            }
            let c = Double(self.coefficient(id))
            coefficientSum += c
            coefficientSquares += c * c
        }
        let count = Float(samples.count)
        let pull = Float(coefficientSum)
        var loss = 0.0
        for (bucket, range) in self.buckets.enumerated() {
            let sums = Self.pass(
                parameter: parameter,
                gradient: gradient,
                range: range,
                targetSeed: self.targetSeed,
                count: count,
                pull: pull
            )
            loss +=
                Double(samples.count) * sums.halfSquares - coefficientSum * sums.products + coefficientSquares
                * sums.halfTargets
            bucketReady(bucket)
        }
        return loss
    }

    public func applyGradients(_ gradients: UnsafeBufferPointer<Float>, scale: Float) {
        guard gradients.count == self.parameterCount, let gradient = gradients.baseAddress,
            let parameter = self.weights.baseAddress
        else {
            fatalError(
                "applyGradients: the gradient buffer holds \(gradients.count) values; the model has \(self.parameterCount)"
            )
        }
        let factor = self.learningRate * scale
        for index in 0..<self.parameterCount {
            parameter[index] -= factor * gradient[index]
        }
    }

    public func saveState(into state: UnsafeMutableBufferPointer<Float>) {
        guard state.count == self.stateCount, let destination = state.baseAddress, let source = self.weights.baseAddress
        else {
            fatalError(
                "saveState: the state buffer holds \(state.count) values; this model's state is \(self.stateCount)")
        }
        destination.update(from: source, count: self.parameterCount)
    }

    public func loadState(from state: UnsafeBufferPointer<Float>) {
        guard state.count == self.stateCount, let source = state.baseAddress, let destination = self.weights.baseAddress
        else {
            fatalError(
                "loadState: the state buffer holds \(state.count) values; this model's state is \(self.stateCount)")
        }
        destination.update(from: source, count: self.parameterCount)
    }

    public func parameters() -> [Float] {
        Array(self.weights)
    }

    /// Accuracy is always 0 (there are no classes); the loss is the mean over the first 16 samples.
    public func evaluate() -> (accuracy: Double, loss: Double) {
        guard let parameter = self.weights.baseAddress else { return (0, 0) }
        let ids = 0..<min(16, self.trainingSamples)
        var coefficientSum = 0.0
        var coefficientSquares = 0.0
        for id in ids {
            let c = Double(self.coefficient(id))
            coefficientSum += c
            coefficientSquares += c * c
        }
        let sums = Self.pass(
            parameter: parameter,
            gradient: nil,
            range: 0..<self.parameterCount,
            targetSeed: self.targetSeed,
            count: 0,
            pull: 0
        )
        let loss =
            Double(ids.count) * sums.halfSquares - coefficientSum * sums.products + coefficientSquares
            * sums.halfTargets
        return (0, loss / Double(ids.count))
    }

    // MARK: - Kernels

    /// Sample `id`'s coefficient `c(id)`, in `0.5 ..< 1.5`.
    func coefficient(_ id: Int) -> Float {
        let bits = SplitMix64.mix(self.seed &+ 0x9e37_79b9_7f4a_7c15 &* UInt64(truncatingIfNeeded: id &+ 1))
        return 0.5 + Float(bits >> 40) * 0x1p-24
    }

    /// A 32-bit integer hash (Wellons' "lowbias32"); simple enough to vectorise.
    @inline(__always)
    static func hash(_ value: UInt32) -> UInt32 {
        var x = value
        x ^= x >> 16
        x &*= 0x7feb_352d
        x ^= x >> 15
        x &*= 0x846c_a68b
        x ^= x >> 16
        return x
    }

    /// A hash mapped to `-1 ..< 1`.
    @inline(__always)
    static func unit(_ hash: UInt32) -> Float {
        Float(hash >> 8) * 0x1p-23 - 1
    }

    @inline(__always)
    static func hash(_ value: SIMD16<UInt32>) -> SIMD16<UInt32> {
        var x = value
        x ^= x &>> 16
        x &*= 0x7feb_352d
        x ^= x &>> 15
        x &*= 0x846c_a68b
        x ^= x &>> 16
        return x
    }

    /// Over `range`: writes `gradient[i] = count * p[i] - pull * u[i]` (when given) and returns
    /// `sum p^2 / 2`, `sum p * u` and `sum u^2 / 2`. Sixteen lanes at a time, with Float lane sums
    /// folded into Double every 4,096 elements, in a fixed order.
    static func pass(
        parameter: UnsafeMutablePointer<Float>,
        gradient: UnsafeMutablePointer<Float>?,
        range: Range<Int>,
        targetSeed: UInt32,
        count: Float,
        pull: Float
    ) -> (halfSquares: Double, products: Double, halfTargets: Double) {
        var squares = 0.0
        var products = 0.0
        var targets = 0.0
        let lanes = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        let countLanes = SIMD16<Float>(repeating: count)
        let pullLanes = SIMD16<Float>(repeating: pull)
        var index = range.lowerBound
        while index + 16 <= range.upperBound {
            let blockEnd = min(index + 4096, range.upperBound)
            var squareLanes = SIMD16<Float>()
            var productLanes = SIMD16<Float>()
            var targetLanes = SIMD16<Float>()
            while index + 16 <= blockEnd {
                let indices = SIMD16<UInt32>(repeating: UInt32(truncatingIfNeeded: index)) &+ lanes
                let hashed = Self.hash(indices ^ SIMD16<UInt32>(repeating: targetSeed))
                let u = SIMD16<Float>(hashed &>> 8) * 0x1p-23 - 1
                let p = UnsafeRawPointer(parameter + index).loadUnaligned(as: SIMD16<Float>.self)
                if let gradient {
                    UnsafeMutableRawPointer(gradient + index).storeBytes(
                        of: countLanes * p - pullLanes * u, as: SIMD16<Float>.self)
                }
                squareLanes += p * p
                productLanes += p * u
                targetLanes += u * u
                index += 16
            }
            squares += Double(squareLanes.sum())
            products += Double(productLanes.sum())
            targets += Double(targetLanes.sum())
        }
        while index < range.upperBound {
            let u = Self.unit(Self.hash(UInt32(truncatingIfNeeded: index) ^ targetSeed))
            let p = parameter[index]
            gradient?[index] = count * p - pull * u
            squares += Double(p * p)
            products += Double(p * u)
            targets += Double(u * u)
            index += 1
        }
        return (squares / 2, products, targets / 2)
    }
}
