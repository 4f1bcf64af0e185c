import JobModel

/// The agent's training life as a pure state machine: what to do next in each generation, which
/// member's training state the generation starts from, how far ahead of the coordinator's cursor
/// it may train, when to report, save and leave.
///
/// ## Events in, actions out
/// The shell feeds it what the coordinator said (`assigned`, `aborted`, `cursorMoved`), what the
/// operator asked (`stopRequested`), the passing of time (`tick`) and the results of the work it
/// was told to start (`prepared`, `connected`, `gathered`, `synchronised`, `stepDone`, `failed`...).
/// It answers with actions. Blocking work (building the workload, connecting the data plane, a
/// collective, a training step, writing the model) comes as `start(Work)`, one piece at a time:
/// the next starts only after the shell reported how the last one ended, so the shell needs one
/// worker thread and no locks of its own around the job's state. Time is read from `now`, never
/// from a clock, so tests drive it with a manual one.
///
/// ## A generation
/// 1. *Prepare*: build the workload, unless this agent already holds the job's training state
///    from an earlier generation (an equal `TrainingPlan`).
/// 2. *Connect* the generation's data plane.
/// 3. *Gather*: every member says whether it holds the job's training state, at which step
///    boundary, and which generation trained the step before it (`Held`). A member keeps only its
///    live state: no copy of it is taken per step.
/// 4. *Synchronise*: the generation resumes at the furthest boundary held at or past the
///    resume step the coordinator gave (its cursor), from the newest generation's state there,
///    held by the lowest such rank. A member applies a step only once its all-reduce completed, and
///    an all-reduce completes on one member only when every member contributed, so every step
///    before that boundary was trained whole: the survivors behind it and the newcomers get the
///    state by broadcast (members that hold it already keep theirs), and the steps between the
///    cursor and it are committed by the coordinator when the members say where they resumed
///    (`StepReport.resumedAt`). When no member holds a state at or past the resume step and the
///    job has checkpoints, rank 0 loads the committed checkpoint at that step instead.
/// 5. *Train* step after step, at most `Settings.stepsAhead` steps ahead of the coordinator's
///    cursor (the first step not completed by every member): flow control, so that an agent cut
///    off from the coordinator does not train on alone. Each step is reported; checkpoints are
///    offered when due; after the last step the model is saved.
///
/// A newer assignment or an abort ends the generation at once: the work in flight is abandoned
/// (its collectives fail) and the next generation starts when that work has returned.
///
/// ## Stopping
/// A drain or a shutdown asks to stop at the next step boundary: the step in flight (or the
/// synchronisation) finishes, then the agent leaves the generation it holds. A grace timer bounds
/// the wait: when it fires first, the work in flight is abandoned and the agent leaves anyway. A
/// newer generation cancels the timer: the agent leaves that one at once.
public struct AgentMachine: Sendable {
    /// Settings of the training life.
    public struct Settings: Sendable, Hashable {
        /// Steps between parameter hashes in the step reports (and at the last step).
        public var hashIntervalSteps: UInt64
        /// Steps past the coordinator's cursor this agent may train before it waits for the cursor.
        public var stepsAhead: UInt64

        /// Makes settings.
        public init(hashIntervalSteps: UInt64 = 50, stepsAhead: UInt64 = 64) {
            self.hashIntervalSteps = max(1, hashIntervalSteps)
            self.stepsAhead = max(1, stepsAhead)
        }
    }

    /// Blocking work for the shell's worker, one piece at a time. Each ends with one event that
    /// names its generation: the result, or `failed`.
    public enum Work: Sendable, Hashable {
        /// Build the job's workload and its initial training state (the state at step 0, trained by
        /// no generation: `Held(boundary: 0, generation: 0)`); ends with `prepared` or `cannotRun`.
        case prepare(Assignment)
        /// Connect this rank to the generation's members; ends with `connected`.
        case connect(Assignment)
        /// All-gather what each rank holds of the job's training state (its `Held`, nil when it
        /// holds none), for a generation that resumes at `step` or later; ends with `gathered`.
        case gather(generation: UInt64, step: UInt64)
        /// Broadcast the state at boundary `step` (trained by `sourceGeneration`) from `root`; the
        /// ranks that hold another state load it; ends with `synchronised`.
        case broadcast(generation: UInt64, step: UInt64, root: Int, sourceGeneration: UInt64)
        /// Rank 0 loads the committed checkpoint at `step` from `directory`, verifying it, and
        /// broadcasts it; every rank loads it; ends with `synchronised`.
        case loadCheckpoint(generation: UInt64, step: UInt64, directory: String)
        /// Train `step` on `samples` (this rank's slice of its global batch), all-reducing the
        /// gradients, and apply the update once the all-reduce completed; hash the parameters and
        /// evaluate when asked. Ends with `stepDone`.
        case train(generation: UInt64, step: UInt64, samples: [Int], batch: Int, hash: Bool, evaluate: Bool)
        /// Write the trained model; ends with `modelSaved`.
        case saveModel(generation: UInt64)

