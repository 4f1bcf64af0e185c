import Foundation
import JobModel
import Logging
import Workload

/// The workload of a `kind: torch` job: stands inside the agent for the user's PyTorch script,
/// which runs as a worker process (`TorchWorker`). Generations, aborts, the cursor, sample ids,
/// checkpoints and the data plane stay in the agent, unchanged; the worker computes gradients,
/// applies updates and hands its state over through shared memory when asked.
///
/// The gradient region of the shared memory is where backward writes (on the CPU each
/// parameter's `.grad` is a view of it); bucket by bucket, as the worker says each is final, it is
/// copied into the executor's buffer, which the data plane all-reduces while backward goes on.
final class TorchWorkload: TrainingWorkload {
    let worker: TorchWorker
    let trainingSamples: Int
    /// Longest wait for one answer of the worker (a step, a save, an update).
    let timeout: Duration
    /// The step the next gradients are for.
    var step: UInt64 = 0

    init(worker: TorchWorker, trainingSamples: Int, timeout: Duration) {
        self.worker = worker
        self.trainingSamples = trainingSamples
        self.timeout = timeout
    }

    /// Starts the worker of a job's plan, in `directory` (the agent's directory for workers).
    static func start(
        job: String, node: String, plan: TrainingPlan, directory: String, logger: Logger
    ) throws -> TorchWorkload {
        let settings = try TorchSettings(yaml: plan.workloadParameters)
        var environment = settings.environment
        environment["RINGMASTER_DATASET"] = plan.datasetPath
        environment["RINGMASTER_NODE"] = node
        let worker = try TorchWorker(
            .init(
                python: settings.python, script: settings.script, arguments: settings.arguments,
                environment: environment, job: job, directory: directory),
            logger: logger)
        if let samples = worker.hello.samples, samples != plan.datasetSamples {
            throw WorkloadError(
                .invalidSetting,
                "the job says its data set has \(plan.datasetSamples) samples, but the script's has \(samples); fix dataset.samples in the job spec"
            )
        }
        return TorchWorkload(
            worker: worker, trainingSamples: plan.datasetSamples, timeout: .seconds(settings.stepTimeoutSeconds))
    }

    var parameterCount: Int { self.worker.parameterCount }
    var buckets: [Range<Int>] { self.worker.buckets }
    var stateCount: Int { self.worker.stateCount }
    var stateTensors: [StateTensor] { self.worker.tensors }

    func beginStep(_ step: UInt64) { self.step = step }

    func release() { self.worker.stop() }

    var gradients: UnsafeMutableBufferPointer<Float> {
        self.worker.memory.floats(at: 0, count: self.worker.parameterCount)
    }

    var state: UnsafeMutableBufferPointer<Float> {
        self.worker.memory.floats(at: self.worker.parameterCount, count: self.worker.stateCount)
    }

    func accumulateGradients(
        samples: ArraySlice<Int>, into gradients: UnsafeMutableBufferPointer<Float>, bucketReady: (Int) -> Void
    ) throws -> Double {
        let deadline = ContinuousClock.now + self.timeout
        try self.worker.channel.send(
            TorchWorker.Request(type: "step", step: self.step, samples: Array(samples)), deadline: deadline)
        let shared = self.gradients
        var next = 0
        while true {
            let reply = try self.worker.channel.receive(
                TorchWorker.Reply.self, deadline: deadline, waitingFor: "the worker's gradients")
            switch reply.type {
            case "bucket":
                guard let index = reply.index, index == next, index < self.buckets.count else {
                    throw WorkloadError(
                        .workerFailed,
                        "the worker said bucket \(reply.index.map(String.init) ?? "none") is ready, expected bucket \(next)"
                    )
                }
                let range = self.buckets[index]
                UnsafeMutableBufferPointer(rebasing: gradients[range]).update(
                    fromContentsOf: UnsafeMutableBufferPointer(rebasing: shared[range]))
                next += 1
                bucketReady(index)
            case "gradients":
                guard next == self.buckets.count else {
                    throw WorkloadError(
                        .workerFailed, "the worker finished its step after \(next) of \(self.buckets.count) buckets")
                }
                // JSON has no NaN: a loss that is not finite comes as null.
                return reply.lossSum ?? .nan
            case "error":
                throw self.worker.failure("the worker failed its step: \(reply.message ?? "")")
            default:
                throw WorkloadError(.workerFailed, "the worker answered `\(reply.type)` during a step")
            }
        }
    }

    func applyGradients(_ gradients: UnsafeBufferPointer<Float>, scale: Float) throws {
        _ = self.gradients.update(fromContentsOf: gradients)
        try self.worker.call(.init(type: "apply", scale: scale), expecting: "applied", timeout: self.timeout)
    }

    func saveState(into state: UnsafeMutableBufferPointer<Float>) throws {
        try self.worker.call(.init(type: "save"), expecting: "saved", timeout: self.timeout)
        _ = state.update(fromContentsOf: self.state)
    }

    func loadState(from state: UnsafeBufferPointer<Float>) throws {
        _ = self.state.update(fromContentsOf: state)
        try self.worker.call(.init(type: "load"), expecting: "loaded", timeout: self.timeout)
    }

    /// The parameters as the state holds them (every parameter, trainable or not, then nothing
    /// else: the state's first slots are the parameters').
    func parameters() throws -> [Float] {
        try self.worker.call(.init(type: "save"), expecting: "saved", timeout: self.timeout)
        return Array(self.state.prefix(self.worker.parameterSlots))
    }

    func evaluate() throws -> (accuracy: Double, loss: Double) {
        let reply = try self.worker.call(.init(type: "evaluate"), expecting: "evaluated", timeout: self.timeout)
        return (reply.accuracy ?? .nan, reply.loss ?? .nan)
    }
}
