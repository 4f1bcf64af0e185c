import JobModel

/// One training process's model and optimizer.
///
/// A distributed trainer drives a workload: it owns all communication, and the workload only
/// computes. Each step, every rank calls ``accumulateGradients(samples:into:bucketReady:)`` on its
/// slice of the global batch, all-reduces the gradient bucket by bucket as the buckets become
/// ready, and then every rank calls ``applyGradients(_:scale:)`` with the same global sum, so the
/// replicas stay bit-identical. A workload is used from one thread at a time.
///
/// The workloads written in Swift never throw; one that stands for another process (a PyTorch
/// worker) throws when that process fails or stops answering.
public protocol TrainingWorkload: AnyObject {
    /// Trainable parameters (one flat Float32 vector).
    var parameterCount: Int { get }
    /// Ranges of the flat gradient vector, in the order backward finishes them (last layer first);
    /// they partition `0..<parameterCount`. The trainer all-reduces each bucket as soon as it is ready.
    var buckets: [Range<Int>] { get }
    /// Samples in the training set (sample ids are `0..<trainingSamples`).
    var trainingSamples: Int { get }
    /// Forward and backward over `samples` (ids into the training set): writes the SUM over these
    /// samples of the loss gradient into `gradients` (length `parameterCount`, overwritten, zero when
    /// `samples` is empty), calling `bucketReady(i)` as soon as bucket `i`'s range is final (in
    /// bucket order), and returns the SUM of the per-sample losses.
    func accumulateGradients(
        samples: ArraySlice<Int>,
        into gradients: UnsafeMutableBufferPointer<Float>,
        bucketReady: (Int) -> Void
    ) throws -> Double
    /// Says which global step the next ``accumulateGradients(samples:into:bucketReady:)`` is for
    /// (a worker process shows it to the user's script; the Swift workloads need not know).
    func beginStep(_ step: UInt64)
    /// One optimizer step with gradient = `gradients[i] * scale` (the trainer passes the global sum
    /// and scale = 1 / global batch size).
    func applyGradients(_ gradients: UnsafeBufferPointer<Float>, scale: Float) throws
    /// Floats needed to hold the whole training state (parameters, optimizer moments, optimizer step counter).
    var stateCount: Int { get }
    /// The state's tensors, where each lies in it, with its shape and dtype (a PyTorch worker's; the
    /// Swift workloads have none), for checkpoint manifests.
    var stateTensors: [StateTensor] { get }
    /// Copies the whole training state out, bit for bit, into `state` (length ``stateCount``).
    func saveState(into state: UnsafeMutableBufferPointer<Float>) throws
    /// Replaces the whole training state with `state` (length ``stateCount``), bit for bit: loading
    /// then saving gives identical bits, and training after a load continues exactly as it would have.
    func loadState(from state: UnsafeBufferPointer<Float>) throws
    /// A copy of the parameters (for comparing replicas and writing the trained model).
    func parameters() throws -> [Float]
    /// Accuracy and mean loss on the held-out test set.
    func evaluate() throws -> (accuracy: Double, loss: Double)
    /// Ends what the workload holds outside this process (a worker process), once the job is over
    /// on this agent or the agent stops.
    func release()

    /// Memory of `parameterCount + 1` floats that the agent's executor uses as its gradient buffer
    /// (the gradients, then the loss) instead of its own, when the workload has memory that others
    /// read the sum from (a torch workload's region shared with its workers); nil: the executor's own.
    var gradientBuffer: UnsafeMutableBufferPointer<Float>? { get }
}

extension TrainingWorkload {
    /// The executor's own buffer.
    public var gradientBuffer: UnsafeMutableBufferPointer<Float>? { nil }
    /// Nothing to do for a workload that does not show step numbers.
    public func beginStep(_ step: UInt64) {}
    /// Nothing to release for a workload that lives in this process.
    public func release() {}
    /// No tensor table.
    public var stateTensors: [StateTensor] { [] }
}

// MARK: - Parameter hash

/// A 64-bit FNV-1a hash of the values' bit patterns, taken byte by byte in little-endian order.
///
/// Replicas that hold bit-identical parameters give the same hash, and any flipped bit changes it.
/// It is a fingerprint for comparing replicas and checkpoints, not a cryptographic digest; it costs
/// one serial pass (about a nanosecond per value).
public func parameterHash(_ values: [Float]) -> UInt64 {
    values.withUnsafeBufferPointer { parameterHash($0) }
}

/// The same hash as the array version, over a buffer, without copying it.
public func parameterHash(_ values: UnsafeBufferPointer<Float>) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    let prime: UInt64 = 0x0000_0100_0000_01b3
    for value in values {
        let bits = value.bitPattern
        hash = (hash ^ UInt64(bits & 0xff)) &* prime
        hash = (hash ^ UInt64((bits >> 8) & 0xff)) &* prime
        hash = (hash ^ UInt64((bits >> 16) & 0xff)) &* prime
        hash = (hash ^ UInt64(bits >> 24)) &* prime
    }
    return hash
}
