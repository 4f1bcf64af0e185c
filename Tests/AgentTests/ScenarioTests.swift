import AgentCore
import CoordinatorCore
import JobModel
import Testing

/// The failure orders the process tests cover, replayed in one process under a manual clock (see
/// `InProcessCluster`): each runs a job to its end and checks that no committed step was lost, no
/// sample repeated or skipped, and the replicas stayed bit-equal.
@Suite struct ScenarioTests {
    /// A cluster of `nodes` training a job of `spec`, run until its first generation trains.
    func training(_ nodes: [String], _ spec: JobSpec = InProcessCluster.spec()) throws -> InProcessCluster {
        let cluster = InProcessCluster()
        for node in nodes { cluster.join(node) }
        try cluster.submit(spec)
        try cluster.runUntilTraining()
        return cluster
    }

    func runToTheEnd(_ cluster: InProcessCluster, _ job: String = "job") throws {
        try cluster.run(until: "\(job) to finish") { $0.record(job)?.phase == .finished }
        #expect(cluster.record(job)?.cursor == cluster.record(job)?.spec.steps)
        #expect(cluster.violations(job) == [])
        let members = cluster.record(job)?.members ?? []
        #expect(Set(try cluster.parameterHashes(members).values).count == 1, "the last members' replicas are equal")
    }

    func cursor(_ cluster: InProcessCluster) -> UInt64 { cluster.record()?.cursor ?? 0 }

    @Test func aPeerKilledMidAllReduce_failsTheStep_andTheSurvivorsGoOnWithoutIt() throws {
        let cluster = try self.training(["a", "b", "c"])
        try cluster.run(until: "step 6") { self.cursor($0) >= 6 }
        cluster.kill("b", midCollective: true)
        let before = cluster.record()!.generation
        try cluster.round()
        try cluster.runUntilTraining(after: before)
        #expect(cluster.record()?.members == ["a", "c"])
        #expect(cluster.generations.last?.cause == .disconnected)
        try self.runToTheEnd(cluster)
    }

    @Test func survivorsAheadOfTheCursor_resumeWhereTheyAre_andTheStepsBetweenAreCommitted() throws {
        let cluster = try self.training(["a", "b", "c"])
        try cluster.run(until: "step 4") { self.cursor($0) >= 4 }
        // b's reports are held back: a and c run ahead of the cursor until the window stops them.
        cluster.holdReports("b")
        let held = self.cursor(cluster)
        try cluster.run(until: "a to run ahead of the cursor") { $0.nodes["a"]!.machine.boundary >= held + 2 }
        #expect(self.cursor(cluster) <= held + 1)
        let before = cluster.record()!.generation
        let ahead = cluster.nodes["a"]!.machine.boundary
        cluster.kill("b")
        try cluster.runUntilTraining(after: before)
        // Nothing is redone: the new generation resumed at a's boundary (b's part of the steps it
        // never reported came from the data order), and the cursor moved there.
        #expect(cluster.rolledForward == 1)
        #expect(cluster.record()!.cursor >= ahead, "the steps a and c were ahead by are committed")
        #expect(cluster.caughtUp == 0, "a and c held the same state: nothing was sent")
        try self.runToTheEnd(cluster)
    }

    @Test func aJoiningNode_receivesTheStateFromTheSurvivors_andTheJobGrows() throws {
        let cluster = try self.training(["a", "b"], InProcessCluster.spec(max: 3))
        try cluster.run(until: "step 5") { self.cursor($0) >= 5 }
        let before = cluster.record()!.generation
        cluster.join("c")
        try cluster.runUntilTraining(after: before)
        #expect(cluster.record()?.members == ["a", "b", "c"])
        #expect(cluster.generations.last?.cause == .joined)
        let synchronised = cluster.synchronised["job"]?[cluster.record()!.generation] ?? [:]
        #expect(synchronised.count == 3 && Set(synchronised.values).count == 1)
        try self.runToTheEnd(cluster)
    }

    @Test func aDrainedNode_finishesItsStep_leaves_andTheJobShrinksInPlace() throws {
        let cluster = try self.training(["a", "b", "c"])
        try cluster.run(until: "step 3") { self.cursor($0) >= 3 }
        try cluster.drain("b")
        try cluster.run(until: "b to stop") { $0.nodes["b"]!.stops == ["drained"] }
        try cluster.runUntilTraining(after: 1)
        #expect(cluster.record()?.members == ["a", "c"])
        #expect(cluster.generations.last?.cause == .drained || cluster.generations.last?.cause == .left)
        try self.runToTheEnd(cluster)
    }

