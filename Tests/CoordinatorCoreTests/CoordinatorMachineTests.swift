import JobModel
import Testing

@testable import CoordinatorCore

@Suite("Rendezvous")
struct RendezvousTests {
    static let orders = [
        ["a", "b", "c"], ["a", "c", "b"], ["b", "a", "c"], ["b", "c", "a"], ["c", "a", "b"], ["c", "b", "a"],
    ]

    @Test(arguments: orders)
    func everyJoinOrder_givesTheSameRanks_inOneGeneration(order: [String]) throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        for node in order { sim.online(node) }
        #expect(sim.record().generation == 1)
        #expect(sim.members() == ["a", "b", "c"])
        #expect(sim.causes() == [.start])
    }

    @Test func nodesBeforeTheJob_startItAtOnce_whenMaxAreThere() throws {
        var sim = Simulation()
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        #expect(sim.record().phase == .running)
        #expect(sim.members() == ["a", "b"])
    }

    @Test func belowMin_theJobWaits_andStartsWhenMinArrive_afterTheSettleWindow() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 4)))
        sim.online("a")
        sim.advance(by: .seconds(5), heartbeating: ["a"])
        #expect(sim.record().phase == .waiting, "one node is below min")
        sim.online("b")
        #expect(sim.record().phase == .waiting, "min is there, but the settle window has not passed")
        sim.advance(by: .milliseconds(500), heartbeating: ["a", "b"])
        #expect(sim.record().phase == .waiting)
        sim.advance(by: .milliseconds(600), heartbeating: ["a", "b"])
        #expect(sim.record().phase == .running)
        #expect(sim.members() == ["a", "b"])
        let rendezvous = sim.log.compactMap { action -> Duration? in
            if case .generationStarted(_, _, _, _, _, let waited) = action { return waited }
            return nil
        }
        #expect(rendezvous == [.seconds(6)], "from submission to the first tick past the settle window")
    }

    @Test func moreNodesThanMax_leaveTheRestIdle() throws {
        var sim = Simulation()
        sim.online("a", "b", "c", "d", "e")
        try sim.command(.submit(Simulation.spec(min: 1, max: 4)))
        #expect(sim.members() == ["a", "b", "c", "d"])
        #expect(sim.machine.nodeStatuses.first { $0.node == "e" }?.state == .idle)
    }

    @Test func twoJobs_takeNodesInSubmissionOrder() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec("first", min: 2, max: 2)))
        try sim.command(.submit(Simulation.spec("second", min: 1, max: 2)))
        sim.online("a", "b", "c")
        #expect(sim.members("first") == ["a", "b"])
        sim.advance(by: .seconds(2), heartbeating: ["a", "b", "c"])
        #expect(sim.members("second") == ["c"])
    }
}

