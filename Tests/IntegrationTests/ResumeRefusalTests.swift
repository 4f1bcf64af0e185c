import ControlPlane
import Foundation
import LocalCluster
import RingmasterWire
import Testing

/// A job cannot resume from checkpoints that are not there, or not whole: the submit is refused,
/// saying why, and no job is created.
@Suite("Resuming without a usable checkpoint", .timeLimit(.minutes(1)))
struct ResumeRefusalTests {
    /// The refusal's text, or nil when the submit was accepted.
    func refusal(_ coordinator: TestCoordinator, _ yaml: String) async throws -> String? {
        do {
            _ = try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
                .withConnection { session in
                    var envelope = Envelope()
                    envelope.adminRequest.jobSubmit = .with { $0.specYaml = yaml }
                    return try await session.request(envelope)
                }
            return nil
        } catch {
            return "\(error)"
        }
    }

    func spec(_ directory: String) -> String {
        "name: again\nworkload: {kind: mlp}\ndataset: {path: builtin:digits, samples: 1437}\nbatch_size: 64\nsteps: 100\nnodes: {min: 1, max: 1}\ncheckpoint: {directory: \(directory)}\nresume: latest\n"
    }

    @Test func noCheckpoint_orOnlyADamagedOne_refusesTheSubmit() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let root = "\(coordinator.directory.path)/checkpoints"

        let empty = try #require(
            try await self.refusal(coordinator, self.spec(root)), "a resume with no checkpoint was accepted")
        #expect(empty.contains(root), "the refusal names the directory: \(empty)")

        // A committed checkpoint whose only shard was cut short.
        let writer = try ChildProcess(
            name: "write-test",
            executable: try ringmasterExecutable(),
            arguments: [
                "checkpoint", "write-test", "--root", root, "--step", "50", "--world", "2", "--elements", "1000",
            ]
        )
        #expect(try await writer.waitForExit(within: 30) == 0, "\(writer.output.lines)")
        let shard = "\(root)/step-000000000050/shard-00001-of-00002.bin"
        let handle = try #require(FileHandle(forUpdatingAtPath: shard))
        try handle.truncate(atOffset: 10)
        try handle.close()
        let damaged = try #require(
            try await self.refusal(coordinator, self.spec(root)), "a resume from a damaged checkpoint was accepted")
        #expect(damaged.contains("shard-00001-of-00002.bin"), "the refusal names the damaged shard: \(damaged)")
        #expect(try coordinator.service.state.jobs().isEmpty, "no job was created")
    }
}
