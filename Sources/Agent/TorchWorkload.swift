import Collectives
import Foundation
import JobModel
import Logging
import Synchronization
import Workload

/// The workload of a `kind: torch` job: stands inside the agent for the user's PyTorch script,
/// which runs as one or more worker processes (`TorchWorker`). Generations, aborts, the cursor,
/// sample ids, checkpoints and the data plane stay in the agent, unchanged; the workers compute
/// gradients, apply updates and hand their state over through shared memory when asked.
///
/// The gradient region of each worker's shared memory is where its backward writes (on the CPU
/// each parameter's `.grad` is a view of it). The node's share of the batch is sliced over its
/// workers; bucket by bucket, once every worker says it is final, the workers' gradients are summed
/// in one pass into the node's result region (with one worker: copied), which is the executor's
/// gradient buffer, so the data plane all-reduces it across the job in place while backward goes
/// on: a hierarchical all-reduce, whose node-local part runs at memory speed. Every worker maps the
/// result region and reads the job-wide sum from it, scaled, into its own gradients when it applies.
final class TorchWorkload: TrainingWorkload {
    /// The node's workers; the first also answers for the state, evaluations and parameters.
    let workers: [TorchWorker]
    let trainingSamples: Int
    /// Longest wait for one answer of a worker (a step, a save, an update).
    let timeout: Duration
    /// The step the next gradients are for.
    var step: UInt64 = 0
    /// The node's sum of the gradients, then the loss: the executor's gradient buffer, so the
    /// workers' sum lands here and the job's all-reduce runs on it in place; every worker maps it
    /// and reads the job's sum from it when it applies the update. The doorbells follow the floats.
    let result: SharedMemory
    /// The step's hand-overs' fast path (nil where the machine does not offer it).
    let bells: Doorbells?

    init(workers: [TorchWorker], trainingSamples: Int, timeout: Duration) throws {
        precondition(!workers.isEmpty, "a torch workload has at least one worker")
        self.workers = workers
        self.trainingSamples = trainingSamples
        self.timeout = timeout
        let first = workers[0]
        for (index, worker) in workers.enumerated().dropFirst() {
            guard worker.parameterCount == first.parameterCount, worker.stateCount == first.stateCount,
                worker.buckets == first.buckets, worker.parameterSlots == first.parameterSlots,
                worker.tensors == first.tensors
            else {
                throw WorkloadError(
                    .invalidSetting,
                    "worker \(index) announced a different model than worker 0 (\(worker.parameterCount) parameters and \(worker.stateCount) state slots in \(worker.buckets.count) buckets, against \(first.parameterCount), \(first.stateCount) and \(first.buckets.count)); every worker of a node must build the same model and optimizer"
                )
            }
        }
        let floatBytes = (first.parameterCount + 1) * MemoryLayout<Float>.size
        let bellsOffset = Doorbells.offset(afterFloatBytes: floatBytes)
        let regionBytes = Doorbells.supported ? bellsOffset + Doorbells.bytes(workers: workers.count) : floatBytes
        self.result = try SharedMemory(floats: regionBytes / MemoryLayout<Float>.size)
        defer { self.result.unlink() }
        self.bells = Doorbells.supported ? Doorbells(base: self.result.base + bellsOffset) : nil
        let deadline = ContinuousClock.now + timeout
        for (position, worker) in workers.enumerated() {
            let request = TorchWorker.Request(
                type: "result", path: self.result.path, bytes: self.result.bytes,
                bells: self.bells == nil ? nil : bellsOffset, worker: self.bells == nil ? nil : position,
                spinMicroseconds: self.bells == nil ? nil : Doorbells.workerSpinMicroseconds)
            try worker.channel.send(request, deadline: deadline)
        }
        for worker in workers { _ = try worker.expect("ready", deadline: deadline, after: "result") }
    }

    var gradientBuffer: UnsafeMutableBufferPointer<Float>? {
        self.result.floats(at: 0, count: self.parameterCount + 1)
    }

