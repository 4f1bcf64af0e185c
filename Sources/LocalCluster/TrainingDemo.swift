import ControlPlane
import Coordinator
import CoordinatorCore
import Foundation
import JobModel
import RingmasterSecurity
import RingmasterWire
import Synchronization
import Workload
import Yams

/// The main job on one machine: a coordinator and agents as separate processes on loopback, each
/// agent joining with its own single-use token, training the reference model on the digits data
/// set, optionally losing an agent to kill -9 or gaining one mid-run. Used by `ringmaster demo`,
/// the recovery benchmark and the end-to-end tests.
public final class TrainingDemo: Sendable {
    /// What to run.
    public struct Options: Sendable {
        /// Agents at the start.
        public var agents = 4
        /// Global steps to train.
        public var steps: UInt64 = 1500
        /// Kill -9 one agent (the last started) once the job has committed this many steps.
        public var killAgentAtStep: UInt64?
        /// Start one more agent once the job has committed this many steps.
        public var addAgentAtStep: UInt64?
        /// SIGTERM one agent at this step (it finishes its step, leaves, and exits 0).
        public var terminateAgentAtStep: UInt64?
        /// The model trained.
        public var model = Model.digits(optimizer: .sgd)
        public var batchSize = 64
        public var seed: UInt64 = 42
        /// Checkpoints: where (nil: none), every how many steps, and `latest` or a step to resume from.
        public var checkpointDirectory: String?
        public var checkpointInterval: UInt64 = 100
        public var resume: JobSpec.Resume?
        /// Kill -9 every process (coordinator and agents) once a checkpoint at or after this step
        /// is committed: a whole cluster lost, to resume from the checkpoint.
        public var preemptAtStep: UInt64?
        /// Where the run's files go (kept); nil: a temporary directory, removed afterwards.
        public var directory: String?
        /// The `ringmaster` executable to start.
        public var executable: String
        /// Longest the whole run may take.
        public var timeoutSeconds: Double = 300
        /// Hold this many connections to every agent's data-plane port through the job (half of
        /// them sending garbage, each reopened when closed), as a port scan would.
        public var floodDataPlane: Int?
        /// Hold this many TLS connections without a client certificate to the coordinator through
        /// the job (from 127.0.0.2), as anyone who reaches its port could.
        public var floodControl: Int?
        /// Worker processes per agent of a torch workload (nil: the job's default, one per GPU
        /// the node sees, one without GPUs).
        public var workersPerNode: Int?
        /// `--device` for a torch workload's script (`cpu`, `cuda`, `auto`), if given.
        public var device: String?
        /// Drop every packet to the first agent's data-plane port (`TrafficCut`) once the job
        /// reaches this step, until the coordinator starts the next generation: a path that stops
        /// carrying while every process lives.
        public var cutDataPlaneAtStep: UInt64?
        /// The agents' `--collective-timeout` in seconds (nil: their default).
        public var collectiveTimeoutSeconds: Double?
        /// The coordinator's lease (nil: its default), for machines too loaded to heartbeat in time.
        public var leaseSeconds: Double?
        /// The job spec's `transport`.
        public var transport: TransportRequest = .auto
        /// Agents, counted from the last of the first `agents`, started with `--rdma off` (they
        /// announce no RDMA port).
        public var agentsWithoutRDMA = 0

        /// Coordinators of a set sharing the etcd store `etcd` (`etcd://HOST:PORT,...` or
        /// `etcds://...`, running), one of which leads; 1 (the default): one coordinator on SQLite.
        public var coordinators = 1
        public var etcd: String?
        /// The coordinators' TLS flags for an `etcds://` store (`--etcd-ca FILE`, ...).
        public var etcdArguments: [String] = []
        /// Kill -9 the leading coordinator once the job has committed this many steps.
        public var killLeaderAtStep: UInt64?
        /// The coordinators' `--leader-lease`, in seconds.
        public var leaderLease = 2

        public init(executable: String) {
            self.executable = executable
        }
    }

