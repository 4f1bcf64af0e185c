/// What one member of a generation is told: its rank, who the other members are and where their
/// data planes listen, the step training resumes at, and how the job trains.
///
/// The coordinator makes one for each member of a generation; the agent acts on it. Both convert
/// it from and to its wire form at the session edge, so nothing past the session sees protobuf.
public struct Assignment: Sendable, Hashable, CustomStringConvertible {
    /// The job.
    public var job: String
    /// The generation it is for.
    public var generation: UInt64
    /// This member's rank, in `0..<worldSize`.
    public var rank: Int
    /// Every member, by rank.
    public var members: [Member]
    /// The global step training resumes at: every step before it was completed by every member
    /// of an earlier generation (or lies in the checkpoint the job resumed from).
    public var resumeStep: UInt64
    /// How the job trains.
    public var training: TrainingPlan
    /// Proof of membership for this generation's data plane (never printed).
    public var dataPlaneSecret: [UInt8]
    /// The generation's data plane: TCP, or RDMA over each member's `rdmaDevice`.
    public var transport: DataPlaneTransport

    /// Makes an assignment.
    public init(
        job: String,
        generation: UInt64,
        rank: Int,
        members: [Member],
        resumeStep: UInt64,
        training: TrainingPlan,
        dataPlaneSecret: [UInt8],
        transport: DataPlaneTransport = .tcp
    ) {
        self.transport = transport
        self.job = job
        self.generation = generation
        self.rank = rank
        self.members = members
        self.resumeStep = resumeStep
        self.training = training
        self.dataPlaneSecret = dataPlaneSecret
    }

    /// Members in the generation.
    public var worldSize: Int { self.members.count }

    /// The assignment without its secret.
    public var description: String {
        "job \(self.job) generation \(self.generation) rank \(self.rank) of \(self.worldSize) over \(self.transport.rawValue), resuming at step \(self.resumeStep)"
    }
}

/// One member of a generation, as every member's assignment lists it.
public struct Member: Sendable, Hashable {
    /// The node.
    public var node: String
    /// Its rank.
    public var rank: Int
    /// Where its data plane listens.
    public var dataPlaneAddresses: [String]
    /// The RDMA device it uses when the generation runs over RDMA.
    public var rdmaDevice: String?

    /// Makes a member.
    public init(node: String, rank: Int, dataPlaneAddresses: [String], rdmaDevice: String? = nil) {
        self.node = node
        self.rank = rank
        self.dataPlaneAddresses = dataPlaneAddresses
        self.rdmaDevice = rdmaDevice
    }
}

/// How a job trains, as its agents need it: the workload, the data and its order, the length of
/// the run, and where checkpoints go. Two assignments with equal plans train the same model, so an
/// agent keeps its training state from one generation to the next only while the plan stays equal.
public struct TrainingPlan: Sendable, Hashable {
    /// The workload kind (e.g. `mlp`).
    public var workloadKind: String
    /// The workload's own parameters (YAML text, as the job spec gave them).
    public var workloadParameters: String
    /// Where the data set is.
    public var datasetPath: String
    /// Samples in the data set.
    public var datasetSamples: Int
    /// Samples per global step.
    public var globalBatchSize: Int
    /// Global steps the job trains in all.
    public var steps: UInt64
    /// Seed of the data order and of the workload's initialisation.
    public var seed: UInt64
    /// Where checkpoints go; nil: none.
    public var checkpointDirectory: String?
    /// Steps between checkpoints (0: none).
    public var checkpointIntervalSteps: UInt64

    /// Makes a plan.
    public init(
        workloadKind: String,
        workloadParameters: String,
        datasetPath: String,
        datasetSamples: Int,
        globalBatchSize: Int,
        steps: UInt64,
        seed: UInt64,
        checkpointDirectory: String?,
        checkpointIntervalSteps: UInt64
    ) {
        self.workloadKind = workloadKind
        self.workloadParameters = workloadParameters
        self.datasetPath = datasetPath
        self.datasetSamples = datasetSamples
        self.globalBatchSize = globalBatchSize
        self.steps = steps
        self.seed = seed
        self.checkpointDirectory = checkpointDirectory
        self.checkpointIntervalSteps = checkpointIntervalSteps
    }

