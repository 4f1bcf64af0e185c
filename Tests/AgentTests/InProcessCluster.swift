import AgentCore
import Collectives
import CoordinatorCore
import Foundation
import JobModel
import Logging
import Synchronization
import Testing
import Workload

@testable import Agent

/// A whole cluster in one process under a manual clock: the real `CoordinatorMachine`, one
/// `AgentMachine` per node with the real `StepExecutor` carrying out its work, the in-process
/// transport between the members of each generation, and a synthetic workload behind the
/// `TrainingWorkload` protocol. Nothing sleeps: time moves only when `round()` says so.
///
/// ## A round
/// 1. Every message queued is delivered, in order, until none is left: the coordinator's actions
///    become agents' events, agents' reports and leaves become the coordinator's events.
/// 2. The work each agent's core started runs, each agent on a thread of its own, all at once:
///    collectives need every member of the generation to take part, so a collective runs only
///    when every member has its work of that generation ready (or the work was abandoned, when it
///    fails at once). The round waits for all with a deadline.
/// 3. Time moves on by `tick`: live agents heartbeat, the coordinator and due timers tick.
///
/// Failures are injected between rounds: `kill` (mid-collective or not), `join`, `drain`,
/// `terminate` (SIGTERM), `holdReports` (a member's reports delayed, so its peers run ahead of the
/// cursor), `restartCoordinator`.
final class InProcessCluster {
    /// One simulated node.
    final class Node {
        let name: String
        var machine: AgentMachine
        let executor: StepExecutor
        let queue: DispatchQueue
        /// Work the core started and the harness has not run yet, and whether it was abandoned.
        var work: AgentMachine.Work?
        var abandoned = false
        var timer: Duration?
        /// Killed during its generation's next collective: it aborts the fabric instead of taking part.
        var dying = false
        /// Shutting down: goes offline once its stop is done.
        var terminating = false
        /// Its parameters' hash when its workload was released (the job over on it).
        var releasedHash: UInt64?
        /// Reports held back instead of sent (a slow link); dropped if the node dies.
        var holding = false
        var held: [StepReport] = []
        var stops: [String] = []

        init(name: String, machine: AgentMachine, executor: StepExecutor) {
            self.name = name
            self.machine = machine
            self.executor = executor
            self.queue = DispatchQueue(label: "agent-\(name)")
        }
    }

    /// What is delivered next.
    enum Message {
        case toNode(String, AgentMachine.Event)
        case toCoordinator(CoordinatorMachine.Event)
    }

    /// The fabrics of the generations, shared with the executors' connect.
    final class Fabrics: Sendable {
        let fabrics = Mutex<[String: InProcessFabric]>([:])

        func fabric(job: String, generation: UInt64, worldSize: Int) -> InProcessFabric {
            self.fabrics.withLock {
                let key = "\(job)/\(generation)"
                if let fabric = $0[key] { return fabric }
                let fabric = InProcessFabric(worldSize: worldSize)
                $0[key] = fabric
                return fabric
            }
        }
    }

    /// Checkpoint shards offered by the members, committed when the coordinator's core says so
    /// (every member's shard in, the step committed): the harness keeps rank 0's copy and checks
    /// that all copies are equal.
    final class Checkpoints: Sendable {
        struct State {
            var offered: [String: [Int: [Float]]] = [:]
            var committed: [UInt64: [Float]] = [:]
            var unequal: [String] = []
        }

        let state = Mutex(State())

        func offer(_ assignment: Assignment, step: UInt64, state copy: [Float]) {
            self.state.withLock { $0.offered["\(assignment.generation)/\(step)", default: [:]][assignment.rank] = copy }
        }

        func commit(_ commit: CoordinatorMachine.CheckpointCommit) {
            self.state.withLock { state in
                let shards = state.offered.removeValue(forKey: "\(commit.generation)/\(commit.step)") ?? [:]
                guard shards.count == commit.shards.count, let first = shards[0] else {
                    state.unequal.append("the checkpoint at step \(commit.step) was committed without every shard")
                    return
                }
                if Set(shards.values.map { parameterHash($0) }).count != 1 {
                    state.unequal.append(
                        "the ranks' copies at step \(commit.step) of generation \(commit.generation) differ")
                }
                state.committed[commit.step] = first
            }
        }

