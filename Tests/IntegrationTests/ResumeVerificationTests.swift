import Checkpointing
import ControlPlane
import Foundation
import RingmasterWire
import Synchronization
import Testing

/// A submit that resumes verifies every shard of the checkpoint, which takes seconds for a large
/// model. The coordinator does it off the threads that serve connections, so heartbeats and other
/// requests are answered meanwhile, and it streams the shards instead of holding the state.
@Suite("Resume verification beside other requests", .timeLimit(.minutes(2)))
struct ResumeVerificationTests {
    /// Elements per shard: 512 MiB of Float32, as sparse files of zeros (no disk blocks used).
    static let shardElements = 1 << 27
    /// SHA-256 of 2^29 zero bytes (`head -c 536870912 /dev/zero | sha256sum`).
    static let zeroShardSHA256 = "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767"

    /// A committed checkpoint at step 100 of two 512 MiB shards of zeros under `root`.
    func writeLargeCheckpoint(root: String) throws {
        let directory = CheckpointLayout.stepDirectory(root: root, step: 100)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var shards: [ShardRecord] = []
        for rank in 0..<2 {
            let file = CheckpointLayout.shardFileName(rank: rank, worldSize: 2)
            let path = "\(directory)/\(file)"
            #expect(FileManager.default.createFile(atPath: path, contents: nil))
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try handle.truncate(atOffset: UInt64(Self.shardElements * 4))
            try handle.close()
            shards.append(
                ShardRecord(
                    rank: rank, file: file, firstElement: rank * Self.shardElements, elements: Self.shardElements,
                    bytes: Self.shardElements * 4, sha256: Self.zeroShardSHA256
                )
            )
        }
        let manifest = CheckpointManifest(
            job: "big", generation: 1, step: 100, cursorEpoch: 0, permutationSeed: 1, worldSize: 2,
            stateCount: 2 * Self.shardElements, parameterCount: 2 * Self.shardElements, workloadKind: "synthetic",
            workloadSpec: "{}", shards: shards, committedUnixMilliseconds: 0
        )
        try CheckpointWriter.commit(manifest, root: root)
    }

    func request(_ coordinator: TestCoordinator, _ build: @escaping @Sendable (inout Envelope) -> Void) async throws
        -> Envelope
    {
        try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
            .withConnection { session in
                var envelope = Envelope()
                build(&envelope)
                return try await session.request(envelope)
            }
    }

    @Test func statusRequests_areAnswered_whileSeveralSubmitsVerifyALargeCheckpoint() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let root = "\(coordinator.directory.path)/checkpoints"
        try self.writeLargeCheckpoint(root: root)

        // More verifying submits than the coordinator has cores (and so threads in Swift's
        // cooperative pool, which serves every connection).
        let submits = ProcessInfo.processInfo.activeProcessorCount + 2
        let started = ContinuousClock.now
        let firstAnswered = Flag()
        async let submitted: [Duration] = withThrowingTaskGroup(of: Duration.self) { group in
            for index in 0..<submits {
                group.addTask {
                    let yaml =
                        "name: resumed-\(index)\nworkload: {kind: mlp}\ndataset: {path: builtin:digits, samples: 1437}\nbatch_size: 64\nsteps: 200\nnodes: {min: 1, max: 1}\ncheckpoint: {directory: \(root)}\nresume: latest\n"
                    // Accepted or refused (this checkpoint is of another workload), the answer
                    // comes only after the verification.
                    _ = try? await self.request(coordinator) {
                        $0.adminRequest.jobSubmit = .with { $0.specYaml = yaml }
                    }
                    firstAnswered.set()
                    return ContinuousClock.now - started
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }

        // Meanwhile, until the first submit is answered: status requests, one after another,
        // each on a new connection, each timed.
        var statusTimes: [Duration] = []
        while !firstAnswered.isSet && ContinuousClock.now - started < .seconds(90) {
            let before = ContinuousClock.now
            let reply = try await self.request(coordinator) { $0.adminRequest.jobStatus = .with { _ in } }
            guard case .jobStatus = reply.adminReply.reply else {
                Issue.record("a status request got \(reply) instead of a status")
                break
            }
            statusTimes.append(ContinuousClock.now - before)
        }
        let submitTimes = try await submitted
        let firstSubmitDone = try #require(submitTimes.min())
        #expect(
            statusTimes.count >= 5,
            "only \(statusTimes.count) status replies came before the first submit was answered (after \(firstSubmitDone)): the verification was too short to overlap them"
        )
        // Blocked behind the verifications, a status request would wait about as long as they
        // take; served beside them, a small fraction of that even on a loaded machine (alone
        // here: tens of milliseconds against seconds).
        let slowest = try #require(statusTimes.max())
        #expect(
            slowest * 4 < firstSubmitDone,
            "a status request waited \(slowest), against \(firstSubmitDone) for the first verifying submit (all: \(statusTimes))"
        )
    }
}

/// A flag set once, read from any task.
final class Flag: Sendable {
    let value = Mutex(false)

    func set() { self.value.withLock { $0 = true } }

    var isSet: Bool { self.value.withLock { $0 } }
}