        /// The generation the work belongs to.
        public var generation: UInt64 {
            switch self {
            case .prepare(let assignment), .connect(let assignment): return assignment.generation
            case .gather(let generation, _), .broadcast(let generation, _, _, _),
                .loadCheckpoint(let generation, _, _), .train(let generation, _, _, _, _, _),
                .saveModel(let generation):
                return generation
            }
        }
    }

    /// What the shell must do.
    public enum Action: Sendable, Hashable {
        /// Start blocking work on the worker.
        case start(Work)
        /// Make the work in flight of `generation` fail fast (cancel its connect, fail its
        /// collectives): the generation is over, or the stop's grace ran out.
        case abandon(generation: UInt64, reason: String)
        /// Close `generation`'s data plane; no work of it is in flight.
        case disconnect(generation: UInt64)
        /// Send a step report to the coordinator.
        case report(StepReport)
        /// Hand a copy of the state at step boundary `step` (the live state's) to the checkpoint
        /// writer.
        case offerCheckpoint(generation: UInt64, step: UInt64)
        /// Tell the coordinator this member leaves.
        case leave(Leave)
        /// The stop asked for is done: the agent trains no more until a new assignment.
        case stopped(reason: String)
        /// Send `tick` at `at` (replacing the timer armed before).
        case armTimer(at: Duration)
        /// The armed timer is no longer needed.
        case cancelTimer
        /// The job is over on this agent (finished, or left at a stop): end its workload (a worker
        /// process exits) and drop its state. A later assignment prepares anew.
        case release
        /// Training in `generation` ended before its last step, for the log: `superseded` when a
        /// newer generation or an abort ended it (the next resumes), otherwise it failed.
        case trainingStopped(generation: UInt64, reason: String, superseded: Bool)
        /// Tell the coordinator that the work of the newest generation failed with nothing newer
        /// to explain it, so that it starts the next one (a job must not wait on a failure only
        /// its members saw: a peer they cannot reach, an RDMA set-up).
        case failure(GenerationFailure)
    }

    /// What happened.
    public enum Event: Sendable, Hashable {
        /// The coordinator assigned this agent to a (new) generation.
        case assigned(Assignment)
        /// The coordinator ended `generation` of `job`.
        case aborted(job: String, generation: UInt64, reason: String)
        /// The coordinator committed every step of `generation` before `cursor`.
        case cursorMoved(job: String, generation: UInt64, cursor: UInt64)
        /// Stop at the next step boundary and leave, abandoning the step in flight after `grace`
        /// (nil: wait for it however long it takes).
        case stopRequested(reason: String, grace: Duration?)
        /// Time passed (the armed timer fired).
        case tick
        /// `prepare` ended: the workload is built, at the initial state.
        case prepared(generation: UInt64)
        /// `prepare` ended: this node cannot run the job (`reason` says why).
        case cannotRun(generation: UInt64, reason: String)
        /// `connect` ended: the data plane is up.
        case connected(generation: UInt64)
        /// `gather` ended: by rank, what each member holds (nil: nothing).
        case gathered(generation: UInt64, holders: [Held?])
        /// `broadcast` or `loadCheckpoint` ended: every rank holds the state at `step`.
        case synchronised(generation: UInt64, step: UInt64)
        /// `train` ended: `step` is applied (mean loss over the global batch; hash and test
        /// accuracy when asked).
        case stepDone(generation: UInt64, step: UInt64, loss: Double, hash: UInt64?, testAccuracy: Double?)
        /// `saveModel` ended (saved or not; the shell logs which).
        case modelSaved(generation: UInt64)
        /// The work of `generation` failed (a dead peer, an abandoned collective, a checkpoint
        /// that does not verify...); `rdmaSetUp` when it was the set-up of its RDMA queue pairs.
        case failed(generation: UInt64, reason: String, rdmaSetUp: Bool = false)
        /// The workload itself failed during the work of `generation` (a worker process raised,
        /// was killed, exited or stopped answering), not the data plane: its state is gone. The
        /// agent leaves the job, saying why, so that the others go on without it at once.
        case workloadFailed(generation: UInt64, reason: String)
    }