    /// The job's data order.
    public var order: DataOrder {
        DataOrder(datasetSize: self.datasetSamples, globalBatchSize: self.globalBatchSize, seed: self.seed)
    }

    /// Whether a checkpoint is due at step boundary `step` (after `step` steps).
    public func checkpointDue(atBoundary step: UInt64) -> Bool {
        guard self.checkpointDirectory != nil, self.checkpointIntervalSteps > 0 else { return false }
        return step % self.checkpointIntervalSteps == 0 || step == self.steps
    }
}

extension JobSpec {
    /// How agents train this job.
    public var training: TrainingPlan {
        TrainingPlan(
            workloadKind: self.workloadKind,
            workloadParameters: self.workloadParameters,
            datasetPath: self.datasetPath,
            datasetSamples: self.datasetSamples,
            globalBatchSize: self.globalBatchSize,
            steps: self.steps,
            seed: self.seed,
            checkpointDirectory: self.checkpointDirectory,
            checkpointIntervalSteps: self.checkpointDirectory == nil ? 0 : self.checkpointIntervalSteps
        )
    }
}

/// A member's report of one completed step.
public struct StepReport: Sendable, Hashable {
    /// The job.
    public var job: String
    /// The generation the step was trained in.
    public var generation: UInt64
    /// The step.
    public var step: UInt64
    /// Mean loss over the global batch.
    public var loss: Double
    /// Ids of the samples this rank trained on.
    public var sampleIDs: [Int]
    /// Hash of the replica's parameters after the step, every few steps.
    public var parameterHash: UInt64?
    /// Accuracy on the held-out test set, from rank 0 after the last step.
    public var testAccuracy: Double?
    /// Set on the report a member sends when its generation resumed ahead of the coordinator's
    /// cursor, at the furthest step boundary a member held: every step before `resumedAt` was
    /// trained and all-reduced by an earlier generation (whose reports the coordinator may not
    /// have had), so it is committed. Such a report completes no step of its own (`step` is
    /// `resumedAt - 1`, `sampleIDs` is empty).
    public var resumedAt: UInt64?

    /// Makes a report.
    public init(
        job: String,
        generation: UInt64,
        step: UInt64,
        loss: Double,
        sampleIDs: [Int],
        parameterHash: UInt64? = nil,
        testAccuracy: Double? = nil,
        resumedAt: UInt64? = nil
    ) {
        self.resumedAt = resumedAt
        self.job = job
        self.generation = generation
        self.step = step
        self.loss = loss
        self.sampleIDs = sampleIDs
        self.parameterHash = parameterHash
        self.testAccuracy = testAccuracy
    }
}

/// A member leaving a job's generation.
public struct Leave: Sendable, Hashable {
    /// The job.
    public var job: String
    /// The generation left.
    public var generation: UInt64
    /// Why, for the coordinator's log and the job's status.
    public var reason: String
    /// Whether this node cannot run the job at all (its workload or data are missing here), as
    /// opposed to leaving it for now (drained, shutting down).
    public var cannotRun: Bool

    /// Makes a leave.
    public init(job: String, generation: UInt64, reason: String, cannotRun: Bool = false) {
        self.job = job
        self.generation = generation
        self.reason = reason
        self.cannotRun = cannotRun
    }
}

/// A member's report that its work in a generation failed with an error that no newer generation
/// or abort explains (its data plane failed, or its RDMA set-up did).
public struct GenerationFailure: Sendable, Hashable {
    /// The job.
    public var job: String
    /// The generation whose work failed.
    public var generation: UInt64
    /// What failed, for the coordinator's log and the job's status.
    public var reason: String
    /// Whether it was the set-up of the generation's RDMA queue pairs that failed.
    public var rdmaSetUp: Bool

    /// Makes a report.
    public init(job: String, generation: UInt64, reason: String, rdmaSetUp: Bool = false) {
        self.job = job
        self.generation = generation
        self.reason = reason
        self.rdmaSetUp = rdmaSetUp
    }
}
