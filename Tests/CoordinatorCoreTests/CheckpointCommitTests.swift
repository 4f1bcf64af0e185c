import JobModel
import Testing

@testable import CoordinatorCore

/// The checkpoint commit and the replica-hash check, as parts of the core's job state.
@Suite struct CheckpointCommitTests {
    /// A running job of `members` with checkpoints every 2 steps.
    func running(_ members: [String], steps: UInt64 = 10) throws -> Simulation {
        var sim = Simulation(settings: .init(settleWindow: .zero))
        for node in members { sim.online(node) }
        var spec = Simulation.spec(min: members.count, max: members.count, steps: steps)
        spec.checkpointDirectory = "/ckpt"
        spec.checkpointIntervalSteps = 2
        try sim.command(.submit(spec))
        sim.advance(by: .milliseconds(500), heartbeating: members)
        #expect(sim.members() == members)
        return sim
    }

    func shard(_ sim: Simulation, _ node: String, step: UInt64, error: String? = nil) -> ShardReport {
        let rank = sim.members().firstIndex(of: node) ?? 0
        return ShardReport(
            step: step, rank: rank, worldSize: sim.members().count, stateCount: 10, parameterCount: 8,
            firstElement: rank * 5, elements: 5, path: "rank-\(rank)", bytes: 20, sha256: "ab", error: error)
    }

    func commits(_ actions: [CoordinatorMachine.Action]) -> [CoordinatorMachine.CheckpointCommit] {
        actions.compactMap {
            if case .commitCheckpoint(let commit) = $0 { return commit }
            return nil
        }
    }

    func replicaActions(_ actions: [CoordinatorMachine.Action]) -> [CoordinatorMachine.Action] {
        actions.filter {
            if case .replicasAgree = $0 { return true }
            if case .replicasDiverged = $0 { return true }
            return false
        }
    }

    @Test func aCheckpoint_commitsWhenEveryShardIsIn_andItsStepIsCommitted() throws {
        var sim = try self.running(["a", "b"])
        sim.completeStep()
        sim.completeStep()
        #expect(sim.record().cursor == 2)
        let generation = sim.record().generation
        #expect(
            self.commits(
                sim.send(.shardReported(node: "b", job: "job", generation: generation, self.shard(sim, "b", step: 2)))
            ).isEmpty)
        let actions = sim.send(
            .shardReported(node: "a", job: "job", generation: generation, self.shard(sim, "a", step: 2)))
        let commit = try #require(self.commits(actions).first)
        #expect(commit.step == 2 && commit.generation == generation)
        #expect(commit.shards.map(\.rank) == [0, 1])
        #expect(commit.samples == sim.machine.samples(job: "job", atCheckpoint: 2))
        #expect(commit.samples != nil)
    }

    @Test func shardsOfAStepNotYetCommitted_waitForTheCursor() throws {
        var sim = try self.running(["a", "b"])
        sim.completeStep()
        // Step 1 is not committed: the checkpoint at boundary 2 holds a step that may be redone.
        let generation = sim.record().generation
        for node in ["a", "b"] {
            #expect(
                self.commits(
                    sim.send(
                        .shardReported(node: node, job: "job", generation: generation, self.shard(sim, node, step: 2)))
                ).isEmpty)
        }
        let committed = sim.record().cursor
        #expect(committed == 1)
        let before = sim.log.count
        sim.completeStep()
        #expect(self.commits(Array(sim.log[before...])).map(\.step) == [2])
    }

    @Test func aFailedShard_isReported_andItsCheckpointNeverCommits() throws {
        var sim = try self.running(["a", "b"])
        sim.completeStep()
        sim.completeStep()
        let generation = sim.record().generation
        let failed = sim.send(
            .shardReported(
                node: "a", job: "job", generation: generation, self.shard(sim, "a", step: 2, error: "disk full")))
        #expect(failed == [.shardFailed(node: "a", job: "job", step: 2, reason: "disk full")])
        #expect(
            self.commits(
                sim.send(.shardReported(node: "b", job: "job", generation: generation, self.shard(sim, "b", step: 2)))
            ).isEmpty)
    }

    @Test func aShardFromAnotherGeneration_orANonMember_isRefused() throws {
        var sim = try self.running(["a", "b"])
        let generation = sim.record().generation
        #expect(
            sim.send(.shardReported(node: "a", job: "job", generation: generation - 1, self.shard(sim, "a", step: 2)))
                == [.shardRefused(node: "a", job: "job", generation: generation - 1, step: 2)])
        sim.online("c")
        #expect(
            sim.send(.shardReported(node: "c", job: "job", generation: generation, self.shard(sim, "c", step: 2)))
                == [.shardRefused(node: "c", job: "job", generation: generation, step: 2)])
    }

    @Test func theLastCheckpoint_commitsAfterTheJobFinished() throws {
        var sim = try self.running(["a"], steps: 2)
        sim.completeStep()
        sim.completeStep()
        #expect(sim.record().phase == .finished)
        let actions = sim.send(
            .shardReported(node: "a", job: "job", generation: sim.record().generation, self.shard(sim, "a", step: 2)))
        #expect(self.commits(actions).map(\.step) == [2])
    }

    @Test func equalHashes_agree_andDifferentOnes_areADivergence() throws {
        var sim = try self.running(["a", "b"])
        let generation = sim.record().generation
        let first = sim.send(.stepCompleted(node: "a", job: "job", generation: generation, step: 0, parameterHash: 7))
        #expect(self.replicaActions(first).isEmpty, "one member of two reported")
        let agreed = sim.send(.stepCompleted(node: "b", job: "job", generation: generation, step: 0, parameterHash: 7))
        #expect(agreed.contains(.replicasAgree(job: "job", step: 0, hash: 7)))
        sim.send(.stepCompleted(node: "a", job: "job", generation: generation, step: 1, parameterHash: 7))
        let diverged = sim.send(
            .stepCompleted(node: "b", job: "job", generation: generation, step: 1, parameterHash: 9))
        #expect(
            diverged.contains(.replicasDiverged(job: "job", generation: generation, step: 1, hashes: ["a": 7, "b": 9])))
    }

    @Test func aGenerationChange_dropsTheHashesOfTheOldOne() throws {
        var sim = try self.running(["a", "b", "c"])
        var generation = sim.record().generation
        sim.send(.stepCompleted(node: "a", job: "job", generation: generation, step: 0, parameterHash: 1))
        sim.send(.stepCompleted(node: "b", job: "job", generation: generation, step: 0, parameterHash: 1))
        sim.send(.nodeOffline(node: "c"))
        generation = sim.record().generation
        // Only a and b now: b's hash alone must not complete the set with a's old one.
        let actions = sim.send(.stepCompleted(node: "b", job: "job", generation: generation, step: 0, parameterHash: 2))
        #expect(self.replicaActions(actions).isEmpty)
    }
}
