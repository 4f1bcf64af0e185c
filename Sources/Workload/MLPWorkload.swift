import Foundation
import JobModel

/// A multilayer perceptron on the digits data set: `64 -> hidden... -> 10`, ReLU between layers,
/// softmax cross-entropy loss, trained with SGD (momentum) or Adam.
///
/// **Parameters.** One flat Float32 vector, layer by layer; each layer is its weights then its
/// bias. A layer's weights are stored input-major: the weight from input `i` to output `o` of a
/// layer with `n` outputs sits at `i * n + o` from the layer's start (PyTorch's `Linear.weight`
/// transposed). Weights start He-uniform, `U(-sqrt(6 / fanIn), sqrt(6 / fanIn))`, drawn in flat
/// order from ``SplitMix64`` seeded with ``MLPSettings/seed``; biases start at zero. Every process
/// given the same settings therefore starts bit-identical.
///
/// **Buckets.** One per layer (weights and bias), last layer first: backward finishes the last
/// layer first, so its gradient can be on the wire while earlier layers are still computing.
///
/// **Determinism.** Every sum runs in a fixed order: a gradient element adds the samples'
/// contributions in the order they are given, so the same samples give the same bits on every run.
/// Splitting a batch into slices and adding the slices' sums changes only rounding.
///
/// **Cost.** Samples are processed in chunks of ``chunkSize`` through scratch buffers allocated
/// once; the hot loops run over contiguous rows (`z[o] += a * w[o]`), which the compiler
/// vectorises, and skip zero inputs (blank pixels and inactive ReLUs).
///
/// **State.** ``saveState(into:)`` writes the parameters, the first moment (SGD's velocity, Adam's
/// `m`), Adam's second moment `v` (absent for SGD), then the optimizer's step counter as the bit
/// pattern of a `UInt32`.
public final class MLPWorkload: TrainingWorkload {
    /// Samples processed together through the scratch buffers.
    public static let chunkSize = 64

    /// One fully connected layer's place in the flat parameter vector.
    struct Layer {
        /// Inputs (the previous layer's width).
        var inputs: Int
        /// Outputs (this layer's width).
        var outputs: Int
        /// Offset of the weights (`inputs * outputs` values, input-major).
        var weightOffset: Int
        /// Offset of the bias (`outputs` values).
        var biasOffset: Int
        /// The layer's whole range (weights then bias).
        var range: Range<Int> { self.weightOffset..<(self.biasOffset + self.outputs) }
    }

    /// The settings this workload was built with.
    public let settings: MLPSettings
    /// The data it trains on and evaluates against.
    public let dataset: DigitsDataset
    /// Layer widths, input first: `[64] + settings.hidden + [10]`.
    public let layerWidths: [Int]
    /// Trainable parameters.
    public let parameterCount: Int
    /// One range per layer, last layer first.
    public let buckets: [Range<Int>]
    /// Floats in a saved state: parameters, one or two moments, and the step counter.
    public let stateCount: Int
    /// Optimizer steps taken (Adam's `t`; counted for SGD as well).
    public private(set) var optimizerStep: UInt32 = 0

    /// Samples in the training set.
    public var trainingSamples: Int { self.dataset.trainCount }

    let layers: [Layer]
    let weights: UnsafeMutableBufferPointer<Float>
    /// SGD's velocity or Adam's first moment.
    let firstMoment: UnsafeMutableBufferPointer<Float>
    /// Adam's second moment; empty for SGD.
    let secondMoment: UnsafeMutableBufferPointer<Float>
    /// `activations[l]` holds a chunk's inputs to layer `l` (row per sample); the last holds logits.
    let activations: [UnsafeMutableBufferPointer<Float>]
    /// Two buffers of `chunkSize * widest` for the loss gradient with respect to a layer's outputs.
    let deltas: (UnsafeMutableBufferPointer<Float>, UnsafeMutableBufferPointer<Float>)

