import Foundation
import Testing

@testable import Workload

@Suite("The perceptron workload")
struct MLPWorkloadTests {
    static func model(
        hidden: [Int] = [128], optimizer: MLPSettings.Optimizer = .sgd(), weightDecay: Float = 0, seed: UInt64 = 42
    ) -> MLPWorkload {
        MLPWorkload(
            dataset: Fixture.digits,
            settings: MLPSettings(hidden: hidden, optimizer: optimizer, weightDecay: weightDecay, seed: seed))
    }

    /// The summed loss of `samples` computed in Double by a separate, straightforward implementation
    /// of the documented layout (layer by layer; input-major weights, then bias).
    static func referenceLoss(_ p: [Double], widths: [Int], samples: [Int]) -> Double {
        let dataset = Fixture.digits
        var total = 0.0
        for id in samples {
            var x = dataset.trainingSample(id).map(Double.init)
            var offset = 0
            for layer in 0..<(widths.count - 1) {
                let (inputs, outputs) = (widths[layer], widths[layer + 1])
                var z = (0..<outputs).map { p[offset + inputs * outputs + $0] }
                for i in 0..<inputs {
                    for o in 0..<outputs { z[o] += x[i] * p[offset + i * outputs + o] }
                }
                offset += inputs * outputs + outputs
                x = layer < widths.count - 2 ? z.map { max($0, 0) } : z
            }
            let maximum = x.max() ?? 0
            let logSum = Foundation.log(x.reduce(0) { $0 + Foundation.exp($1 - maximum) })
            total += logSum - (x[dataset.trainingLabel(id)] - maximum)
        }
        return total
    }

    static func gradient(_ workload: MLPWorkload, _ samples: [Int]) -> (gradient: [Float], loss: Double) {
        var gradient = [Float](repeating: .nan, count: workload.parameterCount)
        let loss = gradient.withUnsafeMutableBufferPointer {
            workload.accumulateGradients(samples: samples[...], into: $0, bucketReady: { _ in })
        }
        return (gradient, loss)
    }

    // MARK: - Layout and initialisation

    @Test func test_layout_isLayerByLayer_withOneBucketPerLayer_lastLayerFirst() {
        let workload = Self.model(hidden: [128, 32])
        #expect(workload.layerWidths == [64, 128, 32, 10])
        #expect(workload.parameterCount == 64 * 128 + 128 + 128 * 32 + 32 + 32 * 10 + 10)
        #expect(workload.buckets == [(8320 + 4128)..<12778, 8320..<(8320 + 4128), 0..<8320])
        #expect(workload.stateCount == 2 * workload.parameterCount + 1)
        #expect(Self.model(optimizer: .adam()).stateCount == 3 * Self.model().parameterCount + 1)
        #expect(workload.trainingSamples == 1437)
    }

    @Test func test_initialisation_dependsOnlyOnTheSeed_heUniformWeights_zeroBiases() {
        let a = Self.model(seed: 5).parameters()
        #expect(Fixture.bits(a) == Fixture.bits(Self.model(seed: 5).parameters()))
        #expect(parameterHash(a) == parameterHash(Self.model(seed: 5).parameters()))
        #expect(parameterHash(a) != parameterHash(Self.model(seed: 6).parameters()))
        let firstBound = Float((6.0 / 64).squareRoot())
        #expect(a[0..<8192].allSatisfy { abs($0) <= firstBound } && a[0..<8192].contains { abs($0) > 0.9 * firstBound })
        #expect(a[8192..<8320].allSatisfy { $0 == 0 } && a[(8320 + 1280)...].allSatisfy { $0 == 0 })
    }

    @Test func test_parameterHash_isFNV1aOverLittleEndianBytes() {
        // FNV-1a of no bytes is the offset basis; of the bytes 00 00 80 3f (1.0) it is this value.
        #expect(parameterHash([]) == 0xcbf2_9ce4_8422_2325)
        var expected: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte: UInt8 in [0x00, 0x00, 0x80, 0x3f] { expected = (expected ^ UInt64(byte)) &* 0x100_0000_01b3 }
        #expect(parameterHash([1.0]) == expected)
        #expect(parameterHash([0.0]) != parameterHash([-0.0]))
    }