    /// A kill -9 of the leading coordinator, and how long the set took to serve again.
    public struct LeaderFailover: Sendable, Codable {
        /// The job's step when it was killed.
        public var step: UInt64
        /// The coordinator killed, and the one that led next.
        public var killed: String
        public var newLeader: String
        /// From the kill to the new leader's log saying it leads.
        public var electedSeconds: Double
        /// From the kill to every agent connected to the new leader (as its node list says).
        public var agentsConnectedSeconds: Double
        /// From the kill to the first step committed after it.
        public var firstStepSeconds: Double
    }

    /// The models the demo trains.
    public enum Model: Sendable, Hashable {
        /// The 64-128-10 perceptron on the bundled digits data set.
        case digits(optimizer: Optimizer)
        /// A synthetic model of `parameters` parameters, to exercise the all-reduce.
        case synthetic(parameters: Int)
        /// A PyTorch script (`examples/torch/digits/train.py`) on the digits data set, run by
        /// each agent as its worker process with `python`.
        case torchDigits(script: String, python: String, stepTimeoutSeconds: Int = 60)
        /// A PyTorch script (`examples/torch/minilm/train.py`) fine-tuning the pretrained
        /// all-MiniLM-L6-v2 on the topics data set at `data` (`examples/torch/minilm/data`), run by
        /// each agent as its worker process with `python`.
        case torchMiniLM(script: String, data: String, python: String, stepTimeoutSeconds: Int = 60)
    }

    /// Training sentences in the topics data set (`examples/torch/minilm/data/topics.csv.gz`); the
    /// worker says how many its file has, and the agent refuses the job if they differ.
    public static let topicsTrainingSamples = 1280

    /// The perceptron's optimizer.
    public enum Optimizer: String, Sendable, Hashable, CaseIterable {
        /// SGD, momentum 0.9, learning rate 0.1.
        case sgd
        /// Adam, learning rate 0.001.
        case adam
    }

    /// One generation change and how long training stopped for it.
    public struct Recovery: Sendable, Codable {
        public var generation: UInt64
        public var cause: String
        public var worldSize: Int
        /// From the event (the kill, the new agent's start, or the coordinator seeing the change)
        /// to the first step committed in the new generation.
        public var seconds: Double
    }

    /// The data plane one generation ran on, and why the coordinator chose it.
    public struct GenerationTransport: Sendable, Codable {
        public var generation: UInt64
        public var transport: String
        public var reason: String
    }

    /// What a run did.
    public struct Result: Sendable, Codable {
        public var testAccuracy: Double
        public var finalLoss: Double
        public var steps: UInt64
        public var generations: Int
        public var recoveries: [Recovery]
        /// Each generation's data plane, oldest first.
        public var transports: [GenerationTransport]
        public var samplesSeen: UInt64
        public var samplesRepeated: UInt64
        public var samplesSkipped: UInt64
        public var paramHash: String
        public var divergences: UInt64
        public var seconds: Double
        public var samplesPerSecond: Double
        /// The trained parameters (little-endian Float32) as an agent wrote them, when kept.
        public var modelPath: String?
        /// Exit statuses of agents stopped with SIGTERM mid-run, by name.
        public var terminatedExitStatus: [String: Int32]
        /// The newest committed checkpoint's step, failed saves, and the step the job resumed from.
        public var lastCheckpointStep: UInt64
        public var checkpointFailures: UInt64
        public var resumedFromStep: UInt64?
        /// Whether the run was cut short by `preemptAtStep`.
        public var preempted: Bool
        /// The most threads and resident memory (bytes) each process reached during the job, by
        /// process name.
        public var peakThreads: [String: Int]
        /// The worker processes (a torch workload's) each agent started, by agent, from its log:
        /// one per agent however many generations it trained in, when workers survive changes.
        public var workerProcesses: [String: [Int]]
        /// How each agent's workers ended, by agent, from its "worker stopped" log lines (`0`, or
        /// `signal 9`; none for an agent killed with its worker).
        public var workerExits: [String: [String]]
        /// Nodes that could not run the job (or whose workload failed), with their reasons, as
        /// `job status` shows them.
        public var refusals: [String: String]
        public var peakRSSBytes: [String: Int]
        /// CPU time each process used from the job's submission to its end, by process name.
        public var cpuSeconds: [String: Double]
        /// Connections the floods opened (reopened ones included) and the other side closed.
        public var floodOpened: Int
        public var floodClosedByPeer: Int
        /// The leader's kill -9 and the set's recovery from it, when asked for.
        public var leaderFailover: LeaderFailover?
    }

