import JobModel

/// The coordinator's decisions: rendezvous, ranks, leases, generations and the data cursor.
///
/// ## Algorithm
///
/// The machine holds nodes (agents that said hello) and jobs. It does no I/O and reads no clock:
/// the shell feeds it events and commands with the current time (`now`, a duration since the
/// shell started) and carries out the actions it returns.
///
/// - **Leases.** A node's lease runs `lease` past its last hello or heartbeat. A `tick` whose time
///   is past a lease marks the node failed.
/// - **Rendezvous.** A waiting job takes idle nodes in submission order. With `max` (or the resize
///   target) available it starts at once; with at least `min` it starts when a settle window has
///   passed since it first could, so that a burst of joins lands in one generation.
/// - **Generations.** Every membership change of a running job (a failure, disconnect, leave,
///   drain, a node joining, a resize, a coordinator restart) ends the generation: every old
///   member is told to abort, and the new members get an assignment for generation + 1. Messages
///   that name an older generation are refused (and reported so they can be counted).
/// - **Ranks.** A survivor keeps its rank when that rank still exists in the new world; the ranks
///   that free up go to the remaining survivors (by old rank) and then to new nodes (by id). So
///   rank 0 stays put unless its node leaves. When a generation has fewer places than nodes (a
///   shrink), the nodes known to hold the training state at the cursor (those that committed the
///   step before it) are kept first: a newcomer that has not trained yet holds nothing, and
///   keeping it instead would lose the state.
/// - **Data cursor.** The job's cursor is the first global step not yet completed by every member.
///   A generation resumes at the cursor or past it: its members resume from the furthest step
///   boundary one of them holds (a member applies a step only once its all-reduce completed, and
///   that needs every member's gradients, so every step before that boundary was trained whole),
///   and say where (`resumed`); the steps between the cursor and there are then committed with
///   the ids their trainers reported, and, for members whose reports never came (they died, or
///   the report was refused as stale), the ids `DataOrder` gives their ranks. A step in flight
///   that no member completed is redone whole by the new generation: no sample is skipped, and
///   none counts twice. Which samples a rank takes is `DataOrder`'s; a step's global batch does
///   not depend on who trains it.
/// - **Restart.** Only `JobRecord`s are durable. A restored machine knows no nodes; running jobs
///   wait `recoveryWindow` for their members to say hello again, then continue in the next
///   generation from the saved cursor with those that came back.
public struct CoordinatorMachine: Sendable {
    // MARK: - Types

    /// Timing settings.
    public struct Settings: Sendable, Hashable {
        /// How long a node stays alive without a heartbeat.
        public var lease: Duration
        /// How long a job that could start with fewer than its target waits for more nodes.
        public var settleWindow: Duration
        /// After a restart, how long running jobs wait for their members to come back.
        public var recoveryWindow: Duration
        /// How long a drained node has to leave before it is removed anyway.
        public var drainGrace: Duration
        /// How long a job that some node could not run waits while too few of the other online
        /// nodes are left to run it, before it fails with their reasons.
        public var unrunnableTimeout: Duration

        /// Settings with the defaults: 2 s lease, 1 s settle window, 5 s recovery, 30 s drain grace,
        /// 60 s before a job no node can run fails.
        public init(
            lease: Duration = .seconds(2),
            settleWindow: Duration = .seconds(1),
            recoveryWindow: Duration = .seconds(5),
            drainGrace: Duration = .seconds(30),
            unrunnableTimeout: Duration = .seconds(60)
        ) {
            self.lease = lease
            self.settleWindow = settleWindow
            self.recoveryWindow = recoveryWindow
            self.drainGrace = drainGrace
            self.unrunnableTimeout = unrunnableTimeout
        }
    }

    /// What an agent announced about itself.
    public struct Capabilities: Sendable, Hashable, Codable {
        /// GPUs on the host.
        public var gpus: UInt32
        /// Data-plane addresses (`host:port`).
        public var dataPlaneAddresses: [String]
        /// RDMA ports its data plane may use.
        public var rdmaPorts: [RDMAPort]
        /// How many steps past the cursor its agent trains before it waits for the cursor to move
        /// (its flow-control window); 0 when the agent did not say, and the cursor is then
        /// announced to its jobs at every move.
        public var stepsAhead: UInt64

        /// Makes capabilities.
        public init(
            gpus: UInt32 = 0, dataPlaneAddresses: [String] = [], rdmaPorts: [RDMAPort] = [], stepsAhead: UInt64 = 0
        ) {
            self.gpus = gpus
            self.dataPlaneAddresses = dataPlaneAddresses
            self.rdmaPorts = rdmaPorts
            self.stepsAhead = stepsAhead
        }

        /// Whether a generation may run over RDMA with this node.
        public var hasUsableRDMAPort: Bool { self.rdmaPorts.contains(where: \.usable) }
    }

    /// Why a generation started.
    public enum Cause: String, Sendable, Hashable, Codable {
        /// The job started (or restarted after waiting for nodes).
        case start
        /// A member's lease expired.
        case leaseExpired = "lease_expired"
        /// A member's control connection closed.
        case disconnected
        /// A member left on its own (SIGTERM, preemption).
        case left
        /// A member was drained by an operator.
        case drained
        /// A node joined while the job ran below its target.
        case joined
        /// An operator resized the job.
        case resized
        /// The coordinator restarted.
        case coordinatorRestarted = "coordinator_restarted"
        /// A member could not run the job's workload (its data set could not be opened, say).
        case cannotRun = "cannot_run"
        /// A member could not set up the generation's RDMA data plane: the next runs on TCP.
        case rdmaSetUpFailed = "rdma_set_up_failed"
        /// A member's work failed with every member still there (a peer it could not reach, a
        /// deadline): the next generation starts after a grace.
        case generationFailed = "generation_failed"
    }

    /// Where a job stands.
    public enum Phase: String, Sendable, Hashable, Codable {
        /// Waiting for at least `min` nodes.
        case waiting
        /// Running in its current generation.
        case running
        /// Trained all its steps.
        case finished
        /// Cancelled by an operator.
        case cancelled
        /// No node could run it (`JobRecord.failure` says why).
        case failed
    }

