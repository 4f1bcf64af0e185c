import JobModel

/// One rank's shard as recorded in a manifest: where it is, what it holds, and how to verify it.
public struct ShardRecord: Codable, Sendable, Hashable {
    /// The rank that wrote it.
    public var rank: Int
    /// The file's name inside the step directory.
    public var file: String
    /// The first element of the state it holds.
    public var firstElement: Int
    /// How many elements it holds.
    public var elements: Int
    /// Its size in bytes (`elements * 4`).
    public var bytes: Int
    /// The SHA-256 of its bytes, lowercase hex.
    public var sha256: String

    /// A record with every field given.
    public init(rank: Int, file: String, firstElement: Int, elements: Int, bytes: Int, sha256: String) {
        self.rank = rank
        self.file = file
        self.firstElement = firstElement
        self.elements = elements
        self.bytes = bytes
        self.sha256 = sha256
    }

    /// The elements of the state it holds.
    public var range: Range<Int> { self.firstElement..<(self.firstElement + self.elements) }
}

/// What a committed checkpoint holds: written by the coordinator once every shard is durable.
///
/// Training resumes at `step` (the first step not yet trained) with the data cursor
/// (`step`, `cursorEpoch`, `permutationSeed`), in a world of any size: the state is reassembled whole.
public struct CheckpointManifest: Codable, Sendable, Hashable {
    /// The format of this manifest and its shards; this version reads and writes 1.
    public var formatVersion: Int
    /// The job's name.
    public var job: String
    /// The generation (membership epoch) that saved it.
    public var generation: UInt64
    /// The first step not yet trained when the state was saved.
    public var step: UInt64
    /// The epoch of the data cursor.
    public var cursorEpoch: UInt64
    /// The seed of the data permutation.
    public var permutationSeed: UInt64
    /// The number of ranks that wrote shards.
    public var worldSize: Int
    /// Elements in the full state (parameters, then optimizer state).
    public var stateCount: Int
    /// Elements of the state that are parameters (the first ones).
    public var parameterCount: Int
    /// The kind of workload that trains this state.
    public var workloadKind: String
    /// The workload's specification, as the job gave it.
    public var workloadSpec: String
    /// The element type of the shards: `float32-le`.
    public var elementType: String
    /// One record per shard, one shard per rank.
    public var shards: [ShardRecord]
    /// Which samples the committed steps trained, when the coordinator accounts for them.
    public var samples: SampleAccounting?
    /// When the coordinator committed it (Unix time, milliseconds).
    public var committedUnixMilliseconds: Int64
    /// The state's tensors, each with its place in the state, shape and dtype, when the workload
    /// names them (a PyTorch worker's); nil for the Swift workloads and older manifests.
    public var tensors: [StateTensor]?

    /// The format version this code writes.
    public static let currentFormatVersion = 1

    /// A manifest of the current format with every field given.
    public init(
        job: String,
        generation: UInt64,
        step: UInt64,
        cursorEpoch: UInt64,
        permutationSeed: UInt64,
        worldSize: Int,
        stateCount: Int,
        parameterCount: Int,
        workloadKind: String,
        workloadSpec: String,
        shards: [ShardRecord],
        samples: SampleAccounting? = nil,
        committedUnixMilliseconds: Int64,
        tensors: [StateTensor]? = nil,
        formatVersion: Int = CheckpointManifest.currentFormatVersion,
        elementType: String = CheckpointLayout.elementType
    ) {
        self.formatVersion = formatVersion
        self.job = job
        self.generation = generation
        self.step = step
        self.cursorEpoch = cursorEpoch
        self.permutationSeed = permutationSeed
        self.worldSize = worldSize
        self.stateCount = stateCount
        self.parameterCount = parameterCount
        self.workloadKind = workloadKind
        self.workloadSpec = workloadSpec
        self.elementType = elementType
        self.shards = shards
        self.samples = samples
        self.committedUnixMilliseconds = committedUnixMilliseconds
        self.tensors = tensors
    }

