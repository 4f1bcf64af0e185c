import Foundation
import Testing

@testable import Agent

/// The doorbells' layout and counting, as docs/worker-protocol.md describes them and as the Python
/// package reads and writes them (python/tests/test_worker.py drives the package's side).
@Suite struct DoorbellsTests {
    /// A zeroed region for `workers` workers' doorbells, as a new result region is.
    final class Region {
        let base: UnsafeMutableRawPointer
        let bells: Doorbells

        init(workers: Int) {
            let bytes = Doorbells.bytes(workers: workers)
            self.base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Doorbells.lineBytes)
            self.base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            self.bells = Doorbells(base: self.base, workers: workers)
        }

        deinit { self.base.deallocate() }

        /// What worker `worker` does for an event: the loss beside its counter, then the counter.
        func ring(worker: Int, events: UInt32, lossSum: Double? = nil) {
            let line = self.base + (1 + worker) * Doorbells.lineBytes
            if let lossSum { line.storeBytes(of: lossSum, toByteOffset: 8, as: Double.self) }
            line.storeBytes(of: events, as: UInt32.self)
        }
    }

    @Test func test_offset_isTheFirstLineAfterTheFloats() {
        #expect(Doorbells.offset(afterFloatBytes: 4) == 64)
        #expect(Doorbells.offset(afterFloatBytes: 64) == 64)
        #expect(Doorbells.offset(afterFloatBytes: 65) == 128)
        #expect(Doorbells.bytes(workers: 2) == 192, "the agent's line, then one per worker")
    }

    @Test func test_takeEvent_givesUpAfterItsSpin_whenTheWorkerHasNotRung() {
        let region = Region(workers: 2)
        let clock = ContinuousClock()
        let waited = clock.measure {
            #expect(!region.bells.takeEvent(of: 1, spin: .milliseconds(2)))
        }
        #expect(waited >= .milliseconds(2), "it spun for its whole budget: \(waited)")
        #expect(region.bells.taken == [0, 0], "nothing was counted")
    }

    @Test func test_takeEvent_takesEachRungEventOnce_perWorker_withTheLossBesideIt() {
        let region = Region(workers: 2)
        region.ring(worker: 1, events: 2, lossSum: 7.25)
        #expect(!region.bells.takeEvent(of: 0, spin: .zero), "worker 0 has not rung")
        #expect(region.bells.takeEvent(of: 1, spin: .zero))
        #expect(region.bells.takeEvent(of: 1, spin: .zero), "two events were rung")
        #expect(!region.bells.takeEvent(of: 1, spin: .zero), "and no third")
        #expect(region.bells.lossSum(of: 1) == 7.25)
        region.bells.tookMessage(of: 1)
        #expect(region.bells.taken == [0, 3], "an event taken from its message counts too")
        region.ring(worker: 1, events: 3)
        #expect(!region.bells.takeEvent(of: 1, spin: .zero), "the third event was taken from its message already")
    }

    @Test func test_takeEvent_countsOnAcrossTheCountersWrap() {
        let region = Region(workers: 1)
        region.bells.taken[0] = UInt32.max
        region.ring(worker: 0, events: UInt32.max)
        #expect(!region.bells.takeEvent(of: 0, spin: .zero))
        region.ring(worker: 0, events: 0)
        #expect(region.bells.takeEvent(of: 0, spin: .zero), "0 comes after UInt32.max")
        #expect(region.bells.taken == [0])
    }

    @Test func test_takeEvent_seesARingFromAnotherThread_whileItSpins() async {
        let region = Region(workers: 1)
        let address = Int(bitPattern: region.base)
        let ringer = Thread {
            let line = UnsafeMutableRawPointer(bitPattern: address)! + Doorbells.lineBytes
            line.storeBytes(of: UInt32(1), as: UInt32.self)
        }
        ringer.start()
        #expect(region.bells.takeEvent(of: 0, spin: .seconds(20)), "the ring was seen within the deadline")
    }

    @Test func test_ringApply_storesTheScale_thenTheNextCount() {
        let region = Region(workers: 1)
        #expect(region.bells.ringApply(scale: 0.125) == 1)
        #expect(region.bells.ringApply(scale: 0.5) == 2)
        #expect(region.base.load(as: UInt32.self) == 2)
        #expect(region.base.load(fromByteOffset: 4, as: Float.self) == 0.5)
    }
}