    /// The durable part of a job: what a restarted coordinator needs to continue it.
    public struct JobRecord: Sendable, Hashable, Codable {
        /// The spec it was submitted with.
        public var spec: JobSpec
        /// Where it stands.
        public var phase: Phase
        /// The current (or last) generation; 0 before the first start.
        public var generation: UInt64
        /// The members of the current generation, index = rank (of the last generation, for a
        /// finished job; none for a waiting or cancelled one).
        public var members: [String]
        /// The world size the job aims for (`max`, or the last resize).
        public var targetNodes: Int
        /// The first global step not yet completed by every member.
        public var cursor: UInt64
        /// Generations started so far.
        public var generationsStarted: UInt64
        /// Why the current generation started.
        public var lastCause: Cause?
        /// Order in which jobs were submitted (nodes go to earlier jobs first).
        public var sequence: UInt64
        /// The samples committed steps trained, from the ids members reported (nil before the first).
        public var samples: SampleAccounting?
        /// The checkpoint step the job was resumed from, if it was.
        public var resumedFrom: UInt64?
        /// Nodes that could not run the job, with their reasons; it is not offered to them again.
        /// (Optional so that records written before it existed still decode.)
        public var cannotRun: [String: String]?
        /// Why the job failed, when its phase is `failed`.
        public var failure: String?
        /// Where and why a generation's RDMA set-up failed, if one did: the job's later
        /// generations run on TCP. (Optional: records written before it existed still decode.)
        public var rdmaFailure: String?

        /// The nodes that could not run the job, with their reasons.
        public var refusals: [String: String] { self.cannotRun ?? [:] }
    }

    /// Where a job resumed from a checkpoint starts: its data cursor and sample account.
    public struct JobStart: Sendable, Hashable {
        public var step: UInt64
        public var samples: SampleAccounting?

        public init(step: UInt64, samples: SampleAccounting?) {
            self.step = step
            self.samples = samples
        }
    }

    /// One member of a generation, as every member's assignment lists it.
    public typealias Member = JobModel.Member

    /// A generation's assignment, the same for every member (each finds its own rank in it).
    public struct Assignment: Sendable, Hashable {
        /// The job.
        public var job: String
        /// The generation it is for.
        public var generation: UInt64
        /// Members by rank.
        public var members: [Member]
        /// The global step training resumes at.
        public var resumeStep: UInt64
        /// The job's spec (data order, batch, workload).
        public var spec: JobSpec
        /// The generation's data plane (each member's RDMA device is in `members`).
        public var transport: DataPlaneTransport

        /// The world size.
        public var worldSize: Int { self.members.count }

        /// What `node` is told: its own rank in this generation, with the data-plane `secret`;
        /// nil when it is not a member.
        public func assignment(for node: String, dataPlaneSecret secret: [UInt8]) -> JobModel.Assignment? {
            guard let rank = self.members.first(where: { $0.node == node })?.rank else { return nil }
            return JobModel.Assignment(
                job: self.job,
                generation: self.generation,
                rank: rank,
                members: self.members,
                resumeStep: self.resumeStep,
                training: self.spec.training,
                dataPlaneSecret: secret,
                transport: self.transport
            )
        }
    }

    /// A checkpoint ready to commit: its shards, by rank, and what its manifest records.
    public struct CheckpointCommit: Sendable, Hashable {
        /// The job, and the generation whose members saved the shards.
        public var job: String
        public var generation: UInt64
        /// The step boundary the checkpoint holds.
        public var step: UInt64
        /// Every member's shard, by rank.
        public var shards: [ShardReport]
        /// The sample account at that step.
        public var samples: SampleAccounting?
        /// The job's spec (data order, workload, retention).
        public var spec: JobSpec
    }

    /// What the shell must do.
    public enum Action: Sendable, Hashable {
        /// Send `node` the assignment of a new generation.
        case assign(node: String, Assignment)
        /// Tell `node` to abort its work in `generation` of `job`.
        case abort(node: String, job: String, generation: UInt64, reason: String)
        /// Ask `node` to leave `job` gracefully within `graceSeconds`.
        case drain(node: String, job: String, generation: UInt64, graceSeconds: UInt32)
        /// A generation started (for logs and metrics), on the data plane `transport` chose;
        /// `rendezvous` is how long the job waited for nodes before it, when it was waiting.
        case generationStarted(
            job: String, generation: UInt64, cause: Cause, members: [String], transport: DataPlaneChoice,
            rendezvous: Duration?)
        /// A job stopped for lack of nodes and waits for at least `min`.
        case jobWaiting(job: String, reason: String)
        /// A job trained all its steps.
        case jobFinished(job: String)
        /// No node could run a job: it failed, for `reason`.
        case jobFailed(job: String, reason: String)
        /// Every member completed `step`: the cursor moved past it.
        case stepCommitted(job: String, generation: UInt64, step: UInt64)
        /// Tell the members of `generation` of `job` that the cursor is at `cursor`. Not at every
        /// move: a member trains up to its window (`Capabilities.stepsAhead`) past the cursor it
        /// was last told, so the cursor is announced once it has moved a quarter of the smallest
        /// window among the members (at every move when a member did not say its window), when a
        /// generation resumes past it, and at the job's last step. (At 1,000 members and 10 steps a
        /// second, an update at every move was 10,000 writes a second.)
        case announceCursor(job: String, generation: UInt64, cursor: UInt64)
        /// `generation` resumed at `to`, past the cursor at `from`: the steps between, trained by
        /// an earlier generation, are committed; `inferredIDs` of their sample ids came from
        /// `DataOrder` (their trainers' reports never arrived), the rest from reports.
        case stepsRolledForward(job: String, generation: UInt64, from: UInt64, to: UInt64, inferredIDs: Int)
        /// A message naming an old generation was refused.
        case staleRefused(node: String, job: String, generation: UInt64, current: UInt64)
        /// A node's lease expired.
        case leaseExpired(node: String)
        /// The job's durable record changed: write it.
        case persist(job: String)
        /// Every member of `generation` reported the same parameter hash for `step`.
        case replicasAgree(job: String, step: UInt64, hash: UInt64)
        /// Members of `generation` reported different parameter hashes for `step`: the replicas
        /// diverged (a bug, or a broken node).
        case replicasDiverged(job: String, generation: UInt64, step: UInt64, hashes: [String: UInt64])
        /// Every member's shard of the checkpoint at `commit.step` is durable and the step is
        /// committed: write its manifest, which commits it.
        case commitCheckpoint(CheckpointCommit)
        /// A member could not save its shard of the checkpoint at `step`: that checkpoint will not
        /// be committed, and the previous one stays the latest.
        case shardFailed(node: String, job: String, step: UInt64, reason: String)
        /// A shard report from a node that is not a member of the job's current generation.
        case shardRefused(node: String, job: String, generation: UInt64, step: UInt64)
    }