    /// Progress, for a bar.
    public struct Progress: Sendable {
        public var step: UInt64
        public var totalSteps: UInt64
        public var loss: Double
        public var worldSize: Int
        public var generation: UInt64
        public var samplesPerSecond: Double
    }

    let options: Options
    let cluster = Mutex<Cluster?>(nil)

    public init(options: Options) {
        self.options = options
    }

    /// Kills every process the run started (for a signal handler: nothing is left behind).
    public func killAll() {
        for child in self.cluster.withLock({ $0 })?.children.withLock({ $0 }) ?? [] {
            child.signal(SIGKILL)
        }
    }

    /// Runs the job to its end; `progress` is called about every 100 ms, `say` with events.
    public func run(progress: @escaping @Sendable (Progress) -> Void, say: @escaping @Sendable (String) -> Void)
        async throws -> Result
    {
        let options = self.options
        let kept = options.directory != nil
        let directory = try options.directory ?? Self.makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { if !kept { try? FileManager.default.removeItem(atPath: directory) } }
        let withoutRDMA = (options.agents - options.agentsWithoutRDMA)..<options.agents
        let timeout = options.collectiveTimeoutSeconds.map {
            ["--collective-timeout", "\(Int(($0 * 1000).rounded()))ms"]
        }
        let cluster = Cluster(
            directory: directory, executable: options.executable,
            coordinatorArguments: options.leaseSeconds.map { ["--lease", "\(Int(($0 * 1000).rounded()))ms"] } ?? [],
            agentArguments: { (withoutRDMA.contains($0) ? ["--rdma", "off"] : []) + (timeout ?? []) },
            replicas: options.etcd.map {
                var replicas = Cluster.Replicas(
                    count: options.coordinators, store: $0, leaderLease: options.leaderLease)
                replicas.storeArguments = options.etcdArguments
                return replicas
            })
        self.cluster.withLock { $0 = cluster }
        do {
            let result = try await withDeadline(seconds: options.timeoutSeconds, waitingFor: "the demo job to finish") {
                try await self.train(cluster, kept: kept, progress: progress, say: say)
            }
            await cluster.stopAll()
            if kept { cluster.writeLogs() }
            return result
        } catch {
            await cluster.stopAll()
            if kept { cluster.writeLogs() }
            for child in cluster.children.withLock({ $0 }) {
                FileHandle.standardError.write(
                    Data(
                        "--- \(child.name) output (last lines) ---\n\(child.output.lines.suffix(15).joined(separator: "\n"))\n"
                            .utf8))
            }
            throw error
        }
    }

