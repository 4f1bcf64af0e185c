import Foundation
import Testing

@testable import Verbs

/// The first usable RDMA device here, if any.
let device = RDMADevice.all().first { $0.usable }

/// Real verbs: these run where a device exists (scripts/rdma-guest.sh runs them in a qemu guest
/// against Soft-RoCE, rxe0), and are skipped, saying so, where none does.
@Suite(
    "Verbs on a real device", .serialized,
    .enabled(
        if: device != nil,
        "no RDMA device on this machine: scripts/rdma-guest.sh runs these tests against Soft-RoCE (rxe0) in a qemu guest"
    ))
struct VerbsTests {
    /// Two queue pairs on one endpoint, connected to each other, each with a registered buffer of
    /// `bytes`.
    final class Loop {
        let endpoint: Endpoint
        let a: QueuePair
        let b: QueuePair
        let source: UnsafeMutableRawBufferPointer
        let target: UnsafeMutableRawBufferPointer
        let sourceRegion: MemoryRegion
        let targetRegion: MemoryRegion

        init(bytes: Int) throws {
            self.endpoint = try Endpoint()
            self.a = try QueuePair(self.endpoint)
            self.b = try QueuePair(self.endpoint)
            try self.a.connect(to: self.b.address)
            try self.b.connect(to: self.a.address)
            self.source = .allocate(byteCount: max(1, bytes), alignment: 64)
            self.target = .allocate(byteCount: max(1, bytes), alignment: 64)
            self.sourceRegion = try MemoryRegion(self.endpoint, address: self.source.baseAddress!, bytes: bytes)
            self.targetRegion = try MemoryRegion(self.endpoint, address: self.target.baseAddress!, bytes: bytes)
        }

        func close() {
            self.sourceRegion.close()
            self.targetRegion.close()
            self.a.close()
            self.b.close()
            self.endpoint.close()
            self.source.deallocate()
            self.target.deallocate()
        }

        /// Waits for the completions with `ids`, in any order.
        func await(_ ids: Set<UInt64>, seconds: Int = 10) throws -> [UInt64: Completion] {
            let deadline = ContinuousClock.now + .seconds(seconds)
            var seen: [UInt64: Completion] = [:]
            while !ids.isSubset(of: seen.keys) {
                for completion in try self.endpoint.completions(
                    deadline: deadline, doing: "completions \(ids.sorted())")
                {
                    seen[completion.id] = completion
                }
            }
            return seen
        }
    }

    @Test(arguments: [0, 1, 4099, 1 << 20])
    func aWriteWithImmediate_landsWhole_andTheReceiverGetsTheImmediate(bytes: Int) throws {
        let loop = try Loop(bytes: bytes)
        defer { loop.close() }
        for index in 0..<bytes { loop.source[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
        if bytes > 0 { loop.target.initializeMemory(as: UInt8.self, repeating: 0) }
        try loop.b.receive(id: 2)
        try loop.a.write(
            loop.sourceRegion, bytes: bytes, remoteAddress: loop.targetRegion.address,
            remoteKey: loop.targetRegion.remoteKey, immediate: 0xC0FFEE, id: 1)
        let done = try loop.await([1, 2])
        #expect(done[1]?.operation == "write")
        #expect(done[2]?.operation == "receive of a write with immediate")
        #expect(done[2]?.immediate == 0xC0FFEE)
        #expect(done[2]?.bytes == bytes)
        if bytes > 0 {
            #expect(Array(loop.target.prefix(bytes)) == Array(loop.source.prefix(bytes)), "the bytes landed whole")
        }
    }

    @Test func aCompletionThatNeverComes_failsAtItsDeadline_sayingWhatWasAwaited() throws {
        let loop = try Loop(bytes: 64)
        defer { loop.close() }
        try loop.b.receive(id: 9)
        let started = ContinuousClock.now
        let error = #expect(throws: VerbsError.self) {
            _ = try loop.endpoint.completions(deadline: .now + .milliseconds(300), doing: "the peer's write")
        }
        #expect(ContinuousClock.now - started >= .milliseconds(300))
        #expect(
            error?.description.contains("no completion before the deadline while waiting for the peer's write") == true)
    }

    @Test func anAbortFromAnotherThread_failsTheWaitAtOnce() throws {
        let loop = try Loop(bytes: 64)
        defer { loop.close() }
        let endpoint = loop.endpoint
        let aborter = Thread {
            Thread.sleep(forTimeInterval: 0.2)
            endpoint.abort(reason: "the generation ended")
        }
        aborter.start()
        let started = ContinuousClock.now
        let error = #expect(throws: VerbsError.self) {
            _ = try endpoint.completions(deadline: .now + .seconds(20), doing: "the peer's write")
        }
        #expect(ContinuousClock.now - started < .seconds(10), "the abort ended the wait, not the deadline")
        #expect(error?.description.contains("aborted while waiting for the peer's write: the generation ended") == true)
    }

    @Test func aWriteWithAWrongKey_failsWithARemoteAccessError_namingTheRequest() throws {
        let loop = try Loop(bytes: 64)
        defer { loop.close() }
        try loop.b.receive(id: 8)
        try loop.a.write(
            loop.sourceRegion, bytes: 64, remoteAddress: loop.targetRegion.address,
            remoteKey: loop.targetRegion.remoteKey &+ 0x5555, immediate: 1, id: 7)
        // The responder refuses the key: its receive and the write both complete in error.
        let error = #expect(throws: VerbsError.self) { _ = try loop.await([7, 8]) }
        let said = error?.description ?? ""
        #expect(said.contains("work request 7") || said.contains("work request 8"), "\(said)")
        #expect(said.contains("remote access error"), "\(said)")
    }

    @Test func everyResource_isReleased() throws {
        #expect(VerbsResources.live == [:], "nothing open before")
        let loop = try Loop(bytes: 4096)
        #expect(
            VerbsResources.live == [
                "context": 1, "protection domain": 1, "completion channel": 1, "completion queue": 1,
                "queue pair": 2, "memory region": 2,
            ])
        loop.close()
        #expect(VerbsResources.live == [:], "everything released")
    }
}
