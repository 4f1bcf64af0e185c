import AgentCore
import ControlPlane
import Foundation
import JobModel
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Synchronization

/// A fleet of light simulated agents against one real coordinator process.
///
/// Each simulated agent is a real mutual-TLS session in this process, with its own key and a
/// certificate from the coordinator's CA (as `ringmaster cert issue` would make it, so that a
/// thousand joins do not dominate the set-up). It says hello, heartbeats at the interval the
/// coordinator's hello reply gives, and when it holds an assignment, sends the step reports a
/// real member would: the sample ids `DataOrder` gives its rank, and a parameter hash every
/// `hashIntervalSteps` steps. The members of a generation step together, as an all-reduce makes
/// them, at `stepsPerSecond`.
///
/// The run has four phases, measured in the coordinator process:
/// 1. **idle**: every agent connected and heartbeating, no job (the baseline CPU);
/// 2. **training**: one job of every agent; CPU per second, resident memory, heartbeat
///    round trips and the steps the coordinator commits per second;
/// 3. **drops**: one agent at a time closes its connection (what the coordinator sees of a
///    kill -9), timed from the close to the last survivor holding its assignment in the next
///    generation;
/// 4. the job's sample account, which says the simulation reported what real members would.
///
/// The step-report cost per step is the coordinator's CPU in training minus its CPU idle, per
/// committed step: everything a step costs it (TLS, decoding, the machine, the state writes).
public enum FleetBenchmark {
    /// What to run.
    public struct Options: Sendable {
        /// Simulated agents.
        public var agents: Int = 1000
        /// Steps per second the members train at.
        public var stepsPerSecond: Double = 10
        /// Seconds of the idle phase.
        public var idleSeconds: Double = 5
        /// Seconds of the training phase.
        public var trainingSeconds: Double = 20
        /// Agents dropped one at a time after the training phase.
        public var drops: Int = 5
        /// The `ringmaster` executable that runs the coordinator.
        public var executable: String
        /// Extra arguments for the coordinator.
        public var coordinatorArguments: [String] = []

        /// Options with defaults.
        public init(executable: String) {
            self.executable = executable
        }
    }

    /// The figures of one run.
    public struct Result: Sendable {
        /// Simulated agents.
        public var agents: Int
        /// Coordinator CPU seconds per second, idle (heartbeats only).
        public var idleCPU: Double
        /// Coordinator CPU seconds per second while the job of every agent trains.
        public var trainingCPU: Double
        /// Coordinator resident memory at the end of the training phase, in bytes.
        public var residentBytes: Int
        /// Heartbeat round trips during training, in milliseconds, sorted.
        public var heartbeatMilliseconds: [Double]
        /// Steps the coordinator committed per second during training.
        public var committedStepsPerSecond: Double
        /// Steps the members sent per second during training.
        public var sentStepsPerSecond: Double
        /// Milliseconds from each drop to the last survivor holding the next generation.
        public var dropMilliseconds: [Double]
        /// Samples the job's account found trained twice, and skipped.
        public var samplesRepeated: UInt64
        public var samplesSkipped: UInt64
        /// Seconds spent issuing certificates and connecting the agents (not part of any figure).
        public var setupSeconds: Double

        /// Coordinator CPU microseconds per committed step beyond the idle baseline.
        public var stepCostMicroseconds: Double {
            guard self.committedStepsPerSecond > 0 else { return .nan }
            return (self.trainingCPU - self.idleCPU) / self.committedStepsPerSecond * 1e6
        }

        /// The `fraction` quantile of the heartbeat round trips.
        public func heartbeat(quantile fraction: Double) -> Double {
            FleetBenchmark.quantile(self.heartbeatMilliseconds, fraction)
        }
    }

    /// Runs the benchmark; `progress` hears what each phase is doing.
    public static func run(_ options: Options, progress: @escaping @Sendable (String) -> Void) async throws -> Result {
        let setupStarted = ContinuousClock.now
        _ = DescriptorLimit.raise()
        let directory = NSTemporaryDirectory() + "/ringmaster-fleet-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = Cluster(
            directory: directory, executable: options.executable, coordinatorArguments: options.coordinatorArguments)
        defer { for child in cluster.children.withLock({ $0 }) { child.signal(SIGKILL) } }
        let admin = try await cluster.startCoordinator()
        guard let address = cluster.address, let pid = cluster.coordinators.withLock({ $0.first?.pid }) else {
            throw BenchmarkError("the coordinator is not running")
        }
        guard let authority = try CertificateAuthority.load(directory: "\(directory)/coordinator") else {
            throw BenchmarkError("the coordinator did not create its CA in \(directory)/coordinator")
        }