        func load(step: UInt64) throws -> [Float] {
            guard let state = self.state.withLock({ $0.committed[step] }) else {
                throw AgentError(.protocolViolation, "no checkpoint is committed at step \(step)")
            }
            return state
        }
    }

    struct HarnessError: Error, CustomStringConvertible {
        var description: String
    }

    let settings: CoordinatorMachine.Settings
    var coordinator: CoordinatorMachine
    var now: Duration = .zero
    let tick: Duration = .milliseconds(10)
    var nodes: [String: Node] = [:]
    var queue: [Message] = []
    let fabrics = Fabrics()
    let checkpoints = Checkpoints()
    let parameters: Int
    var trace: [String] = []
    /// Members that caught up by broadcast (their boundary was behind the step they synchronised at).
    var caughtUp = 0
    /// Generations that resumed past the coordinator's cursor (the steps between rolled forward).
    var rolledForward = 0

    // MARK: What the checks read
    /// The cursor of each job after every delivery, in order.
    var cursors: [String: [UInt64]] = [:]
    /// By job and generation: each member's parameter hash right after the generation's
    /// synchronisation.
    var synchronised: [String: [UInt64: [String: UInt64]]] = [:]
    /// By job, generation and step: the parameter hashes the members reported.
    var reportedHashes: [String: [UInt64: [UInt64: Set<UInt64>]]] = [:]
    /// Divergences the coordinator's core found in the reported parameter hashes.
    var diverged: [String] = []
    /// Every generation started, with its cause.
    var generations: [(job: String, generation: UInt64, cause: CoordinatorMachine.Cause, members: [String])] = []

    init(settings: CoordinatorMachine.Settings = InProcessCluster.fastSettings, parameters: Int = 48) {
        self.settings = settings
        self.coordinator = CoordinatorMachine(settings: settings)
        self.parameters = parameters
    }

    static let fastSettings = CoordinatorMachine.Settings(
        lease: .milliseconds(200), settleWindow: .milliseconds(30), recoveryWindow: .milliseconds(300),
        drainGrace: .milliseconds(300), unrunnableTimeout: .seconds(5))

    static func spec(
        _ name: String = "job", min: Int = 1, max: Int = 4, steps: UInt64 = 24, checkpoints: Bool = false,
        samples: Int = 40, batch: Int = 8
    ) -> JobSpec {
        JobSpec(
            name: name, workloadKind: "synthetic", datasetPath: "/in-process", datasetSamples: samples,
            globalBatchSize: batch, steps: steps, seed: 11, minNodes: min, maxNodes: max,
            checkpointDirectory: checkpoints ? "/in-process/checkpoints" : nil, checkpointIntervalSteps: 4)
    }

    // MARK: - Nodes

    /// Starts a node and brings it online.
    @discardableResult
    func join(_ name: String) -> Node {
        let fabrics = self.fabrics
        let checkpoints = self.checkpoints
        let parameters = self.parameters
        var logger = Logger(label: "in-process-cluster")
        logger.logLevel = .critical
        let executor = StepExecutor(
            settings: .init(
                collectiveTimeout: .seconds(10), connectTimeout: .seconds(10)),
            environment: TrainingEnvironment(
                makeWorkload: { _, plan in
                    SyntheticWorkload(
                        parameterCount: parameters, buckets: 3, trainingSamples: plan.datasetSamples, seed: plan.seed)
                },
                connect: { assignment, _ in
                    let fabric = fabrics.fabric(
                        job: assignment.job, generation: assignment.generation, worldSize: assignment.worldSize)
                    return Communicator(transport: fabric.transport(rank: assignment.rank))
                },
                loadCheckpoint: { _, step in try checkpoints.load(step: step) },
                offerCheckpoint: { assignment, step, state, _, _ in
                    checkpoints.offer(assignment, step: step, state: state)
                },
                saveModel: { _, _ in }
            ),
            logger: logger
        )
        let node = Node(
            name: name, machine: AgentMachine(settings: .init(hashIntervalSteps: 1, stepsAhead: Self.stepsAhead)),
            executor: executor)
        self.nodes[name] = node
        self.queue.append(.toCoordinator(.nodeOnline(node: name, Self.capabilities(name))))
        self.settle()
        return node
    }

    /// Kills `name` (kill -9): with `midCollective`, during its generation's next collective,
    /// which it aborts for everyone; otherwise at once. Its held reports die with it.
    func kill(_ name: String, midCollective: Bool = false) {
        guard let node = self.nodes[name] else { return }
        if midCollective, let work = node.work, Self.isCollective(work), node.machine.assignment != nil {
            node.dying = true
            return
        }
        self.remove(node)
    }