@Suite("Generations")
struct GenerationTests {
    /// A running job with a, b, c at ranks 0, 1, 2.
    func running(min: Int = 2, max: Int = 3) throws -> Simulation {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: min, max: max)))
        sim.online("a", "b", "c")
        #expect(sim.members() == ["a", "b", "c"])
        return sim
    }

    @Test func leaseExpiry_startsANewGeneration_withoutTheDeadNode_survivorsKeepRanks() throws {
        var sim = try self.running()
        sim.completeStep()
        sim.completeStep()
        sim.advance(by: .seconds(3), heartbeating: ["a", "c"])  // b stops heartbeating
        #expect(sim.log.contains(.leaseExpired(node: "b")))
        #expect(sim.record().generation == 2)
        #expect(sim.members() == ["a", "c"], "a keeps rank 0; c moves into the freed rank 1 (world size 2)")
        #expect(sim.causes() == [.start, .leaseExpired])
        #expect(sim.log.contains(.abort(node: "b", job: "job", generation: 1, reason: "lease_expired")))
        let assignment = try #require(sim.assignments["a"])
        #expect(assignment.generation == 2 && assignment.resumeStep == 2 && assignment.worldSize == 2)
        // The dead node's share of the batch goes to the others: 12 samples over 2 ranks.
        let order = sim.record().spec.order
        #expect(order.positions(step: 2, rank: 0, worldSize: 2).count == 6)
        #expect(order.positions(step: 2, rank: 1, worldSize: 2).count == 6)
    }

    @Test func theNodeWithTheHighestRankDying_keepsEveryOtherRank() throws {
        var sim = try self.running()
        sim.send(.nodeOffline(node: "c"))
        #expect(sim.members() == ["a", "b"])
        #expect(sim.causes().last == .disconnected)
    }

    @Test func belowMin_theJobPauses_andResumesAtItsCursor() throws {
        var sim = try self.running(min: 3, max: 3)
        for _ in 0..<5 { sim.completeStep() }
        sim.send(.nodeOffline(node: "a"))
        #expect(sim.record().phase == .waiting)
        #expect(sim.record().members.isEmpty)
        sim.online("a")
        #expect(sim.record().phase == .running)
        #expect(sim.record().generation == 2)
        #expect(sim.assignments["a"]?.resumeStep == 5)
    }

    @Test func drain_asksTheNodeToLeave_thenContinuesWithoutIt() throws {
        var sim = try self.running()
        let actions = try sim.command(.drain(node: "b"))
        #expect(actions == [.drain(node: "b", job: "job", generation: 1, graceSeconds: 30)])
        #expect(sim.record().generation == 1, "the drained node finishes its step first")
        sim.send(.left(node: "b", job: "job", generation: 1))
        #expect(sim.members() == ["a", "c"])
        #expect(sim.causes().last == .drained)
        #expect(sim.machine.nodeStatuses.first { $0.node == "b" }?.state == .draining)
        sim.advance(by: .seconds(5), heartbeating: ["a", "b", "c"])
        #expect(sim.members() == ["a", "c"], "a drained node gets no new work")
    }

    @Test func drain_removesTheNodeAfterItsGrace_whenItDoesNotLeave() throws {
        var sim = try self.running()
        try sim.command(.drain(node: "b"))
        sim.advance(by: .seconds(29), heartbeating: ["a", "b", "c"])
        #expect(sim.record().generation == 1)
        sim.advance(by: .seconds(2), heartbeating: ["a", "b", "c"])
        #expect(sim.members() == ["a", "c"])
    }

    @Test func aNodeJoiningWhileRunningBelowMax_growsTheJobInPlace() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        sim.online("b", "c")
        sim.advance(by: .seconds(2), heartbeating: ["b", "c"])
        #expect(sim.members() == ["b", "c"])
        sim.completeStep()
        sim.online("a")
        #expect(sim.members() == ["b", "c", "a"], "existing ranks stay; the newcomer takes rank 2")
        #expect(sim.causes() == [.start, .joined])
        #expect(sim.assignments["a"]?.resumeStep == 1)
    }

    @Test func resizeDown_dropsTheHighestRanks_andResizeUp_takesIdleNodes() throws {
        var sim = try self.running(min: 1, max: 3)
        try sim.command(.resize(job: "job", nodes: 2))
        #expect(sim.members() == ["a", "b"])
        #expect(sim.machine.nodeStatuses.first { $0.node == "c" }?.state == .idle)
        try sim.command(.resize(job: "job", nodes: 3))
        #expect(sim.members() == ["a", "b", "c"])
        #expect(sim.causes() == [.start, .resized, .resized])
        #expect(sim.record().generation == 3)
    }

    @Test func staleGenerationMessages_areRefused_andMoveNothing() throws {
        var sim = try self.running()
        sim.send(.nodeOffline(node: "c"))
        #expect(sim.record().generation == 2)
        let actions = sim.send(.stepCompleted(node: "a", job: "job", generation: 1, step: 0))
        #expect(actions == [.staleRefused(node: "a", job: "job", generation: 1, current: 2)])
        #expect(sim.record().cursor == 0)
        let heartbeat = sim.send(.heartbeat(node: "b", job: "job", generation: 1))
        #expect(heartbeat == [.staleRefused(node: "b", job: "job", generation: 1, current: 2)])
    }

    @Test func theCursorMoves_onlyWhenEveryMemberCompletedTheStep_andTheJobFinishes() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 2, steps: 3)))
        sim.online("a", "b")
        sim.send(.stepCompleted(node: "a", job: "job", generation: 1, step: 0))
        #expect(sim.record().cursor == 0)
        sim.send(.stepCompleted(node: "b", job: "job", generation: 1, step: 0))
        #expect(sim.record().cursor == 1)
        sim.completeStep()
        sim.completeStep()
        #expect(sim.record().phase == .finished)
        #expect(sim.log.contains(.jobFinished(job: "job")))
        #expect(sim.machine.nodeStatuses.allSatisfy { $0.state == .idle })
    }

    @Test func aReportThatMovesNoCursor_asksForNoWrite_andTheLastOfAStep_asksForOne() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 3, max: 3)))
        sim.online("a", "b", "c")
        // Reports of a step that is not complete yet, and of steps past it, change no record.
        for (node, step) in [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)] as [(String, UInt64)] {
            let actions = sim.send(.stepCompleted(node: node, job: "job", generation: 1, step: step))
            #expect(actions.isEmpty, "\(node) step \(step): \(actions)")
        }
        // c's report completes steps 0 and then 1: each commits its step, announces the cursor
        // (these nodes said no window) and asks for one write.
        let first = sim.send(.stepCompleted(node: "c", job: "job", generation: 1, step: 0))
        #expect(
            first == [
                .stepCommitted(job: "job", generation: 1, step: 0),
                .announceCursor(job: "job", generation: 1, cursor: 1), .persist(job: "job"),
            ])
        let second = sim.send(.stepCompleted(node: "c", job: "job", generation: 1, step: 1))
        #expect(
            second == [
                .stepCommitted(job: "job", generation: 1, step: 1),
                .announceCursor(job: "job", generation: 1, cursor: 2), .persist(job: "job"),
            ])
        // A repeated report of a committed step changes nothing either.
        #expect(sim.send(.stepCompleted(node: "c", job: "job", generation: 1, step: 1)).isEmpty)
        #expect(sim.record().cursor == 2)
    }

    @Test func aMemberThatReportedAStepAhead_stillHoldsTheCursor_untilTheSlowestReports() throws {
        // Reports arrive in any order across members: the cursor waits for the member that is
        // furthest behind, however far ahead the others are.
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 3, max: 3)))
        sim.online("a", "b", "c")
        for step: UInt64 in 0..<5 {
            sim.send(.stepCompleted(node: "a", job: "job", generation: 1, step: step))
            sim.send(.stepCompleted(node: "c", job: "job", generation: 1, step: step))
        }
        #expect(sim.record().cursor == 0)
        for step: UInt64 in 0..<4 {
            sim.send(.stepCompleted(node: "b", job: "job", generation: 1, step: step))
            #expect(sim.record().cursor == step + 1)
        }
        // A node outside the job moves nothing.
        sim.online("d")
        #expect(sim.send(.stepCompleted(node: "d", job: "job", generation: 1, step: 4)).isEmpty)
        #expect(sim.record().cursor == 4)
    }

    /// The cursors announced while every member reports `steps` steps in lockstep.
    static func announced(_ sim: inout Simulation, members: [String], steps: UInt64) -> [UInt64] {
        var cursors: [UInt64] = []
        for step in 0..<steps {
            for member in members {
                for action in sim.send(.stepCompleted(node: member, job: "job", generation: 1, step: step)) {
                    if case .announceCursor(_, let generation, let cursor) = action {
                        #expect(generation == 1)
                        cursors.append(cursor)
                    }
                }
            }
        }
        return cursors
    }

    @Test func theCursorIsAnnounced_everyQuarterOfTheSmallestWindow_andAtTheLastStep() throws {
        // Windows of 16 and 32 steps: announced every 4 steps, and at the job's end (step 10).
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 2, steps: 10)))
        sim.send(.nodeOnline(node: "a", .init(dataPlaneAddresses: ["a:7700"], stepsAhead: 16)))
        sim.send(.nodeOnline(node: "b", .init(dataPlaneAddresses: ["b:7700"], stepsAhead: 32)))
        #expect(sim.assignments["a"]?.resumeStep == 0)
        #expect(Self.announced(&sim, members: ["a", "b"], steps: 10) == [4, 8, 10])
        #expect(sim.record().phase == .finished)
    }

    @Test func aMemberThatSaidNoWindow_hasTheCursorAnnouncedAtEveryMove() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 2, steps: 100)))
        sim.send(.nodeOnline(node: "a", .init(dataPlaneAddresses: ["a:7700"], stepsAhead: 64)))
        sim.online("b")
        #expect(Self.announced(&sim, members: ["a", "b"], steps: 5) == [1, 2, 3, 4, 5])
    }

    @Test func aNewGeneration_countsFromTheCursorItsMembersWereAssigned() throws {
        // Windows of 8: every 2 steps. After a loss at cursor 3, the next generation's members
        // were told 3 in their assignment, so the next announcement is at 5, not at 4.
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3, steps: 100)))
        for node in ["a", "b", "c"] {
            sim.send(.nodeOnline(node: node, .init(dataPlaneAddresses: ["\(node):7700"], stepsAhead: 8)))
        }
        #expect(Self.announced(&sim, members: ["a", "b", "c"], steps: 3) == [2])
        sim.send(.nodeOffline(node: "c"))
        let generation = sim.record().generation
        #expect(generation == 2 && sim.assignments["a"]?.resumeStep == 3)
        var cursors: [UInt64] = []
        for step: UInt64 in 3..<7 {
            for member in ["a", "b"] {
                for action in sim.send(.stepCompleted(node: member, job: "job", generation: generation, step: step)) {
                    if case .announceCursor(_, _, let cursor) = action { cursors.append(cursor) }
                }
            }
        }
        #expect(cursors == [5, 7])
    }
}

