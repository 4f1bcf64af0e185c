import Testing

@testable import JobModel

/// The account counts what reports say, so a repeat or a skip in them shows up.
@Suite("Sample accounting")
struct SampleAccountingTests {
    let order = DataOrder(datasetSize: 10, globalBatchSize: 4, seed: 3)  // steps of 4, 4, 2 per epoch

    func ids(_ step: UInt64) -> [Int] {
        Array(
            self.order.samples(
                step: step, rank: 0, worldSize: 1,
                permutation: self.order.permutation(epoch: self.order.epoch(ofStep: step))))
    }

    @Test func faithfulReports_countEverySampleOnce() {
        var account = SampleAccounting()
        for step in UInt64(0)..<7 { account.record(step: step, ids: self.ids(step), order: self.order) }
        #expect(account.seen == 24)
        #expect(account.repeated == 0)
        #expect(account.skipped(order: self.order, cursor: 7) == 0)
        #expect(account.epoch == 2)
    }

    @Test func aRepeatedId_isCounted() {
        var account = SampleAccounting()
        account.record(step: 0, ids: self.ids(0), order: self.order)
        account.record(step: 1, ids: self.ids(1) + [self.ids(0)[0]], order: self.order)
        #expect(account.repeated == 1)
        #expect(account.seen == 9)
    }

    @Test func aMissingId_isSkipped_inTheCurrentAndInAClosedEpoch() {
        var account = SampleAccounting()
        account.record(step: 0, ids: Array(self.ids(0).dropLast()), order: self.order)
        #expect(account.skipped(order: self.order, cursor: 1) == 1)
        account.record(step: 1, ids: self.ids(1), order: self.order)
        account.record(step: 2, ids: self.ids(2), order: self.order)
        account.record(step: 3, ids: self.ids(3), order: self.order)  // epoch 1 begins
        #expect(account.skipped(order: self.order, cursor: 4) == 1)
        // A whole epoch passed over: all 10 of epoch 2 are skipped.
        account.record(step: 9, ids: self.ids(9), order: self.order)
        #expect(account.skipped(order: self.order, cursor: 10) == 1 + 6 + 10)
    }

    @Test func idsOutsideTheDataSet_areNotCountedAsSeen() {
        var account = SampleAccounting()
        account.record(step: 0, ids: [-1, 10, 3], order: self.order)
        #expect(account.outOfRange == 2)
        #expect(account.seen == 1)
    }
}