    func train(
        _ cluster: Cluster,
        kept: Bool,
        progress: @escaping @Sendable (Progress) -> Void,
        say: @escaping @Sendable (String) -> Void
    ) async throws -> Result {
        let options = self.options
        let admin = try await cluster.startCoordinator()
        say("coordinator listening on \(cluster.address!) (CA created, ECDSA P-256; mutual TLS for every agent)")
        for index in 0..<options.agents {
            try await cluster.startAgent(index: index, admin: admin)
        }
        try await cluster.waitForConnected(admin: admin, count: options.agents, within: 60)
        say("\(options.agents) agent(s) joined with single-use tokens")
        if options.addAgentAtStep != nil {
            // The extra agent joins now (key, CSR, certificate) and starts mid-run with them.
            let token = try await Cluster.admin(admin) { $0.tokenCreate = .with { $0.ttlSeconds = 600 } }.adminReply
                .tokenCreate
            try await cluster.joinAgent(index: options.agents, token: token)
        }

        let spec = options.spec()
        let processes = cluster.children.withLock { $0 }
        let sampler = ProcessSampler(pids: processes.map(\.pid), interval: .milliseconds(50))
        let floods = try await self.startFloods(cluster, admin: admin)
        defer {
            for flood in floods.dataPlane { flood.stop() }
            floods.control?.stop()
        }
        if !floods.dataPlane.isEmpty || floods.control != nil {
            say(
                "flooding: \(options.floodDataPlane ?? 0) connection(s) to each agent's data-plane port, \(options.floodControl ?? 0) certificate-less TLS connection(s) to the coordinator"
            )
        }
        let document = JobSpecParser.yaml(spec)
        _ = try await Cluster.admin(admin) { $0.jobSubmit = .with { $0.specYaml = document } }
        let started = Date()
        say("submitted job demo: \(options.steps) steps of \(options.batchSize) samples")

        // One operator session for the whole run: polling opens no new TLS connection.
        // The cut in place (and the generation it began in), and when it was made.
        let cut = Mutex<(cut: TrafficCut, generation: UInt64)?>(nil)
        let cutAt = Mutex<Date?>(nil)
        defer { try? cut.withLock { $0 }?.cut.restore() }
        let leaderKill = Mutex<
            (at: Date, step: UInt64, victim: String, watch: Task<(Double, Double, String), any Error>)?
        >(nil)
        typealias Request =
            @Sendable (@escaping @Sendable (inout Ringmaster_V1_AdminRequest) -> Void) async throws -> Envelope
        let poll:
            @Sendable (Request) async throws -> (
                Ringmaster_V1_JobStatus, Date?, Date?, [String: ChildProcess], Bool, Date?
            ) = { request in
                var killedAt: Date?
                var addedAt: Date?
                var terminated: [String: ChildProcess] = [:]
                var rate = RateMeter()
                var status = Ringmaster_V1_JobStatus()
                var finishedAt: Date?
                while true {
                    status =
                        try await request { $0.jobStatus = .with { $0.jobID = "demo" } }.adminReply
                        .jobStatus.jobs.first ?? .init()
                    rate.add(step: status.cursorStep, at: Date())
                    progress(
                        Progress(
                            step: status.cursorStep,
                            totalSteps: status.totalSteps,
                            loss: status.loss,
                            worldSize: status.members.count,
                            generation: status.generation,
                            samplesPerSecond: rate.stepsPerSecond * Double(options.batchSize)
                        )
                    )
                    let phase = CoordinatorMachine.Phase(rawValue: status.phase)
                    if phase == .cancelled || phase == .failed { break }
                    if phase == .finished {
                        // The last step's checkpoint commits after the last step: wait for it (or its
                        // failure) for up to 10 s, so that the run ends with it on disk.
                        let at = finishedAt ?? Date()
                        finishedAt = at
                        let settled = status.lastCheckpointStep >= status.totalSteps || status.checkpointFailures > 0
                        if options.checkpointDirectory == nil || settled { break }
                        if Date().timeIntervalSince(at) > 10 {
                            say("the checkpoint of the last step was not committed within 10 s of the job's end")
                            break
                        }
                    }
                    let agents = cluster.agents.withLock { Array($0.values) }
                    if !agents.isEmpty, agents.allSatisfy(\.hasExited) {
                        throw LocalClusterError(
                            "every agent has exited, at step \(status.cursorStep); their output follows")
                    }
                    if let at = options.preemptAtStep, status.lastCheckpointStep >= at {
                        for child in cluster.children.withLock({ $0 }) { child.signal(SIGKILL) }
                        say(
                            "step \(status.cursorStep): checkpoint at step \(status.lastCheckpointStep) committed; kill -9 every process"
                        )
                        return (status, killedAt, addedAt, terminated, true, finishedAt)
                    }
                    if let at = options.killAgentAtStep, killedAt == nil, status.cursorStep >= at {
                        let victim = try cluster.agent(index: options.agents - 1)
                        victim.signal(SIGKILL)
                        killedAt = Date()
                        say("step \(status.cursorStep): kill -9 \(victim.name)")
                    }
                    if let at = options.terminateAgentAtStep, terminated.isEmpty, status.cursorStep >= at {
                        let leaver = try cluster.agent(
                            index: options.agents - 1 - (options.killAgentAtStep == nil ? 0 : 1))
                        leaver.signal(SIGTERM)
                        terminated[leaver.name] = leaver
                        say("step \(status.cursorStep): SIGTERM \(leaver.name)")
                    }
                    if let at = options.cutDataPlaneAtStep, cutAt.withLock({ $0 }) == nil, status.cursorStep >= at {
                        // The first agent's: rank 0 accepts every other member's connection.
                        let victim = try cluster.agent(index: 0)
                        let port = try Self.dataPlanePort(of: victim)
                        let made = try TrafficCut(port: port)
                        cutAt.withLock { $0 = Date() }
                        cut.withLock { $0 = (made, status.generation) }
                        say(
                            "step \(status.cursorStep): every packet to \(victim.name)'s data-plane port \(port) is dropped (every process lives)"
                        )
                    }
                    if let current = cut.withLock({ $0 }), status.generation > current.generation {
                        try current.cut.restore()
                        cut.withLock { $0 = nil }
                        say(
                            "step \(status.cursorStep): generation \(status.generation) started (\(status.lastCause)); the data plane carries again"
                        )
                    }
                    if let at = options.addAgentAtStep, addedAt == nil, status.cursorStep >= at {
                        addedAt = Date()
                        try cluster.startAgent(index: options.agents, token: nil)
                        say("step \(status.cursorStep): started agent-\(options.agents)")
                    }
                    if let at = options.killLeaderAtStep, leaderKill.withLock({ $0 }) == nil, status.cursorStep >= at,
                        let victim = cluster.leader()
                    {
                        victim.signal(SIGKILL)
                        let killed = Date()
                        say("step \(status.cursorStep): kill -9 \(victim.name), the leading coordinator")
                        let watch = Task {
                            try await Self.watchFailover(
                                cluster, from: victim, at: killed)
                        }
                        leaderKill.withLock { $0 = (killed, status.cursorStep, victim.name, watch) }
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                return (status, killedAt, addedAt, terminated, false, finishedAt)
            }
        // Several coordinators: a request per poll, each to whichever leads (a leader's loss is
        // waited out); one: one operator session for the whole run (polling opens no new TLS
        // connection).
        let (status, killedAt, addedAt, terminated, preempted, finishedAt) =
            options.etcd != nil
            ? try await poll { build in try await Self.retrying(admin, within: 30, build) }
            : try await admin.withConnection { session in
                try await poll { build in try await Cluster.request(session, build) }
            }
        var failover: LeaderFailover?
        if let kill = leaderKill.withLock({ $0 }) {
            let (elected, connected, newLeader) = try await kill.watch.value
            // The generation the new leader started (a restored job goes on in the next one).
            let firstStep = status.history.first {
                $0.cause == "coordinator_restarted" && $0.firstStepUnixMs > 0
                    && Double($0.startedUnixMs) / 1000 >= kill.at.timeIntervalSince1970
            }.map { Double($0.firstStepUnixMs) / 1000 - kill.at.timeIntervalSince1970 }
            failover = LeaderFailover(
                step: kill.step, killed: kill.victim, newLeader: newLeader, electedSeconds: elected,
                agentsConnectedSeconds: connected, firstStepSeconds: firstStep ?? -1)
        }
        // Training time: up to the job's end, not the wait for its last checkpoint.
        let seconds = (finishedAt ?? Date()).timeIntervalSince(started)
        var exits: [String: Int32] = [:]
        // (`status`, `killedAt`, `addedAt` and `terminated` come from the polling session above.)
        for (name, child) in terminated {
            exits[name] = try await child.waitForExit(within: 40)
        }
        guard CoordinatorMachine.Phase(rawValue: status.phase) == .finished || preempted else {
            throw LocalClusterError("the demo job ended \(status.phase), not finished")
        }

        // Recovery: from the event to the first step committed after it. A kill and a new agent
        // are events this process made, so their times are taken here; others as the coordinator saw them.
        var recoveries: [Recovery] = []
        for record in status.history.dropFirst() {
            var event = Date(timeIntervalSince1970: Double(record.startedUnixMs) / 1000)
            if record.cause == "disconnected", let killedAt, killedAt <= event { event = killedAt }
            if record.cause == "joined", let addedAt, addedAt <= event { event = addedAt }
            if record.cause == "generation_failed", let at = cutAt.withLock({ $0 }), at <= event { event = at }
            if record.cause == "coordinator_restarted", let at = leaderKill.withLock({ $0?.at }), at <= event {
                event = at
            }
            let end =
                record.firstStepUnixMs == 0 ? nil : Date(timeIntervalSince1970: Double(record.firstStepUnixMs) / 1000)
            recoveries.append(
                Recovery(
                    generation: record.generation,
                    cause: record.cause,
                    worldSize: Int(record.worldSize),
                    seconds: end.map { max(0, $0.timeIntervalSince(event)) } ?? -1
                )
            )
        }
        let peaks = sampler.stop()
        var peakThreads: [String: Int] = [:]
        var peakRSS: [String: Int] = [:]
        var cpu: [String: Double] = [:]
        for process in processes {
            guard let peak = peaks[process.pid] else { continue }
            peakThreads[process.name] = peak.threads
            peakRSS[process.name] = peak.rss
            cpu[process.name] = peak.cpuSeconds
        }
        let floodCounts = floods.dataPlane.map(\.statistics).reduce((0, 0)) {
            ($0.0 + $1.opened, $0.1 + $1.closedByPeer)
        }
        let controlCounts = floods.control.map { ($0.statistics.attempts, $0.statistics.closedByPeer) } ?? (0, 0)
        let modelPath = (0...spec.maxNodes).lazy
            .map { "\(cluster.directory)/agent-\($0)/models/demo.f32" }
            .first { FileManager.default.fileExists(atPath: $0) }
        return Result(
            testAccuracy: status.hasTestAccuracy ? status.testAccuracy : -1,
            finalLoss: status.loss,
            steps: status.cursorStep,
            generations: status.history.count,
            recoveries: recoveries,
            transports: status.history.map {
                GenerationTransport(generation: $0.generation, transport: $0.transport, reason: $0.transportReason)
            },
            samplesSeen: status.samples.seen,
            samplesRepeated: status.samples.repeated,
            samplesSkipped: status.samples.skipped,
            paramHash: status.parameterHash.map { String(format: "%02x", $0) }.joined(),
            divergences: status.divergences,
            seconds: seconds,
            samplesPerSecond: Double(status.cursorStep) * Double(options.batchSize) / max(seconds, 1e-9),
            modelPath: kept ? modelPath : nil,
            terminatedExitStatus: exits,
            lastCheckpointStep: status.lastCheckpointStep,
            checkpointFailures: status.checkpointFailures,
            resumedFromStep: status.hasResumedFromStep ? status.resumedFromStep : nil,
            preempted: preempted,
            peakThreads: peakThreads,
            workerProcesses: Self.logged("worker started", "pid", in: cluster.agents.withLock { Array($0.values) })
                .mapValues { $0.compactMap { Int($0) } },
            workerExits: Self.logged("worker stopped", "status", in: cluster.agents.withLock { Array($0.values) }),
            refusals: Dictionary(status.refusals.map { ($0.nodeID, $0.reason) }, uniquingKeysWith: { $1 }),
            peakRSSBytes: peakRSS,
            cpuSeconds: cpu,
            floodOpened: floodCounts.0 + controlCounts.0,
            floodClosedByPeer: floodCounts.1 + controlCounts.1,
            leaderFailover: failover
        )
    }

    /// An admin request to whichever coordinator of the set leads, tried again (every 20 ms) while
    /// none does, for up to `seconds`.
    static func retrying(
        _ admin: ControlClient, within seconds: Double,
        _ build: @escaping @Sendable (inout Ringmaster_V1_AdminRequest) -> Void
    ) async throws -> Envelope {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            do {
                return try await Cluster.admin(admin, build)
            } catch let error as ControlClientError where ContinuousClock.now < deadline {
                switch error {
                case .connect, .closed, .notLeader, .noLeader: try await Task.sleep(for: .milliseconds(20))
                case .refused: throw error
                }
            }
        }
    }

    /// After the leader `victim` was killed at `killed`: seconds to another coordinator's log
    /// saying it leads, seconds to every agent's log saying it connected (which only a leader's
    /// hello reply makes it say), and the new leader's name. Waits on those lines, not on polls.
    static func watchFailover(
        _ cluster: Cluster, from victim: ChildProcess, at killed: Date
    ) async throws -> (Double, Double, String) {
        let leads: @Sendable (String) -> Bool = { $0.contains("this coordinator leads") }
        let connected: @Sendable (String) -> Bool = { $0.contains("connected to the coordinator") }
        // Each process's next such line: the count already there, plus one.
        let next = { (process: ChildProcess, matching: (String) -> Bool) in
            process.output.lines.filter(matching).count + 1
        }
        // Counted now, at the kill: no coordinator leads yet (the lease has not run out), so no
        // agent has connected to the next leader.
        let standbys = cluster.coordinators.withLock { $0 }.filter { $0 !== victim }
        let waits = standbys.map { ($0, next($0, leads)) }
        let members = cluster.agents.withLock { Array($0.values) }.filter { !$0.hasExited }
        let reconnections = members.map { ($0, next($0, connected)) }
        let leader = try await withThrowingTaskGroup(of: ChildProcess.self) { group in
            for (standby, occurrence) in waits {
                group.addTask {
                    try await standby.waitForLine(within: 60, "it leads", occurrence: occurrence, where: leads)
                    return standby
                }
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { throw LocalClusterError("no standby to lead") }
            return first
        }
        let elected = Date().timeIntervalSince(killed)
        for (agent, occurrence) in reconnections {
            _ = try await agent.waitForLine(
                within: 60, "it connected to the new leader", occurrence: occurrence, where: connected)
        }
        return (elected, Date().timeIntervalSince(killed), leader.name)
    }

    /// The values of `key` in each agent's log lines that say `message`, by agent.
    static func logged(_ message: String, _ key: String, in agents: [ChildProcess]) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for agent in agents {
            let values = agent.output.lines.filter { $0.contains("[Agent] \(message)") }.compactMap { line -> String? in
                guard let range = line.range(of: " \(key)=") else { return nil }
                let rest = line[range.upperBound...]
                // Values are written unquoted up to the next " name=" or the message.
                let end = rest.range(of: " [Agent]")?.lowerBound ?? rest.endIndex
                let value = rest[..<end]
                if let next = value.range(of: #" [a-z_]+="#, options: .regularExpression) {
                    return String(value[..<next.lowerBound])
                }
                return String(value)
            }
            if !values.isEmpty { result[agent.name] = values }
        }
        return result
    }

    /// The floods `options` asks for, started against the running processes.
    func startFloods(_ cluster: Cluster, admin: ControlClient) async throws -> (
        dataPlane: [ConnectionFlood], control: TLSFlood?
    ) {
        var dataPlane: [ConnectionFlood] = []
        if let count = self.options.floodDataPlane, count > 0 {
            let nodes = try await Cluster.admin(admin) { $0.nodeList = .init() }.adminReply.nodeList.nodes
            for node in nodes {
                guard let address = node.dataPlaneAddresses.first else { continue }
                let parsed = try ControlAddress(parsing: address)
                dataPlane.append(ConnectionFlood(host: parsed.host, port: parsed.port, connections: count))
            }
        }
        var control: TLSFlood?
        if let count = self.options.floodControl, count > 0, let address = cluster.address {
            control = try TLSFlood(host: address.host, port: address.port, sources: ["127.0.0.2"], connections: count)
        }
        return (dataPlane, control)
    }

    static func makeTemporaryDirectory() throws -> String {
        var template = Array("\(NSTemporaryDirectory())/ringmaster-demo-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else {
            throw LocalClusterError("could not create a temporary directory: \(String(cString: strerror(errno)))")
        }
        return String(cString: result)
    }
}

extension TrainingDemo {
    /// The data-plane port `agent` listens on, from its log line `data plane listening`.
    static func dataPlanePort(of agent: ChildProcess) throws -> Int {
        for line in agent.output.lines where line.contains("data plane listening") {
            guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("address=") }),
                let port = field.split(separator: ":").last.flatMap({ Int($0) })
            else { continue }
            return port
        }
        throw LocalClusterError("\(agent.name) has not logged its data-plane address")
    }
}