@Suite("Coordinator restart")
struct RestartTests {
    /// Restarts the machine from its durable records, as a coordinator restart does.
    func restart(_ sim: inout Simulation) {
        let records = sim.machine.records
        sim.machine = CoordinatorMachine(settings: sim.machine.settings, restoring: records, now: sim.now)
    }

    @Test func aRunningJob_continuesInTheNextGeneration_fromItsCursor_whenItsMembersReturn() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        sim.online("a", "b", "c")
        for _ in 0..<4 { sim.completeStep() }
        self.restart(&sim)
        sim.online("c", "a")
        #expect(sim.record().generation == 1, "still waiting for b")
        sim.online("b")
        #expect(sim.record().generation == 2)
        #expect(sim.members() == ["a", "b", "c"], "ranks survive the restart")
        #expect(sim.assignments["a"]?.resumeStep == 4)
        #expect(sim.causes().last == .coordinatorRestarted)
    }

    @Test func membersThatDoNotReturn_areLeftOut_afterTheRecoveryWindow() throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        sim.online("a", "b", "c")
        sim.completeStep()
        self.restart(&sim)
        sim.online("a", "c")
        sim.advance(by: .seconds(6), heartbeating: ["a", "c"])
        #expect(sim.record().generation == 2)
        #expect(sim.members() == ["a", "c"])
        #expect(sim.assignments["c"]?.resumeStep == 1)
    }

    @Test(arguments: ["waiting", "drain", "resize", "join", "lease"])
    func aRestartInTheMiddleOfAChange_keepsTheCursorAndGenerationMonotonic(change: String) throws {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        sim.online("a", "b")
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        sim.completeStep()
        switch change {
        case "waiting": sim.send(.nodeOffline(node: "b"))
        case "drain": try sim.command(.drain(node: "b"))
        case "resize": try sim.command(.resize(job: "job", nodes: 2))
        case "join": sim.online("c")
        default: sim.advance(by: .seconds(3), heartbeating: ["a"])
        }
        let before = sim.record()
        self.restart(&sim)
        sim.online("a", "b", "c")
        sim.advance(by: .seconds(6), heartbeating: ["a", "b", "c"])
        let after = sim.record()
        #expect(after.phase == .running)
        #expect(after.generation > before.generation)
        #expect(after.cursor == before.cursor)
        #expect(Set(after.members).count == after.members.count)
    }
}