    /// Where the newest generation stands on this agent.
    public enum Progress: Sendable, Hashable {
        /// Assigned; nothing done yet.
        case assigned
        /// Building the workload.
        case preparing
        /// The workload is ready; the data plane is next.
        case prepared
        /// Connecting the data plane.
        case connecting
        /// Connected; gathering who holds the state at the resume step is next.
        case connected
        /// Gathering who holds the state at the resume step.
        case gathering
        /// Loading the agreed state (broadcast or checkpoint).
        case synchronising
        /// Training; `next` is the next step to train.
        case training(next: UInt64)
        /// Writing the trained model after the last step.
        case savingModel
        /// Trained to the last step.
        case finished
        /// Left (stopped, drained) or refused (cannot run): trains no more in it.
        case left
        /// Its work failed (a dead peer, an abandoned step, no state to resume from): waits for the
        /// next generation; a stop still leaves it.
        case failed
        /// Aborted by the coordinator or replaced: waits for the next generation.
        case ended
    }

    /// What a member holds of a job's training state: its live state, at step boundary
    /// `boundary` (steps applied), the step before it trained by `generation` (0: the initial
    /// state). Members of one generation start from one state and apply the same updates, so equal
    /// `Held`s are equal states, bit for bit.
    public struct Held: Sendable, Hashable {
        public var boundary: UInt64
        public var generation: UInt64

        public init(boundary: UInt64, generation: UInt64) {
            self.boundary = boundary
            self.generation = generation
        }
    }

    /// A stop asked for and not yet done.
    struct StopRequest: Sendable, Hashable {
        var reason: String
        var deadline: Duration?
    }

    // MARK: - State

    /// Settings.
    public let settings: Settings
    /// The newest assignment.
    public private(set) var assignment: Assignment?
    /// Where it stands.
    public private(set) var progress: Progress = .ended
    /// The coordinator's cursor in the newest generation.
    public private(set) var cursor: UInt64 = 0
    /// The plan whose training state this agent holds (its workload is built), if any.
    public private(set) var prepared: TrainingPlan?
    /// Steps applied to the training state held (meaningful while `prepared` is set).
    public private(set) var boundary: UInt64 = 0
    /// The work in flight, if any.
    public private(set) var inFlight: Work?
    /// The generation whose data plane is open, if any.
    public private(set) var connected: UInt64?
    var stop: StopRequest?
    /// This epoch's permutation of the data set.
    var permutation: (epoch: UInt64, ids: [Int])?

    /// An agent that holds nothing.
    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// Steps ahead of the coordinator's cursor this agent may train.
    public var window: UInt64 { self.settings.stepsAhead }

    // MARK: - Events

