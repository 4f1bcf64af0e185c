/// A member's report on its shard of a checkpoint: durable where it says, or failed.
public struct ShardReport: Sendable, Hashable {
    /// The step boundary the checkpoint holds.
    public var step: UInt64
    /// The member's rank, and the world size it saved with.
    public var rank: Int
    public var worldSize: Int
    /// Floats in the whole training state, and among them the parameters.
    public var stateCount: Int
    public var parameterCount: Int
    /// The slice of the state this shard holds.
    public var firstElement: Int
    public var elements: Int
    /// The shard's file (relative to the checkpoint directory), its size and SHA-256 (hex).
    public var path: String
    public var bytes: Int
    public var sha256: String
    /// Why the save failed; nil when the shard is durable.
    public var error: String?
    /// The whole state's tensors (empty when the workload has no tensor table).
    public var tensors: [StateTensor]

    /// Makes a report.
    public init(
        step: UInt64, rank: Int, worldSize: Int, stateCount: Int, parameterCount: Int, firstElement: Int,
        elements: Int, path: String, bytes: Int, sha256: String, error: String? = nil, tensors: [StateTensor] = []
    ) {
        self.step = step
        self.rank = rank
        self.worldSize = worldSize
        self.stateCount = stateCount
        self.parameterCount = parameterCount
        self.firstElement = firstElement
        self.elements = elements
        self.path = path
        self.bytes = bytes
        self.sha256 = sha256
        self.error = error
        self.tensors = tensors
    }
}

/// One tensor of a training state held as one flat vector: where its bytes lie in the state, its
/// shape and its dtype (`float32`, `int64`...). A PyTorch worker's state is its tensors' raw bytes
/// one after the other, so a checkpoint's manifest names each of them; the Swift workloads' states
/// have no tensor table.
public struct StateTensor: Sendable, Hashable, Codable {
    /// The tensor's name (`parameter 0.weight`, `buffer ...`, `optimizer exp_avg of 0.weight`).
    public var name: String
    public var dtype: String
    public var shape: [Int]
    /// Its first byte in the state, and how many bytes it takes.
    public var offsetBytes: Int
    public var bytes: Int

    /// Describes a tensor.
    public init(name: String, dtype: String, shape: [Int], offsetBytes: Int, bytes: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.offsetBytes = offsetBytes
        self.bytes = bytes
    }
}