    /// A freshly initialised model for `dataset`; every hidden width must be positive.
    public init(dataset: DigitsDataset, settings: MLPSettings) {
        precondition(
            settings.hidden.allSatisfy { $0 > 0 }, "MLPWorkload: hidden widths must be positive, not \(settings.hidden)"
        )
        self.settings = settings
        self.dataset = dataset
        let widths = [DigitsDataset.featureCount] + settings.hidden + [DigitsDataset.classCount]
        self.layerWidths = widths
        var layers: [Layer] = []
        var offset = 0
        for index in 0..<(widths.count - 1) {
            let layer = Layer(
                inputs: widths[index],
                outputs: widths[index + 1],
                weightOffset: offset,
                biasOffset: offset + widths[index] * widths[index + 1]
            )
            layers.append(layer)
            offset = layer.range.upperBound
        }
        self.layers = layers
        self.parameterCount = offset
        self.buckets = layers.reversed().map(\.range)

        self.weights = .allocate(capacity: offset)
        self.firstMoment = .allocate(capacity: offset)
        self.firstMoment.initialize(repeating: 0)
        switch settings.optimizer {
        case .sgd:
            self.secondMoment = .allocate(capacity: 0)
            self.stateCount = 2 * offset + 1
        case .adam:
            self.secondMoment = .allocate(capacity: offset)
            self.secondMoment.initialize(repeating: 0)
            self.stateCount = 3 * offset + 1
        }
        self.activations = widths.map { width in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: Self.chunkSize * width)
            buffer.initialize(repeating: 0)
            return buffer
        }
        let widest = widths.max() ?? 1
        let delta0 = UnsafeMutableBufferPointer<Float>.allocate(capacity: Self.chunkSize * widest)
        let delta1 = UnsafeMutableBufferPointer<Float>.allocate(capacity: Self.chunkSize * widest)
        delta0.initialize(repeating: 0)
        delta1.initialize(repeating: 0)
        self.deltas = (delta0, delta1)