    /// Handles `event` at time `now`; returns what the shell must do, in order.
    public mutating func on(_ event: Event, now: Duration) -> [Action] {
        var actions: [Action] = []
        switch event {
        case .assigned(let assignment):
            if let current = self.assignment, current.job == assignment.job, current.generation >= assignment.generation
            {
                break  // an old or repeated assignment
            }
            let reason = "generation \(assignment.generation) replaces it"
            if let work = self.inFlight, work != .saveModel(generation: work.generation) {
                // The model of a finished job is still written.
                actions.append(.abandon(generation: work.generation, reason: reason))
            }
            self.endGeneration(superseded: true, reason: reason, &actions)
            self.assignment = assignment
            self.progress = .assigned
            self.cursor = assignment.resumeStep
            if self.stop != nil {
                // The step the stop waited for belonged to the generation just replaced: leave the
                // new one at once.
                self.finishStop(&actions)
            }

        case .aborted(let job, let generation, let reason):
            guard let current = self.assignment, current.job == job, current.generation == generation else { break }
            // A finished job is aborted too: its members write their model, whatever comes.
            if self.progress == .savingModel || self.progress == .finished { break }
            if self.inFlight != nil { actions.append(.abandon(generation: generation, reason: reason)) }
            self.endGeneration(superseded: true, reason: reason, &actions)

        case .cursorMoved(let job, let generation, let cursor):
            guard let current = self.assignment, current.job == job, current.generation == generation,
                cursor > self.cursor
            else { break }
            self.cursor = cursor

        case .stopRequested(let reason, let grace):
            let earlier = self.stop?.deadline
            let deadline = [earlier, grace.map { now + $0 }].compactMap { $0 }.min()
            self.stop = StopRequest(reason: reason, deadline: deadline)
            if let deadline, deadline != earlier { actions.append(.armTimer(at: deadline)) }
            switch self.inFlight {
            case .prepare(let assignment), .connect(let assignment):
                // Nothing trained yet in this generation: leave now, without waiting to connect.
                actions.append(.abandon(generation: assignment.generation, reason: reason))
                self.finishStop(&actions)
            case .gather, .broadcast, .loadCheckpoint, .train, .saveModel, nil:
                break  // at the next boundary (nil: at once, in `proceed`)
            }

        case .tick:
            if let stop = self.stop, let deadline = stop.deadline, now >= deadline, let work = self.inFlight {
                actions.append(
                    .abandon(
                        generation: work.generation,
                        reason: "the grace period to stop (\(stop.reason)) ran out"))
            }

        case .prepared(let generation):
            guard case .prepare(let assignment) = self.take(generation: generation) else { break }
            self.prepared = assignment.training
            self.boundary = 0
            self.permutation = nil
            if self.isNewest(generation), self.progress == .preparing { self.progress = .prepared }

        case .cannotRun(let generation, let reason):
            guard case .prepare(let assignment) = self.take(generation: generation) else { break }
            self.prepared = nil
            guard self.isNewest(generation), self.progress == .preparing else { break }
            self.progress = .left
            actions.append(
                .leave(
                    Leave(
                        job: assignment.job, generation: generation, reason: "cannot run the workload: \(reason)",
                        cannotRun: true)))

        case .connected(let generation):
            guard case .connect = self.take(generation: generation) else { break }
            self.connected = generation
            if self.isNewest(generation), self.progress == .connecting { self.progress = .connected }

        case .gathered(let generation, let holders):
            guard case .gather = self.take(generation: generation), let current = self.assignment,
                self.isNewest(generation), self.progress == .gathering
            else { break }
            self.synchronise(current, holders: holders, &actions)

        case .synchronised(let generation, let step):
            // The shell holds the state at `step`, whatever became of the generation since.
            switch self.take(generation: generation) {
            case .broadcast, .loadCheckpoint: break
            case .prepare, .connect, .gather, .train, .saveModel, nil: return self.proceeding(&actions)
            }
            self.boundary = step
            if let current = self.assignment, self.isNewest(generation), self.progress == .synchronising {
                self.resume(current, at: step, &actions)
            }

        case .stepDone(let generation, let step, let loss, let hash, let testAccuracy):
            guard case .train(_, _, let samples, _, _, _) = self.take(generation: generation) else {
                break
            }
            // The shell applied the step, whatever became of the generation.
            self.boundary = step + 1
            guard let current = self.assignment, self.isNewest(generation), self.progress == .training(next: step)
            else { break }
            actions.append(
                .report(
                    StepReport(
                        job: current.job, generation: generation, step: step, loss: loss, sampleIDs: samples,
                        parameterHash: hash, testAccuracy: testAccuracy)))
            if current.training.checkpointDue(atBoundary: step + 1) {
                actions.append(.offerCheckpoint(generation: generation, step: step + 1))
            }
            self.progress = .training(next: step + 1)

        case .modelSaved(let generation):
            guard case .saveModel = self.take(generation: generation) else { break }
            if self.isNewest(generation), self.progress == .savingModel {
                self.progress = .finished
                self.release(&actions)
            }

        case .workloadFailed(let generation, let reason):
            guard let work = self.take(generation: generation) else { break }
            // The workload and its state are gone: a later assignment prepares anew.
            self.prepared = nil
            self.boundary = 0
            guard self.isNewest(generation), let assignment = self.assignment else { break }
            switch self.progress {
            case .preparing, .connecting, .gathering, .synchronising, .training, .savingModel:
                self.progress = .left
                actions.append(.trainingStopped(generation: generation, reason: reason, superseded: false))
                actions.append(
                    .leave(
                        Leave(
                            job: assignment.job, generation: work.generation,
                            reason: "the workload failed: \(reason)", cannotRun: true)))
            case .assigned, .prepared, .connected, .finished, .left, .failed, .ended:
                break
            }

        case .failed(let generation, let reason, let rdmaSetUp):
            guard self.take(generation: generation) != nil, self.isNewest(generation) else { break }
            switch self.progress {
            case .preparing, .connecting, .gathering, .synchronising, .training, .savingModel:
                self.progress = .failed
                actions.append(.trainingStopped(generation: generation, reason: reason, superseded: false))
                // Not when stopping: the leave that follows says why this member goes.
                if let job = self.assignment?.job, self.stop == nil {
                    actions.append(
                        .failure(
                            GenerationFailure(job: job, generation: generation, reason: reason, rdmaSetUp: rdmaSetUp))
                    )
                }
            case .assigned, .prepared, .connected, .finished, .left, .failed, .ended:
                break
            }
        }
        return self.proceeding(&actions)
    }

