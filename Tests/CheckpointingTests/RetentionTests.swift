import Checkpointing
import Foundation
import Testing

@Suite("Retention")
struct RetentionTests {
    /// Committed checkpoints at `committed`, and step directories holding one shard (no manifest) at `uncommitted`.
    static func makeRoot(committed: [UInt64], uncommitted: [UInt64]) throws -> TestDirectory {
        let directory = try TestDirectory()
        for step in committed {
            try writeCheckpoint(
                root: directory.path, step: step, world: 2, state: scrambledState(count: 20, seed: step))
        }
        for step in uncommitted {
            let state = scrambledState(count: 10, seed: step)
            _ = try state.withUnsafeBufferPointer {
                try CheckpointWriter.writeShard(
                    root: directory.path, step: step, rank: 0, worldSize: 2, firstElement: 0, elements: $0)
            }
        }
        return directory
    }

    static func remainingSteps(_ root: String) -> [UInt64] {
        names(in: root).compactMap(CheckpointLayout.step(fromDirectoryName:)).sorted()
    }

    @Test func test_prune_keepsTheNewestK_deletesOlderAndOldLeftovers_keepsANewerSaveInProgress() throws {
        let directory = try Self.makeRoot(committed: [100, 200, 300, 400, 500], uncommitted: [250, 600])
        let root = directory.path
        let deleted = try CheckpointRetention.prune(root: root, keep: 2)
        #expect(deleted == [100, 200, 250, 300].map { CheckpointLayout.stepDirectory(root: root, step: $0) })
        #expect(Self.remainingSteps(root) == [400, 500, 600])
        #expect(try CheckpointReader.committedSteps(root: root) == [500, 400])
        #expect(try CheckpointReader.loadLatest(root: root).manifest.step == 500)
        #expect(try CheckpointRetention.prune(root: root, keep: 2).isEmpty, "pruning again changes nothing")
    }

    @Test func test_prune_keepOne_neverDeletesTheNewestCommitted() throws {
        let directory = try Self.makeRoot(committed: [100, 200, 300], uncommitted: [400])
        let deleted = try CheckpointRetention.prune(root: directory.path, keep: 1)
        #expect(deleted.count == 2)
        #expect(Self.remainingSteps(directory.path) == [300, 400])
        #expect(try CheckpointReader.loadLatest(root: directory.path).manifest.step == 300)
    }

    @Test func test_prune_keepMoreThanExist_deletesNothingCommitted() throws {
        let directory = try Self.makeRoot(committed: [100, 200], uncommitted: [150])
        #expect(
            try CheckpointRetention.prune(root: directory.path, keep: 5) == [
                CheckpointLayout.stepDirectory(root: directory.path, step: 150)
            ])
        #expect(Self.remainingSteps(directory.path) == [100, 200])
    }

    @Test func test_prune_withoutAnyCommittedCheckpoint_deletesNothing() throws {
        let directory = try Self.makeRoot(committed: [], uncommitted: [100, 200])
        #expect(try CheckpointRetention.prune(root: directory.path, keep: 1).isEmpty)
        #expect(Self.remainingSteps(directory.path) == [100, 200])
        #expect(try CheckpointRetention.prune(root: "\(directory.path)/missing", keep: 1).isEmpty)
    }

    @Test func test_prune_keepsTheNewestCompleteCheckpoint_whenEveryKeptOneIsIncomplete() throws {
        let directory = try Self.makeRoot(committed: [100, 200, 300], uncommitted: [])
        // Step 300 lost a shard: keeping only it would leave nothing to load.
        try FileManager.default.removeItem(
            atPath: "\(CheckpointLayout.stepDirectory(root: directory.path, step: 300))/shard-00001-of-00002.bin")
        let deleted = try CheckpointRetention.prune(root: directory.path, keep: 1)
        #expect(deleted == [CheckpointLayout.stepDirectory(root: directory.path, step: 100)])
        #expect(Self.remainingSteps(directory.path) == [200, 300])
        #expect(try CheckpointReader.loadLatest(root: directory.path).manifest.step == 200)
    }

    @Test func test_prune_keepZero_isRefused() throws {
        let directory = try Self.makeRoot(committed: [100], uncommitted: [])
        let error = expectCheckpointError { _ = try CheckpointRetention.prune(root: directory.path, keep: 0) }
        #expect(error?.code == .invalidArgument)
        #expect(Self.remainingSteps(directory.path) == [100])
    }
}