extension TrainingDemo.Options {
    /// The demo's job, as a value.
    public func spec() -> JobSpec {
        var workload: (kind: String, parameters: [String: Any], path: String, samples: Int)
        switch self.model {
        case .digits(.sgd):
            workload = (
                "mlp", ["hidden": [128], "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9], "builtin:digits",
                1437
            )
        case .digits(.adam):
            workload = ("mlp", ["hidden": [128], "optimizer": "adam", "learning_rate": 0.001], "builtin:digits", 1437)
        case .synthetic(let parameters):
            workload = ("synthetic", ["parameters": parameters, "buckets": 8], "synthetic", 100_000)
        case .torchDigits(let script, let python, let timeout):
            let data = (try? DigitsDataset.bundledURL().path) ?? "digits.csv.gz"
            workload = (
                "torch", Self.torchParameters(script: script, data: data, python: python, timeout: timeout), data,
                WorkloadCatalog.bundledDigitsTrainingSamples
            )
        case .torchMiniLM(let script, let data, let python, let timeout):
            workload = (
                "torch", Self.torchParameters(script: script, data: data, python: python, timeout: timeout), data,
                TrainingDemo.topicsTrainingSamples
            )
        }
        if workload.kind == "torch", let workers = self.workersPerNode {
            workload.parameters["workers_per_node"] = workers
        }
        if workload.kind == "torch", let device = self.device {
            workload.parameters["args"] = (workload.parameters["args"] as? [String] ?? []) + ["--device", device]
        }
        return JobSpec(
            name: "demo",
            workloadKind: workload.kind,
            // Numbers, text and lists of them: dumping cannot fail.
            workloadParameters: (try? Yams.dump(object: workload.parameters, sortKeys: true)) ?? "",
            datasetPath: workload.path,
            datasetSamples: workload.samples,
            globalBatchSize: self.batchSize,
            steps: self.steps,
            seed: self.seed,
            minNodes: 1,
            maxNodes: self.agents + (self.addAgentAtStep == nil ? 0 : 1),
            checkpointDirectory: self.checkpointDirectory,
            checkpointIntervalSteps: self.checkpointDirectory == nil ? 0 : self.checkpointInterval,
            checkpointKeep: 3,
            resume: self.resume,
            transport: self.transport
        )
    }

    /// A torch workload's settings: the script, given `--data` and the data set's path, on one
    /// thread per worker (the demo's agents share one machine).
    static func torchParameters(script: String, data: String, python: String, timeout: Int) -> [String: Any] {
        [
            "script": script, "python": python, "args": ["--data", data], "env": ["OMP_NUM_THREADS": "1"],
            "step_timeout_seconds": timeout,
        ]
    }
}

/// An error from running a local cluster, saying what it waited for or what failed.
public struct LocalClusterError: Error, CustomStringConvertible {
    public var description: String

    /// Makes an error.
    public init(_ description: String) {
        self.description = description
    }
}