    // MARK: - Gradients

    /// The analytic gradient against central differences of a Double-precision reference loss
    /// (h = 1e-4, so the difference quotient is good to about 1e-8). The workload computes in Float32,
    /// so the tolerance is 1e-4 times the largest gradient component (at least 1).
    @Test(arguments: [[5], [5, 4], []])
    func test_gradient_matchesFiniteDifferences(hidden: [Int]) throws {
        let workload = Self.model(hidden: hidden, seed: 3)
        let samples = [0, 1, 2, 3, 100, 500, 1000, 1436]
        let (analytic, loss) = Self.gradient(workload, samples)
        let parameters = workload.parameters().map(Double.init)
        let referenceLoss = Self.referenceLoss(parameters, widths: workload.layerWidths, samples: samples)
        #expect(abs(loss - referenceLoss) <= 1e-5 * referenceLoss, "loss \(loss) vs reference \(referenceLoss)")

        let h = 1e-4
        var numeric = [Double](repeating: 0, count: parameters.count)
        for index in parameters.indices {
            var shifted = parameters
            shifted[index] = parameters[index] + h
            let up = Self.referenceLoss(shifted, widths: workload.layerWidths, samples: samples)
            shifted[index] = parameters[index] - h
            let down = Self.referenceLoss(shifted, widths: workload.layerWidths, samples: samples)
            numeric[index] = (up - down) / (2 * h)
        }
        let scale = max(1, numeric.map(abs).max() ?? 0)
        let worst = zip(analytic, numeric).map { abs(Double($0) - $1) }.max() ?? 0
        #expect(worst <= 1e-4 * scale, "largest difference \(worst) for gradients up to \(scale)")
        #expect(numeric.contains { abs($0) > 0.01 })  // the check is not vacuous
    }

    @Test func test_emptySamples_giveZeroGradientAndLoss_andReportEveryBucket() {
        let workload = Self.model()
        var reported: [Int] = []
        var gradient = [Float](repeating: .nan, count: workload.parameterCount)
        let loss = gradient.withUnsafeMutableBufferPointer {
            workload.accumulateGradients(samples: [][...], into: $0, bucketReady: { reported.append($0) })
        }
        #expect(loss == 0 && gradient.allSatisfy { $0 == 0 })
        #expect(reported == [0, 1])
    }

    @Test func test_bucketReady_comesInOrder_onceEach_andTheBucketIsFinalWhenReported() {
        let workload = Self.model(hidden: [128, 32])
        let samples = Array(0..<150)  // three chunks
        var reported: [Int] = []
        var snapshots: [[Float]] = []
        var gradient = [Float](repeating: .nan, count: workload.parameterCount)
        gradient.withUnsafeMutableBufferPointer { buffer in
            _ = workload.accumulateGradients(samples: samples[...], into: buffer) { bucket in
                reported.append(bucket)
                snapshots.append(Array(buffer[workload.buckets[bucket]]))
            }
        }
        #expect(reported == [0, 1, 2])
        for (bucket, snapshot) in zip(reported, snapshots) {
            #expect(Fixture.bits(snapshot) == Fixture.bits(Array(gradient[workload.buckets[bucket]])))
        }
    }

    /// A gradient element adds the samples' contributions in order, so one call over many samples
    /// (several chunks) equals adding one-sample gradients in the same order, exactly.
    @Test func test_manySamplesInOneCall_equalTheOrderedSumOfSingleSampleCalls() {
        let workload = Self.model(hidden: [32])
        let samples = (0..<130).map { ($0 * 11) % 1437 }
        let (whole, wholeLoss) = Self.gradient(workload, samples)
        var sum = [Float](repeating: 0, count: workload.parameterCount)
        var loss = 0.0
        for sample in samples {
            let (one, oneLoss) = Self.gradient(workload, [sample])
            for index in sum.indices { sum[index] += one[index] }
            loss += oneLoss
        }
        #expect(whole == sum)
        #expect(wholeLoss == loss)
    }

    // MARK: - Data parallelism and determinism

