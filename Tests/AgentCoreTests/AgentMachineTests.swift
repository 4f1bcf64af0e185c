import JobModel
import Testing

@testable import AgentCore

/// Drives one `AgentMachine` with a manual clock, answering its work by hand.
struct Driver {
    var machine = AgentMachine(settings: .init(hashIntervalSteps: 2))
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

    /// Assigned, prepared (keeping `kept` copies), connected and synchronised at the resume step
    /// from rank 0's copy; returns the actions of the last event.
    @discardableResult
    mutating func startTraining(_ assignment: Assignment, kept: Int = 4) -> [AgentMachine.Action] {
        let generation = assignment.generation
        var actions = self.send(.assigned(assignment))
        if actions.contains(.start(.prepare(assignment))) {
            actions = self.send(.prepared(generation: generation, snapshotsKept: kept))
        }
        #expect(actions.contains(.start(.connect(assignment))))
        actions = self.send(.connected(generation: generation))
        let held = self.machine.snapshots[assignment.resumeStep]
        #expect(actions == [.start(.gather(generation: generation, step: assignment.resumeStep, held: held))])
        actions = self.send(
            .gathered(generation: generation, holders: (0..<assignment.worldSize).map { _ in held ?? 0 }))
        return self.send(.synchronised(generation: generation, step: assignment.resumeStep))
    }

    /// Completes the step in flight.
    @discardableResult
    mutating func completeStep() -> [AgentMachine.Action] {
        guard case .train(let generation, let step, _, _, _, _, _) = self.machine.inFlight else {
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
            if case .start(.train(_, let step, _, _, _, _, _)) = $0 { return step }
            return nil
        }
    }

    var reportedSteps: [UInt64] {
        self.compactMap {
            if case .report(let report) = $0 { return report.step }
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
    @Test func aFirstAssignment_preparesConnectsGathersAndBroadcastsFromTheNewestCopy() {
        var driver = Driver()
        let assignment = Driver.assignment(generation: 1, rank: 1, world: 3)
        #expect(driver.send(.assigned(assignment)) == [.start(.prepare(assignment))])
        #expect(driver.send(.prepared(generation: 1, snapshotsKept: 6)) == [.start(.connect(assignment))])
        #expect(driver.send(.connected(generation: 1)) == [.start(.gather(generation: 1, step: 0, held: 0))])
        // Ranks 1 and 2 hold copies from generation 4 and 7 (a newcomer holds none): rank 2's wins.
        let actions = driver.send(.gathered(generation: 1, holders: [nil, 4, 7]))
        #expect(actions == [.start(.broadcast(generation: 1, step: 0, root: 2, sourceGeneration: 7))])
        let trained = driver.send(.synchronised(generation: 1, step: 0))
        #expect(trained.trainedSteps == [0])
        #expect(driver.machine.snapshots == [0: 7])
    }

    @Test func amongEqualCopies_theLowestRankIsTheSource() {
        var driver = Driver()
        let assignment = Driver.assignment(generation: 1, world: 3)
        driver.send(.assigned(assignment))
        driver.send(.prepared(generation: 1, snapshotsKept: 4))
        driver.send(.connected(generation: 1))
        #expect(
            driver.send(.gathered(generation: 1, holders: [nil, 3, 3]))
                == [.start(.broadcast(generation: 1, step: 0, root: 1, sourceGeneration: 3))])
    }

    @Test func steps_stayWithinTheWindowAheadOfTheCursor_andReportEach() {
        var driver = Driver()
        // Four copies kept: a window of two steps ahead of the cursor.
        driver.startTraining(Driver.assignment(generation: 1), kept: 4)
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
        driver.startTraining(assignment, kept: 8)
        let order = plan.order
        var hashes: [Bool] = []
        for step in UInt64(0)..<3 {
            guard
                case .train(_, let trained, let samples, let batch, let hash, let evaluate, _) = driver.machine.inFlight
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

    @Test func aSurvivor_rollsBackToTheResumeStep_fromItsOwnCopy() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
        for _ in 0..<5 { driver.completeStep() }
        #expect(driver.machine.boundary == 5)
        // Generation 2 resumes at the cursor, step 3: the copy at 3 is this agent's (generation 1).
        let next = Driver.assignment(generation: 2, resume: 3)
        var actions = driver.send(.assigned(next))
        #expect(actions.contains(.abandon(generation: 1, reason: "generation 2 replaces it")))
        // The step in flight (5) returns failed; then the old data plane closes and the new one opens.
        actions = driver.send(.failed(generation: 1, reason: "aborted"))
        #expect(actions == [.disconnect(generation: 1), .start(.connect(next))], "the workload is kept: no prepare")
        actions = driver.send(.connected(generation: 2))
        #expect(actions == [.start(.gather(generation: 2, step: 3, held: 1))])
        actions = driver.send(.gathered(generation: 2, holders: [1, nil]))
        #expect(actions == [.start(.broadcast(generation: 2, step: 3, root: 0, sourceGeneration: 1))])
        actions = driver.send(.synchronised(generation: 2, step: 3))
        #expect(driver.machine.boundary == 3)
        #expect(driver.machine.snapshots.keys.sorted() == [0, 1, 2, 3], "copies after step 3 are dropped")
        #expect(actions.trainedSteps == [3])
    }

    @Test func whenNoMemberHoldsTheState_rankZeroLoadsTheCheckpoint_orTrainingStops() {
        var withCheckpoints = Driver()
        let plan = Driver.plan(checkpoints: "/ckpt")
        let resumed = Driver.assignment(generation: 1, resume: 4, plan: plan)
        withCheckpoints.send(.assigned(resumed))
        withCheckpoints.send(.prepared(generation: 1, snapshotsKept: 4))
        #expect(
            withCheckpoints.send(.connected(generation: 1)) == [.start(.gather(generation: 1, step: 4, held: nil))])
        #expect(
            withCheckpoints.send(.gathered(generation: 1, holders: [nil, nil]))
                == [.start(.loadCheckpoint(generation: 1, step: 4, directory: "/ckpt"))])
        #expect(withCheckpoints.send(.synchronised(generation: 1, step: 4)).trainedSteps == [4])
        #expect(withCheckpoints.machine.snapshots[4] == 1)

        var without = Driver()
        let bare = Driver.assignment(generation: 1, resume: 4)
        without.send(.assigned(bare))
        without.send(.prepared(generation: 1, snapshotsKept: 4))
        without.send(.connected(generation: 1))
        let actions = without.send(.gathered(generation: 1, holders: [nil, nil]))
        #expect(actions.count == 2)
        guard case .trainingStopped(1, let reason, false) = actions.first else {
            Issue.record("expected training to stop, got \(actions)")
            return
        }
        #expect(reason.contains("no member holds the training state at step 4"))
        #expect(actions.last == .disconnect(generation: 1))
    }

