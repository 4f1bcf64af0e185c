import JobModel
import Testing

@testable import AgentCore

/// Drives one `AgentMachine` with a manual clock, answering its work by hand.
struct Driver {
    var machine = AgentMachine(settings: .init(hashIntervalSteps: 2, stepsAhead: 8))
    var now: Duration = .zero

    @discardableResult
    mutating func send(_ event: AgentMachine.Event) -> [AgentMachine.Action] {
        self.machine.on(event, now: self.now)
    }

    static func plan(steps: UInt64 = 10, checkpoints: String? = nil) -> TrainingPlan {
        TrainingPlan(
            workloadKind: "synthetic", workloadParameters: "", datasetPath: "/data", datasetSamples: 40,
            globalBatchSize: 8, steps: steps, seed: 3, checkpointDirectory: checkpoints,
            checkpointIntervalSteps: checkpoints == nil ? 0 : 4)
    }

    static func assignment(
        generation: UInt64, rank: Int = 0, world: Int = 2, resume: UInt64 = 0, plan: TrainingPlan = Self.plan()
    ) -> Assignment {
        Assignment(
            job: "job", generation: generation, rank: rank,
            members: (0..<world).map { Member(node: "n\($0)", rank: $0, dataPlaneAddresses: ["n\($0):1"]) },
            resumeStep: resume, training: plan, dataPlaneSecret: [1, 2, 3])
    }

    /// A machine that trains at most `stepsAhead` steps past the cursor.
    init(stepsAhead: UInt64 = 8) {
        self.machine = AgentMachine(settings: .init(hashIntervalSteps: 2, stepsAhead: stepsAhead))
    }

    static func held(_ boundary: UInt64, _ generation: UInt64) -> AgentMachine.Held {
        AgentMachine.Held(boundary: boundary, generation: generation)
    }

    /// Assigned, prepared, connected, and resumed at the resume step with every member holding
    /// the initial state; returns the actions of the last event.
    @discardableResult
    mutating func startTraining(_ assignment: Assignment) -> [AgentMachine.Action] {
        let generation = assignment.generation
        var actions = self.send(.assigned(assignment))
        if actions.contains(.start(.prepare(assignment))) {
            actions = self.send(.prepared(generation: generation))
        }
        #expect(actions.contains(.start(.connect(assignment))))
        actions = self.send(.connected(generation: generation))
        #expect(actions == [.start(.gather(generation: generation, step: assignment.resumeStep))])
        // Every member holds the same state: nothing is broadcast.
        let held = Self.held(assignment.resumeStep, 0)
        return self.send(.gathered(generation: generation, holders: (0..<assignment.worldSize).map { _ in held }))
    }

    /// Completes the step in flight.
    @discardableResult
    mutating func completeStep() -> [AgentMachine.Action] {
        guard case .train(let generation, let step, _, _, _, _) = self.machine.inFlight else {
            Issue.record("no step in flight: \(String(describing: self.machine.inFlight))")
            return []
        }
        return self.send(.stepDone(generation: generation, step: step, loss: 1, hash: nil, testAccuracy: nil))
    }
}

extension [AgentMachine.Action] {
    /// The steps these actions start.
    var trainedSteps: [UInt64] {
        self.compactMap {
            if case .start(.train(_, let step, _, _, _, _)) = $0 { return step }
            return nil
        }
    }

    var reportedSteps: [UInt64] {
        self.compactMap {
            if case .report(let report) = $0, report.resumedAt == nil { return report.step }
            return nil
        }
    }

    /// Where the reports say the generation resumed.
    var resumedAt: [UInt64] {
        self.compactMap {
            if case .report(let report) = $0 { return report.resumedAt }
            return nil
        }
    }

    var leaves: [Leave] {
        self.compactMap {
            if case .leave(let leave) = $0 { return leave }
            return nil
        }
    }
}

