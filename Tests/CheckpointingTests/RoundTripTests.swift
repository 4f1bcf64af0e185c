import Checkpointing
import Foundation
import JobModel
import Testing

@Suite("Writing and loading a checkpoint")
struct RoundTripTests {
    @Test("a committed checkpoint loads bit-identical with every manifest field", arguments: [1, 3, 4])
    func test_roundTrip_isBitIdentical_andKeepsTheManifest(world: Int) throws {
        let directory = try TestDirectory()
        let root = "\(directory.path)/ckpt"
        let state = scrambledState(count: 10_007, seed: UInt64(world))
        var samples = SampleAccounting()
        let order = DataOrder(datasetSize: 100, globalBatchSize: 10, seed: 5)
        samples.record(step: 0, ids: Array(0..<10), order: order)
        samples.record(step: 1, ids: Array(10..<20) + [3], order: order)
        let written = try writeCheckpoint(root: root, step: 300, world: world, state: state) { $0.samples = samples }

        let (manifest, loaded) = try CheckpointReader.load(root: root, step: 300)
        #expect(
            try CheckpointReader.verify(root: root, step: 300) == manifest,
            "verifying gives the manifest that loading does")
        #expect(bits(loaded) == bits(state))
        #expect(manifest == written)
        #expect(manifest.permutationSeed == 0xFEDC_BA98_7654_3210, "a seed above Int64.max survives JSON exactly")
        #expect(manifest.samples?.repeated == 1)
        #expect(manifest.shards.count == world)
        #expect(manifest.formatVersion == 1 && manifest.elementType == "float32-le")

        let stepDirectory = CheckpointLayout.stepDirectory(root: root, step: 300)
        let expectedNames =
            (0..<world).map { CheckpointLayout.shardFileName(rank: $0, worldSize: world) } + ["manifest.json"]
        #expect(names(in: stepDirectory) == expectedNames.sorted(), "no temporary files are left behind")
        #expect(try CheckpointReader.committedSteps(root: root) == [300])
    }

    @Test func test_shardFile_isRawLittleEndianFloat32_andItsRecordHasTheRightHash() throws {
        let directory = try TestDirectory()
        let values: [Float] = [1.0, -2.5, 3.25]
        let record = try values.withUnsafeBufferPointer {
            try CheckpointWriter.writeShard(
                root: directory.path, step: 5, rank: 2, worldSize: 3, firstElement: 7, elements: $0)
        }
        // SHA-256 of the 12 bytes, computed independently (Python's hashlib).
        #expect(record.sha256 == "03fba948783efb304316e2085b5cc2662aabd78facc05bb7a0cee0aaf7256732")
        #expect(
            record
                == ShardRecord(
                    rank: 2, file: "shard-00002-of-00003.bin", firstElement: 7, elements: 3, bytes: 12,
                    sha256: record.sha256))
        let bytes = try #require(
            FileManager.default.contents(atPath: "\(directory.path)/step-000000000005/shard-00002-of-00003.bin"))
        #expect(Array(bytes) == [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0x00, 0x00, 0x50, 0x40])

        let empty = try [Float]().withUnsafeBufferPointer {
            try CheckpointWriter.writeShard(
                root: directory.path, step: 6, rank: 0, worldSize: 1, firstElement: 0, elements: $0)
        }
        #expect(empty.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(empty.bytes == 0)
    }

    @Test func test_manifest_isPrettyJSONWithSortedKeys() throws {
        let directory = try TestDirectory()
        try writeCheckpoint(root: directory.path, step: 1, world: 2, state: scrambledState(count: 11, seed: 1))
        let text = try String(contentsOfFile: "\(directory.path)/step-000000000001/manifest.json", encoding: .utf8)
        #expect(text.contains("\n  \"committedUnixMilliseconds\" : 1795000000123,\n  \"cursorEpoch\" : 2,"))
        let keys = text.split(separator: "\n").filter { $0.hasPrefix("  \"") }.map { $0.split(separator: "\"")[1] }
        #expect(keys == keys.sorted())
    }

    @Test func test_commit_refusesAShardWhoseSizeIsNotTheReportedOne() throws {
        let directory = try TestDirectory()
        let state = scrambledState(count: 100, seed: 1)
        let manifest = try writeCheckpoint(root: directory.path, step: 1, world: 2, state: state)
        var bad = manifest
        bad.step = 2
        bad.shards[1].elements += 1
        bad.shards[1].bytes += 4
        bad.stateCount += 1
        // Step 2 holds copies of step 1's shards: rank 1's is 4 bytes shorter than reported.
        let step2 = CheckpointLayout.stepDirectory(root: directory.path, step: 2)
        try FileManager.default.copyItem(
            atPath: CheckpointLayout.stepDirectory(root: directory.path, step: 1), toPath: step2)
        try FileManager.default.removeItem(atPath: "\(step2)/manifest.json")
        let error = expectCheckpointError { try CheckpointWriter.commit(bad, root: directory.path) }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("shard-00001-of-00002.bin") == true)
        #expect(!FileManager.default.fileExists(atPath: "\(step2)/manifest.json"))
        #expect(
            names(in: step2) == ["shard-00000-of-00002.bin", "shard-00001-of-00002.bin"],
            "no manifest temporary file either")
    }

    @Test func test_commit_refusesAMissingShard() throws {
        let directory = try TestDirectory()
        let state = scrambledState(count: 100, seed: 1)
        let shards = try state.withUnsafeBufferPointer { all in
            [
                try CheckpointWriter.writeShard(
                    root: directory.path, step: 4, rank: 0, worldSize: 2, firstElement: 0,
                    elements: UnsafeBufferPointer(rebasing: all[0..<50]))
            ]
        }
        let missing = ShardRecord(
            rank: 1, file: "shard-00001-of-00002.bin", firstElement: 50, elements: 50, bytes: 200,
            sha256: String(repeating: "0", count: 64))
        let manifest = CheckpointManifest(
            job: "j", generation: 1, step: 4, cursorEpoch: 0, permutationSeed: 0, worldSize: 2, stateCount: 100,
            parameterCount: 100, workloadKind: "test", workloadSpec: "", shards: shards + [missing],
            committedUnixMilliseconds: 0
        )
        let error = expectCheckpointError { try CheckpointWriter.commit(manifest, root: directory.path) }
        #expect(error?.code == .missing)
        #expect(error?.message.contains("shard-00001-of-00002.bin") == true)
        #expect(try CheckpointReader.committedSteps(root: directory.path).isEmpty)
    }

    @Test func test_aTensorTable_roundTrips_andOneThatDoesNotFitTheState_isRefused() throws {
        let directory = try TestDirectory()
        let root = "\(directory.path)/ckpt"
        let state = scrambledState(count: 100, seed: 1)
        let tensors = [
            StateTensor(name: "parameter w", dtype: "float32", shape: [10, 6], offsetBytes: 0, bytes: 240),
            StateTensor(name: "optimizer step of w", dtype: "int64", shape: [], offsetBytes: 240, bytes: 8),
        ]
        let written = try writeCheckpoint(root: root, step: 5, world: 2, state: state) { $0.tensors = tensors }
        #expect(try CheckpointReader.load(root: root, step: 5).manifest.tensors == written.tensors)

        let error = expectCheckpointError {
            try writeCheckpoint(root: root, step: 6, world: 2, state: state) {
                $0.tensors = [StateTensor(name: "too big", dtype: "float32", shape: [101], offsetBytes: 0, bytes: 404)]
            }
        }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("too big") == true)
    }
}
