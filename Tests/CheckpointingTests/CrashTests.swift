import Checkpointing
import Foundation
import LocalCluster
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Real `kill -9` in the middle of a save: `ringmaster checkpoint write-test` runs as a child process
/// with `RINGMASTER_CRASH_AT` set and kills itself with SIGKILL at that point.
@Suite("Crashes during a save")
struct CrashTests {
    static let elements = 10_007
    static let world = 4

    /// Runs write-test to completion (or to its crash) and returns its exit status and output.
    static func writeTest(
        root: String,
        step: UInt64,
        seed: Int,
        crashAt: CrashPoint? = nil
    ) async throws -> (status: Int32, output: [String]) {
        var environment: [String: String] = [:]
        if let crashAt { environment[CrashPoint.environmentVariable] = crashAt.rawValue }
        let child = try ChildProcess(
            name: "write-test step \(step)",
            executable: try ringmasterExecutable(),
            arguments: [
                "checkpoint", "write-test", "--root", root, "--step", "\(step)", "--world", "\(Self.world)",
                "--elements", "\(Self.elements)", "--seed", "\(seed)",
            ],
            environment: environment
        )
        let status = try await child.waitForExit(within: 60)
        return (status, child.output.lines)
    }

    /// How many shards are under their final names when the writer dies at `point` (write-test
    /// writes ranks in order, and the first crash point it reaches is the one armed).
    static func finalShards(at point: CrashPoint) -> Int {
        switch point {
        case .afterShardData: return 0
        case .afterShardRename: return 1
        case .beforeManifest, .afterManifestTemp: return Self.world
        }
    }

    @Test(
        "a save killed at each crash point leaves the previous checkpoint loadable and nothing incomplete",
        arguments: CrashPoint.allCases)
    func test_killDuringSave_keepsThePreviousCheckpoint_andNoIncompleteFinalFile(point: CrashPoint) async throws {
        let directory = try TestDirectory()
        let root = "\(directory.path)/ckpt"

        let good = try await Self.writeTest(root: root, step: 100, seed: 1)
        #expect(good.status == 0, "\(good.output)")
        #expect(good.output.contains("committed step 100"))

        let crashed = try await Self.writeTest(root: root, step: 200, seed: 2, crashAt: point)
        // ChildProcess reports the signal number for a process killed by a signal; write-test
        // never exits with status 9 by itself, and the line proves the hook fired at this point.
        #expect(crashed.status == SIGKILL, "status \(crashed.status): \(crashed.output)")
        #expect(
            crashed.output.contains(
                "ringmaster: crash point \(point.rawValue) reached, killing this process with SIGKILL"))
        #expect(!crashed.output.contains("committed step 200"))

        // The previous checkpoint is what a restart loads, bit-identical.
        let latest = try CheckpointReader.loadLatest(root: root)
        #expect(latest.manifest.step == 100)
        #expect(bits(latest.state) == bits(writeTestState(count: Self.elements, seed: 1)))
        #expect(latest.skipped.isEmpty, "step 200 is not committed, so it is not even tried")
        #expect(try CheckpointReader.committedSteps(root: root) == [100])

        // Step 200: no manifest, and every file under a final name is complete and correct.
        let step200 = CheckpointLayout.stepDirectory(root: root, step: 200)
        let files = names(in: step200)
        #expect(!files.contains(CheckpointLayout.manifestFileName))
        let expected = writeTestState(count: Self.elements, seed: 2)
        let finals = (0..<Self.world).map { CheckpointLayout.shardFileName(rank: $0, worldSize: Self.world) }.filter(
            files.contains)
        #expect(finals.count == Self.finalShards(at: point), "final shards after \(point.rawValue): \(files)")
        for (rank, name) in finals.enumerated() {
            let slice = CheckpointLayout.slice(elements: Self.elements, rank: rank, worldSize: Self.world)
            let bytes = try #require(FileManager.default.contents(atPath: "\(step200)/\(name)"))
            let values = bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
            #expect(values == bits(Array(expected[slice])), "\(name) is complete")
        }
        let temporaries = files.filter { $0.hasPrefix(".") }
        switch point {
        case .afterShardData:
            #expect(temporaries.count == 1 && temporaries[0].hasPrefix(".shard-00000-of-00004.bin.tmp-"), "\(files)")
        case .afterShardRename, .beforeManifest:
            #expect(temporaries.isEmpty, "\(files)")
        case .afterManifestTemp:
            #expect(temporaries.count == 1 && temporaries[0].hasPrefix(".manifest.json.tmp-"), "\(files)")
        }

        // The leftover is newer than the newest committed checkpoint: it may be a save in progress, so it stays.
        #expect(try CheckpointRetention.prune(root: root, keep: 2).isEmpty)
        #expect(FileManager.default.fileExists(atPath: step200))

        // Once a newer checkpoint is committed, the leftover is older than it and goes.
        let next = try await Self.writeTest(root: root, step: 300, seed: 3)
        #expect(next.status == 0, "\(next.output)")
        #expect(try CheckpointRetention.prune(root: root, keep: 2) == [step200])
        #expect(!FileManager.default.fileExists(atPath: step200))
        #expect(try CheckpointReader.committedSteps(root: root) == [300, 100])
        let after = try CheckpointReader.loadLatest(root: root)
        #expect(after.manifest.step == 300)
        #expect(bits(after.state) == bits(writeTestState(count: Self.elements, seed: 3)))
    }

    @Test func test_listCommand_reportsCommittedVerifiedAndUncommittedSteps() async throws {
        let directory = try TestDirectory()
        let root = directory.path
        _ = try await Self.writeTest(root: root, step: 100, seed: 1)
        _ = try await Self.writeTest(root: root, step: 200, seed: 2, crashAt: .afterShardRename)
        _ = try await Self.writeTest(root: root, step: 300, seed: 3)
        // Damage step 300 so that it is committed but does not verify.
        let shard = "\(CheckpointLayout.stepDirectory(root: root, step: 300))/shard-00003-of-00004.bin"
        var bytes = try #require(FileManager.default.contents(atPath: shard))
        bytes[0] ^= 0xff
        try bytes.write(to: URL(fileURLWithPath: shard))

        let child = try ChildProcess(
            name: "checkpoint list", executable: try ringmasterExecutable(),
            arguments: ["checkpoint", "list", root, "--json"])
        let status = try await child.waitForExit(within: 60)
        #expect(status == 0, "\(child.output.lines)")
        let json = try #require(child.standardOutput.lines.first)
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
        #expect(rows.map { $0["step"] as? Int } == [300, 200, 100])
        #expect(rows.map { $0["committed"] as? Bool } == [true, false, true])
        #expect(rows.map { $0["verified"] as? Bool } == [false, false, true])
        #expect(rows.map { $0["world_size"] as? Int } == [4, 4, 4])
        #expect((rows[0]["problem"] as? String)?.contains("SHA-256") == true)
        #expect(rows[2]["bytes"] as? Int ?? 0 > Self.elements * 4)
    }
}