    func remove(_ node: Node) {
        node.executor.close(reason: "\(node.name) died")
        self.nodes[node.name] = nil
        self.trace.append("\(self.now): \(node.name) gone")
        self.queue.append(.toCoordinator(.nodeOffline(node: node.name)))
        self.settle()
    }

    /// SIGTERM: the node finishes its step, leaves, and goes offline.
    func terminate(_ name: String, grace: Duration = .milliseconds(200)) {
        guard let node = self.nodes[name] else { return }
        node.terminating = true
        self.queue.append(.toNode(name, .stopRequested(reason: "the agent is shutting down", grace: grace)))
        self.settle()
    }

    /// An operator drains `name`.
    func drain(_ name: String) throws {
        _ = try self.command(.drain(node: name))
    }

    func submit(_ spec: JobSpec, start: CoordinatorMachine.JobStart? = nil) throws {
        _ = try self.command(.submit(spec, start: start))
    }

    func command(_ command: CoordinatorMachine.Command) throws -> [CoordinatorMachine.Action] {
        let actions = try self.coordinator.apply(command, now: self.now)
        self.deliver(actions)
        self.settle()
        return actions
    }

    /// Holds `name`'s reports back (a slow link) until `releaseReports`.
    func holdReports(_ name: String) {
        self.nodes[name]?.holding = true
    }

    func releaseReports(_ name: String) {
        guard let node = self.nodes[name] else { return }
        node.holding = false
        for report in node.held { self.send(report, from: node) }
        node.held = []
        self.settle()
    }

    /// The coordinator restarts from its durable records; every agent's session reconnects.
    /// Each node's flow-control window, small, so that the tests see the cursor's announcements
    /// hold training back.
    static let stepsAhead: UInt64 = 4

    /// What each node says in its hello.
    static func capabilities(_ name: String) -> CoordinatorMachine.Capabilities {
        .init(dataPlaneAddresses: ["\(name):7700"], stepsAhead: Self.stepsAhead)
    }

    func restartCoordinator() {
        self.coordinator = CoordinatorMachine(
            settings: self.settings, restoring: self.coordinator.records, now: self.now)
        self.trace.append("\(self.now): coordinator restarted")
        for name in self.nodes.keys.sorted() {
            self.queue.append(.toCoordinator(.nodeOnline(node: name, Self.capabilities(name))))
        }
        self.settle()
    }

    // MARK: - Running

    /// Rounds until `done` holds, failing after `limit` rounds with what it waited for.
    func run(
        until what: String, limit: Int = 2_000, sourceLocation: SourceLocation = #_sourceLocation,
        _ done: (InProcessCluster) -> Bool
    ) throws {
        var count = 0
        while !done(self) {
            guard count < limit else {
                throw HarnessError(
                    description:
                        "waited \(limit) rounds (\(self.now) of manual time) for \(what); last events: \(self.trace.suffix(40).joined(separator: "; "))"
                )
            }
            try self.round()
            count += 1
        }
    }

    /// Rounds until a generation of `job` after `generation` started and all its members
    /// synchronised (they train in it from then on).
    func runUntilTraining(_ job: String = "job", after generation: UInt64 = 0) throws {
        try self.run(until: "\(job) to train in a generation after \(generation)") { cluster in
            cluster.generations.contains { started in
                started.job == job && started.generation > generation
                    && Set(cluster.synchronised[job]?[started.generation]?.keys.map { $0 } ?? [])
                        == Set(started.members)
            }
        }
    }

    func record(_ job: String = "job") -> CoordinatorMachine.JobRecord? {
        self.coordinator.record(job: job)
    }

    /// One round: deliver, run the work started, move time on.
    func round() throws {
        self.settle()
        try self.runWork()
        self.now += self.tick
        for name in self.nodes.keys.sorted() {
            guard let node = self.nodes[name] else { continue }
            let held = node.machine.assignment
            self.queue.append(
                .toCoordinator(.heartbeat(node: name, job: held?.job, generation: held?.generation ?? 0)))
            if let timer = node.timer, timer <= self.now {
                node.timer = nil
                self.queue.append(.toNode(name, .tick))
            }
        }
        self.queue.append(.toCoordinator(.tick))
        self.settle()
    }