@Suite("Bad commands")
struct BadCommandTests {
    func running() throws -> Simulation {
        var sim = Simulation()
        try sim.command(.submit(Simulation.spec(min: 1, max: 3)))
        sim.online("a", "b", "c")
        return sim
    }

    /// Applies `command`, expects a refusal with `code`, and checks that nothing changed.
    func expectRefused(
        _ command: CoordinatorMachine.Command, _ code: CoordinatorMachine.CommandError.Code, mentioning text: String
    ) throws {
        var sim = try self.running()
        let records = sim.machine.records
        let nodes = sim.machine.nodeStatuses
        #expect {
            try sim.command(command)
        } throws: { error in
            guard let error = error as? CoordinatorMachine.CommandError else { return false }
            return error.code == code && error.message.contains(text)
        }
        #expect(sim.machine.records == records)
        #expect(sim.machine.nodeStatuses == nodes)
    }

    @Test func unknownJob() throws {
        try self.expectRefused(.resize(job: "nope", nodes: 2), .unknownJob, mentioning: "no job is named nope")
        try self.expectRefused(.cancel(job: "nope"), .unknownJob, mentioning: "nope")
    }

    @Test func unknownNode() throws {
        try self.expectRefused(.drain(node: "zz"), .unknownNode, mentioning: "no node has id zz")
    }

    @Test func resizeOutsideMinMax() throws {
        try self.expectRefused(.resize(job: "job", nodes: 4), .invalidSize, mentioning: "1 to 3")
        try self.expectRefused(.resize(job: "job", nodes: 0), .invalidSize, mentioning: "outside")
    }

    @Test func aSecondJobWithTheSameName() throws {
        try self.expectRefused(.submit(Simulation.spec(min: 1, max: 1)), .duplicateJob, mentioning: "already exists")
    }

    @Test func aNegativeBatch_orAMissingDataset() throws {
        var negative = Simulation.spec("other", min: 1, max: 1)
        negative.globalBatchSize = -64
        try self.expectRefused(.submit(negative), .invalidSpec, mentioning: "`batch_size`")
        var missing = Simulation.spec("other", min: 1, max: 1)
        missing.datasetPath = ""
        try self.expectRefused(.submit(missing), .invalidSpec, mentioning: "`dataset.path`")
        var inverted = Simulation.spec("other", min: 3, max: 2)
        inverted.maxNodes = 2
        try self.expectRefused(.submit(inverted), .invalidSpec, mentioning: "`nodes.max`")
    }
}