    /// Something that happened, reported by the shell.
    public enum Event: Sendable, Hashable {
        /// A node opened a session (hello).
        case nodeOnline(node: String, Capabilities)
        /// A node's control connection closed.
        case nodeOffline(node: String)
        /// A heartbeat, naming the generation the node holds (if any).
        case heartbeat(node: String, job: String?, generation: UInt64)
        /// A node completed a step in a generation (a report of an older generation is refused,
        /// but its sample ids are kept for the steps that a later generation may roll forward).
        case stepCompleted(
            node: String, job: String, generation: UInt64, step: UInt64, samples: [Int] = [],
            parameterHash: UInt64? = nil)
        /// A member's generation resumed at step boundary `step` (see `StepReport.resumedAt`).
        case resumed(node: String, job: String, generation: UInt64, step: UInt64)
        /// A member's shard of a checkpoint is durable, or its save failed.
        case shardReported(node: String, job: String, generation: UInt64, ShardReport)
        /// A node leaves a job (SIGTERM, or answering a drain).
        case left(node: String, job: String, generation: UInt64)
        /// A member cannot run the job's workload, for `reason`; it stays available for other jobs.
        case cannotRun(node: String, job: String, generation: UInt64, reason: String)
        /// A member's work in `generation` failed, for `reason` (`rdmaSetUp`: setting up its RDMA
        /// queue pairs failed); see `GenerationFailure`.
        case generationFailed(node: String, job: String, generation: UInt64, reason: String, rdmaSetUp: Bool)
        /// Time passed: check leases, settle windows, recovery and drain deadlines.
        case tick
    }

    /// An operator's request.
    public enum Command: Sendable, Hashable {
        /// Start a job.
        case submit(JobSpec, start: JobStart? = nil)
        /// Change a job's node count.
        case resize(job: String, nodes: Int)
        /// Stop a job for good.
        case cancel(job: String)
        /// Take a node out of service: it leaves its job and gets no new work.
        case drain(node: String)
    }

    /// A refused command; nothing changed.
    public struct CommandError: Error, Sendable, Hashable, CustomStringConvertible {
        /// What kind of refusal.
        public enum Code: String, Sendable, Hashable {
            /// No job has that name.
            case unknownJob
            /// No node has that id.
            case unknownNode
            /// A job with that name exists.
            case duplicateJob
            /// The node count is outside the job's min..max.
            case invalidSize
            /// The spec is not valid.
            case invalidSpec
            /// The job is finished or cancelled.
            case notRunning
        }

        /// The kind.
        public var code: Code
        /// Operator-facing text.
        public var message: String

        /// Makes a refusal.
        public init(code: Code, message: String) {
            self.code = code
            self.message = message
        }

        public var description: String { self.message }
    }

    struct Node: Sendable, Hashable {
        var capabilities: Capabilities
        var online: Bool
        var leaseDeadline: Duration
        var draining: Bool = false
        var drainDeadline: Duration?
        var job: String?
    }

    /// Shards of one checkpoint reported so far.
    struct PendingCheckpoint: Sendable, Hashable {
        /// The generation whose members saved them.
        var generation: UInt64
        /// Each rank's.
        var byRank: [Int: ShardReport] = [:]
    }

    /// A generation a member reported failed, and when the next starts unless a loss comes first.
    struct PendingFailure: Sendable, Hashable {
        var failure: String
        var deadline: Duration
    }

    struct Job: Sendable, Hashable {
        var record: JobRecord
        /// Last step each member completed in this generation.
        var completed: [String: UInt64] = [:]
        /// Nodes known to hold the training state at the cursor: the members that committed the
        /// step before it. A newcomer holds it only once it completed a step; when a generation
        /// must leave nodes out, these are kept first, so that the state is not lost with them.
        var holders: Set<String> = []
        /// Parameter hashes reported in this generation, by step and member (compared, then
        /// dropped, once every member reported; at most 64 steps are kept, for members that die).
        var hashes: [UInt64: [String: UInt64]] = [:]
        /// Shards reported for checkpoints not yet committed, by step: the generation that saved
        /// them and each rank's.
        var shards: [UInt64: PendingCheckpoint] = [:]
        /// The sample account at recent checkpoint boundaries (for the checkpoints' manifests).
        var samplesAtCheckpoint: [UInt64: SampleAccounting] = [:]
        /// Sample ids members reported for steps not yet committed, by step, generation and node
        /// (a repeated report replaces the earlier one). Older generations' are kept for the
        /// steps a later generation rolls forward.
        var reports: [UInt64: [UInt64: [String: [Int]]]] = [:]
        /// The members, by rank, of the generations whose reports are kept, and of the current one.
        var generationMembers: [UInt64: [String]] = [:]
        /// When a waiting job may start below its target.
        var settleDeadline: Duration?
        /// When the job started waiting for nodes (for the rendezvous duration).
        var waitingSince: Duration?
        /// After a restart: members that have not come back by then are left out.
        var recoveryDeadline: Duration?
        /// When a job that nodes refused fails unless enough other nodes come online.
        var unrunnableDeadline: Duration?
        /// The current generation's data plane.
        var transport: DataPlaneTransport = .tcp
        /// A member reported the current generation failed: unless a member is lost first (a
        /// death explains the failure, and its own generation follows), the next generation
        /// starts at `deadline`.
        var pendingFailure: PendingFailure?
        /// Generations in a row that failed without committing a step: each waits twice as long
        /// before the next (from 1.5 leases up to 96), so that a failure that repeats does not spin.
        var failuresInARow = 0
        /// The cursor the current generation's members were last told (in their assignment or an
        /// announcement), and how far it may move before they are told again (see
        /// `Action.announceCursor`).
        var cursorAnnounced: UInt64 = 0
        var announceEvery: UInt64 = 1
    }

    // MARK: - State

    /// Timing settings.
    public let settings: Settings
    var nodes: [String: Node] = [:]
    var jobs: [String: Job] = [:]
    var nextSequence: UInt64 = 0

    /// A machine with no nodes and no jobs.
    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// A machine continuing durable job records after a restart, at time `now`.
    public init(settings: Settings = Settings(), restoring records: [JobRecord], now: Duration) {
        self.settings = settings
        for record in records {
            var job = Job(record: record)
            // Not saved: the last members are the best guess of who holds the state.
            job.holders = Set(record.members)
            if record.phase == .running {
                job.recoveryDeadline = now + settings.recoveryWindow
            }
            if record.phase == .waiting { job.waitingSince = now }
            self.jobs[record.spec.name] = job
            self.nextSequence = max(self.nextSequence, record.sequence + 1)
        }
    }

    // MARK: - Queries

    /// Every job's durable record, in submission order.
    public var records: [JobRecord] {
        self.jobs.values.map(\.record).sorted { $0.sequence < $1.sequence }
    }

    /// One job's durable record.
    /// The sample account as it stood when the cursor reached checkpoint boundary `step`.
    public func samples(job: String, atCheckpoint step: UInt64) -> SampleAccounting? {
        return self.jobs[job]?.samplesAtCheckpoint[step]
    }

    public func record(job: String) -> JobRecord? {
        self.jobs[job]?.record
    }