    @Test func sigtermOnAMember_leavesAfterItsStep_andGoesOffline() throws {
        let cluster = try self.training(["a", "b", "c"])
        try cluster.run(until: "step 3") { self.cursor($0) >= 3 }
        cluster.terminate("c")
        try cluster.run(until: "c to go offline") { $0.nodes["c"] == nil }
        try cluster.runUntilTraining(after: 1)
        #expect(cluster.record()?.members == ["a", "b"])
        #expect(cluster.generations.last?.cause == .left)
        try self.runToTheEnd(cluster)
    }

    @Test func anAbortDuringTheSynchronisation_isAbandoned_andTheNextGenerationSynchronisesAgain() throws {
        let cluster = try self.training(["a", "b"], InProcessCluster.spec(min: 2, max: 2))
        try cluster.run(until: "step 4") { self.cursor($0) >= 4 }
        // c replaces b: the new generation is synchronising when c dies, so the job waits and the
        // coordinator aborts a's generation in the middle of its synchronisation.
        cluster.kill("b")
        cluster.join("c")
        try cluster.run(until: "a and c to synchronise") { cluster in
            guard let work = cluster.nodes["a"]?.work else { return false }
            switch work {
            case .gather, .broadcast: return cluster.record()?.members == ["a", "c"]
            case .prepare, .connect, .loadCheckpoint, .train, .saveModel: return false
            }
        }
        cluster.kill("c")
        try cluster.run(until: "the job to wait") { $0.record()?.phase == .waiting }
        #expect(cluster.trace.contains { $0.contains("a stopped training") && $0.contains("(superseded)") })
        let waiting = cluster.record()!.generation
        cluster.join("d")
        try cluster.runUntilTraining(after: waiting)
        #expect(cluster.record()?.members == ["a", "d"])
        try self.runToTheEnd(cluster)
    }

    @Test func aNewerGenerationDuringACheckpointLoad_abandonsIt_andLoadsAgain() throws {
        let cluster = InProcessCluster()
        cluster.join("a")
        cluster.join("b")
        try cluster.submit(InProcessCluster.spec("first", steps: 12, checkpoints: true))
        try cluster.run(until: "the first job to finish") { $0.record("first")?.phase == .finished }
        // Every agent is lost; a new job resumes from the checkpoint at step 8 on new nodes.
        cluster.kill("a")
        cluster.kill("b")
        cluster.join("c")
        cluster.join("d")
        let samples = try #require(cluster.coordinator.samples(job: "first", atCheckpoint: 8))
        try cluster.submit(
            InProcessCluster.spec("second", max: 3, steps: 20, checkpoints: true),
            start: .init(step: 8, samples: samples))
        _ = try cluster.command(.resize(job: "second", nodes: 2))
        try cluster.run(until: "c to start loading the checkpoint") { cluster in
            if case .loadCheckpoint = cluster.nodes["c"]?.work { return true }
            return false
        }
        let loading = cluster.record("second")!.generation
        cluster.join("e")
        _ = try cluster.command(.resize(job: "second", nodes: 3))
        #expect(cluster.record("second")!.generation > loading, "the newer generation came during the load")
        #expect(cluster.nodes["c"]?.abandoned == true)
        try cluster.runUntilTraining("second", after: loading)
        #expect(cluster.record("second")?.members == ["c", "d", "e"])
        #expect(cluster.record("second")?.resumedFrom == 8)
        #expect(
            cluster.nodes["e"]!.machine.prepared != nil && cluster.nodes["e"]!.machine.boundary >= 8,
            "e holds the state from step 8 on, loaded from the checkpoint")
        try self.runToTheEnd(cluster, "second")
    }

    @Test func aCoordinatorRestart_resumesEveryMemberAtTheDurableCursor() throws {
        let cluster = try self.training(["a", "b", "c"])
        try cluster.run(until: "step 7") { self.cursor($0) >= 7 }
        let before = cluster.record()!.generation
        cluster.restartCoordinator()
        try cluster.runUntilTraining(after: before)
        #expect(cluster.generations.last?.cause == .coordinatorRestarted)
        #expect(cluster.record()?.members.count == 3)
        try self.runToTheEnd(cluster)
    }
}
