import Foundation
import Testing
import Workload

@testable import Agent

#if canImport(Glibc)
    import Glibc
#endif

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
            self.bells = Doorbells(base: self.base)
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

    @Test func test_hasEvent_givesUpAfterItsSpin_whenTheWorkerHasNotRung() {
        let region = Region(workers: 2)
        let clock = ContinuousClock()
        let waited = clock.measure {
            #expect(!region.bells.hasEvent(of: 1, after: 0, spin: .milliseconds(2)))
        }
        #expect(waited >= .milliseconds(2), "it spun for its whole budget: \(waited)")
    }

    @Test func test_hasEvent_seesEachWorkersCounter_withTheLossBesideIt() {
        let region = Region(workers: 2)
        region.ring(worker: 1, events: 2, lossSum: 7.25)
        #expect(!region.bells.hasEvent(of: 0, after: 0, spin: .zero), "worker 0 has not rung")
        #expect(region.bells.hasEvent(of: 1, after: 0, spin: .zero))
        #expect(region.bells.hasEvent(of: 1, after: 1, spin: .zero), "two events were rung")
        #expect(!region.bells.hasEvent(of: 1, after: 2, spin: .zero), "and no third")
        #expect(region.bells.lossSum(of: 1) == 7.25)
    }

    @Test func test_hasEvent_countsOnAcrossTheCountersWrap() {
        let region = Region(workers: 1)
        region.ring(worker: 0, events: UInt32.max)
        #expect(!region.bells.hasEvent(of: 0, after: UInt32.max, spin: .zero))
        region.ring(worker: 0, events: 0)
        #expect(region.bells.hasEvent(of: 0, after: UInt32.max, spin: .zero), "0 comes after UInt32.max")
    }

    @Test func test_hasEvent_seesARingFromAnotherThread_whileItSpins() {
        let region = Region(workers: 1)
        let address = Int(bitPattern: region.base)
        let ringer = Thread {
            let line = UnsafeMutableRawPointer(bitPattern: address)! + Doorbells.lineBytes
            line.storeBytes(of: UInt32(1), as: UInt32.self)
        }
        ringer.start()
        #expect(region.bells.hasEvent(of: 0, after: 0, spin: .seconds(20)), "the ring was seen within the deadline")
    }

    @Test func test_ringApply_storesTheScale_thenTheNextCount_andTheFlagsAreEachSidesOwn() {
        let region = Region(workers: 2)
        #expect(region.bells.ringApply(scale: 0.125) == 1)
        #expect(region.bells.ringApply(scale: 0.5) == 2)
        #expect(region.base.load(as: UInt32.self) == 2)
        #expect(region.base.load(fromByteOffset: 4, as: Float.self) == 0.5)
        // A worker's flag is the second word of its line; the agent's, the third of line 0.
        (region.base + 2 * Doorbells.lineBytes).storeBytes(of: UInt32(1), toByteOffset: 4, as: UInt32.self)
        #expect(!region.bells.sleeps(0) && region.bells.sleeps(1))
        region.bells.agentSleeps(true)
        #expect(region.base.load(fromByteOffset: 8, as: UInt32.self) == 1)
        region.bells.agentSleeps(false)
        #expect(region.base.load(fromByteOffset: 8, as: UInt32.self) == 0)
        #expect(region.bells.events(of: 0) == 0 && region.bells.events(of: 1) == 0, "nothing rang a worker's counter")
    }
}

/// The agent's end of a worker's socket, read with a recheck: a message that has not come whole by
/// then stays for the next read.
@Suite struct WorkerChannelTests {
    @Test func test_aMessageSplitAcrossARecheck_isKept_andReadWholeOnceItsRestComes() throws {
        var descriptors: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &descriptors) == 0)
        let channel = WorkerChannel(descriptor: descriptors[0], describeLoss: { "gone" })
        defer { close(descriptors[1]) }
        let body = Array(#"{"type":"bucket","index":3,"event":9}"#.utf8)
        let frame = withUnsafeBytes(of: UInt32(body.count).littleEndian) { Array($0) } + body
        let deadline = ContinuousClock.now + .seconds(20)
        for cut in [2, 4, 11, frame.count - 1] {
            #expect(Glibc.send(descriptors[1], frame, cut, 0) == cut)
            let early = try channel.receive(
                TorchWorker.Reply.self, deadline: deadline, quiet: .now + .milliseconds(1), waitingFor: "a test message"
            )
            #expect(early == nil, "\(cut) of \(frame.count) bytes are not a message")
            let rest = Array(frame[cut...])
            #expect(Glibc.send(descriptors[1], rest, rest.count, 0) == rest.count)
            let reply = try channel.receive(TorchWorker.Reply.self, deadline: deadline, waitingFor: "a test message")
            #expect(reply.type == "bucket" && reply.index == 3 && reply.event == 9, "cut at \(cut)")
        }
    }

    @Test func test_aQuietSocket_isAnErrorOnlyAtTheDeadline() throws {
        var descriptors: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &descriptors) == 0)
        let channel = WorkerChannel(descriptor: descriptors[0], describeLoss: { "gone" })
        defer { close(descriptors[1]) }
        let quiet = try channel.receive(
            TorchWorker.Reply.self, deadline: .now + .seconds(20), quiet: .now + .milliseconds(1), waitingFor: "nothing"
        )
        #expect(quiet == nil)
        #expect(throws: WorkloadError.self) {
            try channel.receive(
                TorchWorker.Reply.self, deadline: .now + .milliseconds(5), waitingFor: "a message that never comes")
        }
    }
}