    /// Starts what comes next and returns every action of the event.
    mutating func proceeding(_ actions: inout [Action]) -> [Action] {
        self.proceed(&actions)
        return actions
    }

    // MARK: - Deciding

    /// Starts what comes next, when no work is in flight.
    mutating func proceed(_ actions: inout [Action]) {
        guard self.inFlight == nil else { return }
        self.closeDataPlaneIfDone(&actions)
        if self.stop != nil { self.finishStop(&actions) }
        if let current = self.assignment {
            switch self.progress {
            case .assigned:
                if self.prepared == current.training {
                    self.progress = .connecting
                    self.begin(.connect(current), &actions)
                } else {
                    self.progress = .preparing
                    self.begin(.prepare(current), &actions)
                }
            case .prepared:
                self.progress = .connecting
                self.begin(.connect(current), &actions)
            case .connected:
                self.progress = .gathering
                self.begin(.gather(generation: current.generation, step: current.resumeStep), &actions)
            case .training(let next):
                if next >= current.training.steps {
                    self.progress = .savingModel
                    self.begin(.saveModel(generation: current.generation), &actions)
                } else if next < self.cursor + self.window {
                    self.begin(self.trainStep(next, current), &actions)
                }
            case .preparing, .connecting, .gathering, .synchronising, .savingModel, .finished, .left, .failed, .ended:
                break
            }
        }
        self.closeDataPlaneIfDone(&actions)
    }

    /// Closes the open data plane when no work is in flight and its generation no longer trains.
    mutating func closeDataPlaneIfDone(_ actions: inout [Action]) {
        if let open = self.connected, self.inFlight == nil, !self.needsDataPlane(generation: open) {
            actions.append(.disconnect(generation: open))
            self.connected = nil
        }
    }

    /// Chooses where the generation's training state comes from: the furthest boundary held at
    /// or past the resume step; among equals, the newest generation's state, from the lowest rank.
    /// Every rank gathered the same `holders`, so every rank chooses the same.
    mutating func synchronise(_ current: Assignment, holders: [Held?], _ actions: inout [Action]) {
        let step = current.resumeStep
        let usable = holders.enumerated().compactMap { rank, held in
            held.flatMap { $0.boundary >= step && $0.boundary <= current.training.steps ? (rank, $0) : nil }
        }
        if let (root, source) = usable.max(by: {
            ($0.1.boundary, $0.1.generation, -$0.0) < ($1.1.boundary, $1.1.generation, -$1.0)
        }) {
            if holders.allSatisfy({ $0 == source }) {
                // Every member holds that state already (the survivors of a failure, with no
                // newcomer): nothing to send.
                self.resume(current, at: source.boundary, &actions)
                return
            }
            self.progress = .synchronising
            self.begin(
                .broadcast(
                    generation: current.generation, step: source.boundary, root: root,
                    sourceGeneration: source.generation),
                &actions)
        } else if let directory = current.training.checkpointDirectory {
            self.progress = .synchronising
            self.begin(.loadCheckpoint(generation: current.generation, step: step, directory: directory), &actions)
        } else {
            self.progress = .failed
            actions.append(
                .trainingStopped(
                    generation: current.generation,
                    reason:
                        "no member holds the training state at step \(step) or later (they were restarted, or every member that held it is gone); the job can resume only from a checkpoint",
                    superseded: false))
        }
    }