    /// Starts the workers of a job's plan, in `directory` (the agent's directory for workers).
    static func start(
        job: String, node: String, plan: TrainingPlan, directory: String, logger: Logger
    ) throws -> TorchWorkload {
        let settings = try TorchSettings(yaml: plan.workloadParameters)
        var environment = settings.environment
        environment["RINGMASTER_DATASET"] = plan.datasetPath
        environment["RINGMASTER_NODE"] = node
        let python = TorchWorker.interpreter(settings.python)
        try Self.checkInterpreter(python, environment: environment, directory: directory, logger: logger)
        let gpus = Self.visibleGPUs(jobEnvironment: settings.environment)
        let count = settings.workersPerNode ?? max(1, gpus.count)
        let launches = (0..<count).map { index in
            TorchWorker.Launch(
                python: python, script: settings.script, arguments: settings.arguments,
                environment: environment, job: job, directory: directory, index: index, count: count,
                gpu: gpus.isEmpty ? nil : gpus[index % gpus.count])
        }
        // The workers start together (each imports torch, which takes seconds).
        let results = StartResults()
        DispatchQueue.concurrentPerform(iterations: count) { index in
            results.set(index, Result { try TorchWorker(launches[index], logger: logger) })
        }
        let started = results.all
        var workers: [TorchWorker] = []
        var firstError: (any Error)?
        for index in 0..<count {
            switch started[index] {
            case .success(let worker): workers.append(worker)
            case .failure(let error):
                firstError = firstError ?? (count > 1 ? Self.labelled(error, worker: index) : error)
            case nil: break
            }
        }
        if let firstError {
            Self.stopAll(workers)
            throw firstError
        }
        let workload: TorchWorkload
        do {
            workload = try TorchWorkload(
                workers: workers, trainingSamples: plan.datasetSamples, timeout: .seconds(settings.stepTimeoutSeconds))
        } catch {
            Self.stopAll(workers)
            throw error
        }
        if let samples = workers[0].hello.samples, samples != plan.datasetSamples {
            Self.stopAll(workers)
            throw WorkloadError(
                .invalidSetting,
                "the job says its data set has \(plan.datasetSamples) samples, but the script's has \(samples); fix dataset.samples in the job spec"
            )
        }
        return workload
    }

    /// Interpreters that passed the check, in this agent's life (each check imports torch: seconds).
    static let checkedInterpreters = Mutex<Set<String>>([])