    /// Runs every piece of work that can run now, all at once, and feeds back what each returned.
    func runWork() throws {
        let ready = self.nodes.values.filter { $0.work != nil }.sorted { $0.name < $1.name }
        var chosen: [(Node, AgentMachine.Work, Bool)] = []
        for node in ready {
            guard let work = node.work else { continue }
            if node.abandoned || !Self.isCollective(work) || self.allMembersReady(node, work) {
                chosen.append((node, work, node.abandoned))
            }
        }
        // Abandoned work fails at once and its data plane closes before the peers' next
        // collective runs, as it would on a real clock: it runs in a round of its own.
        if chosen.contains(where: { $0.2 }) { chosen = chosen.filter { $0.2 } }
        guard !chosen.isEmpty else { return }
        for (node, work, abandoned) in chosen {
            self.trace.append("\(self.now): \(node.name) runs \(Self.describe(work))\(abandoned ? " (abandoned)" : "")")
        }
        let results = Mutex<[String: AgentMachine.Event]>([:])
        let group = DispatchGroup()
        for (node, work, abandoned) in chosen {
            node.work = nil
            node.abandoned = false
            let dying = node.dying
            let executor = node.executor
            let name = node.name
            let fabric = node.machine.assignment.map {
                self.fabrics.fabric(job: $0.job, generation: $0.generation, worldSize: $0.worldSize)
            }
            group.enter()
            node.queue.async {
                defer { group.leave() }
                if dying {
                    fabric?.abortAll(reason: "\(name) died")
                    return
                }
                let event = executor.perform(work) { abandoned }
                results.withLock { $0[name] = event }
            }
        }
        guard group.wait(timeout: .now() + 30) == .success else {
            throw HarnessError(
                description:
                    "work did not finish within 20 s: \(chosen.map { "\($0.0.name): \($0.1)" }); a collective waited for a member that never took part"
            )
        }
        for (node, _, _) in chosen where node.dying { self.remove(node) }
        for (name, event) in results.withLock({ $0 }).sorted(by: { $0.key < $1.key }) {
            if case .synchronised(_, let step) = event, let node = self.nodes[name], node.machine.boundary < step {
                self.caughtUp += 1
            }
            self.queue.append(.toNode(name, event))
        }
        self.settle()
    }

    static func describe(_ work: AgentMachine.Work) -> String {
        switch work {
        case .prepare(let assignment): return "prepare \(assignment.generation)"
        case .connect(let assignment): return "connect \(assignment.generation)"
        case .gather(let generation, let step): return "gather \(generation) at \(step) or later"
        case .broadcast(let generation, let step, let root, _): return "broadcast \(generation) at \(step) from \(root)"
        case .loadCheckpoint(let generation, let step, _): return "load \(generation) at \(step)"
        case .train(let generation, let step, _, _, _, _): return "train \(generation) step \(step)"
        case .saveModel(let generation): return "save \(generation)"
        }
    }

    /// The kind of work, for matching members' collectives (the real ones wait for each other).
    static func kind(_ work: AgentMachine.Work) -> String {
        switch work {
        case .prepare: return "prepare"
        case .connect: return "connect"
        case .gather: return "gather"
        case .broadcast: return "broadcast"
        case .loadCheckpoint: return "load"
        case .train: return "train"
        case .saveModel: return "save"
        }
    }

    static func isCollective(_ work: AgentMachine.Work) -> Bool {
        switch work {
        case .connect, .gather, .broadcast, .loadCheckpoint, .train: return true
        case .prepare, .saveModel: return false
        }
    }

    /// Whether every member of `work`'s generation has the same collective of that generation ready.
    func allMembersReady(_ node: Node, _ work: AgentMachine.Work) -> Bool {
        guard let assignment = node.machine.assignment, assignment.generation == work.generation else { return false }
        return assignment.members.allSatisfy { member in
            guard let peer = self.nodes[member.node], let theirs = peer.work else { return false }
            return peer.machine.assignment?.job == assignment.job && theirs.generation == work.generation
                && Self.kind(theirs) == Self.kind(work)
        }
    }

    // MARK: - Delivery