        let fleet = Fleet()
        let agents = try (0..<options.agents).map { index in
            let key = KeyAndRequest.makeKey()
            let name = String(format: "fleet-%04d", index)
            let certificate = try authority.issue(
                publicKey: key.publicKey, identity: try PeerIdentity(role: .agent, name: name),
                notBefore: Date().addingTimeInterval(-60), notAfter: Date().addingTimeInterval(6 * 3600))
            let credentials = try Credentials(
                privateKey: key, certificate: certificate, caCertificate: authority.certificate)
            return SimulatedAgent(
                index: index, name: name, client: ControlClient(address: address, credentials: credentials),
                fleet: fleet)
        }
        progress("\(options.agents) agent certificates issued; connecting")

        return try await withThrowingTaskGroup(of: Void.self) { group in
            // In waves: a coordinator under a connection flood closes unauthenticated connections
            // beyond its budget per address, and every agent here comes from 127.0.0.1.
            for wave in stride(from: 0, to: agents.count, by: 32) {
                let members = agents[wave..<min(wave + 32, agents.count)]
                for agent in members { group.addTask { try await agent.run() } }
                try await fleet.wait(within: 60, for: "agents \(wave)..<\(wave + members.count) to connect") {
                    $0.connected >= wave + members.count
                }
            }
            let setupSeconds = MachineBenchmark.seconds(ContinuousClock.now - setupStarted)
            progress(
                String(
                    format: "%d agents connected in %.1f s; idle for %.0f s", agents.count, setupSeconds,
                    options.idleSeconds))

            // Idle: heartbeats only.
            let idleCPU = try await Self.cpuPerSecond(of: pid, over: options.idleSeconds)

            // Training: one job of every agent.
            let job = "fleet"
            let spec = """
                name: \(job)
                workload: {kind: mlp}
                dataset: {path: /data, samples: \(options.agents * 100)}
                batch_size: \(options.agents * 4)
                steps: 10000000
                nodes: {min: \(max(1, options.agents - options.drops)), max: \(options.agents)}
                """
            _ = try await Cluster.admin(admin) { $0.jobSubmit = .with { $0.specYaml = spec } }
            try await fleet.wait(within: 60, for: "every agent to hold its first assignment") {
                $0.holding(generationAfter: 0) == agents.count
            }
            let stepper = Stepper(agents: agents, job: job, stepsPerSecond: options.stepsPerSecond)
            group.addTask { try await stepper.run() }
            progress(
                String(format: "job of %d agents assigned; training for %.0f s", agents.count, options.trainingSeconds))
            // A second to settle into the pace, then the figures.
            try await fleet.wait(within: 30, for: "the first steps of the job to be sent") { _ in stepper.sent > 10 }
            let cursorBefore = try await Self.cursor(of: job, admin: admin)
            let sentBefore = stepper.sent
            fleet.recordHeartbeats(true)
            let started = ContinuousClock.now
            let trainingCPU = try await Self.cpuPerSecond(of: pid, over: options.trainingSeconds)
            let elapsed = MachineBenchmark.seconds(ContinuousClock.now - started)
            fleet.recordHeartbeats(false)
            let cursorAfter = try await Self.cursor(of: job, admin: admin)
            let sentAfter = stepper.sent
            let resident = ProcessSampler.status(of: pid)?.rss ?? 0

            // Drops, one at a time.
            var drops: [Double] = []
            for drop in 0..<options.drops {
                let victim = agents[(drop * 997 + 1) % agents.count]
                let generation = fleet.generation
                let survivors = fleet.live - 1
                let dropped = ContinuousClock.now
                victim.drop()
                try await fleet.wait(within: 30, for: "every survivor to hold generation \(generation + 1)") {
                    $0.holding(generationAfter: generation) == survivors
                }
                let last = fleet.lastAssigned(generationAfter: generation)
                drops.append(MachineBenchmark.seconds(last - dropped) * 1000)
                progress(
                    String(
                        format: "drop %d (%@): %.0f ms to the last of %d survivors holding its assignment", drop + 1,
                        victim.name, drops.last!, survivors))
                // The survivors train again before the next drop.
                let sent = stepper.sent
                try await fleet.wait(within: 30, for: "the survivors to train after drop \(drop + 1)") { _ in
                    stepper.sent > sent + 3
                }
            }

            let status = try await Self.status(of: job, admin: admin)
            group.cancelAll()
            return Result(
                agents: agents.count,
                idleCPU: idleCPU,
                trainingCPU: trainingCPU,
                residentBytes: resident,
                heartbeatMilliseconds: fleet.heartbeats.sorted(),
                committedStepsPerSecond: Double(cursorAfter - cursorBefore) / elapsed,
                sentStepsPerSecond: Double(sentAfter - sentBefore) / elapsed,
                dropMilliseconds: drops,
                samplesRepeated: status.samples.repeated,
                samplesSkipped: status.samples.skipped,
                setupSeconds: setupSeconds
            )
        }
    }

    /// The coordinator's CPU seconds per second over the next `seconds`.
    static func cpuPerSecond(of pid: Int32, over seconds: Double) async throws -> Double {
        guard let before = ProcessSampler.cpuSeconds(of: pid) else { throw BenchmarkError("the coordinator exited") }
        let started = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        guard let after = ProcessSampler.cpuSeconds(of: pid) else { throw BenchmarkError("the coordinator exited") }
        return (after - before) / MachineBenchmark.seconds(ContinuousClock.now - started)
    }

    static func status(of job: String, admin: ControlClient) async throws -> Ringmaster_V1_JobStatus {
        let reply = try await Cluster.admin(admin) { $0.jobStatus = .with { $0.jobID = job } }
        guard case .jobStatus(let status) = reply.adminReply.reply, let first = status.jobs.first else {
            throw BenchmarkError("the coordinator answered a job status with \(reply.kind)")
        }
        return first
    }

    static func cursor(of job: String, admin: ControlClient) async throws -> UInt64 {
        try await self.status(of: job, admin: admin).cursorStep
    }

    /// The `fraction` quantile of `sorted` (NaN when empty).
    public static func quantile(_ sorted: [Double], _ fraction: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
    }
}