    /// Where a node stands, as operators and metrics see it.
    public enum NodeState: String, Sendable, Hashable, CaseIterable {
        /// Online, taking work, in no job.
        case idle
        /// Online, a member of a job.
        case busy
        /// Online, taking no new work (drained, or it left its job) until its next session.
        case draining
        /// Its session ended or its lease ran out.
        case offline
    }

    /// A node as the operator sees it.
    public struct NodeStatus: Sendable, Hashable {
        /// The node id.
        public var node: String
        /// Where it stands.
        public var state: NodeState
        /// The job it is a member of.
        public var job: String?
        /// Its rank there.
        public var rank: Int?
        /// Its data-plane addresses.
        public var dataPlaneAddresses: [String]
    }

    /// Every node the machine knows, by id.
    public var nodeStatuses: [NodeStatus] {
        self.nodes.keys.sorted().map { id in
            let node = self.nodes[id]!
            return NodeStatus(
                node: id,
                state: Self.state(of: node),
                job: node.job,
                rank: node.job.flatMap { self.jobs[$0]?.record.members.firstIndex(of: id) },
                dataPlaneAddresses: node.capabilities.dataPlaneAddresses
            )
        }
    }

    /// Counts of nodes by state, every state present.
    public var nodeCounts: [NodeState: Int] {
        var counts = Dictionary(uniqueKeysWithValues: NodeState.allCases.map { ($0, 0) })
        for node in self.nodes.values { counts[Self.state(of: node), default: 0] += 1 }
        return counts
    }

    static func state(of node: Node) -> NodeState {
        !node.online ? .offline : node.draining ? .draining : node.job == nil ? .idle : .busy
    }

    // MARK: - Events

    /// Feeds an event; returns what to do.
    public mutating func on(_ event: Event, now: Duration) -> [Action] {
        var actions: [Action] = []
        switch event {
        case .nodeOnline(let id, let capabilities):
            var node = self.nodes[id] ?? Node(capabilities: capabilities, online: false, leaseDeadline: now)
            if !node.online {
                // A new session: whatever made the node stop taking work (leaving, a drain) is over.
                node.draining = false
                node.drainDeadline = nil
            }
            node.capabilities = capabilities
            node.online = true
            node.leaseDeadline = now + self.settings.lease
            if let jobID = node.job, let job = self.jobs[jobID], !job.record.members.contains(id) {
                node.job = nil
            }
            if node.job == nil,
                let recovering = self.jobOrder().first(where: {
                    self.jobs[$0]?.recoveryDeadline != nil && self.jobs[$0]!.record.members.contains(id)
                })
            {
                // A member of a job held over a coordinator restart is back.
                node.job = recovering
            }
            self.nodes[id] = node
            if let jobID = node.job, self.jobs[jobID]?.recoveryDeadline != nil {
                // A member is back after a restart: continue once all are back.
                self.finishRecoveryIfComplete(jobID, now: now, into: &actions)
            }
            self.placeIdleNodes(now: now, into: &actions)

        case .nodeOffline(let id):
            guard var node = self.nodes[id], node.online else { break }
            node.online = false
            self.nodes[id] = node
            self.memberLost(id, cause: .disconnected, now: now, into: &actions)

        case .heartbeat(let id, let jobID, let generation):
            guard var node = self.nodes[id], node.online else { break }
            node.leaseDeadline = now + self.settings.lease
            self.nodes[id] = node
            if let jobID, let job = self.jobs[jobID], generation < job.record.generation {
                actions.append(
                    .staleRefused(node: id, job: jobID, generation: generation, current: job.record.generation))
            }

        case .stepCompleted(let id, let jobID, let generation, let step, let samples, let hash):
            // The job is changed in place (`update`): a copy taken out and written back would copy
            // its tables, a pass over every member, at every member's every report.
            guard let current = self.jobs[jobID]?.record, current.phase == .running else { break }
            guard generation == current.generation else {
                if generation < current.generation {
                    actions.append(
                        .staleRefused(node: id, job: jobID, generation: generation, current: current.generation))
                    // Kept, for the steps a later generation may roll forward.
                    self.update(jobID) { job in
                        if step >= job.record.cursor, step < job.record.spec.steps,
                            job.generationMembers[generation]?.contains(id) == true
                        {
                            job.reports[step, default: [:]][generation, default: [:]][id] = samples
                        }
                    }
                }
                break
            }
            let reachedCursor = self.update(jobID) { job -> Bool in
                // A member's first report of a generation is checked against the members; its
                // later ones find it in `completed`, which holds members only.
                guard step >= job.record.cursor, step < job.record.spec.steps,
                    job.completed[id] != nil || job.record.members.contains(id)
                else { return false }
                let before = job.completed[id]
                job.completed[id] = max(before ?? 0, step)
                job.reports[step, default: [:]][generation, default: [:]][id] = samples
                if let hash { Self.compare(hash, of: id, step: step, in: &job, into: &actions) }
                // Only the report that brings a member up to the cursor can complete the step
                // there: after every event the cursor is as far as the members' reports allow.
                return before.map { $0 < job.record.cursor } ?? true
            }
            if reachedCursor == true { self.advanceCursor(jobID, now: now, into: &actions) }

        case .resumed(let id, let jobID, let generation, let step):
            guard let job = self.jobs[jobID], job.record.phase == .running else { break }
            guard generation == job.record.generation else {
                if generation < job.record.generation {
                    actions.append(
                        .staleRefused(node: id, job: jobID, generation: generation, current: job.record.generation))
                }
                break
            }
            guard job.record.members.contains(id), step > job.record.cursor, step <= job.record.spec.steps else {
                break
            }
            self.rollForward(jobID, to: step, now: now, into: &actions)

        case .shardReported(let id, let jobID, let generation, let shard):
            // A finished job's last checkpoint commits too: its shards come after the last step.
            guard var job = self.jobs[jobID], job.record.phase == .running || job.record.phase == .finished,
                generation == job.record.generation, job.record.members.contains(id)
            else {
                actions.append(.shardRefused(node: id, job: jobID, generation: generation, step: shard.step))
                break
            }
            if let error = shard.error {
                job.shards[shard.step] = nil
                actions.append(.shardFailed(node: id, job: jobID, step: shard.step, reason: error))
            } else {
                if job.shards[shard.step]?.generation != generation {
                    job.shards[shard.step] = PendingCheckpoint(generation: generation)
                }
                job.shards[shard.step]!.byRank[shard.rank] = shard
                Self.commitReadyCheckpoints(&job, into: &actions)
            }
            self.jobs[jobID] = job

        case .left(let id, let jobID, let generation):
            guard let job = self.jobs[jobID], job.record.phase == .running, job.record.members.contains(id) else {
                if let job = self.jobs[jobID], generation < job.record.generation {
                    actions.append(
                        .staleRefused(node: id, job: jobID, generation: generation, current: job.record.generation))
                }
                break
            }
            let cause: Cause = self.nodes[id]?.draining == true ? .drained : .left
            // A node that leaves gets no new work until it opens a new session.
            self.nodes[id]?.draining = true
            self.memberLost(id, cause: cause, now: now, into: &actions)

        case .generationFailed(let id, let jobID, let generation, let reason, let rdmaSetUp):
            guard var job = self.currentJob(jobID, member: id, generation: generation, into: &actions) else { break }
            let failure = "generation \(generation), \(id): \(reason.prefix(300))"
            guard rdmaSetUp else {
                // The first report starts the grace; a death that explains it ends the generation
                // sooner (its loss starts the next one, which clears this).
                guard job.pendingFailure == nil else { break }
                // Half a lease more than a lease: a member that died before the report was last
                // heard of before it, so its lease has run out by then.
                let grace = self.settings.lease * 3 / 2 * (1 << min(job.failuresInARow, 6))
                job.pendingFailure = PendingFailure(failure: failure, deadline: now + grace)
                self.jobs[jobID] = job
                break
            }
            job.record.rdmaFailure = failure
            self.jobs[jobID] = job
            switch job.record.spec.transport {
            case .rdma:
                self.fail(
                    jobID,
                    reason:
                        "its RDMA set-up failed (\(failure)) and its spec asks for transport: rdma only; fix the RDMA devices, or submit it again under a new name with transport: auto to fall back to TCP",
                    into: &actions)
            case .auto, .tcp:
                self.regenerate(jobID, cause: .rdmaSetUpFailed, now: now, into: &actions)
            }

        case .cannotRun(let id, let jobID, let generation, let reason):
            guard var job = self.currentJob(jobID, member: id, generation: generation, into: &actions) else { break }
            // Not draining: the node is as free as before for any other job.
            job.record.cannotRun = job.record.refusals.merging([id: reason]) { $1 }
            self.jobs[jobID] = job
            self.memberLost(id, cause: .cannotRun, now: now, into: &actions)
            self.placeIdleNodes(now: now, into: &actions)

        case .tick:
            for id in self.nodes.keys.sorted() {
                guard let node = self.nodes[id] else { continue }
                if node.online && node.leaseDeadline < now {
                    self.nodes[id]!.online = false
                    actions.append(.leaseExpired(node: id))
                    self.memberLost(id, cause: .leaseExpired, now: now, into: &actions)
                } else if let deadline = node.drainDeadline, deadline <= now, node.job != nil {
                    self.memberLost(id, cause: .drained, now: now, into: &actions)
                }
            }
            for jobID in self.jobOrder() {
                if let deadline = self.jobs[jobID]?.recoveryDeadline, deadline <= now {
                    self.finishRecovery(jobID, now: now, into: &actions)
                }
                if var job = self.jobs[jobID], job.record.phase == .running, let pending = job.pendingFailure,
                    pending.deadline <= now
                {
                    // Every member is still there: the failure is the generation's own. Over RDMA
                    // under auto, the path is suspect, so the job goes on over TCP.
                    if job.transport == .rdma && job.record.spec.transport == .auto {
                        job.record.rdmaFailure = pending.failure
                    }
                    job.failuresInARow += 1
                    self.jobs[jobID] = job
                    self.regenerate(jobID, cause: .generationFailed, now: now, into: &actions)
                }
                self.checkRunnable(jobID, now: now, into: &actions)
            }
            self.placeIdleNodes(now: now, into: &actions)
        }
        return actions
    }

