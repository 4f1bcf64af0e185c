import CoordinatorCore
import Foundation
import JobModel
import Logging
import RingmasterSecurity
import Synchronization
import Testing

@testable import Coordinator

/// The one writer of the coordinator's job state: batches are carried out in the order they were
/// submitted, and what a batch does once written (a push) finds its writes, or newer ones that
/// were written with them, in the database.
@Suite("State writer")
struct StateWriterTests {
    /// A fresh state database in a temporary directory.
    static func store() throws -> (SQLiteStateStore, String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-writer-\(UUID().uuidString)"
        ).path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return (try SQLiteStateStore(path: "\(directory)/state.sqlite"), directory)
    }

    /// A job's durable record at `cursor`.
    static func record(_ name: String, cursor: UInt64) throws -> CoordinatorMachine.JobRecord {
        var machine = CoordinatorMachine()
        _ = try machine.apply(
            .submit(
                JobSpec(
                    name: name, datasetPath: "/data/set", datasetSamples: 100, globalBatchSize: 10, steps: 1000,
                    seed: 7, minNodes: 1, maxNodes: 1)),
            now: .zero)
        var record = try #require(machine.record(job: name))
        record.cursor = cursor
        return record
    }

    static func writer(_ store: any StateStore) -> StateWriter {
        StateWriter(store: store, logger: Logger(label: "test"), now: { Date() })
    }

    @Test func test_eachBatchsThen_findsItsRecordOrANewerOneInTheDatabase_andRunsInSubmissionOrder() throws {
        let (store, directory) = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = Self.writer(store)
        // What each batch's `then` saw in the database: (batch, the cursor stored then).
        let seen = Mutex<[(Int, UInt64?)]>([])
        for index in 0..<50 {
            var batch = StateWriter.Batch()
            batch.records = [try Self.record("job", cursor: UInt64(index))]
            batch.durable = index % 10 == 0
            batch.then {
                let cursor = try? store.jobs().first { $0.spec.name == "job" }?.cursor
                seen.withLock { $0.append((index, cursor)) }
            }
            writer.submit(batch)
        }
        writer.drain()
        let order = seen.withLock { $0 }
        #expect(order.map(\.0) == Array(0..<50), "batches carried out in the order submitted")
        for (index, cursor) in order {
            // Batches queued together are written in one transaction, so a push may find a newer
            // cursor than its own, never an older one.
            #expect(
                cursor.map { $0 >= UInt64(index) } == true, "batch \(index)'s push ran before its record was written")
        }
    }

    /// A store whose job writes fail, one coordinator's alone or shared by a set.
    final class FailingStore: StateStore {
        let shared: Bool
        init(shared: Bool) { self.shared = shared }
        var actsOnFailedWrites: Bool { !self.shared }
        func add(token: JoinToken, expires: Date, now: Date) throws {}
        func usableToken(id: String, now: Date) throws -> JoinToken { JoinToken.generate() }
        func redeem(tokenID: String, node: String, certificateNotAfter: Date, now: Date) throws {}
        func tokens() throws -> [TokenRecord] { [] }
        func renewed(node: String, certificateNotAfter: Date, now: Date) throws {}
        func nodes() throws -> [NodeRecord] { [] }
        func save(jobs records: [CoordinatorMachine.JobRecord], durable: Bool) throws {
            throw CoordinatorError(.stateStore, "the disk (or etcd) is gone")
        }
        func jobs() throws -> [CoordinatorMachine.JobRecord] { [] }
        func save(progress: [String: Data]) throws {}
        func progress() throws -> [String: Data] { [:] }
        func secret(named name: String) throws -> [UInt8] { [UInt8](repeating: 1, count: 32) }
    }

    /// A record that could not be saved: one coordinator still tells agents (a full disk must not
    /// stop training; status says what is not saved), a coordinator of a set does not (it may not
    /// lead any more).
    @Test(arguments: [false, true])
    func test_aFailedWritesPushes_goOutForALoneCoordinator_andNotForASetsMember(shared: Bool) throws {
        let writer = Self.writer(FailingStore(shared: shared))
        let pushed = Mutex(false)
        var batch = StateWriter.Batch()
        batch.records = [try Self.record("job", cursor: 1)]
        batch.then { pushed.withLock { $0 = true } }
        writer.submit(batch)
        writer.drain()
        #expect(pushed.withLock { $0 } == !shared)
        #expect(writer.notSaved("job") != nil)
    }

    /// What a command waits for learns how its batch's records fared: written, or why not (the
    /// command then says the state it carried out is not saved).
    @Test(arguments: [false, true])
    func test_aWaitedBatch_reportsTheFailureOfItsRecords(shared: Bool) throws {
        let writer = Self.writer(FailingStore(shared: shared))
        var batch = StateWriter.Batch()
        batch.records = [try Self.record("job", cursor: 1)]
        let waiting = StateWriter.Waiting()
        writer.submit(batch, waiting: waiting)
        #expect { try waiting.wait(timeout: .seconds(10)) } throws: { "\($0)".contains("the disk (or etcd) is gone") }

        let (store, directory) = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let working = Self.writer(store)
        let written = StateWriter.Waiting()
        working.submit(batch, waiting: written)
        try written.wait(timeout: .seconds(10))
        #expect(try store.jobs().map(\.cursor) == [1])
        // A batch with nothing in it is still carried out for whoever waits for it.
        let empty = StateWriter.Waiting()
        working.submit(StateWriter.Batch(), waiting: empty)
        try empty.wait(timeout: .seconds(10))
    }

    @Test func test_aCommandsRecords_areWrittenBehindWhatIsQueued() throws {
        let (store, directory) = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = Self.writer(store)
        for cursor in 1...20 {
            var batch = StateWriter.Batch()
            batch.records = [try Self.record("job", cursor: UInt64(cursor))]
            writer.submit(batch)
        }
        // A command's write returns once written, and after every batch before it.
        try writer.write(records: [try Self.record("job", cursor: 100)])
        #expect(try store.jobs().map(\.cursor) == [100])
    }

    @Test func test_progress_isEncodedAndSavedByTheWriter() throws {
        let (store, directory) = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = Self.writer(store)
        var progress = CoordinatorService.JobProgress()
        progress.loss = 0.25
        progress.lastCheckpointStep = 40
        var batch = StateWriter.Batch()
        batch.progress = ["job": progress]
        writer.submit(batch)
        writer.drain()
        let saved = try JSONDecoder().decode(
            CoordinatorService.JobProgress.Saved.self, from: try #require(try store.progress()["job"]))
        #expect(saved.loss == 0.25)
        #expect(saved.lastCheckpointStep == 40)
        #expect(writer.notSaved("job") == nil)
    }

    @Test func test_aFailedWrite_marksTheJobNotSaved_untilTheSameKindOfWriteSucceeds() throws {
        let (store, directory) = try Self.store()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let writer = Self.writer(store)
        let failure = CoordinatorError(.stateFull, "no space left on device under \(directory)")
        writer.failed("job", .progress, failure)
        writer.failed("job", .record, failure)  // the first failure is the one kept
        #expect(writer.notSaved("job")?.kind == .progress)
        #expect(writer.notSaved("job")?.reason.contains("no space left") == true)
        // A record written does not clear a progress that could not be.
        try writer.write(records: [try Self.record("job", cursor: 3)])
        #expect(writer.notSaved("job") != nil)
        var batch = StateWriter.Batch()
        batch.progress = ["job": CoordinatorService.JobProgress()]
        writer.submit(batch)
        writer.drain()
        #expect(writer.notSaved("job") == nil)
    }
}