    @Test func checkpoints_areOfferedAtTheirInterval_andAfterTheLastStep() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1, plan: Driver.plan(steps: 6, checkpoints: "/c")), kept: 16)
        var offered: [UInt64] = []
        for _ in 0..<6 {
            for case .offerCheckpoint(_, let step) in driver.completeStep() { offered.append(step) }
        }
        #expect(offered == [4, 6])
    }

    @Test func aStop_waitsForTheStepInFlight_thenLeaves() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
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
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
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

    @Test func aNewerGeneration_cancelsTheGraceTimer_andIsLeftAtOnce() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
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
        driver.send(.prepared(generation: 1, snapshotsKept: 4))
        let actions = driver.send(.stopRequested(reason: "shutting down", grace: .seconds(5)))
        #expect(actions.contains(.abandon(generation: 1, reason: "shutting down")))
        #expect(actions.leaves == [Leave(job: "job", generation: 1, reason: "shutting down")])
        #expect(actions.contains(.stopped(reason: "shutting down")))
        #expect(driver.send(.connected(generation: 1)) == [.disconnect(generation: 1)])
    }

    @Test func anAbort_failsTheStep_andAStopAfterItLeavesNothing() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
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
        driver.startTraining(Driver.assignment(generation: 1), kept: 8)
        driver.send(.assigned(Driver.assignment(generation: 2, resume: 0)))
        let actions = driver.send(.stepDone(generation: 1, step: 0, loss: 1, hash: nil, testAccuracy: nil))
        #expect(actions.reportedSteps == [])
        #expect(driver.machine.snapshots[1] == 1, "the shell applied the step: its copy exists")
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
        driver.startTraining(Driver.assignment(generation: 1), kept: 4)
        driver.completeStep()
        let actions = driver.send(.workloadFailed(generation: 1, reason: "the worker exited with status 3"))
        #expect(
            actions.leaves == [
                Leave(
                    job: "job", generation: 1, reason: "the workload failed: the worker exited with status 3",
                    cannotRun: true)
            ])
        #expect(driver.machine.prepared == nil, "its workload is gone")
        #expect(driver.machine.snapshots.isEmpty, "and every copy of its state with it")
        #expect(driver.machine.inFlight == nil, "nothing more is started in that generation")
        // A later assignment (another generation, or another job) prepares the workload anew.
        let next = driver.send(.assigned(Driver.assignment(generation: 2)))
        #expect(next.contains(.start(.prepare(Driver.assignment(generation: 2)))))
    }

    @Test func anOldOrRepeatedAssignment_isIgnored() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 2), kept: 8)
        #expect(driver.send(.assigned(Driver.assignment(generation: 2))).isEmpty)
        #expect(driver.send(.assigned(Driver.assignment(generation: 1))).isEmpty)
        #expect(driver.machine.inFlight != nil)
    }

    @Test func aCopyIsEvicted_onlyWhenTheKeptCopiesAreFull_oldestFirst() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1), kept: 3)
        // Window 1: one step at a time, the cursor following each.
        var evicted: [UInt64?] = []
        for step in UInt64(0)..<4 {
            guard case .train(_, _, _, _, _, _, let evicting) = driver.machine.inFlight else { return }
            evicted.append(evicting)
            driver.completeStep()
            driver.send(.cursorMoved(job: "job", generation: 1, cursor: step + 1))
        }
        #expect(evicted == [nil, nil, 0, 1])
        #expect(driver.machine.snapshots.keys.sorted() == [2, 3, 4])
    }
}

@Suite struct FinishingTests {
    @Test func theAbortThatFollowsTheLastStep_doesNotAbandonWritingTheModel() {
        var driver = Driver()
        driver.startTraining(Driver.assignment(generation: 1, plan: Driver.plan(steps: 1)), kept: 4)
        driver.completeStep()
        #expect(driver.machine.inFlight == .saveModel(generation: 1))
        #expect(driver.send(.aborted(job: "job", generation: 1, reason: "finished")).isEmpty)
        // The job is over on this agent: its workload ends and its data plane closes.
        #expect(driver.send(.modelSaved(generation: 1)) == [.release, .disconnect(generation: 1)])
        #expect(driver.machine.progress == .finished)
    }
}