    /// 200 steps of global batch 64, each batch cut into 1, 2 or 4 slices whose gradients are added
    /// in different orders. Slicing changes only rounding, so the parameters may differ by a few
    /// Float32 ulps that training carries along (about 3e-7 measured); the tolerance is 1e-5 times the largest
    /// parameter magnitude. The unsliced run repeated is bit-identical.
    @Test func test_dataParallel_slicesAndGroupings_trainTheSameModel() throws {
        let steps = 0..<200
        let reference = Self.model()
        try Fixture.train(reference, steps: steps)
        let expected = reference.parameters()

        let again = Self.model()
        try Fixture.train(again, steps: steps)
        #expect(Fixture.bits(again.parameters()) == Fixture.bits(expected))
        #expect(parameterHash(again.parameters()) == parameterHash(expected))

        let scale = max(1, expected.map(abs).max() ?? 0)
        var anyDifferent = false
        for (slices, grouping) in [(2, Fixture.Grouping.inOrder), (4, .inOrder), (4, .pairwise), (4, .reversed)] {
            let workload = Self.model()
            try Fixture.train(workload, steps: steps, slices: slices, grouping: grouping)
            let worst = zip(workload.parameters(), expected).map { abs($0 - $1) }.max() ?? .infinity
            #expect(worst <= 1e-5 * scale, "\(slices) slices \(grouping): largest difference \(worst)")
            anyDifferent = anyDifferent || worst > 0
        }
        // Slices did run through a different summation (otherwise the comparison proves little);
        // and training moved the parameters away from where they started.
        #expect(anyDifferent)
        #expect(expected != Self.model().parameters())
    }

    // MARK: - Training

    @Test(arguments: [
        ("sgd", MLPSettings.Optimizer.sgd(learningRate: 0.1, momentum: 0.9)),
        ("adam", MLPSettings.Optimizer.adam(learningRate: 0.001)),
    ])
    func test_training_reaches95PercentTestAccuracy(name: String, optimizer: MLPSettings.Optimizer) throws {
        let workload = Self.model(optimizer: optimizer, seed: 1)
        let before = workload.evaluate()
        var result = before
        var steps = 0
        while steps < 1500 {
            try Fixture.train(workload, steps: steps..<(steps + 50), seed: 11)
            steps += 50
            result = workload.evaluate()
            if result.accuracy >= 0.95 { break }
        }
        #expect(result.accuracy >= 0.95, "\(name): \(result.accuracy) after \(steps) steps")
        #expect(result.loss < before.loss / 5, "\(name): test loss \(before.loss) -> \(result.loss)")
        #expect(before.accuracy < 0.5)
    }

    // MARK: - State

    @Test(arguments: [
        MLPSettings.Optimizer.sgd(learningRate: 0.1, momentum: 0.9),
        .adam(learningRate: 0.001),
    ])
    func test_state_saveThenLoad_continuesTrainingBitForBit(optimizer: MLPSettings.Optimizer) throws {
        let workload = Self.model(hidden: [32], optimizer: optimizer, weightDecay: 1e-4)
        try Fixture.train(workload, steps: 0..<10)
        let saved = try Fixture.state(workload)
        #expect(saved.last?.bitPattern == 10)  // the optimizer's step counter
        try Fixture.train(workload, steps: 10..<15)
        let continued = workload.parameters()
        let continuedState = try Fixture.state(workload)
        #expect(Fixture.bits(continued) != Fixture.bits(Array(saved[0..<workload.parameterCount])))

        // Into the same object, and into a fresh one built from another seed.
        for target in [workload, Self.model(hidden: [32], optimizer: optimizer, weightDecay: 1e-4, seed: 99)] {
            saved.withUnsafeBufferPointer { target.loadState(from: $0) }
            #expect(Fixture.bits(try Fixture.state(target)) == Fixture.bits(saved))
            try Fixture.train(target, steps: 10..<15)
            #expect(Fixture.bits(target.parameters()) == Fixture.bits(continued))
            #expect(Fixture.bits(try Fixture.state(target)) == Fixture.bits(continuedState))
        }
    }
}