// MARK: - The fleet's shared state

/// What the simulated agents hold, and the waits on it.
final class Fleet: Sendable {
    struct State {
        var connected = 0
        var dropped = 0
        /// Each agent's assignment and when it arrived.
        var assignments: [Int: (assignment: Assignment, at: ContinuousClock.Instant)] = [:]
        var recording = false
        var heartbeats: [Double] = []

        /// Agents (not dropped) holding a generation newer than `generation`.
        func holding(generationAfter generation: UInt64) -> Int {
            self.assignments.values.count(where: { $0.assignment.generation > generation })
        }
    }

    let state = Mutex(State())
    /// Signalled on every change a wait may be waiting for.
    let changes: AsyncStream<Void>
    let signal: AsyncStream<Void>.Continuation

    init() {
        (self.changes, self.signal) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    func update(_ body: (inout State) -> Void) {
        self.state.withLock { body(&$0) }
        self.signal.yield()
    }

    /// Waits until `condition` holds (one waiter at a time), failing after `seconds`.
    func wait(within seconds: Double, for what: String, _ condition: @escaping @Sendable (State) -> Bool)
        async throws
    {
        try await withDeadline(seconds: seconds, waitingFor: what) {
            var iterator = self.changes.makeAsyncIterator()
            while !self.state.withLock({ condition($0) }) {
                guard await iterator.next() != nil else { throw CancellationError() }
            }
        }
    }

    func recordHeartbeats(_ on: Bool) { self.state.withLock { $0.recording = on } }
    var heartbeats: [Double] { self.state.withLock { $0.heartbeats } }
    var live: Int { self.state.withLock { $0.assignments.count } }
    var generation: UInt64 { self.state.withLock { $0.assignments.values.map(\.assignment.generation).max() ?? 0 } }

    func lastAssigned(generationAfter generation: UInt64) -> ContinuousClock.Instant {
        self.state.withLock { state in
            state.assignments.values.filter { $0.assignment.generation > generation }.map(\.at).max()!
        }
    }
}

// MARK: - One simulated agent

/// A mutual-TLS session that heartbeats and holds assignments; `Stepper` sends its reports.
final class SimulatedAgent: Sendable {
    let index: Int
    let name: String
    let client: ControlClient
    let fleet: Fleet
    let session = Mutex<ControlSession?>(nil)
    /// When the heartbeat waiting for its ack was sent.
    let heartbeatSent = Mutex<ContinuousClock.Instant?>(nil)
    /// Yields once to close the connection.
    let drops: AsyncStream<Void>
    let dropSignal: AsyncStream<Void>.Continuation