@Suite struct AgentMachineTests {
    @Test func aFirstAssignment_preparesConnectsGathers_andANewcomerGetsTheStateByBroadcast() {
        var driver = Driver()
        let assignment = Driver.assignment(generation: 1, rank: 1, world: 3)
        #expect(driver.send(.assigned(assignment)) == [.start(.prepare(assignment))])
        #expect(driver.send(.prepared(generation: 1)) == [.start(.connect(assignment))])
        #expect(driver.send(.connected(generation: 1)) == [.start(.gather(generation: 1, step: 0))])
        // Rank 0 is a newcomer that holds nothing; ranks 1 and 2 hold the initial state.
        let actions = driver.send(.gathered(generation: 1, holders: [nil, Driver.held(0, 0), Driver.held(0, 0)]))
        #expect(actions == [.start(.broadcast(generation: 1, step: 0, root: 1, sourceGeneration: 0))])
        let trained = driver.send(.synchronised(generation: 1, step: 0))
        #expect(trained.trainedSteps == [0])
        #expect(trained.resumedAt == [], "it resumed at the cursor: nothing to roll forward")
        #expect(driver.machine.boundary == 0)
    }

    @Test func theFurthestBoundary_isTheSource_thenTheNewestGeneration_thenTheLowestRank() {
        func source(_ holders: [AgentMachine.Held?], resume: UInt64 = 4) -> [AgentMachine.Action] {
            var driver = Driver()
            let assignment = Driver.assignment(generation: 9, world: holders.count, resume: resume)
            driver.send(.assigned(assignment))
            driver.send(.prepared(generation: 9))
            driver.send(.connected(generation: 9))
            return driver.send(.gathered(generation: 9, holders: holders))
        }
        // Furthest boundary first, whatever the generations.
        #expect(
            source([Driver.held(5, 8), Driver.held(6, 3), nil])
                == [.start(.broadcast(generation: 9, step: 6, root: 1, sourceGeneration: 3))])
        // Among equal boundaries, the newest generation's state; among equals, the lowest rank.
        #expect(
            source([Driver.held(6, 3), Driver.held(6, 7), Driver.held(6, 7)])
                == [.start(.broadcast(generation: 9, step: 6, root: 1, sourceGeneration: 7))])
        // A state behind the resume step (the cursor: committed progress) is never used.
        #expect(
            source([Driver.held(9, 2), Driver.held(4, 5)], resume: 10).first.map {
                if case .trainingStopped = $0 { return true }
                return false
            } == true)
    }

    @Test func survivorsThatHoldTheSameState_resumeWithoutABroadcast_andSayWhere() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        for _ in 0..<5 { driver.completeStep() }
        #expect(driver.machine.boundary == 5)
        // Generation 2 is told the cursor, step 3 (the reports of steps 3 and 4 had not arrived).
        let next = Driver.assignment(generation: 2, resume: 3)
        var actions = driver.send(.assigned(next))
        #expect(actions.contains(.abandon(generation: 1, reason: "generation 2 replaces it")))
        // The step in flight (5) returns failed; then the old data plane closes and the new one opens.
        actions = driver.send(.failed(generation: 1, reason: "aborted"))
        #expect(actions == [.disconnect(generation: 1), .start(.connect(next))], "the workload is kept: no prepare")
        actions = driver.send(.connected(generation: 2))
        #expect(actions == [.start(.gather(generation: 2, step: 3))])
        actions = driver.send(.gathered(generation: 2, holders: [Driver.held(5, 1), Driver.held(5, 1)]))
        #expect(actions.resumedAt == [5], "steps 3 and 4 were trained whole: the coordinator commits them")
        #expect(actions.trainedSteps == [5], "no step is redone, and nothing is sent")
        #expect(driver.machine.boundary == 5)
    }

    @Test func aSurvivorBehindTheOthers_catchesUpByBroadcast() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1, rank: 1))
        for _ in 0..<4 { driver.completeStep() }
        // Step 4 completed on rank 0 but not here (its all-reduce failed on this side at the end).
        driver.send(.assigned(Driver.assignment(generation: 2, rank: 1, resume: 2)))
        driver.send(.failed(generation: 1, reason: "peer gone"))
        driver.send(.connected(generation: 2))
        let actions = driver.send(.gathered(generation: 2, holders: [Driver.held(5, 1), Driver.held(4, 1)]))
        #expect(actions == [.start(.broadcast(generation: 2, step: 5, root: 0, sourceGeneration: 1))])
        let trained = driver.send(.synchronised(generation: 2, step: 5))
        #expect(trained.resumedAt == [5])
        #expect(trained.trainedSteps == [5])
        #expect(driver.machine.boundary == 5)
    }

    @Test func aResumeAtTheLastBoundary_saysSo_andWritesTheModel() {
        var driver = Driver()
        let plan = Driver.plan(steps: 6)
        driver.send(.assigned(Driver.assignment(generation: 3, resume: 4, plan: plan)))
        driver.send(.prepared(generation: 3))
        driver.send(.connected(generation: 3))
        let actions = driver.send(.gathered(generation: 3, holders: [nil, Driver.held(6, 2)]))
        #expect(actions == [.start(.broadcast(generation: 3, step: 6, root: 1, sourceGeneration: 2))])
        let done = driver.send(.synchronised(generation: 3, step: 6))
        #expect(done.resumedAt == [6], "the coordinator learns the job is trained")
        #expect(driver.machine.inFlight == .saveModel(generation: 3))
    }

    @Test func steps_stayWithinTheStepsAheadOfTheCursor_andReportEach() {
        var driver = Driver(stepsAhead: 2)
        driver.startTraining(Driver.assignment(generation: 1))
        #expect(driver.machine.window == 2)
        let first = driver.completeStep()
        #expect(first.reportedSteps == [0])
        #expect(first.trainedSteps == [1])
        let second = driver.completeStep()
        #expect(second.reportedSteps == [1])
        #expect(second.trainedSteps == [], "step 2 is two ahead of the cursor at 0")
        #expect(driver.machine.inFlight == nil)
        // A cursor of another generation moves nothing.
        #expect(driver.send(.cursorMoved(job: "job", generation: 9, cursor: 2)).trainedSteps == [])
        #expect(driver.send(.cursorMoved(job: "job", generation: 1, cursor: 1)).trainedSteps == [2])
    }

    @Test func eachStep_trainsThisRanksSliceOfTheDataOrder_hashingEveryIntervalAndAtTheLast() {
        var driver = Driver()
        let plan = Driver.plan(steps: 3)
        let assignment = Driver.assignment(generation: 1, rank: 1, world: 2, plan: plan)
        driver.startTraining(assignment)
        let order = plan.order
        var hashes: [Bool] = []
        for step in UInt64(0)..<3 {
            guard
                case .train(_, let trained, let samples, let batch, let hash, let evaluate) = driver.machine.inFlight
            else {
                Issue.record("step \(step) not in flight")
                return
            }
            #expect(trained == step)
            let ids = order.samples(
                step: step, rank: 1, worldSize: 2, permutation: order.permutation(epoch: order.epoch(ofStep: step)))
            #expect(samples == Array(ids))
            #expect(batch == 8)
            #expect(!evaluate, "only rank 0 evaluates")
            hashes.append(hash)
            driver.completeStep()
        }
        #expect(hashes == [false, true, true], "every 2 steps, and at the last")
        #expect(driver.machine.inFlight == .saveModel(generation: 1))
        driver.send(.modelSaved(generation: 1))
        #expect(driver.machine.progress == .finished)
    }

    @Test func whenNoMemberHoldsTheState_rankZeroLoadsTheCheckpoint_orTrainingStops() {
        var withCheckpoints = Driver()
        let plan = Driver.plan(checkpoints: "/ckpt")
        let resumed = Driver.assignment(generation: 1, resume: 4, plan: plan)
        withCheckpoints.send(.assigned(resumed))
        withCheckpoints.send(.prepared(generation: 1))
        #expect(withCheckpoints.send(.connected(generation: 1)) == [.start(.gather(generation: 1, step: 4))])
        // Both hold the initial state only, behind the resume step.
        #expect(
            withCheckpoints.send(.gathered(generation: 1, holders: [Driver.held(0, 0), nil]))
                == [.start(.loadCheckpoint(generation: 1, step: 4, directory: "/ckpt"))])
        let loaded = withCheckpoints.send(.synchronised(generation: 1, step: 4))
        #expect(loaded.trainedSteps == [4])
        #expect(loaded.resumedAt == [])
        #expect(withCheckpoints.machine.boundary == 4)

        var without = Driver()
        let bare = Driver.assignment(generation: 1, resume: 4)
        without.send(.assigned(bare))
        without.send(.prepared(generation: 1))
        without.send(.connected(generation: 1))
        let actions = without.send(.gathered(generation: 1, holders: [nil, nil]))
        #expect(actions.count == 2)
        guard case .trainingStopped(1, let reason, false) = actions.first else {
            Issue.record("expected training to stop, got \(actions)")
            return
        }
        #expect(reason.contains("no member holds the training state at step 4 or later"))
        #expect(actions.last == .disconnect(generation: 1))
    }

    @Test func checkpoints_areOfferedAtTheirInterval_andAfterTheLastStep() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1, plan: Driver.plan(steps: 6, checkpoints: "/c")))
        var offered: [UInt64] = []
        for _ in 0..<6 {
            for case .offerCheckpoint(_, let step) in driver.completeStep() { offered.append(step) }
        }
        #expect(offered == [4, 6])
    }

    @Test func aStop_waitsForTheStepInFlight_thenLeaves() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        let asked = driver.send(.stopRequested(reason: "drained", grace: nil))
        #expect(asked.isEmpty, "the step in flight finishes first")
        let actions = driver.completeStep()
        #expect(actions.reportedSteps == [0], "the step's report goes before the leave")
        #expect(actions.leaves == [Leave(job: "job", generation: 1, reason: "drained")])
        #expect(actions.last == .disconnect(generation: 1))
        #expect(actions.contains(.stopped(reason: "drained")))
        #expect(actions.trainedSteps == [])
        // The cursor moving later starts nothing.
        #expect(driver.send(.cursorMoved(job: "job", generation: 1, cursor: 1)).isEmpty)
    }

    @Test func theGraceTimer_abandonsAStepThatDoesNotFinish() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        driver.now = .seconds(10)
        #expect(
            driver.send(.stopRequested(reason: "shutting down", grace: .seconds(30))) == [.armTimer(at: .seconds(40))])
        driver.now = .seconds(39)
        #expect(driver.send(.tick).isEmpty)
        driver.now = .seconds(40)
        #expect(
            driver.send(.tick)
                == [.abandon(generation: 1, reason: "the grace period to stop (shutting down) ran out")])
        let actions = driver.send(.failed(generation: 1, reason: "aborted"))
        #expect(actions.leaves == [Leave(job: "job", generation: 1, reason: "shutting down")])
        #expect(actions.contains(.cancelTimer))
        #expect(actions.contains(.stopped(reason: "shutting down")))
    }

    @Test func aFailureThatNothingNewerExplains_isToldToTheCoordinator_andASupersededOneIsNot() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        driver.completeStep()
        let failed = driver.send(.failed(generation: 1, reason: "all-reduce: deadline exceeded (rank 1)"))
        #expect(
            failed.contains(
                .failure(
                    GenerationFailure(job: "job", generation: 1, reason: "all-reduce: deadline exceeded (rank 1)"))),
            "\(failed)")
        // An RDMA set-up that fails says so.
        var setUp = Driver()
        let assignment = Driver.assignment(generation: 1)
        setUp.send(.assigned(assignment))
        setUp.send(.prepared(generation: 1))
        let refused = setUp.send(.failed(generation: 1, reason: "rxe0: no device", rdmaSetUp: true))
        #expect(
            refused.contains(
                .failure(GenerationFailure(job: "job", generation: 1, reason: "rxe0: no device", rdmaSetUp: true))))
        // Ended by a newer generation: nothing to tell.
        var superseded = Driver()
        superseded.startTraining(Driver.assignment(generation: 1))
        superseded.send(.assigned(Driver.assignment(generation: 2, resume: 0)))
        let ended = superseded.send(.failed(generation: 1, reason: "aborted"))
        #expect(!ended.contains { if case .failure = $0 { return true } else { return false } }, "\(ended)")
    }

    @Test func aNewerGeneration_cancelsTheGraceTimer_andIsLeftAtOnce() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        driver.send(.stopRequested(reason: "drained", grace: .seconds(30)))
        let actions = driver.send(.assigned(Driver.assignment(generation: 2, resume: 0)))
        #expect(actions.first == .abandon(generation: 1, reason: "generation 2 replaces it"))
        #expect(actions.leaves == [Leave(job: "job", generation: 2, reason: "drained")])
        #expect(actions.contains(.cancelTimer))
        #expect(actions.contains(.stopped(reason: "drained")))
        // The old step returns; nothing trains in generation 2.
        #expect(driver.send(.failed(generation: 1, reason: "aborted")) == [.disconnect(generation: 1)])
        #expect(driver.machine.progress == .left)
    }

    @Test func aStopWhileConnecting_leavesAtOnce() {
        var driver = Driver()
        let assignment = Driver.assignment(generation: 1)
        driver.send(.assigned(assignment))
        driver.send(.prepared(generation: 1))
        let actions = driver.send(.stopRequested(reason: "shutting down", grace: .seconds(5)))
        #expect(actions.contains(.abandon(generation: 1, reason: "shutting down")))
        #expect(actions.leaves == [Leave(job: "job", generation: 1, reason: "shutting down")])
        #expect(actions.contains(.stopped(reason: "shutting down")))
        #expect(driver.send(.connected(generation: 1)) == [.disconnect(generation: 1)])
    }

    @Test func anAbort_failsTheStep_andAStopAfterItLeavesNothing() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        let aborted = driver.send(.aborted(job: "job", generation: 1, reason: "lease expired"))
        #expect(aborted.first == .abandon(generation: 1, reason: "lease expired"))
        #expect(driver.send(.failed(generation: 1, reason: "aborted")) == [.disconnect(generation: 1)])
        // Nothing left to leave; its workload ends (a later assignment prepares anew).
        #expect(
            driver.send(.stopRequested(reason: "drained", grace: nil)) == [.release, .stopped(reason: "drained")])
        #expect(driver.machine.prepared == nil)
    }

    @Test func aStepThatReturnsAfterItsGenerationEnded_isKeptButNotReported() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        driver.send(.assigned(Driver.assignment(generation: 2, resume: 0)))
        let actions = driver.send(.stepDone(generation: 1, step: 0, loss: 1, hash: nil, testAccuracy: nil))
        #expect(actions.reportedSteps == [])
        #expect(driver.machine.boundary == 1, "the shell applied the step: the state held is after it")
        #expect(actions == [.disconnect(generation: 1), .start(.connect(Driver.assignment(generation: 2)))])
    }

    @Test func aWorkloadThatCannotRunHere_leavesSayingSo() {
        var driver = Driver()
        driver.send(.assigned(Driver.assignment(generation: 1)))
        let actions = driver.send(.cannotRun(generation: 1, reason: "no such data set"))
        #expect(
            actions.leaves == [
                Leave(job: "job", generation: 1, reason: "cannot run the workload: no such data set", cannotRun: true)
            ])
        #expect(driver.machine.prepared == nil)
    }

    @Test func aWorkloadThatFailsMidStep_leavesTheJobSayingWhy_andIsPreparedAnewNextTime() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1))
        driver.completeStep()
        let actions = driver.send(.workloadFailed(generation: 1, reason: "the worker exited with status 3"))
        #expect(
            actions.leaves == [
                Leave(
                    job: "job", generation: 1, reason: "the workload failed: the worker exited with status 3",
                    cannotRun: true)
            ])
        #expect(driver.machine.prepared == nil, "its workload is gone")
        #expect(driver.machine.boundary == 0, "and its state with it")
        #expect(driver.machine.inFlight == nil, "nothing more is started in that generation")
        // A later assignment (another generation, or another job) prepares the workload anew.
        let next = driver.send(.assigned(Driver.assignment(generation: 2)))
        #expect(next.contains(.start(.prepare(Driver.assignment(generation: 2)))))
    }

    @Test func anOldOrRepeatedAssignment_isIgnored() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 2))
        #expect(driver.send(.assigned(Driver.assignment(generation: 2))).isEmpty)
        #expect(driver.send(.assigned(Driver.assignment(generation: 1))).isEmpty)
        #expect(driver.machine.inFlight != nil)
    }
}

@Suite struct FinishingTests {
    @Test func theAbortThatFollowsTheLastStep_doesNotAbandonWritingTheModel() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1, plan: Driver.plan(steps: 1)))
        driver.completeStep()
        #expect(driver.machine.inFlight == .saveModel(generation: 1))
        #expect(driver.send(.aborted(job: "job", generation: 1, reason: "finished")).isEmpty)
        // The job is over on this agent: its workload ends and its data plane closes.
        #expect(driver.send(.modelSaved(generation: 1)) == [.release, .disconnect(generation: 1)])
        #expect(driver.machine.progress == .finished)
    }
}