@Suite struct ShrinkTests {
    @Test func aShrink_keepsTheNodeThatHoldsTheState_beforeANewcomerThatHasNotTrained() throws {
        var sim = Simulation(settings: .init(settleWindow: .zero))
        sim.online("a", "h")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        sim.advance(by: .milliseconds(500), heartbeating: ["a", "h"])
        #expect(sim.members() == ["a", "h"])
        sim.completeStep()
        sim.completeStep()
        // n waits idle (the job is full); a fails, and n takes a's rank 0 beside h at rank 1.
        sim.online("n")
        sim.send(.nodeOffline(node: "a"))
        #expect(sim.members() == ["n", "h"])
        // Shrinking to one keeps h, the only member that trained, not n at rank 0.
        try sim.command(.resize(job: "job", nodes: 1))
        #expect(sim.members() == ["h"])
        #expect(sim.record().cursor == 2)
    }
}

@Suite("Resuming past the cursor")
struct RollForwardTests {
    /// The ids rank `rank` of `world` takes at `step` of `spec`.
    static func ids(_ spec: JobSpec, step: UInt64, rank: Int, world: Int) -> [Int] {
        let order = spec.order
        return Array(
            order.samples(
                step: step, rank: rank, worldSize: world,
                permutation: order.permutation(epoch: order.epoch(ofStep: step))))
    }

