import AgentCore
import ControlPlane
import Foundation
import JobModel
import Logging
import Synchronization

/// The shell around the agent's core (`AgentMachine`): it feeds the core what the control session
/// and the operator say, and carries out the actions the core returns. Blocking work (building
/// the workload, connecting, collectives, training steps) runs in order on the trainer's thread
/// through a `StepExecutor`, never on the cooperative pool that serves the control session; step
/// reports and leaves go to the outbox; the core's timer is a dispatch timer that sends `tick`.
///
/// Every decision (which member is the source of the state, roll back or load a checkpoint, the
/// cursor window, stop at a step boundary, leave, the grace period) is the core's; see
/// `AgentMachine`.
final class Trainer: Sendable {
    /// The shell's state: the core and the queue of work for the trainer's thread.
    struct State {
        var machine: AgentMachine
        /// Tasks for the trainer's thread, in the order the core asked for them.
        var queue: [Chore] = []
        /// The work the trainer's thread is doing, and whether the core abandoned it.
        var running: (work: AgentMachine.Work, abandoned: Bool)?
        /// Called when the stop asked for is done.
        var whenStopped: [@Sendable () -> Void] = []
        /// Counts timers armed and cancelled: a firing timer whose number is no longer current
        /// was replaced or cancelled and sends nothing.
        var timer: UInt64 = 0
        var shutDown = false
    }

    /// What the trainer's thread does, in order.
    enum Chore {
        case work(AgentMachine.Work, abandoned: Bool)
        case offerCheckpoint(step: UInt64)
        case disconnect(generation: UInt64)
        case release
    }

    let executor: StepExecutor
    let outbox: Outbox
    let logger: Logger
    let state: Mutex<State>
    let wakeUp = NSCondition()
    /// Signalled when the thread ends.
    let finished = DispatchSemaphore(value: 0)
    let started = ContinuousClock.now
    /// Steps past the coordinator's cursor this trainer trains before it waits for the cursor
    /// (announced in the hello, so that the coordinator sends the cursor often enough).
    let stepsAhead: UInt64

    init(
        core: AgentMachine.Settings = .init(),
        settings: StepExecutor.Settings,
        environment: TrainingEnvironment,
        outbox: Outbox,
        logger: Logger
    ) {
        self.state = Mutex(State(machine: AgentMachine(settings: core)))
        self.stepsAhead = core.stepsAhead
        self.executor = StepExecutor(settings: settings, environment: environment, logger: logger)
        self.outbox = outbox
        self.logger = logger
    }