    /// Checks, before the node accepts a torch job, that `python` exists and imports torch and the
    /// ringmaster package (`python -m ringmaster.torch.check`), so that a node without them refuses
    /// the job saying so, instead of a worker failing later.
    static func checkInterpreter(
        _ python: String, environment: [String: String], directory: String, logger: Logger,
        timeout: Duration = .seconds(60)
    ) throws {
        if Self.checkedInterpreters.withLock({ $0.contains(python) }) { return }
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let outputPath = "\(directory)/check-\(UUID().uuidString.prefix(8)).log"
        guard FileManager.default.createFile(atPath: outputPath, contents: nil, attributes: [.posixPermissions: 0o600]),
            let output = FileHandle(forWritingAtPath: outputPath)
        else {
            throw WorkloadError(.workerFailed, "could not create \(outputPath) for the interpreter's check")
        }
        defer { unlink(outputPath) }
        let process: Process
        do {
            process = try TorchWorker.run(
                [python, "-m", "ringmaster.torch.check"], environment: environment, directory: nil, output: output)
        } catch {
            throw WorkloadError(.invalidSetting, "could not run the job's interpreter `\(python)`: \(error)")
        }
        guard TorchWorker.waitForExit(process, until: .now + timeout) else {
            TorchWorker.end(process, grace: .zero)
            throw WorkloadError(
                .invalidSetting,
                "the job's interpreter `\(python)` did not finish `python -m ringmaster.torch.check` within \(timeout)")
        }
        let lines = TorchWorker.lastLines(of: outputPath, count: 6)
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            // env says 127 when the interpreter is not found; Python says which module is missing.
            let said = lines.last ?? "no output"
            let advice =
                process.terminationStatus == 127
                ? "there is no `\(python)` on this node: set workload.python to an interpreter that exists here"
                : "install PyTorch and the ringmaster package for it (scripts/setup-python.sh, or pip install torch ./python)"
            throw WorkloadError(
                .invalidSetting,
                "this node cannot run torch jobs with `\(python)`: \(said); \(advice)")
        }
        Self.checkedInterpreters.withLock { _ = $0.insert(python) }
        logger.info(
            "torch interpreter checked", metadata: ["python": "\(python)", "says": "\(lines.joined(separator: " | "))"])
    }

    /// The GPUs this node's workers may use, one per worker: `CUDA_VISIBLE_DEVICES` of the job's
    /// `env`, else the agent's own, else every NVIDIA device the node has (`/dev/nvidiaN`).
    static func visibleGPUs(
        jobEnvironment: [String: String],
        agentEnvironment: [String: String] = ProcessInfo.processInfo.environment,
        devices: () -> [String] = { (try? FileManager.default.contentsOfDirectory(atPath: "/dev")) ?? [] }
    ) -> [String] {
        if let listed = jobEnvironment["CUDA_VISIBLE_DEVICES"] ?? agentEnvironment["CUDA_VISIBLE_DEVICES"] {
            // CUDA stops at the first entry it cannot use; "-1" or "" hides every GPU.
            var usable: [String] = []
            for entry in listed.split(separator: ",", omittingEmptySubsequences: false) {
                let trimmed = entry.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty, !trimmed.hasPrefix("-") else { break }
                usable.append(trimmed)
            }
            return usable
        }
        return devices().compactMap { name -> Int? in
            guard name.hasPrefix("nvidia"), let number = Int(name.dropFirst("nvidia".count)) else { return nil }
            return number
        }.sorted().map(String.init)
    }

    static func labelled(_ error: any Error, worker index: Int) -> any Error {
        guard let error = error as? WorkloadError else { return error }
        return WorkloadError(error.code, "worker \(index): \(error.message)")
    }

    /// Asks every worker to stop, then waits for each.
    static func stopAll(_ workers: [TorchWorker]) {
        for worker in workers { worker.requestStop() }
        for worker in workers { worker.finishStop() }
    }

    var parameterCount: Int { self.workers[0].parameterCount }
    var buckets: [Range<Int>] { self.workers[0].buckets }
    var stateCount: Int { self.workers[0].stateCount }
    var stateTensors: [StateTensor] { self.workers[0].tensors }

    func beginStep(_ step: UInt64) { self.step = step }

    func release() { Self.stopAll(self.workers) }

    /// A worker's gradient region.
    func gradients(of worker: TorchWorker) -> UnsafeMutableBufferPointer<Float> {
        worker.memory.floats(at: 0, count: worker.parameterCount)
    }

    /// A worker's state region.
    func state(of worker: TorchWorker) -> UnsafeMutableBufferPointer<Float> {
        worker.memory.floats(at: worker.parameterCount, count: worker.stateCount)
    }

    /// The slice of `samples` that worker `index` of `count` takes: consecutive runs, the first
    /// `samples.count % count` workers one sample more.
    static func slice(_ samples: ArraySlice<Int>, worker index: Int, of count: Int) -> ArraySlice<Int> {
        let base = samples.count / count
        let extra = samples.count % count
        let start = samples.startIndex + index * base + min(index, extra)
        return samples[start..<(start + base + (index < extra ? 1 : 0))]
    }

    func accumulateGradients(
        samples: ArraySlice<Int>, into gradients: UnsafeMutableBufferPointer<Float>, bucketReady: (Int) -> Void
    ) throws -> Double {
        let deadline = ContinuousClock.now + self.timeout
        let count = self.workers.count
        for (index, worker) in self.workers.enumerated() {
            let slice = Self.slice(samples, worker: index, of: count)
            try worker.channel.send(
                TorchWorker.Request(type: "step", step: self.step, samples: Array(slice)), deadline: deadline)
        }
        let regions = self.workers.map { UnsafeBufferPointer(self.gradients(of: $0)) }
        for (index, range) in self.buckets.enumerated() {
            for (position, worker) in self.workers.enumerated() {
                try self.awaitBucket(index, from: worker, position: position, deadline: deadline)
            }
            NodeSum.sum(regions, range: range, into: gradients)
            bucketReady(index)
        }
        var loss = 0.0
        for (position, worker) in self.workers.enumerated() {
            guard let reply = try self.nextEvent(of: worker, position: position, deadline: deadline) else {
                loss += self.bells?.lossSum(of: position) ?? .nan
                continue
            }
            switch reply.type {
            case "gradients":
                // JSON has no NaN: a loss that is not finite comes as null.
                loss += reply.lossSum ?? .nan
            case "error":
                throw worker.failure("\(self.name(position)) failed its step: \(reply.message ?? "")")
            default:
                throw WorkloadError(
                    .workerFailed,
                    "\(self.name(position)) answered `\(reply.type)` after its last bucket, expected its gradients")
            }
        }
        return loss
    }

    /// Waits for `worker` to say that bucket `index` is final.
    func awaitBucket(_ index: Int, from worker: TorchWorker, position: Int, deadline: ContinuousClock.Instant) throws {
        guard let reply = try self.nextEvent(of: worker, position: position, deadline: deadline) else { return }
        switch reply.type {
        case "bucket":
            guard reply.index == index else {
                throw WorkloadError(
                    .workerFailed,
                    "\(self.name(position)) said bucket \(reply.index.map(String.init) ?? "none") is ready, expected bucket \(index)"
                )
            }
        case "gradients":
            throw WorkloadError(
                .workerFailed,
                "\(self.name(position)) finished its step after \(index) of \(self.buckets.count) buckets")
        case "error":
            throw worker.failure("\(self.name(position)) failed its step: \(reply.message ?? "")")
        default:
            throw WorkloadError(.workerFailed, "\(self.name(position)) answered `\(reply.type)` during a step")
        }
    }

    /// Waits for worker `position`'s next event (a bucket, its gradients, `applied`): nil when it
    /// was taken from the doorbell, else the message that came, which is the event's or an `error`.
    /// `whenQuiet` runs at each recheck of the doorbell while the agent sleeps on the socket.
    func nextEvent(
        of worker: TorchWorker, position: Int, deadline: ContinuousClock.Instant,
        waitingFor described: @autoclosure () -> String? = nil, whenQuiet: () throws -> Void = {}
    ) throws -> TorchWorker.Reply? {
        if let bells = self.bells, bells.hasEvent(of: position, after: worker.eventsTaken) {
            worker.eventsTaken &+= 1
            return nil
        }
        // Off the fast path: what the agent waits for, for the error at the deadline.
        let what = described() ?? "the gradients of \(self.name(position))"
        guard let bells = self.bells else { return try worker.receive(deadline: deadline, waitingFor: what) }
        // Asleep: the worker sends its messages now. The flag is up before the counter is read
        // again, so an event rung after that read comes as a message.
        bells.agentSleeps(true)
        defer { bells.agentSleeps(false) }
        var recheck = Doorbells.recheck
        while true {
            if bells.hasEvent(of: position, after: worker.eventsTaken, spin: .zero) {
                worker.eventsTaken &+= 1
                return nil
            }
            let quiet = ContinuousClock.now + recheck
            if let reply = try worker.receive(deadline: deadline, quiet: quiet, waitingFor: what) { return reply }
            try whenQuiet()
            // Through a long backward, fewer wake-ups.
            recheck = min(recheck * 2, Doorbells.longestRecheck)
        }
    }

    /// How messages name a worker: "the worker" on a node with one.
    func name(_ position: Int) -> String {
        self.workers.count == 1 ? "the worker" : "worker \(position)"
    }

    /// Sends `request` to every worker, then waits for each to answer `expected`.
    func callAll(_ request: TorchWorker.Request, expecting expected: String) throws {
        let deadline = ContinuousClock.now + self.timeout
        for worker in self.workers { try worker.channel.send(request, deadline: deadline) }
        for worker in self.workers { _ = try worker.expect(expected, deadline: deadline, after: request.type) }
    }

    /// The job's sum is in the result region already when the executor used it as its buffer (it
    /// does); each worker reads it from there, scaled, into its own gradients, and steps.
    func applyGradients(_ gradients: UnsafeBufferPointer<Float>, scale: Float) throws {
        let result = self.result.floats(at: 0, count: self.parameterCount)
        if gradients.baseAddress != UnsafePointer(result.baseAddress) {
            _ = result.update(fromContentsOf: gradients)
        }
        guard let bells = self.bells else {
            try self.callAll(.init(type: "apply", scale: scale), expecting: "applied")
            return
        }
        // The message goes to the workers that sleep; the others are spinning on the doorbell.
        let deadline = ContinuousClock.now + self.timeout
        let request = TorchWorker.Request(type: "apply", scale: scale, seq: bells.ringApply(scale: scale))
        var sent = self.workers.indices.map { bells.sleeps($0) }
        for (position, worker) in self.workers.enumerated() where sent[position] {
            try worker.channel.send(request, deadline: deadline)
        }
        for (position, worker) in self.workers.enumerated() {
            let reply = try self.nextEvent(
                of: worker, position: position, deadline: deadline,
                waitingFor: "the answer of \(self.name(position)) to `apply`"
            ) {
                // Silent for a recheck: the message, whatever its flag said (a `seq` it has applied is skipped).
                if !sent[position] {
                    try worker.channel.send(request, deadline: deadline)
                    sent[position] = true
                }
            }
            guard let reply else { continue }
            switch reply.type {
            case "applied": continue
            case "error": throw worker.failure("\(self.name(position)) refused `apply`: \(reply.message ?? "")")
            default:
                throw WorkloadError(.workerFailed, "\(self.name(position)) answered `\(reply.type)` to `apply`")
            }
        }
    }

    /// Every worker holds the same state (they load the same, then apply the same sums); the first
    /// one's is the node's.
    func saveState(into state: UnsafeMutableBufferPointer<Float>) throws {
        let first = self.workers[0]
        try first.call(.init(type: "save"), expecting: "saved", timeout: self.timeout)
        _ = state.update(fromContentsOf: self.state(of: first))
    }

    func loadState(from state: UnsafeBufferPointer<Float>) throws {
        for worker in self.workers { _ = self.state(of: worker).update(fromContentsOf: state) }
        try self.callAll(.init(type: "load"), expecting: "loaded")
    }

    /// The parameters as the state holds them (every parameter, trainable or not, then nothing
    /// else: the state's first slots are the parameters').
    func parameters() throws -> [Float] {
        let first = self.workers[0]
        try first.call(.init(type: "save"), expecting: "saved", timeout: self.timeout)
        return Array(self.state(of: first).prefix(first.parameterSlots))
    }

    func evaluate() throws -> (accuracy: Double, loss: Double) {
        let reply = try self.workers[0].call(.init(type: "evaluate"), expecting: "evaluated", timeout: self.timeout)
        return (reply.accuracy ?? .nan, reply.loss ?? .nan)
    }
}

/// The workers as they started, by index, filled in from the threads that start them.
final class StartResults: @unchecked Sendable {
    // Safe: every access holds `lock`, and each worker is handed over once, to the caller.
    let lock = NSLock()
    var results: [Int: Result<TorchWorker, any Error>] = [:]

    func set(_ index: Int, _ result: Result<TorchWorker, any Error>) {
        self.lock.withLock { self.results[index] = result }
    }

    var all: [Int: Result<TorchWorker, any Error>] { self.lock.withLock { self.results } }
}

/// The node-local part of the hierarchical all-reduce: the node's workers' gradients, summed in
/// shared memory by the agent (memory speed, no sockets).
enum NodeSum {
    /// `destination[range] = sources[0][range] + sources[1][range] + ...`, in that order (the same
    /// rounding on every node with as many workers), in one pass over the memory.
    static func sum(
        _ sources: [UnsafeBufferPointer<Float>], range: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>
    ) {
        guard !range.isEmpty, let target = destination.baseAddress else { return }
        let starts = sources.compactMap { $0.baseAddress.map { $0 + range.lowerBound } }
        guard starts.count == sources.count, !starts.isEmpty else { return }
        Reduction.sum(starts, into: target + range.lowerBound, count: range.count)
    }
}