    /// a, b and c train steps 0 and 1 (committed); then a and b report steps 2 and 3, c reports
    /// step 2 only and dies: the cursor stays at 3 (c never reported step 3).
    func reportsBehind() throws -> (Simulation, JobSpec) {
        var sim = Simulation()
        let spec = Simulation.spec(min: 1, max: 3, batch: 12, samples: 100, steps: 20)
        try sim.command(.submit(spec))
        sim.online("a", "b", "c")
        sim.completeStep()
        sim.completeStep()
        for step in UInt64(2)...3 {
            for (rank, node) in ["a", "b", "c"].enumerated() where !(node == "c" && step == 3) {
                sim.send(
                    .stepCompleted(
                        node: node, job: "job", generation: 1, step: step,
                        samples: Self.ids(spec, step: step, rank: rank, world: 3)))
            }
        }
        #expect(sim.record().cursor == 3)
        sim.send(.nodeOffline(node: "c"))
        #expect(sim.record().generation == 2)
        #expect(sim.assignments["a"]?.resumeStep == 3, "the new generation is told the cursor")
        return (sim, spec)
    }

    @Test func aGenerationThatResumesAhead_commitsTheStepsBetween_withTheReportedIdsAndTheDeadMembersFromTheOrder()
        throws
    {
        var (sim, spec) = try self.reportsBehind()
        // a and b both held the state after step 4 (c completed step 3 and 4's all-reduces before
        // it died, its reports lost): they resume at 5.
        sim.send(
            .stepCompleted(
                node: "a", job: "job", generation: 1, step: 4, samples: Self.ids(spec, step: 4, rank: 0, world: 3)))
        let actions = sim.send(.resumed(node: "b", job: "job", generation: 2, step: 5))
        #expect(sim.record().cursor == 5)
        // Step 3: a's and b's reports, c's 4 ids from the order; step 4: a's report, b's and c's 8 ids from the order.
        #expect(actions.contains(.stepsRolledForward(job: "job", generation: 2, from: 3, to: 5, inferredIDs: 4 + 8)))
        let samples = try #require(sim.record().samples)
        #expect(samples.repeated == 0)
        #expect(samples.skipped(order: spec.order, cursor: 5) == 0)
        #expect(samples.seen == 5 * 12)
        // The other member's report of the same thing changes nothing; nor does a stale one.
        #expect(sim.send(.resumed(node: "a", job: "job", generation: 2, step: 5)).isEmpty)
        #expect(
            sim.send(.resumed(node: "a", job: "job", generation: 1, step: 7))
                == [.staleRefused(node: "a", job: "job", generation: 1, current: 2)])
        // Training goes on from 5, counted as usual.
        sim.completeStep()
        #expect(sim.record().cursor == 6)
        #expect(try #require(sim.record().samples).repeated == 0)
    }

    @Test func aResumeAtTheLastStep_finishesTheJob() throws {
        var (sim, spec) = try self.reportsBehind()
        _ = spec
        let actions = sim.send(.resumed(node: "a", job: "job", generation: 2, step: 20))
        #expect(sim.record().phase == .finished)
        #expect(actions.contains(.jobFinished(job: "job")))
        let samples = try #require(sim.record().samples)
        #expect(samples.repeated == 0 && samples.skipped(order: sim.record().spec.order, cursor: 20) == 0)
    }

    @Test func aResumeBehindOrAtTheCursor_orFromANonMember_movesNothing() throws {
        var (sim, _) = try self.reportsBehind()
        #expect(sim.send(.resumed(node: "a", job: "job", generation: 2, step: 3)).isEmpty)
        #expect(sim.send(.resumed(node: "a", job: "job", generation: 2, step: 2)).isEmpty)
        #expect(sim.send(.resumed(node: "c", job: "job", generation: 2, step: 6)).isEmpty, "c is not a member")
        #expect(sim.send(.resumed(node: "a", job: "job", generation: 2, step: 21)).isEmpty, "past the last step")
        #expect(sim.record().cursor == 3)
    }
}
