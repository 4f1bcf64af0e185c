import Checkpointing
import Foundation
import Testing

/// Ways a committed checkpoint gets damaged on disk (bit rot, a half-copied directory, a bug).
enum Damage: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case flipOneByteInAShard
    case truncateAShard
    case deleteAShard
    case garbleTheManifest
    case manifestWithAGap

    var testDescription: String { self.rawValue }

    /// The code `load` must throw.
    var code: CheckpointError.Code {
        switch self {
        case .flipOneByteInAShard, .truncateAShard, .garbleTheManifest, .manifestWithAGap: return .corrupt
        case .deleteAShard: return .missing
        }
    }

    /// Words the message must contain: the file and what is wrong with it.
    var messageFragments: [String] {
        switch self {
        case .flipOneByteInAShard: return ["shard-00001-of-00003.bin", "SHA-256"]
        case .truncateAShard: return ["shard-00002-of-00003.bin", "truncated"]
        case .deleteAShard: return ["shard-00000-of-00003.bin", "does not exist"]
        case .garbleTheManifest: return ["manifest.json", "does not parse"]
        case .manifestWithAGap: return ["manifest.json", "gap"]
        }
    }

    /// Damages the checkpoint of `step` under `root`.
    func apply(root: String, step: UInt64) throws {
        let directory = CheckpointLayout.stepDirectory(root: root, step: step)
        switch self {
        case .flipOneByteInAShard:
            let path = "\(directory)/shard-00001-of-00003.bin"
            var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            bytes[bytes.count / 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: path))
        case .truncateAShard:
            let path = "\(directory)/shard-00002-of-00003.bin"
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            try bytes.prefix(bytes.count - 8).write(to: URL(fileURLWithPath: path))
        case .deleteAShard:
            try FileManager.default.removeItem(atPath: "\(directory)/shard-00000-of-00003.bin")
        case .garbleTheManifest:
            let path = "\(directory)/manifest.json"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            try String(text.prefix(text.count / 2)).write(toFile: path, atomically: false, encoding: .utf8)
        case .manifestWithAGap:
            // The shard list names only ranks 0 and 2: elements of rank 1 are in no shard.
            let path = "\(directory)/manifest.json"
            var manifest = try JSONDecoder().decode(
                CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
            manifest.shards.remove(at: 1)
            try JSONEncoder().encode(manifest).write(to: URL(fileURLWithPath: path))
        }
    }
}

@Suite("Damaged checkpoints")
struct CorruptionTests {
    @Test(
        "damage is detected before the state is used, and loadLatest falls back to the previous checkpoint",
        arguments: Damage.allCases)
    func test_damagedNewest_isDetected_andLoadLatestFallsBack(damage: Damage) throws {
        let directory = try TestDirectory()
        let root = directory.path
        let older = scrambledState(count: 1_009, seed: 100)
        let newer = scrambledState(count: 1_009, seed: 200)
        try writeCheckpoint(root: root, step: 100, world: 3, state: older)
        try writeCheckpoint(root: root, step: 200, world: 3, state: newer)
        #expect(bits(try CheckpointReader.load(root: root, step: 200).state) == bits(newer), "intact before the damage")

        try damage.apply(root: root, step: 200)

        let error = expectCheckpointError { _ = try CheckpointReader.load(root: root, step: 200) }
        #expect(error?.code == damage.code, "\(error?.description ?? "no error")")
        for fragment in damage.messageFragments {
            #expect(error?.message.contains(fragment) == true, "\"\(fragment)\" in: \(error?.message ?? "no error")")
        }

        let latest = try CheckpointReader.loadLatest(root: root)
        #expect(latest.manifest.step == 100)
        #expect(bits(latest.state) == bits(older))
        #expect(latest.skipped.map(\.step) == [200])
        #expect(latest.skipped.first?.error.code == damage.code)
        #expect(latest.skipped.first?.error.message == error?.message)

        // Verifying without loading (what the coordinator does at submit) finds the same.
        let verifyError = expectCheckpointError { _ = try CheckpointReader.verify(root: root, step: 200) }
        #expect(verifyError?.code == error?.code)
        #expect(verifyError?.message == error?.message)
        let verified = try CheckpointReader.verifyLatest(root: root)
        #expect(verified.manifest == latest.manifest)
        #expect(verified.skipped.map(\.step) == [200])
        #expect(verified.skipped.first?.error.message == error?.message)
    }