    /// Starts the trainer's thread.
    func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = "ringmaster-trainer"
        thread.start()
    }

    // MARK: - From the control session and the agent (any thread)

    /// A new generation: ends the one in flight and trains in this one.
    func assign(_ assignment: Assignment) {
        self.handle(.assigned(assignment))
    }

    /// The coordinator committed every step before `cursor`.
    func cursorMoved(job: String, generation: UInt64, cursor: UInt64) {
        self.handle(.cursorMoved(job: job, generation: generation, cursor: cursor))
    }

    /// The coordinator ended `generation`: fail its collectives at once.
    func abort(job: String, generation: UInt64, reason: String) {
        self.handle(.aborted(job: job, generation: generation, reason: reason))
    }

    /// Stops at the next step boundary (at once when no step is running), leaves the generation
    /// held, then calls `then`; past `grace` the step in flight is abandoned.
    func stopAtStepBoundary(reason: String, grace: Duration?, then: @escaping @Sendable () -> Void) {
        self.state.withLock { $0.whenStopped.append(then) }
        self.handle(.stopRequested(reason: reason, grace: grace))
    }

    /// Stops the thread.
    func shutdown() {
        self.state.withLock { state in
            state.shutDown = true
            state.timer += 1
        }
        self.executor.close(reason: "the agent is stopping")
        self.wakeUp.lock()
        self.wakeUp.broadcast()
        self.wakeUp.unlock()
        // The thread releases the job's workload (a worker process ends cleanly) as it ends.
        if self.finished.wait(timeout: .now() + .seconds(15)) == .timedOut {
            self.logger.warning("the trainer's thread did not end within 15 s of the agent stopping")
        }
    }

    // MARK: - Carrying out the core's actions

    var now: Duration { self.started.duration(to: .now) }

    func handle(_ event: AgentMachine.Event) {
        let actions = self.state.withLock { $0.machine.on(event, now: self.now) }
        self.carry(actions)
    }

    func carry(_ actions: [AgentMachine.Action]) {
        var queued = false
        for action in actions {
            switch action {
            case .start(let work):
                self.state.withLock { $0.queue.append(.work(work, abandoned: false)) }
                queued = true
            case .offerCheckpoint(_, let step):
                self.state.withLock { $0.queue.append(.offerCheckpoint(step: step)) }
                queued = true
            case .disconnect(let generation):
                self.state.withLock { $0.queue.append(.disconnect(generation: generation)) }
                queued = true
            case .abandon(let generation, let reason):
                self.abandon(generation: generation, reason: reason)
            case .report(let report):
                self.outbox.post(report)
            case .leave(let leave):
                self.outbox.post(leave)
                if leave.cannotRun {
                    // Told to the coordinator as such: this node stays available for other jobs,
                    // and the job's status shows why this node cannot run it.
                    self.logger.error(
                        "cannot run the job's workload; leaving the job",
                        metadata: [
                            LogKey.job: "\(leave.job)", LogKey.generation: "\(leave.generation)",
                            LogKey.reason: "\(leave.reason)",
                        ])
                }
            case .stopped(let reason):
                let callbacks = self.state.withLock { state -> [@Sendable () -> Void] in
                    defer { state.whenStopped = [] }
                    return state.whenStopped
                }
                self.logger.notice(
                    "stopped at a step boundary",
                    metadata: [
                        LogKey.reason: "\(reason)",
                        "boundary": "\(self.state.withLock { $0.machine.boundary })",
                    ])
                for callback in callbacks { callback() }
            case .armTimer(let at):
                self.arm(at: at)
            case .cancelTimer:
                self.state.withLock { $0.timer += 1 }
            case .release:
                self.state.withLock { $0.queue.append(.release) }
                queued = true
            case .failure(let failure):
                self.outbox.post(failure)
            case .trainingStopped(let generation, let reason, let superseded):
                let metadata: Logger.Metadata = [
                    LogKey.generation: "\(generation)", LogKey.reason: "\(reason)",
                    "boundary": "\(self.state.withLock { $0.machine.boundary })",
                ]
                if superseded {
                    self.logger.info(
                        "generation ended; rolling back to the coordinator's cursor in the next", metadata: metadata)
                } else {
                    self.logger.warning("training stopped", metadata: metadata)
                }
            }
        }
        if queued {
            self.wakeUp.lock()
            self.wakeUp.broadcast()
            self.wakeUp.unlock()
        }
    }

    /// Makes the work of `generation` fail fast, running or still queued.
    func abandon(generation: UInt64, reason: String) {
        self.state.withLock { state in
            if let running = state.running, running.work.generation == generation {
                state.running?.abandoned = true
            }
            state.queue = state.queue.map { chore in
                if case .work(let work, _) = chore, work.generation == generation {
                    return .work(work, abandoned: true)
                }
                return chore
            }
        }
        self.executor.abandon(generation: generation, reason: reason)
    }

    func arm(at: Duration) {
        let number = self.state.withLock { state -> UInt64 in
            state.timer += 1
            return state.timer
        }
        let delay = max(.zero, at - self.now)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(delay.milliseconds) + 1)) { [self] in
            guard self.state.withLock({ $0.timer == number && !$0.shutDown }) else { return }
            self.handle(.tick)
        }
    }

    // MARK: - The trainer thread

    func run() {
        defer {
            self.executor.release()
            self.finished.signal()
        }
        while let chore = self.next() {
            switch chore {
            case .work(let work, _):
                let generation = work.generation
                let event = self.executor.perform(work) { [self] in
                    self.state.withLock { state in
                        state.shutDown
                            || (state.running.map {
                                $0.abandoned && $0.work.generation == generation
                            } ?? false)
                    }
                }
                let actions = self.state.withLock { state -> [AgentMachine.Action] in
                    state.running = nil
                    return state.machine.on(event, now: self.now)
                }
                self.carry(actions)
            case .offerCheckpoint(let step):
                self.executor.offerCheckpoint(step: step)
            case .disconnect(let generation):
                self.executor.disconnect(generation: generation)
            case .release:
                self.executor.release()
            }
        }
    }

    /// The next chore, waiting for one; nil once the agent stops.
    func next() -> Chore? {
        // The queue is checked under `wakeUp`'s lock, which `carry` takes to wake this thread
        // after queueing, so no wake-up is missed; the deadline only bounds the wait.
        self.wakeUp.lock()
        defer { self.wakeUp.unlock() }
        while true {
            let chore = self.state.withLock { state -> Chore?? in
                if state.shutDown { return .some(nil) }
                guard !state.queue.isEmpty else { return .none }
                let chore = state.queue.removeFirst()
                if case .work(let work, let abandoned) = chore { state.running = (work, abandoned) }
                return .some(chore)
            }
            if case .some(let chore) = chore { return chore }
            _ = self.wakeUp.wait(until: Date().addingTimeInterval(1))
        }
    }
}