    /// Trains on from boundary `step`, which every member now holds; when that is past the
    /// coordinator's cursor, says so (the steps between were trained by an earlier generation).
    mutating func resume(_ current: Assignment, at step: UInt64, _ actions: inout [Action]) {
        self.boundary = step
        self.progress = .training(next: step)
        if step > current.resumeStep {
            actions.append(
                .report(
                    StepReport(
                        job: current.job, generation: current.generation, step: step - 1, loss: .nan, sampleIDs: [],
                        resumedAt: step)))
        }
    }

    /// The work that trains `step`.
    mutating func trainStep(_ step: UInt64, _ current: Assignment) -> Work {
        let order = current.training.order
        let epoch = order.epoch(ofStep: step)
        if self.permutation?.epoch != epoch {
            self.permutation = (epoch, order.permutation(epoch: epoch))
        }
        let samples = order.samples(
            step: step, rank: current.rank, worldSize: current.worldSize, permutation: self.permutation!.ids)
        let last = step + 1 == current.training.steps
        return .train(
            generation: current.generation,
            step: step,
            samples: Array(samples),
            batch: order.batchRange(ofStep: step).count,
            hash: last || (step + 1) % self.settings.hashIntervalSteps == 0,
            evaluate: last && current.rank == 0
        )
    }

    mutating func begin(_ work: Work, _ actions: inout [Action]) {
        self.inFlight = work
        actions.append(.start(work))
    }

    /// Takes the work in flight when `generation`'s result ends it; nil for a result that belongs
    /// to no work in flight (it is ignored).
    mutating func take(generation: UInt64) -> Work? {
        guard let work = self.inFlight, work.generation == generation else { return nil }
        self.inFlight = nil
        return work
    }

    /// Whether `generation` is the newest assignment's.
    func isNewest(_ generation: UInt64) -> Bool {
        self.assignment?.generation == generation
    }

    /// Ends the newest generation (replaced or aborted).
    mutating func endGeneration(superseded: Bool, reason: String, _ actions: inout [Action]) {
        guard let current = self.assignment else { return }
        switch self.progress {
        case .preparing, .connecting, .connected, .gathering, .synchronising, .training:
            actions.append(.trainingStopped(generation: current.generation, reason: reason, superseded: superseded))
            self.progress = .ended
        case .assigned, .prepared, .savingModel, .failed:
            self.progress = .ended
        case .finished, .left, .ended:
            break
        }
    }

    /// Leaves the generation held (unless it ended or was left already) and reports the stop done.
    mutating func finishStop(_ actions: inout [Action]) {
        guard let stop = self.stop else { return }
        self.stop = nil
        if let current = self.assignment {
            switch self.progress {
            case .assigned, .preparing, .prepared, .connecting, .connected, .gathering, .synchronising, .training,
                .savingModel, .finished, .failed:
                actions.append(.leave(Leave(job: current.job, generation: current.generation, reason: stop.reason)))
                self.progress = .left
            case .left, .ended:
                break
            }
        }
        self.release(&actions)
        if stop.deadline != nil { actions.append(.cancelTimer) }
        actions.append(.stopped(reason: stop.reason))
    }

    /// Ends the prepared workload, if any (see `Action.release`).
    mutating func release(_ actions: inout [Action]) {
        guard self.prepared != nil else { return }
        self.prepared = nil
        self.boundary = 0
        actions.append(.release)
    }

    /// Whether `generation` is the newest and its data plane is still needed.
    func needsDataPlane(generation: UInt64) -> Bool {
        guard self.isNewest(generation) else { return false }
        switch self.progress {
        case .connecting, .connected, .gathering, .synchronising, .training, .savingModel: return true
        case .assigned, .preparing, .prepared, .finished, .left, .failed, .ended: return false
        }
    }
}