    @Test("when the only checkpoint is damaged, loadLatest says so and why", arguments: Damage.allCases)
    func test_onlyCheckpointDamaged_throwsNoValidCheckpoint_namingTheProblem(damage: Damage) throws {
        let directory = try TestDirectory()
        try writeCheckpoint(root: directory.path, step: 100, world: 3, state: scrambledState(count: 1_009, seed: 1))
        try damage.apply(root: directory.path, step: 100)
        let error = expectCheckpointError { _ = try CheckpointReader.loadLatest(root: directory.path) }
        #expect(error?.code == .noValidCheckpoint)
        #expect(error?.message.contains("step 100") == true, "\(error?.message ?? "")")
        for fragment in damage.messageFragments {
            #expect(error?.message.contains(fragment) == true, "\"\(fragment)\" in: \(error?.message ?? "no error")")
        }
    }

    @Test func test_noCheckpointAtAll_throwsNoValidCheckpoint_sayingThereIsNone() throws {
        let directory = try TestDirectory()
        for root in [directory.path, "\(directory.path)/does-not-exist"] {
            let error = expectCheckpointError { _ = try CheckpointReader.loadLatest(root: root) }
            #expect(error?.code == .noValidCheckpoint)
            #expect(error?.message.contains("no committed checkpoint under \(root)") == true, "\(error?.message ?? "")")
        }
    }

    @Test func test_loadLatest_atOrBefore_ignoresNewerCheckpoints() throws {
        let directory = try TestDirectory()
        let states = [100, 200, 300].map { scrambledState(count: 50, seed: UInt64($0)) }
        for (index, step) in [100, 200, 300].enumerated() {
            try writeCheckpoint(root: directory.path, step: UInt64(step), world: 2, state: states[index])
        }
        let latest = try CheckpointReader.loadLatest(root: directory.path, atOrBefore: 250)
        #expect(latest.manifest.step == 200)
        #expect(bits(latest.state) == bits(states[1]))
        #expect(latest.skipped.isEmpty)
        let error = expectCheckpointError { _ = try CheckpointReader.loadLatest(root: directory.path, atOrBefore: 99) }
        #expect(error?.code == .noValidCheckpoint)
    }

    @Test func test_manifestInTheWrongDirectory_isCorrupt() throws {
        let directory = try TestDirectory()
        try writeCheckpoint(root: directory.path, step: 100, world: 1, state: scrambledState(count: 10, seed: 1))
        try FileManager.default.copyItem(
            atPath: CheckpointLayout.stepDirectory(root: directory.path, step: 100),
            toPath: CheckpointLayout.stepDirectory(root: directory.path, step: 500)
        )
        let error = expectCheckpointError { _ = try CheckpointReader.load(root: directory.path, step: 500) }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("records step 100") == true)
    }

    @Test func test_manifestOfAnotherFormatVersion_isIncompatible() throws {
        let directory = try TestDirectory()
        try writeCheckpoint(root: directory.path, step: 100, world: 1, state: scrambledState(count: 10, seed: 1))
        let path = "\(CheckpointLayout.stepDirectory(root: directory.path, step: 100))/manifest.json"
        var manifest = try JSONDecoder().decode(
            CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        manifest.formatVersion = 2
        try JSONEncoder().encode(manifest).write(to: URL(fileURLWithPath: path))
        let error = expectCheckpointError { _ = try CheckpointReader.load(root: directory.path, step: 100) }
        #expect(error?.code == .incompatible)
        #expect(error?.message.contains("format version 2") == true)
    }

    @Test func test_manifestNamingAFileOutsideItsDirectory_isCorrupt() throws {
        let directory = try TestDirectory()
        try writeCheckpoint(root: directory.path, step: 100, world: 1, state: scrambledState(count: 10, seed: 1))
        let path = "\(CheckpointLayout.stepDirectory(root: directory.path, step: 100))/manifest.json"
        var manifest = try JSONDecoder().decode(
            CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        manifest.shards[0].file = "../../etc/passwd"
        try JSONEncoder().encode(manifest).write(to: URL(fileURLWithPath: path))
        let error = expectCheckpointError { _ = try CheckpointReader.load(root: directory.path, step: 100) }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("not a file inside the step directory") == true)
    }

    @Test func test_commit_refusesAManifestWithAGap() throws {
        let directory = try TestDirectory()
        var manifest = try writeCheckpoint(
            root: directory.path, step: 100, world: 3, state: scrambledState(count: 30, seed: 1))
        manifest.step = 101
        manifest.shards.remove(at: 1)
        let error = expectCheckpointError { try CheckpointWriter.commit(manifest, root: directory.path) }
        #expect(error?.code == .corrupt)
        #expect(
            error?.message.contains("no shard holds elements 10..<20 of 30 (a gap)") == true, "\(error?.message ?? "")")
        #expect(try CheckpointReader.committedSteps(root: directory.path) == [100])
    }
}