        var generator = SplitMix64(seed: settings.seed)
        self.weights.initialize(repeating: 0)
        for layer in layers {
            let bound = Float((6.0 / Double(layer.inputs)).squareRoot())
            for index in layer.weightOffset..<layer.biasOffset {
                self.weights[index] = (2 * generator.nextUnitFloat() - 1) * bound
            }
        }
    }

    deinit {
        self.weights.deallocate()
        self.firstMoment.deallocate()
        self.secondMoment.deallocate()
        for buffer in self.activations { buffer.deallocate() }
        self.deltas.0.deallocate()
        self.deltas.1.deallocate()
    }

    // MARK: - TrainingWorkload

    public func accumulateGradients(
        samples: ArraySlice<Int>,
        into gradients: UnsafeMutableBufferPointer<Float>,
        bucketReady: (Int) -> Void
    ) -> Double {
        guard gradients.count == self.parameterCount, let gradient = gradients.baseAddress else {
            fatalError(
                "accumulateGradients: the gradient buffer holds \(gradients.count) values; the model has \(self.parameterCount)"
            )
        }
        gradient.update(repeating: 0, count: self.parameterCount)
        if samples.isEmpty {
            for bucket in self.buckets.indices { bucketReady(bucket) }
            return 0
        }
        var loss = 0.0
        var chunkStart = samples.startIndex
        while chunkStart < samples.endIndex {
            let chunkEnd = min(chunkStart + Self.chunkSize, samples.endIndex)
            let isLast = chunkEnd == samples.endIndex
            let chunk = samples[chunkStart..<chunkEnd]
            self.loadTrainingInputs(chunk)
            self.forward(count: chunk.count)
            loss += self.lossAndOutputDelta(chunk)
            self.backward(count: chunk.count, gradient: gradient, reportsBuckets: isLast, bucketReady: bucketReady)
            chunkStart = chunkEnd
        }
        return loss
    }

    public func applyGradients(_ gradients: UnsafeBufferPointer<Float>, scale: Float) {
        guard gradients.count == self.parameterCount, let gradient = gradients.baseAddress else {
            fatalError(
                "applyGradients: the gradient buffer holds \(gradients.count) values; the model has \(self.parameterCount)"
            )
        }
        guard let parameter = self.weights.baseAddress, let first = self.firstMoment.baseAddress else { return }
        let count = self.parameterCount
        let decay = self.settings.weightDecay
        self.optimizerStep &+= 1
        switch self.settings.optimizer {
        case .sgd(let learningRate, let momentum):
            for index in 0..<count {
                var g = gradient[index] * scale
                if decay != 0 { g += decay * parameter[index] }
                let velocity = momentum * first[index] + g
                first[index] = velocity
                parameter[index] -= learningRate * velocity
            }
        case .adam(let learningRate, let beta1, let beta2, let epsilon):
            guard let second = self.secondMoment.baseAddress else { return }
            let step = Double(self.optimizerStep)
            let correction1 = 1 - Foundation.pow(Double(beta1), step)
            let correction2 = 1 - Foundation.pow(Double(beta2), step)
            let stepSize = Float(Double(learningRate) / correction1)
            let rootCorrection2 = Float(correction2.squareRoot())
            let oneMinusBeta1 = 1 - beta1
            let oneMinusBeta2 = 1 - beta2
            for index in 0..<count {
                var g = gradient[index] * scale
                if decay != 0 { g += decay * parameter[index] }
                let m = beta1 * first[index] + oneMinusBeta1 * g
                let v = beta2 * second[index] + oneMinusBeta2 * g * g
                first[index] = m
                second[index] = v
                parameter[index] -= stepSize * m / (v.squareRoot() / rootCorrection2 + epsilon)
            }
        }
    }

    public func saveState(into state: UnsafeMutableBufferPointer<Float>) {
        guard state.count == self.stateCount, let destination = state.baseAddress else {
            fatalError(
                "saveState: the state buffer holds \(state.count) values; this model's state is \(self.stateCount)")
        }
        var offset = 0
        for part in [self.weights, self.firstMoment, self.secondMoment] {
            if let source = part.baseAddress, part.count > 0 {
                (destination + offset).update(from: source, count: part.count)
            }
            offset += part.count
        }
        destination[offset] = Float(bitPattern: self.optimizerStep)
    }

    public func loadState(from state: UnsafeBufferPointer<Float>) {
        guard state.count == self.stateCount, let source = state.baseAddress else {
            fatalError(
                "loadState: the state buffer holds \(state.count) values; this model's state is \(self.stateCount)")
        }
        var offset = 0
        for part in [self.weights, self.firstMoment, self.secondMoment] {
            if let destination = part.baseAddress, part.count > 0 {
                destination.update(from: source + offset, count: part.count)
            }
            offset += part.count
        }
        self.optimizerStep = source[offset].bitPattern
    }

    public func parameters() -> [Float] {
        Array(self.weights)
    }

    public func evaluate() -> (accuracy: Double, loss: Double) {
        let count = self.dataset.testCount
        guard count > 0 else { return (0, 0) }
        let width = DigitsDataset.featureCount
        let classes = DigitsDataset.classCount
        var correct = 0
        var loss = 0.0
        var start = 0
        while start < count {
            let end = min(start + Self.chunkSize, count)
            self.dataset.testFeatures.withUnsafeBufferPointer { features in
                guard let source = features.baseAddress, let input = self.activations[0].baseAddress else { return }
                input.update(from: source + start * width, count: (end - start) * width)
            }
            self.forward(count: end - start)
            guard let logits = self.activations[self.activations.count - 1].baseAddress else { break }
            for sample in 0..<(end - start) {
                let row = logits + sample * classes
                let label = Int(self.dataset.testLabels[start + sample])
                var best = 0
                for klass in 1..<classes where row[klass] > row[best] { best = klass }
                if best == label { correct += 1 }
                loss += Double(Self.crossEntropy(row, count: classes, label: label, probabilities: nil))
            }
            start = end
        }
        return (Double(correct) / Double(count), loss / Double(count))
    }

    // MARK: - Forward and backward

    /// Copies the chunk's training rows into `activations[0]`.
    func loadTrainingInputs(_ chunk: ArraySlice<Int>) {
        let width = DigitsDataset.featureCount
        let available = self.dataset.trainCount
        self.dataset.trainingFeatures.withUnsafeBufferPointer { features in
            guard let source = features.baseAddress, let input = self.activations[0].baseAddress else { return }
            for (row, id) in chunk.enumerated() {
                guard id >= 0 && id < available else {
                    fatalError("accumulateGradients: sample id \(id) is outside the training set 0..<\(available)")
                }
                (input + row * width).update(from: source + id * width, count: width)
            }
        }
    }

    /// Runs `count` rows of `activations[0]` through every layer; the last activations are logits.
    func forward(count: Int) {
        for (index, layer) in self.layers.enumerated() {
            guard let input = self.activations[index].baseAddress,
                let output = self.activations[index + 1].baseAddress,
                let base = self.weights.baseAddress
            else { return }
            let isHidden = index < self.layers.count - 1
            Self.affine(
                input: input,
                output: output,
                count: count,
                weights: base + layer.weightOffset,
                bias: base + layer.biasOffset,
                inputs: layer.inputs,
                outputs: layer.outputs,
                relu: isHidden
            )
        }
    }

    /// Turns the logits into the loss gradient with respect to them (in `deltas.0`) and returns the
    /// chunk's summed loss.
    func lossAndOutputDelta(_ chunk: ArraySlice<Int>) -> Double {
        let classes = DigitsDataset.classCount
        guard let logits = self.activations[self.activations.count - 1].baseAddress,
            let delta = self.deltas.0.baseAddress
        else { return 0 }
        var loss = 0.0
        for (row, id) in chunk.enumerated() {
            let label = Int(self.dataset.trainingLabels[id])
            let probabilities = delta + row * classes
            loss += Double(
                Self.crossEntropy(logits + row * classes, count: classes, label: label, probabilities: probabilities))
            probabilities[label] -= 1
        }
        return loss
    }

    /// Accumulates the chunk's weight and bias gradients into `gradient`, layer by layer from the
    /// last, calling `bucketReady` after each layer when `reportsBuckets` (the batch's last chunk).
    func backward(
        count: Int,
        gradient: UnsafeMutablePointer<Float>,
        reportsBuckets: Bool,
        bucketReady: (Int) -> Void
    ) {
        var current = self.deltas.0
        var previous = self.deltas.1
        for (bucket, index) in self.layers.indices.reversed().enumerated() {
            let layer = self.layers[index]
            guard let input = self.activations[index].baseAddress,
                let delta = current.baseAddress,
                let base = self.weights.baseAddress
            else { return }
            Self.accumulateWeightGradient(
                input: input,
                delta: delta,
                count: count,
                weightGradient: gradient + layer.weightOffset,
                biasGradient: gradient + layer.biasOffset,
                inputs: layer.inputs,
                outputs: layer.outputs
            )
            if index > 0, let below = previous.baseAddress {
                Self.propagate(
                    delta: delta,
                    weights: base + layer.weightOffset,
                    activation: input,
                    into: below,
                    count: count,
                    inputs: layer.inputs,
                    outputs: layer.outputs
                )
                swap(&current, &previous)
            }
            if reportsBuckets { bucketReady(bucket) }
        }
    }

    // MARK: - Kernels

    // The innermost loops are `while` loops rather than `for _ in 0..<n`: optimised, both compile
    // to the same code, but unoptimised (debug builds, which the tests run) `while` is about three
    // times faster.

    /// `output[s] = bias + sum_i input[s][i] * weights[i]`, then ReLU when `relu`.
    @inline(__always)
    static func affine(
        input: UnsafeMutablePointer<Float>,
        output: UnsafeMutablePointer<Float>,
        count: Int,
        weights: UnsafeMutablePointer<Float>,
        bias: UnsafeMutablePointer<Float>,
        inputs: Int,
        outputs: Int,
        relu: Bool
    ) {
        for sample in 0..<count {
            let x = input + sample * inputs
            let z = output + sample * outputs
            z.update(from: bias, count: outputs)
            for i in 0..<inputs {
                let a = x[i]
                if a == 0 { continue }
                let w = weights + i * outputs
                var o = 0
                while o < outputs {
                    z[o] += a * w[o]
                    o += 1
                }
            }
            if relu {
                for o in 0..<outputs where !(z[o] > 0) { z[o] = 0 }
            }
        }
    }

    /// `weightGradient[i][o] += input[s][i] * delta[s][o]` and `biasGradient[o] += delta[s][o]`, sample by sample.
    @inline(__always)
    static func accumulateWeightGradient(
        input: UnsafeMutablePointer<Float>,
        delta: UnsafeMutablePointer<Float>,
        count: Int,
        weightGradient: UnsafeMutablePointer<Float>,
        biasGradient: UnsafeMutablePointer<Float>,
        inputs: Int,
        outputs: Int
    ) {
        for sample in 0..<count {
            let x = input + sample * inputs
            let d = delta + sample * outputs
            for i in 0..<inputs {
                let a = x[i]
                if a == 0 { continue }
                let g = weightGradient + i * outputs
                var o = 0
                while o < outputs {
                    g[o] += a * d[o]
                    o += 1
                }
            }
            for o in 0..<outputs { biasGradient[o] += d[o] }
        }
    }

    /// The gradient with respect to the layer's inputs, through the ReLU that produced them:
    /// `below[s][i] = activation[s][i] > 0 ? sum_o weights[i][o] * delta[s][o] : 0`.
    @inline(__always)
    static func propagate(
        delta: UnsafeMutablePointer<Float>,
        weights: UnsafeMutablePointer<Float>,
        activation: UnsafeMutablePointer<Float>,
        into below: UnsafeMutablePointer<Float>,
        count: Int,
        inputs: Int,
        outputs: Int
    ) {
        for sample in 0..<count {
            let x = activation + sample * inputs
            let d = delta + sample * outputs
            let b = below + sample * inputs
            for i in 0..<inputs {
                if x[i] > 0 {
                    let w = weights + i * outputs
                    var sum: Float = 0
                    var o = 0
                    while o < outputs {
                        sum += w[o] * d[o]
                        o += 1
                    }
                    b[i] = sum
                } else {
                    b[i] = 0
                }
            }
        }
    }

    /// The softmax cross-entropy of one row of logits against `label`; writes the softmax
    /// probabilities to `probabilities` when given.
    @inline(__always)
    static func crossEntropy(
        _ logits: UnsafeMutablePointer<Float>,
        count: Int,
        label: Int,
        probabilities: UnsafeMutablePointer<Float>?
    ) -> Float {
        var maximum = logits[0]
        for klass in 1..<count where logits[klass] > maximum { maximum = logits[klass] }
        var sum: Float = 0
        for klass in 0..<count { sum += Foundation.exp(logits[klass] - maximum) }
        if let probabilities {
            let inverse = 1 / sum
            for klass in 0..<count { probabilities[klass] = Foundation.exp(logits[klass] - maximum) * inverse }
        }
        return Foundation.log(sum) - (logits[label] - maximum)
    }
}
