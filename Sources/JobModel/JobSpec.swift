/// A validated job specification: what to train, on which data, with how many nodes.
///
/// Built by a parser (YAML in the coordinator shell) and checked by `validate()`, which names the
/// offending field, so that a bad spec is refused before anything starts.
public struct JobSpec: Sendable, Hashable, Codable {
    /// The job's name, also its id: a DNS label, unique among the coordinator's jobs.
    public var name: String
    /// The workload kind (e.g. `mlp`) that agents run.
    public var workloadKind: String
    /// The workload's own parameters, as YAML text handed to agents unchanged.
    public var workloadParameters: String
    /// Where agents find the data set.
    public var datasetPath: String
    /// Samples in the data set (the coordinator orders them without reading them).
    public var datasetSamples: Int
    /// Samples per global step, the same at every world size.
    public var globalBatchSize: Int
    /// Global steps to train.
    public var steps: UInt64
    /// Seed of the data order (and of the workload's initialisation).
    public var seed: UInt64
    /// Fewest nodes the job runs with.
    public var minNodes: Int
    /// Most nodes the job runs with.
    public var maxNodes: Int
    /// Checkpoint directory, if checkpoints are wanted.
    public var checkpointDirectory: String?
    /// Steps between checkpoints.
    public var checkpointIntervalSteps: UInt64
    /// Checkpoints kept.
    public var checkpointKeep: Int
    /// Start from a committed checkpoint under `checkpointDirectory` instead of from scratch.
    public var resume: Resume?
    /// The data plane asked for; nil is `auto` (kept optional so that specs saved before the
    /// field existed still load).
    public var transportRequest: TransportRequest?

    /// The data plane asked for (`transport:`; default `auto`).
    public var transport: TransportRequest {
        get { self.transportRequest ?? .auto }
        set { self.transportRequest = newValue }
    }

    /// Which checkpoint a job resumes from.
    public enum Resume: Sendable, Hashable, Codable {
        /// The newest committed checkpoint that verifies.
        case latest
        /// The newest committed checkpoint at or before this step that verifies.
        case atOrBefore(UInt64)
    }

    /// Makes a spec; call `validate()` before use.
    public init(
        name: String,
        workloadKind: String = "mlp",
        workloadParameters: String = "",
        datasetPath: String,
        datasetSamples: Int,
        globalBatchSize: Int,
        steps: UInt64,
        seed: UInt64 = 0,
        minNodes: Int,
        maxNodes: Int,
        checkpointDirectory: String? = nil,
        checkpointIntervalSteps: UInt64 = 0,
        checkpointKeep: Int = 3,
        resume: Resume? = nil,
        transport: TransportRequest = .auto
    ) {
        self.name = name
        self.workloadKind = workloadKind
        self.workloadParameters = workloadParameters
        self.datasetPath = datasetPath
        self.datasetSamples = datasetSamples
        self.globalBatchSize = globalBatchSize
        self.steps = steps
        self.seed = seed
        self.minNodes = minNodes
        self.maxNodes = maxNodes
        self.checkpointDirectory = checkpointDirectory
        self.checkpointIntervalSteps = checkpointIntervalSteps
        self.checkpointKeep = checkpointKeep
        self.resume = resume
        self.transportRequest = transport
    }

    /// The job's data order.
    public var order: DataOrder {
        DataOrder(datasetSize: self.datasetSamples, globalBatchSize: self.globalBatchSize, seed: self.seed)
    }

    /// Checks every constraint, throwing for the first field that breaks one.
    public func validate() throws(JobSpecError) {
        guard Self.isLabel(self.name) else {
            throw JobSpecError(
                field: "name",
                reason: "\"\(self.name.prefix(80))\" is not a valid name: use 1 to 63 lowercase letters, digits and '-'"
            )
        }
        guard !self.workloadKind.isEmpty else { throw JobSpecError(field: "workload.kind", reason: "is missing") }
        guard !self.datasetPath.isEmpty else {
            throw JobSpecError(field: "dataset.path", reason: "is missing: say where agents find the data set")
        }
        guard self.datasetSamples > 0 else {
            throw JobSpecError(
                field: "dataset.samples", reason: "must be a positive number of samples, not \(self.datasetSamples)")
        }
        guard self.globalBatchSize > 0 else {
            throw JobSpecError(
                field: "batch_size",
                reason: "must be a positive number of samples per global step, not \(self.globalBatchSize)")
        }
        guard self.steps > 0 else { throw JobSpecError(field: "steps", reason: "must be positive") }
        guard self.minNodes >= 1 else {
            throw JobSpecError(field: "nodes.min", reason: "must be at least 1, not \(self.minNodes)")
        }
        guard self.maxNodes >= self.minNodes else {
            throw JobSpecError(
                field: "nodes.max", reason: "must be at least nodes.min (\(self.minNodes)), not \(self.maxNodes)")
        }
        guard self.maxNodes <= self.globalBatchSize else {
            throw JobSpecError(
                field: "nodes.max",
                reason:
                    "\(self.maxNodes) nodes cannot share a global batch of \(self.globalBatchSize) samples; raise batch_size or lower nodes.max"
            )
        }
        if let directory = self.checkpointDirectory {
            guard directory.hasPrefix("/") else {
                throw JobSpecError(
                    field: "checkpoint.directory", reason: "must be an absolute path, not \"\(directory)\"")
            }
            guard self.checkpointKeep >= 1 else {
                throw JobSpecError(field: "checkpoint.keep", reason: "must keep at least 1 checkpoint")
            }
        }
        if self.resume != nil && self.checkpointDirectory == nil {
            throw JobSpecError(
                field: "resume", reason: "needs checkpoint.directory: say where the checkpoints to resume from are")
        }
    }

    static func isLabel(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        func isAlnum(_ b: UInt8) -> Bool { (97...122).contains(b) || (48...57).contains(b) }
        return (1...63).contains(bytes.count) && bytes.allSatisfy { isAlnum($0) || $0 == 45 }
            && isAlnum(bytes.first!) && isAlnum(bytes.last!)
    }
}

/// A job spec field that is missing or wrong.
public struct JobSpecError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The field, as written in the YAML spec (e.g. `nodes.min`).
    public var field: String
    /// What is wrong and what to do.
    public var reason: String

    /// Makes an error.
    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { "job spec field `\(self.field)` \(self.reason)" }
}