    /// Delivers every queued message, and those they cause, until none is left.
    func settle() {
        while !self.queue.isEmpty {
            let message = self.queue.removeFirst()
            switch message {
            case .toCoordinator(let event):
                self.deliver(self.coordinator.on(event, now: self.now))
            case .toNode(let name, let event):
                guard let node = self.nodes[name] else { continue }
                let actions = node.machine.on(event, now: self.now)
                self.noteSynchronised(node, after: event)
                self.carry(actions, for: node)
            }
            for record in self.coordinator.records {
                let name = record.spec.name
                if self.cursors[name]?.last != record.cursor { self.cursors[name, default: []].append(record.cursor) }
            }
        }
    }

    /// Records the member's parameters once `event` (a synchronisation, or a gather after which
    /// every member already held the state) made it train in its generation.
    func noteSynchronised(_ node: Node, after event: AgentMachine.Event) {
        let generation: UInt64
        switch event {
        case .gathered(let of, _), .synchronised(let of, _): generation = of
        default: return
        }
        guard case .training = node.machine.progress, let assignment = node.machine.assignment,
            assignment.generation == generation, let workload = node.executor.workload,
            let hash = try? parameterHash(workload.parameters())
        else { return }
        self.synchronised[assignment.job, default: [:]][generation, default: [:]][node.name] = hash
    }

    /// The coordinator's actions, as its shell would carry them out.
    func deliver(_ actions: [CoordinatorMachine.Action]) {
        for action in actions {
            switch action {
            case .assign(let name, let assignment):
                guard let member = assignment.assignment(for: name, dataPlaneSecret: []) else { continue }
                self.queue.append(.toNode(name, .assigned(member)))
            case .abort(let name, let job, let generation, let reason):
                self.queue.append(.toNode(name, .aborted(job: job, generation: generation, reason: reason)))
            case .drain(let name, _, _, let graceSeconds):
                self.queue.append(.toNode(name, .stopRequested(reason: "drained", grace: .seconds(Int(graceSeconds)))))
            case .announceCursor(let job, let generation, let cursor):
                for member in self.coordinator.record(job: job)?.members ?? [] {
                    self.queue.append(.toNode(member, .cursorMoved(job: job, generation: generation, cursor: cursor)))
                }
            case .generationStarted(let job, let generation, let cause, let members, _, _):
                self.generations.append((job, generation, cause, members))
                self.trace.append("\(self.now): \(job) generation \(generation) (\(cause.rawValue)): \(members)")
            case .jobWaiting(let job, let reason):
                self.trace.append("\(self.now): \(job) waiting: \(reason)")
            case .jobFinished(let job):
                self.trace.append("\(self.now): \(job) finished")
            case .jobFailed(let job, let reason):
                self.trace.append("\(self.now): \(job) failed: \(reason)")
            case .commitCheckpoint(let commit):
                self.checkpoints.commit(commit)
                self.trace.append("\(self.now): checkpoint at step \(commit.step) committed")
            case .replicasDiverged(let job, let generation, let step, let hashes):
                self.diverged.append("\(job) generation \(generation) step \(step): \(hashes)")
            case .shardFailed(let node, _, let step, let reason):
                self.trace.append("\(self.now): \(node)'s shard at step \(step) failed: \(reason)")
            case .stepsRolledForward(let job, let generation, let from, let to, _):
                self.rolledForward += 1
                self.trace.append(
                    "\(self.now): \(job) generation \(generation) resumed at \(to), past the cursor at \(from)")
            case .stepCommitted, .staleRefused, .leaseExpired, .persist, .replicasAgree, .shardRefused:
                break
            }
        }
    }

