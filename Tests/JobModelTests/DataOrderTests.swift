import Testing

@testable import JobModel

@Suite("Data order")
struct DataOrderTests {
    @Test func permutations_visitEverySampleOnce_andDependOnSeedAndEpoch() {
        let order = DataOrder(datasetSize: 1000, globalBatchSize: 64, seed: 42)
        let first = order.permutation(epoch: 0)
        #expect(first.sorted() == Array(0..<1000))
        #expect(order.permutation(epoch: 0) == first, "deterministic")
        #expect(order.permutation(epoch: 1) != first)
        #expect(DataOrder(datasetSize: 1000, globalBatchSize: 64, seed: 43).permutation(epoch: 0) != first)
    }

    @Test(arguments: [1, 2, 3, 4, 5, 7, 8, 13, 64])
    func slices_partitionEachBatch_andDifferByAtMostOne(worldSize: Int) {
        let order = DataOrder(datasetSize: 1797, globalBatchSize: 64, seed: 1)
        for step in UInt64(0)..<UInt64(order.stepsPerEpoch * 2) {
            let batch = order.batchRange(ofStep: step)
            let slices = (0..<worldSize).map { order.positions(step: step, rank: $0, worldSize: worldSize) }
            #expect(slices.map(\.count).reduce(0, +) == batch.count)
            #expect(slices.first?.lowerBound == batch.lowerBound && slices.last?.upperBound == batch.upperBound)
            for (left, right) in zip(slices, slices.dropFirst()) {
                #expect(left.upperBound == right.lowerBound)
            }
            let counts = slices.map(\.count)
            #expect(counts.max()! - counts.min()! <= 1)
        }
    }

    @Test func anEpoch_coversEverySampleExactlyOnce_includingTheLastPartialBatch() {
        let order = DataOrder(datasetSize: 100, globalBatchSize: 12, seed: 9)
        #expect(order.stepsPerEpoch == 9)
        #expect(order.batchRange(ofStep: 8) == 96..<100)
        for epoch in UInt64(0)..<3 {
            let permutation = order.permutation(epoch: epoch)
            var seen: [Int] = []
            for step in (epoch * 9)..<((epoch + 1) * 9) {
                #expect(order.epoch(ofStep: step) == epoch)
                for rank in 0..<3 {
                    seen += order.samples(step: step, rank: rank, worldSize: 3, permutation: permutation)
                }
            }
            #expect(seen.sorted() == Array(0..<100))
        }
    }

    @Test func aStepHoldsTheSameSamples_atEveryWorldSize() {
        let order = DataOrder(datasetSize: 500, globalBatchSize: 30, seed: 3)
        let permutation = order.permutation(epoch: 0)
        for step in UInt64(0)..<UInt64(order.stepsPerEpoch) {
            let reference = Set(order.samples(step: step, rank: 0, worldSize: 1, permutation: permutation))
            for world in [2, 3, 4, 7] {
                let union = (0..<world).flatMap {
                    order.samples(step: step, rank: $0, worldSize: world, permutation: permutation)
                }
                #expect(Set(union) == reference && union.count == reference.count)
            }
        }
    }
}