    init(index: Int, name: String, client: ControlClient, fleet: Fleet) {
        self.index = index
        self.name = name
        self.client = client
        self.fleet = fleet
        (self.drops, self.dropSignal) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Closes the connection, as a killed agent's kernel would.
    func drop() {
        self.fleet.update {
            $0.assignments[self.index] = nil
            $0.dropped += 1
        }
        self.session.withLock { $0 = nil }
        self.dropSignal.yield()
    }

    /// One session, until dropped or cancelled.
    func run() async throws {
        try await self.client.withConnection { session in
            var hello = Envelope()
            hello.agentHello = .with {
                $0.agentVersion = "fleet-benchmark"
                $0.dataPlaneAddresses = ["127.0.0.1:\(30000 + self.index)"]
                // A real agent's window (`AgentMachine.Settings.stepsAhead`).
                $0.stepsAhead = AgentMachine.Settings().stepsAhead
            }
            let reply = try await session.request(hello)
            guard case .helloReply(let helloReply) = reply.body else {
                throw BenchmarkError("\(self.name): expected a hello reply, got \(reply.kind)")
            }
            self.session.withLock { $0 = session }
            self.fleet.update { $0.connected += 1 }
            let interval = Duration.milliseconds(Int(helloReply.heartbeatIntervalMs))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while true {
                        let envelope = try await session.next()
                        switch envelope.body {
                        case .heartbeatAck:
                            let now = ContinuousClock.now
                            guard let at = self.heartbeatSent.withLock({ $0.take() }) else { continue }
                            self.fleet.state.withLock {
                                if $0.recording { $0.heartbeats.append(MachineBenchmark.seconds(now - at) * 1000) }
                            }
                        case .assignment(let wire):
                            let now = ContinuousClock.now
                            let assignment = try Assignment(wire: wire)
                            self.fleet.update { state in
                                guard state.assignments[self.index] != nil || self.session.withLock({ $0 }) != nil
                                else { return }
                                state.assignments[self.index] = (assignment, now)
                            }
                        default:
                            continue
                        }
                    }
                }
                group.addTask {
                    // Start at a random point of the interval, as agents that started apart do.
                    try await Task.sleep(for: interval * Double.random(in: 0..<1))
                    while true {
                        var heartbeat = Envelope()
                        let held = self.fleet.state.withLock { $0.assignments[self.index]?.assignment }
                        heartbeat.heartbeat = .with {
                            $0.jobID = held?.job ?? ""
                            $0.generation = held?.generation ?? 0
                        }
                        self.heartbeatSent.withLock { $0 = .now }
                        try await session.send(heartbeat)
                        try await Task.sleep(for: interval)
                    }
                }
                group.addTask {
                    var iterator = self.drops.makeAsyncIterator()
                    _ = await iterator.next()
                }
                // A drop (or the connection's end) ends the session.
                _ = try await group.next()
                group.cancelAll()
            }
        }
    }
}

// MARK: - The members' steps

/// Sends every member's step report at the job's pace: the members of the newest generation that
/// all hold it step together from its resume step, as an all-reduce makes them.
final class Stepper: Sendable {
    let agents: [SimulatedAgent]
    let job: String
    let period: Duration
    let sentSteps = Atomic<Int>(0)

    init(agents: [SimulatedAgent], job: String, stepsPerSecond: Double) {
        self.agents = agents
        self.job = job
        self.period = .milliseconds(Int(1000 / stepsPerSecond))
    }

    /// Steps sent so far (each by every member).
    var sent: Int { self.sentSteps.load(ordering: .relaxed) }

    func run() async throws {
        let hashIntervalSteps: UInt64 = 50
        var next: (generation: UInt64, step: UInt64)?
        var permutation: (epoch: UInt64, ids: [Int])?
        var deadline = ContinuousClock.now
        while true {
            deadline += self.period
            try await Task.sleep(until: deadline)
            let fleet = self.agents.first!.fleet
            let members = fleet.state.withLock { state -> [(Int, Assignment)] in
                guard let newest = state.assignments.values.map(\.assignment.generation).max() else { return [] }
                return state.assignments.compactMap { index, held in
                    held.assignment.generation == newest && held.assignment.job == self.job
                        ? (index, held.assignment) : nil
                }
            }
            guard let first = members.first?.1, members.count == first.worldSize else { continue }
            if next?.generation != first.generation { next = (first.generation, first.resumeStep) }
            let step = next!.step
            let order = first.training.order
            let epoch = order.epoch(ofStep: step)
            if permutation?.epoch != epoch { permutation = (epoch, order.permutation(epoch: epoch)) }
            let hash: UInt64? = (step + 1) % hashIntervalSteps == 0 ? SplitMix64.mix(step) : nil
            for (index, assignment) in members {
                guard let session = self.agents[index].session.withLock({ $0 }) else { continue }
                let ids = order.samples(
                    step: step, rank: assignment.rank, worldSize: assignment.worldSize, permutation: permutation!.ids)
                let report = StepReport(
                    job: self.job, generation: assignment.generation, step: step, loss: 1 / Double(step + 1),
                    sampleIDs: Array(ids), parameterHash: hash)
                // A dropped agent's session may close under the send: its report is lost, as a
                // killed agent's would be.
                try? await session.send(Envelope(report))
            }
            next!.step += 1
            self.sentSteps.add(1, ordering: .relaxed)
            fleet.signal.yield()
        }
    }
}