    /// A waiting job that some node could not run: while fewer than `min` of the online nodes are
    /// left that did not refuse it, a deadline runs; when it passes, the job fails with the
    /// refusals as its reason. Enough nodes online again clears the deadline.
    mutating func checkRunnable(_ jobID: String, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID], job.record.phase == .waiting, !job.record.refusals.isEmpty else { return }
        let refused = job.record.refusals
        let candidates = self.nodes.filter { $0.value.online && refused[$0.key] == nil }.count
        guard candidates < job.record.spec.minNodes else {
            if job.unrunnableDeadline != nil {
                job.unrunnableDeadline = nil
                self.jobs[jobID] = job
            }
            return
        }
        guard let deadline = job.unrunnableDeadline else {
            job.unrunnableDeadline = now + self.settings.unrunnableTimeout
            self.jobs[jobID] = job
            return
        }
        guard deadline <= now else { return }
        let reasons = refused.keys.sorted().map { "\($0): \(refused[$0]!)" }.joined(separator: "; ")
        let reason =
            "no node can run it: \(refused.count) node(s) could not (\(reasons)), and \(candidates) other online node(s) are fewer than nodes.min (\(job.record.spec.minNodes)); fix the spec or the nodes and submit it again under a new name"
        job.record.phase = .failed
        job.record.failure = reason
        job.record.members = []
        job.settleDeadline = nil
        job.unrunnableDeadline = nil
        self.jobs[jobID] = job
        actions.append(.jobFailed(job: jobID, reason: reason))
        actions.append(.persist(job: jobID))
    }

    /// The running job `jobID` when `member` is a member of its current `generation`; nil otherwise,
    /// refusing (as stale) a message from an older generation.
    func currentJob(_ jobID: String, member: String, generation: UInt64, into actions: inout [Action]) -> Job? {
        guard let job = self.jobs[jobID] else { return nil }
        guard job.record.phase == .running, job.record.generation == generation, job.record.members.contains(member)
        else {
            if generation < job.record.generation {
                actions.append(
                    .staleRefused(node: member, job: jobID, generation: generation, current: job.record.generation))
            }
            return nil
        }
        return job
    }

    /// Fails a running job: its members are told to abort and are free again.
    mutating func fail(_ jobID: String, reason: String, into actions: inout [Action]) {
        guard var job = self.jobs[jobID] else { return }
        for member in job.record.members {
            actions.append(.abort(node: member, job: jobID, generation: job.record.generation, reason: "job failed"))
            self.nodes[member]?.job = nil
        }
        job.record.phase = .failed
        job.record.failure = reason
        job.record.members = []
        job.settleDeadline = nil
        job.recoveryDeadline = nil
        self.jobs[jobID] = job
        actions.append(.jobFailed(job: jobID, reason: reason))
        actions.append(.persist(job: jobID))
    }

    // MARK: - Commands

    /// Applies an operator's command, or refuses it (changing nothing).
    public mutating func apply(_ command: Command, now: Duration) throws(CommandError) -> [Action] {
        var actions: [Action] = []
        switch command {
        case .submit(let spec, let start):
            do {
                try spec.validate()
            } catch {
                throw CommandError(code: .invalidSpec, message: error.description)
            }
            guard self.jobs[spec.name] == nil else {
                throw CommandError(
                    code: .duplicateJob, message: "a job named \(spec.name) already exists; choose another name")
            }
            if let start, start.step >= spec.steps {
                throw CommandError(
                    code: .invalidSpec,
                    message:
                        "the checkpoint to resume from is at step \(start.step), not before the job's last step (steps: \(spec.steps)); raise steps"
                )
            }
            let record = JobRecord(
                spec: spec,
                phase: .waiting,
                generation: 0,
                members: [],
                targetNodes: spec.maxNodes,
                cursor: start?.step ?? 0,
                generationsStarted: 0,
                lastCause: nil,
                sequence: self.nextSequence,
                samples: start?.samples,
                resumedFrom: start?.step
            )
            self.nextSequence += 1
            self.jobs[spec.name] = Job(record: record, waitingSince: now)
            actions.append(.persist(job: spec.name))
            self.placeIdleNodes(now: now, into: &actions)

        case .resize(let jobID, let count):
            guard var job = self.jobs[jobID] else { throw self.unknownJob(jobID) }
            let spec = job.record.spec
            guard (spec.minNodes...spec.maxNodes).contains(count) else {
                throw CommandError(
                    code: .invalidSize,
                    message:
                        "job \(jobID) runs with \(spec.minNodes) to \(spec.maxNodes) nodes (its spec's nodes.min..nodes.max); \(count) is outside that"
                )
            }
            guard job.record.phase == .running || job.record.phase == .waiting else {
                throw CommandError(
                    code: .notRunning, message: "job \(jobID) is \(job.record.phase.rawValue); it cannot be resized")
            }
            job.record.targetNodes = count
            self.jobs[jobID] = job
            actions.append(.persist(job: jobID))
            if job.record.phase == .running && job.record.members.count > count {
                self.regenerate(jobID, cause: .resized, now: now, into: &actions)
            }
            self.placeIdleNodes(now: now, into: &actions, growCause: .resized)

        case .cancel(let jobID):
            guard var job = self.jobs[jobID] else { throw self.unknownJob(jobID) }
            guard job.record.phase == .running || job.record.phase == .waiting else {
                throw CommandError(code: .notRunning, message: "job \(jobID) is already \(job.record.phase.rawValue)")
            }
            for member in job.record.members {
                actions.append(
                    .abort(node: member, job: jobID, generation: job.record.generation, reason: "the job was cancelled")
                )
                self.nodes[member]?.job = nil
            }
            job.record.phase = .cancelled
            job.record.members = []
            job.settleDeadline = nil
            job.recoveryDeadline = nil
            self.jobs[jobID] = job
            actions.append(.persist(job: jobID))
            self.placeIdleNodes(now: now, into: &actions)

        case .drain(let id):
            guard var node = self.nodes[id] else {
                throw CommandError(
                    code: .unknownNode, message: "no node has id \(id); `ringmaster node list` shows the known nodes")
            }
            guard !node.draining else { break }
            node.draining = true
            if let jobID = node.job, let job = self.jobs[jobID] {
                let grace = self.settings.drainGrace
                node.drainDeadline = now + grace
                actions.append(
                    .drain(
                        node: id, job: jobID, generation: job.record.generation,
                        graceSeconds: UInt32(grace.components.seconds))
                )
            }
            self.nodes[id] = node
        }
        return actions
    }

    func unknownJob(_ id: String) -> CommandError {
        CommandError(code: .unknownJob, message: "no job is named \(id); `ringmaster job status` lists the jobs")
    }

    // MARK: - Membership

    /// Job ids in submission order.
    func jobOrder() -> [String] {
        self.jobs.values.sorted { $0.record.sequence < $1.record.sequence }.map(\.record.spec.name)
    }

    /// A node that may get work: online, not draining, in no job.
    func isIdle(_ id: String) -> Bool {
        guard let node = self.nodes[id] else { return false }
        return node.online && !node.draining && node.job == nil
    }

    /// A node that may get work in `job`: idle, it did not say it cannot run it, and it has an
    /// RDMA port if the job runs over RDMA only.
    func isIdle(_ id: String, for job: Job) -> Bool {
        self.isIdle(id) && job.record.refusals[id] == nil
            && (job.record.spec.transport != .rdma || self.nodes[id]?.capabilities.hasUsableRDMAPort == true)
    }

    /// A member stopped being usable (failed, disconnected, left, drained).
    mutating func memberLost(_ id: String, cause: Cause, now: Duration, into actions: inout [Action]) {
        guard let jobID = self.nodes[id]?.job, let job = self.jobs[jobID], job.record.members.contains(id) else {
            return
        }
        if job.recoveryDeadline != nil { return }  // recovery decides when it ends
        self.regenerate(jobID, cause: cause, now: now, into: &actions)
    }

    /// Ends the current generation of a running job and starts the next one with the usable
    /// members and idle nodes up to the target, or pauses the job if that is fewer than `min`.
    mutating func regenerate(_ jobID: String, cause: Cause, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID] else { return }
        let old = job.record.members
        for member in old {
            actions.append(.abort(node: member, job: jobID, generation: job.record.generation, reason: cause.rawValue))
            self.nodes[member]?.job = nil
            self.nodes[member]?.drainDeadline = nil
        }
        let survivors = old.filter { self.isIdle($0, for: job) }
        let oldSet = Set(old)
        let newcomers = self.nodes.keys.filter { self.isIdle($0, for: job) && !oldSet.contains($0) }.sorted()
        let target = job.record.targetNodes
        let spec = job.record.spec
        job.recoveryDeadline = nil
        job.completed = [:]
        job.hashes = [:]
        guard survivors.count + newcomers.count >= spec.minNodes else {
            job.record.phase = .waiting
            job.record.members = []
            job.waitingSince = now
            job.settleDeadline = nil
            self.jobs[jobID] = job
            actions.append(
                .jobWaiting(
                    job: jobID,
                    reason:
                        "\(survivors.count + newcomers.count) usable node(s) after \(cause.rawValue); it needs at least \(spec.minNodes)"
                )
            )
            actions.append(.persist(job: jobID))
            return
        }
        // Fewer places than nodes: those holding the state go first, then the other survivors,
        // then newcomers (at cursor 0 every node holds the initial state).
        let worldSize = min(target, survivors.count + newcomers.count)
        let holds = { (node: String) in job.record.cursor == 0 || job.holders.contains(node) }
        let chosen = Set((survivors.filter(holds) + survivors.filter { !holds($0) } + newcomers).prefix(worldSize))
        let members = Self.rank(
            previous: old, survivors: survivors.filter(chosen.contains), newcomers: newcomers.filter(chosen.contains),
            worldSize: worldSize)
        self.jobs[jobID] = job
        self.start(jobID, members: members, cause: cause, now: now, into: &actions)
    }

    /// Starts the next generation of a job with `members` (index = rank).
    mutating func start(_ jobID: String, members: [String], cause: Cause, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID] else { return }
        let rendezvous = job.waitingSince.map { now - $0 }
        job.record.phase = .running
        job.record.generation += 1
        job.record.generationsStarted += 1
        job.record.members = members
        job.record.lastCause = cause
        job.completed = [:]
        job.generationMembers[job.record.generation] = members
        let referenced = Set(job.reports.values.flatMap(\.keys))
        job.generationMembers = job.generationMembers.filter {
            $0.key == job.record.generation || referenced.contains($0.key)
        }
        job.settleDeadline = nil
        job.waitingSince = nil
        job.recoveryDeadline = nil
        self.jobs[jobID] = job
        for member in members { self.nodes[member]?.job = jobID }
        var choice = DataPlaneChoice.choose(
            job.record.spec.transport,
            members: members.map { ($0, self.nodes[$0]?.capabilities.rdmaPorts ?? []) })
        if choice.transport == .rdma, let failure = job.record.rdmaFailure {
            choice = DataPlaneChoice(
                transport: .tcp, devices: [],
                reason: "RDMA failed earlier (\(failure)), so the job runs on TCP from then on")
        }
        job.transport = choice.transport
        job.pendingFailure = nil
        job.cursorAnnounced = job.record.cursor
        job.announceEvery = Self.announcementInterval(
            windows: members.map { self.nodes[$0]?.capabilities.stepsAhead ?? 0 })
        self.jobs[jobID] = job
        let assignment = Assignment(
            job: jobID,
            generation: job.record.generation,
            members: members.enumerated().map { rank, node in
                Member(
                    node: node, rank: rank, dataPlaneAddresses: self.nodes[node]?.capabilities.dataPlaneAddresses ?? [],
                    rdmaDevice: choice.transport == .rdma ? choice.devices[rank] : nil)
            },
            resumeStep: job.record.cursor,
            spec: job.record.spec,
            transport: choice.transport
        )
        actions.append(
            .generationStarted(
                job: jobID, generation: job.record.generation, cause: cause, members: members, transport: choice,
                rendezvous: rendezvous)
        )
        for member in members {
            actions.append(.assign(node: member, assignment))
        }
        actions.append(.persist(job: jobID))
    }

    /// Ranks for a new generation of `worldSize`: survivors keep their old rank when it exists
    /// in the new world; free ranks go to other survivors (by old rank), then newcomers (by id).
    static func rank(previous: [String], survivors: [String], newcomers: [String], worldSize: Int) -> [String] {
        var ranks = [String?](repeating: nil, count: worldSize)
        var displaced: [String] = []
        let previousRanks = Dictionary(previous.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        for node in survivors.sorted(by: { previousRanks[$0, default: .max] < previousRanks[$1, default: .max] }) {
            if let rank = previousRanks[node], rank < worldSize {
                ranks[rank] = node
            } else {
                displaced.append(node)
            }
        }
        var queue = (displaced + newcomers).makeIterator()
        for rank in 0..<worldSize where ranks[rank] == nil {
            ranks[rank] = queue.next()
        }
        return ranks.map { $0! }
    }

    /// Gives idle nodes to waiting jobs (starting them) and to running jobs below their target
    /// (growing them), in submission order.
    mutating func placeIdleNodes(now: Duration, into actions: inout [Action], growCause: Cause = .joined) {
        for jobID in self.jobOrder() {
            guard var job = self.jobs[jobID] else { continue }
            guard job.record.phase == .waiting || job.record.phase == .running else { continue }
            let unsorted = self.nodes.keys.filter { self.isIdle($0, for: job) }
            if unsorted.isEmpty { continue }
            let idle = unsorted.sorted()
            switch job.record.phase {
            case .waiting:
                guard idle.count >= job.record.spec.minNodes else {
                    if job.settleDeadline != nil {
                        job.settleDeadline = nil
                        self.jobs[jobID] = job
                    }
                    continue
                }
                let target = job.record.targetNodes
                if idle.count < target {
                    if job.settleDeadline == nil {
                        job.settleDeadline = now + self.settings.settleWindow
                        self.jobs[jobID] = job
                    }
                    guard let deadline = job.settleDeadline, deadline <= now else { continue }
                }
                let previous = job.record.members
                let previousSet = Set(previous)
                let members = Self.rank(
                    previous: previous,
                    survivors: idle.filter { previousSet.contains($0) },
                    newcomers: idle.filter { !previousSet.contains($0) },
                    worldSize: min(target, idle.count)
                )
                self.start(jobID, members: members, cause: .start, now: now, into: &actions)
            case .running:
                guard job.recoveryDeadline == nil, job.record.members.count < job.record.targetNodes, !idle.isEmpty
                else { continue }
                self.regenerate(jobID, cause: growCause, now: now, into: &actions)
            case .finished, .cancelled, .failed:
                continue
            }
        }
    }

    // MARK: - Replicas and checkpoints

    /// Records `node`'s parameter hash at `step`; once every member reported, compares them.
    static func compare(_ hash: UInt64, of node: String, step: UInt64, in job: inout Job, into actions: inout [Action])
    {
        job.hashes[step, default: [:]][node] = hash
        if let reported = job.hashes[step], reported.count == job.record.members.count {
            job.hashes[step] = nil
            if Set(reported.values).count == 1 {
                actions.append(.replicasAgree(job: job.record.spec.name, step: step, hash: hash))
            } else {
                actions.append(
                    .replicasDiverged(
                        job: job.record.spec.name, generation: job.record.generation, step: step, hashes: reported))
            }
        }
        // A member that never reports (it died) must not make the map grow without end.
        if job.hashes.count > 64, let oldest = job.hashes.keys.min() { job.hashes[oldest] = nil }
    }

    /// Commits every checkpoint whose shards are all in, from the current generation's members,
    /// at a committed step (a checkpoint of a step that may still be redone would be wrong).
    static func commitReadyCheckpoints(_ job: inout Job, into actions: inout [Action]) {
        guard job.record.spec.checkpointDirectory != nil else { return }
        for step in job.shards.keys.sorted() where step <= job.record.cursor {
            guard let pending = job.shards[step], pending.generation == job.record.generation,
                pending.byRank.count == job.record.members.count
            else { continue }
            job.shards[step] = nil
            actions.append(
                .commitCheckpoint(
                    CheckpointCommit(
                        job: job.record.spec.name, generation: pending.generation, step: step,
                        shards: pending.byRank.values.sorted { $0.rank < $1.rank },
                        samples: job.samplesAtCheckpoint[step], spec: job.record.spec)))
        }
    }

    // MARK: - Progress

    /// Moves the cursor past every step all members completed; finishes the job at its last step.
    /// Nothing more happens (no write is asked for) when the cursor did not move, unless `moved`
    /// says the caller moved it.
    mutating func advanceCursor(_ jobID: String, now: Duration, into actions: inout [Action], moved: Bool = false) {
        let advanced = self.update(jobID) { job -> Bool in
            var advanced = false
            while job.record.cursor < job.record.spec.steps,
                job.record.members.allSatisfy({ job.completed[$0].map { $0 >= job.record.cursor } ?? false })
            {
                actions.append(.stepCommitted(job: jobID, generation: job.record.generation, step: job.record.cursor))
                let reported = job.reports[job.record.cursor]?[job.record.generation] ?? [:]
                Self.commitStep(&job, ids: job.record.members.flatMap { reported[$0] ?? [] })
                advanced = true
            }
            return advanced
        }
        guard advanced == true || moved else { return }
        self.update(jobID) { job in
            let cursor = job.record.cursor
            guard moved || cursor - job.cursorAnnounced >= job.announceEvery || cursor >= job.record.spec.steps
            else { return }
            job.cursorAnnounced = cursor
            actions.append(.announceCursor(job: jobID, generation: job.record.generation, cursor: cursor))
        }
        self.progressed(jobID, now: now, into: &actions)
    }

    /// Steps the cursor may move before the members are told (see `Action.announceCursor`): a
    /// quarter of the smallest of their windows, so that none waits for an announcement before it
    /// is three quarters of its window ahead of the cursor; 1 when a member did not say its window.
    static func announcementInterval(windows: [UInt64]) -> UInt64 {
        max(1, (windows.min() ?? 0) / 4)
    }

    /// Runs `body` on the job in place, nil when there is none. (A job taken out as a copy and
    /// written back copies its tables, a pass over every member, as soon as the copy is changed.)
    @discardableResult
    mutating func update<Result>(_ jobID: String, _ body: (inout Job) -> Result) -> Result? {
        guard self.jobs[jobID] != nil else { return nil }
        return body(&self.jobs[jobID]!)
    }

    /// Commits every step before `step`, which the current generation resumed at: an earlier
    /// generation trained them, and a member holding the state after them was chosen.
    mutating func rollForward(_ jobID: String, to step: UInt64, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID] else { return }
        let from = job.record.cursor
        let order = job.record.spec.order
        var permutation: (epoch: UInt64, ids: [Int])?
        var inferred = 0
        while job.record.cursor < step {
            let current = job.record.cursor
            let epoch = order.epoch(ofStep: current)
            if permutation?.epoch != epoch { permutation = (epoch, order.permutation(epoch: epoch)) }
            // The newest earlier generation that reported the step trained it (a generation that
            // trained it again resumed before it, and so reported it later); its members that did
            // not report took what `DataOrder` gives their ranks.
            var ids: [Int] = []
            if let (generation, byNode) = job.reports[current]?.max(by: { $0.key < $1.key }),
                let members = job.generationMembers[generation]
            {
                for (rank, node) in members.enumerated() {
                    if let reported = byNode[node] {
                        ids += reported
                    } else {
                        let taken = order.samples(
                            step: current, rank: rank, worldSize: members.count, permutation: permutation!.ids)
                        ids += taken
                        inferred += taken.count
                    }
                }
            } else {
                let taken = order.samples(step: current, rank: 0, worldSize: 1, permutation: permutation!.ids)
                ids += taken
                inferred += taken.count
            }
            Self.commitStep(&job, ids: ids)
        }
        self.jobs[jobID] = job
        actions.append(
            .stepsRolledForward(
                job: jobID, generation: job.record.generation, from: from, to: step, inferredIDs: inferred))
        // Steps past it may be complete already; the job may be finished.
        self.advanceCursor(jobID, now: now, into: &actions, moved: true)
    }

    /// Counts the ids of the step at the cursor and moves the cursor past it.
    static func commitStep(_ job: inout Job, ids: [Int]) {
        var samples = job.record.samples ?? SampleAccounting()
        samples.record(step: job.record.cursor, ids: ids, order: job.record.spec.order)
        job.reports[job.record.cursor] = nil
        job.record.samples = samples
        job.record.cursor += 1
        job.failuresInARow = 0
        job.holders = Set(job.record.members)
        let spec = job.record.spec
        if spec.checkpointDirectory != nil, spec.checkpointIntervalSteps > 0,
            job.record.cursor % spec.checkpointIntervalSteps == 0 || job.record.cursor == spec.steps
        {
            job.samplesAtCheckpoint[job.record.cursor] = samples
            if job.samplesAtCheckpoint.count > 8, let oldest = job.samplesAtCheckpoint.keys.min() {
                job.samplesAtCheckpoint[oldest] = nil
            }
        }
    }

    /// After the cursor moved: commits the checkpoints it reached, finishes the job at its last
    /// step, persists the record.
    mutating func progressed(_ jobID: String, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID], job.record.phase == .running else { return }
        Self.commitReadyCheckpoints(&job, into: &actions)
        self.jobs[jobID] = job
        if job.record.cursor >= job.record.spec.steps {
            for member in job.record.members {
                actions.append(.abort(node: member, job: jobID, generation: job.record.generation, reason: "finished"))
                self.nodes[member]?.job = nil
            }
            // The members stay in the record: the shards of the last step's checkpoint may still
            // be on their way, and they are checked against the last generation's members.
            job.record.phase = .finished
            self.jobs[jobID] = job
            actions.append(.jobFinished(job: jobID))
            actions.append(.persist(job: jobID))
            self.placeIdleNodes(now: now, into: &actions)
        } else {
            actions.append(.persist(job: jobID))
        }
    }

    // MARK: - Recovery after a restart

    mutating func finishRecoveryIfComplete(_ jobID: String, now: Duration, into actions: inout [Action]) {
        guard let job = self.jobs[jobID], job.recoveryDeadline != nil else { return }
        if job.record.members.allSatisfy({ self.nodes[$0]?.online == true }) {
            self.finishRecovery(jobID, now: now, into: &actions)
        }
    }

    mutating func finishRecovery(_ jobID: String, now: Duration, into actions: inout [Action]) {
        guard var job = self.jobs[jobID] else { return }
        job.recoveryDeadline = nil
        self.jobs[jobID] = job
        // Members that came back are marked as in the job so that they count as survivors.
        self.regenerate(jobID, cause: .coordinatorRestarted, now: now, into: &actions)
    }
}