    /// An agent's actions, as its shell would carry them out.
    func carry(_ actions: [AgentMachine.Action], for node: Node) {
        for action in actions {
            switch action {
            case .start(let work):
                node.work = work
                node.abandoned = false
            case .abandon(let generation, let reason):
                if node.work?.generation == generation { node.abandoned = true }
                node.executor.abandon(generation: generation, reason: reason)
            case .disconnect(let generation):
                node.executor.disconnect(generation: generation)
            case .report(let report):
                if let hash = report.parameterHash {
                    self.reportedHashes[report.job, default: [:]][report.generation, default: [:]][
                        report.step, default: []
                    ].insert(hash)
                }
                if node.holding {
                    node.held.append(report)
                } else {
                    self.send(report, from: node)
                }
            case .offerCheckpoint(let generation, let step):
                node.executor.offerCheckpoint(step: step)
                guard let assignment = node.machine.assignment, let workload = node.executor.workload else { continue }
                let shard = ShardReport(
                    step: step, rank: assignment.rank, worldSize: assignment.worldSize,
                    stateCount: workload.stateCount, parameterCount: workload.parameterCount, firstElement: 0,
                    elements: workload.stateCount, path: "rank-\(assignment.rank)", bytes: 4 * workload.stateCount,
                    sha256: "")
                self.queue.append(
                    .toCoordinator(
                        .shardReported(node: node.name, job: assignment.job, generation: generation, shard)))
            case .leave(let leave):
                self.trace.append("\(self.now): \(node.name) leaves \(leave.job) generation \(leave.generation)")
                if leave.cannotRun {
                    self.queue.append(
                        .toCoordinator(
                            .cannotRun(
                                node: node.name, job: leave.job, generation: leave.generation, reason: leave.reason)))
                } else {
                    self.queue.append(
                        .toCoordinator(.left(node: node.name, job: leave.job, generation: leave.generation)))
                }
            case .stopped(let reason):
                node.stops.append(reason)
                if node.terminating {
                    // Its leave is queued before this: the coordinator reads it first.
                    node.executor.close(reason: "stopped")
                    self.nodes[node.name] = nil
                    self.queue.append(.toCoordinator(.nodeOffline(node: node.name)))
                }
            case .armTimer(let at):
                node.timer = at
            case .cancelTimer:
                node.timer = nil
            case .release:
                // The hash of what it trained, for comparing replicas after the job.
                if let workload = node.executor.workload {
                    node.releasedHash = (try? workload.parameters()).map { parameterHash($0) }
                }
                node.executor.release()
            case .failure(let failure):
                self.trace.append(
                    "\(self.now): \(node.name) reports generation \(failure.generation) failed: \(failure.reason)")
                self.queue.append(
                    .toCoordinator(
                        .generationFailed(
                            node: node.name, job: failure.job, generation: failure.generation, reason: failure.reason,
                            rdmaSetUp: failure.rdmaSetUp)))
            case .trainingStopped(let generation, let reason, let superseded):
                self.trace.append(
                    "\(self.now): \(node.name) stopped training in generation \(generation)\(superseded ? " (superseded)" : ""): \(reason)"
                )
            }
        }
    }

    func send(_ report: StepReport, from node: Node) {
        if let step = report.resumedAt {
            self.queue.append(
                .toCoordinator(.resumed(node: node.name, job: report.job, generation: report.generation, step: step)))
            return
        }
        self.queue.append(
            .toCoordinator(
                .stepCompleted(
                    node: node.name, job: report.job, generation: report.generation, step: report.step,
                    samples: report.sampleIDs, parameterHash: report.parameterHash)))
    }

    // MARK: - Checks

    /// The properties every run must keep; returns what broke.
    func violations(_ job: String = "job") -> [String] {
        var broken: [String] = []
        let cursors = self.cursors[job] ?? []
        if cursors != cursors.sorted() {
            broken.append("the cursor moved back (a committed step was lost): \(cursors)")
        }
        for (generation, hashes) in self.synchronised[job] ?? [:] where Set(hashes.values).count > 1 {
            broken.append("replicas differ after generation \(generation)'s synchronisation: \(hashes)")
        }
        for (generation, steps) in self.reportedHashes[job] ?? [:] {
            for (step, hashes) in steps where hashes.count > 1 {
                broken.append(
                    "members of generation \(generation) reported \(hashes.count) different hashes at step \(step)")
            }
        }
        if let record = self.record(job), let samples = record.samples {
            let order = record.spec.order
            if samples.repeated > 0 { broken.append("\(samples.repeated) samples repeated") }
            let skipped = samples.skipped(order: order, cursor: record.cursor)
            if skipped > 0 { broken.append("\(skipped) samples skipped") }
            if samples.outOfRange > 0 { broken.append("\(samples.outOfRange) sample ids out of range") }
        }
        broken += self.checkpoints.state.withLock { $0.unequal }
        broken += self.diverged.map { "the coordinator found replicas diverged: \($0)" }
        return broken
    }

    /// The members' parameter hashes (for comparing replicas).
    func parameterHashes(_ names: [String]) throws -> [String: UInt64] {
        var hashes: [String: UInt64] = [:]
        for name in names {
            if let workload = self.nodes[name]?.executor.workload {
                hashes[name] = parameterHash(try workload.parameters())
            } else if let released = self.nodes[name]?.releasedHash {
                hashes[name] = released
            }
        }
        return hashes
    }
}