    /// Checks what can be checked without reading a shard: the format, and that the shards cover
    /// `0..<stateCount` exactly once with sizes that match their element counts. `path` names the
    /// manifest in messages.
    public func validate(path: String) throws {
        guard self.formatVersion == Self.currentFormatVersion else {
            throw CheckpointError(
                .incompatible,
                "\(path): format version \(self.formatVersion), this version reads \(Self.currentFormatVersion)")
        }
        guard self.elementType == CheckpointLayout.elementType else {
            throw CheckpointError(
                .incompatible,
                "\(path): element type \"\(self.elementType)\", this version reads \"\(CheckpointLayout.elementType)\"")
        }
        guard (0...(Int.max / 8)).contains(self.stateCount), (0...self.stateCount).contains(self.parameterCount) else {
            throw CheckpointError(
                .corrupt,
                "\(path): stateCount \(self.stateCount) and parameterCount \(self.parameterCount) do not fit together")
        }
        var end = 0
        for tensor in self.tensors ?? [] {
            let stateBytes = self.stateCount * CheckpointLayout.bytesPerElement
            guard tensor.offsetBytes >= end, tensor.bytes >= 0, tensor.offsetBytes <= stateBytes - tensor.bytes,
                tensor.shape.allSatisfy({ $0 >= 0 })
            else {
                throw CheckpointError(
                    .corrupt,
                    "\(path): tensor \(tensor.name) (bytes \(tensor.offsetBytes)..<\(tensor.offsetBytes + tensor.bytes)) does not fit in order within the state's \(stateBytes) bytes"
                )
            }
            end = tensor.offsetBytes + tensor.bytes
        }
        var files = Set<String>()
        for shard in self.shards {
            guard CheckpointLayout.isPlainFileName(shard.file) else {
                throw CheckpointError(
                    .corrupt,
                    "\(path): shard of rank \(shard.rank) names \"\(shard.file)\", not a file inside the step directory"
                )
            }
            guard files.insert(shard.file).inserted else {
                throw CheckpointError(.corrupt, "\(path): shard file \(shard.file) listed twice")
            }
            let size = shard.elements.multipliedReportingOverflow(by: CheckpointLayout.bytesPerElement)
            guard (0...self.stateCount).contains(shard.elements), (0...self.stateCount).contains(shard.firstElement),
                !size.overflow, size.partialValue == shard.bytes
            else {
                throw CheckpointError(
                    .corrupt,
                    "\(path): shard \(shard.file) records \(shard.elements) elements from \(shard.firstElement) in \(shard.bytes) bytes, which do not fit together"
                )
            }
            guard shard.sha256.count == 64, shard.sha256.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
                throw CheckpointError(
                    .corrupt, "\(path): shard \(shard.file) has no valid SHA-256 (\"\(shard.sha256)\")")
            }
        }
        var next = 0
        for shard in self.shards.sorted(by: { ($0.firstElement, $0.elements) < ($1.firstElement, $1.elements) }) {
            if shard.firstElement > next {
                throw CheckpointError(
                    .corrupt,
                    "\(path): no shard holds elements \(next)..<\(shard.firstElement) of \(self.stateCount) (a gap)")
            }
            if shard.firstElement < next {
                throw CheckpointError(
                    .corrupt,
                    "\(path): shard \(shard.file) overlaps another at elements \(shard.firstElement)..<\(next)")
            }
            next = shard.firstElement + shard.elements
        }
        guard next == self.stateCount else {
            if next < self.stateCount {
                throw CheckpointError(
                    .corrupt,
                    "\(path): no shard holds elements \(next)..<\(self.stateCount) of \(self.stateCount) (a gap)")
            }
            throw CheckpointError(.corrupt, "\(path): shards hold \(next) elements, the state has \(self.stateCount)")
        }
        guard self.worldSize >= 1, self.shards.count == self.worldSize else {
            throw CheckpointError(
                .corrupt, "\(path): world size \(self.worldSize) but \(self.shards.count) shards listed")
        }
        var ranks = Set<Int>()
        for shard in self.shards {
            guard (0..<self.worldSize).contains(shard.rank), ranks.insert(shard.rank).inserted else {
                throw CheckpointError(
                    .corrupt, "\(path): shard \(shard.file) has rank \(shard.rank), out of range or listed twice")
            }
        }
    }
}
