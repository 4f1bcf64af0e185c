import Testing

@testable import Workload

@Suite("The synthetic workload")
struct SyntheticWorkloadTests {
    @Test func test_buckets_partitionTheVector_lastPartFirst() {
        let workload = SyntheticWorkload(parameterCount: 1000, buckets: 3, trainingSamples: 50, seed: 1)
        #expect(workload.buckets == [666..<1000, 333..<666, 0..<333])
        #expect(workload.stateCount == 1000 && workload.trainingSamples == 50)
        #expect(
            Fixture.bits(workload.parameters())
                == Fixture.bits(
                    SyntheticWorkload(parameterCount: 1000, buckets: 7, trainingSamples: 9, seed: 1).parameters()))
        #expect(
            workload.parameters()
                != SyntheticWorkload(parameterCount: 1000, buckets: 3, trainingSamples: 50, seed: 2).parameters())
    }

    /// The documented gradient and loss, computed element by element in Double.
    @Test func test_gradientAndLoss_matchTheDefinition() {
        let workload = SyntheticWorkload(parameterCount: 1001, buckets: 4, trainingSamples: 50, seed: 3)
        let samples = [4, 9, 9, 31]
        var gradient = [Float](repeating: .nan, count: 1001)
        var reported: [Int] = []
        let loss = gradient.withUnsafeMutableBufferPointer {
            workload.accumulateGradients(samples: samples[...], into: $0, bucketReady: { reported.append($0) })
        }
        #expect(reported == [0, 1, 2, 3])
        let p = workload.parameters()
        var expectedLoss = 0.0
        var worst = 0.0
        for index in 0..<1001 {
            let u = Double(SyntheticWorkload.unit(SyntheticWorkload.hash(UInt32(index) ^ workload.targetSeed)))
            #expect(u >= -1 && u < 1)
            var g = 0.0
            for id in samples {
                let residual = Double(p[index]) - Double(workload.coefficient(id)) * u
                g += residual
                expectedLoss += residual * residual / 2
            }
            worst = max(worst, abs(Double(gradient[index]) - g))
        }
        #expect(worst <= 1e-5, "largest gradient difference \(worst)")
        #expect(abs(loss - expectedLoss) <= 1e-6 * expectedLoss, "loss \(loss) vs \(expectedLoss)")
        #expect(abs(workload.evaluate().loss - expectedLossOfFirst16(workload)) <= 1e-6 * workload.evaluate().loss)
    }

    func expectedLossOfFirst16(_ workload: SyntheticWorkload) -> Double {
        let p = workload.parameters()
        var total = 0.0
        for id in 0..<16 {
            for index in p.indices {
                let u = Double(SyntheticWorkload.unit(SyntheticWorkload.hash(UInt32(index) ^ workload.targetSeed)))
                let residual = Double(p[index]) - Double(workload.coefficient(id)) * u
                total += residual * residual / 2
            }
        }
        return total / 16
    }

    @Test func test_slicedTraining_matchesUnsliced_andTheLossFalls() throws {
        let make = { SyntheticWorkload(parameterCount: 4099, buckets: 5, trainingSamples: 300, seed: 8) }
        let whole = make()
        let before = whole.evaluate().loss
        try Fixture.train(whole, steps: 0..<30)
        #expect(whole.evaluate().loss < before / 2)
        #expect(whole.evaluate().accuracy == 0)
        let again = make()
        try Fixture.train(again, steps: 0..<30)
        #expect(Fixture.bits(again.parameters()) == Fixture.bits(whole.parameters()))
        let sliced = make()
        try Fixture.train(sliced, steps: 0..<30, slices: 4, grouping: .pairwise)
        let worst = zip(sliced.parameters(), whole.parameters()).map { abs($0 - $1) }.max() ?? .infinity
        #expect(worst <= 1e-5, "largest difference \(worst)")
    }

    @Test func test_state_roundTripsBitForBit() throws {
        let workload = SyntheticWorkload(parameterCount: 100, buckets: 2, trainingSamples: 10, seed: 4)
        try Fixture.train(workload, steps: 0..<3, batchSize: 4)
        let saved = try Fixture.state(workload)
        try Fixture.train(workload, steps: 3..<6, batchSize: 4)
        let continued = workload.parameters()
        // The seed defines the task (targets and sample coefficients), so the fresh copy shares it.
        let fresh = SyntheticWorkload(parameterCount: 100, buckets: 2, trainingSamples: 10, seed: 4)
        saved.withUnsafeBufferPointer { fresh.loadState(from: $0) }
        #expect(Fixture.bits(try Fixture.state(fresh)) == Fixture.bits(saved))
        try Fixture.train(fresh, steps: 3..<6, batchSize: 4)
        #expect(Fixture.bits(fresh.parameters()) == Fixture.bits(continued))
    }
}
