import Foundation
import Logging
import Workload

#if canImport(Glibc)
    import Glibc
#endif

/// `ringmaster bench node-sum`: the node-local part of a torch job's all-reduce, timed on the real
/// path. The agent's own `TorchWorkload` runs `workers` worker processes (bench/node_sum_worker.py,
/// which speaks the worker protocol with nothing to compute) and, per iteration, does what a step
/// does between backward and the optimizer: the step request, every worker's `bucket` messages,
/// the sum of their gradients in shared memory bucket by bucket into the result region the workers
/// map, and the `apply` round trip, in which each worker reads the result into its own gradients
/// (as the ringmaster package does). No data plane: one node.
///
/// Two latencies per iteration. The reduction's, as an MPI rank times its MPI_Allreduce call:
/// each worker times itself from the moment its gradients are final (no backward here: the step
/// request) to the moment its gradients hold the node's sum, and an iteration takes its slowest
/// worker. And the whole iteration as the agent sees it, which adds the step request and the
/// `applied` answer (in a real step the one comes before backward and the other after the
/// optimizer's step, off the reduction's path).
public enum NodeSumBenchmark {
    /// One size's figures, with the fields of `bench allreduce --json` and bench/allreduce_report.py.
    public struct Row: Sendable, Codable {
        public var bytes: Int
        public var iterations: Int
        /// The reduction, as the slowest worker timed it (from its gradients final to the sum in them).
        public var p50Microseconds: Double
        public var p99Microseconds: Double
        /// The whole iteration, as the agent timed it (from the step request to every `applied`).
        public var iterationP50Microseconds: Double
        public var iterationP99Microseconds: Double
        /// Bytes per p50, in 10^9 B/s.
        public var algorithmBandwidth: Double
        /// `algbw * 2(n-1)/n`, as for an all-reduce of `n` ranks.
        public var busBandwidth: Double
        /// CPU time per iteration, the agent's and the workers' together.
        public var cpuMicrosecondsPerOperation: Double

        enum CodingKeys: String, CodingKey {
            case bytes, iterations
            case p50Microseconds = "p50_us"
            case p99Microseconds = "p99_us"
            case iterationP50Microseconds = "iteration_p50_us"
            case iterationP99Microseconds = "iteration_p99_us"
            case algorithmBandwidth = "algbw_gbps"
            case busBandwidth = "busbw_gbps"
            case cpuMicrosecondsPerOperation = "cpu_us_per_op"
        }
    }

    /// Runs the benchmark at each size (bytes, a multiple of 4) with `workers` workers started
    /// as `python script`, in `directory`.
    public static func run(
        workers count: Int, sizes: [Int], python: String, script: String, directory: String,
        minimumSeconds: Double = 1, logger: Logger
    ) throws -> [Row] {
        var rows: [Row] = []
        for size in sizes {
            let slots = max(1, size / 4)
            let timesPaths = (0..<count).map { "\(directory)/node-sum-\(slots * 4)-\($0).times" }
            let workers = try (0..<count).map { index in
                try TorchWorker(
                    .init(
                        python: python, script: script, arguments: [],
                        // One thread in the worker, as the demo gives a torch worker: numpy's
                        // OpenBLAS would otherwise keep threads of its own spinning beside it.
                        environment: [
                            "RINGMASTER_BENCH_SLOTS": "\(slots)", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                            "RINGMASTER_BENCH_TIMES": timesPaths[index],
                        ], job: "node-sum", directory: directory,
                        index: index, count: count, startTimeout: .seconds(60)),
                    logger: logger)
            }
            let workload = try TorchWorkload(workers: workers, trainingSamples: 0, timeout: .seconds(60))
            defer { workload.release() }
            // As the executor does: the workload's result region is the buffer the sum goes to.
            guard let buffer = workload.gradientBuffer else {
                throw WorkloadError(.workerFailed, "the torch workload gives no gradient buffer")
            }
            let destination = UnsafeMutableBufferPointer(rebasing: buffer[0..<slots])
            for (index, worker) in workers.enumerated() {
                workload.gradients(of: worker).update(repeating: Float(index + 1))
            }
            let once = {
                _ = try workload.accumulateGradients(samples: [], into: destination) { _ in }
                try workload.applyGradients(UnsafeBufferPointer(destination), scale: 1)
            }
            let clock = ContinuousClock()
            let warmUp = try clock.measure { for _ in 0..<Self.warmUpIterations { try once() } }
            let perIteration = max(1e-7, Self.seconds(warmUp) / Double(Self.warmUpIterations))
            let iterations = min(100_000, max(20, Int(minimumSeconds / perIteration) + 1))
            var times: [Double] = []
            times.reserveCapacity(iterations)
            let cpuBefore = Self.cpuSeconds(workers)
            for _ in 0..<iterations {
                let start = clock.now
                try once()
                times.append(Self.seconds(clock.now - start))
            }
            let cpu = Self.cpuSeconds(workers) - cpuBefore
            try Self.check(workload, destination: destination)
            // The workers write their own times as they stop.
            workload.release()
            let reductions = try Self.slowestWorker(timesPaths, iterations: iterations)
            let (p50, p99) = Self.percentiles(reductions)
            let iteration = Self.percentiles(times)
            let algbw = Double(slots * 4) / p50 / 1e9
            rows.append(
                Row(
                    bytes: slots * 4, iterations: iterations, p50Microseconds: p50 * 1e6, p99Microseconds: p99 * 1e6,
                    iterationP50Microseconds: iteration.p50 * 1e6, iterationP99Microseconds: iteration.p99 * 1e6,
                    algorithmBandwidth: algbw, busBandwidth: algbw * 2 * Double(count - 1) / Double(count),
                    cpuMicrosecondsPerOperation: cpu / Double(iterations) * 1e6))
        }
        return rows
    }

    static let warmUpIterations = 5

    /// Per timed iteration, the longest of the workers' own times. Each worker wrote one time per
    /// iteration it ran: the warm-up ones, the timed ones, then the check's.
    static func slowestWorker(_ paths: [String], iterations: Int) throws -> [Double] {
        var slowest = [Double](repeating: 0, count: iterations)
        for (index, path) in paths.enumerated() {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            let times = text.split(separator: "\n").compactMap { Double($0) }
            guard times.count == Self.warmUpIterations + iterations + 1 else {
                throw WorkloadError(
                    .workerFailed,
                    "worker \(index) wrote \(times.count) times to \(path), expected \(Self.warmUpIterations + iterations + 1)"
                )
            }
            for (iteration, time) in times.dropFirst(Self.warmUpIterations).prefix(iterations).enumerated() {
                slowest[iteration] = max(slowest[iteration], time)
            }
        }
        return slowest
    }

    static func percentiles(_ values: [Double]) -> (p50: Double, p99: Double) {
        let sorted = values.sorted()
        return (sorted[sorted.count / 2], sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))])
    }

    /// After the timed iterations: worker `i` holds `i + 1` everywhere; one more iteration must
    /// leave the sum, n(n+1)/2, in the result and in every worker's gradients.
    static func check(_ workload: TorchWorkload, destination: UnsafeMutableBufferPointer<Float>) throws {
        let count = workload.workers.count
        for (index, worker) in workload.workers.enumerated() {
            workload.gradients(of: worker).update(repeating: Float(index + 1))
        }
        _ = try workload.accumulateGradients(samples: [], into: destination) { _ in }
        try workload.applyGradients(UnsafeBufferPointer(destination), scale: 1)
        let expected = Float(count * (count + 1) / 2)
        for (index, worker) in workload.workers.enumerated() {
            let region = workload.gradients(of: worker)
            guard destination.allSatisfy({ $0 == expected }), region.allSatisfy({ $0 == expected }) else {
                throw WorkloadError(
                    .workerFailed, "the node sum is wrong: worker \(index) does not hold \(expected) everywhere")
            }
        }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }

    /// The agent's CPU time so far, and its workers' (from /proc).
    static func cpuSeconds(_ workers: [TorchWorker]) -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        var total =
            Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) * 1e-6 + Double(usage.ru_stime.tv_sec)
            + Double(usage.ru_stime.tv_usec) * 1e-6
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        for worker in workers {
            guard
                let text = try? String(
                    contentsOfFile: "/proc/\(worker.process.processIdentifier)/stat", encoding: .utf8),
                let end = text.lastIndex(of: ")")
            else { continue }
            // After "pid (name) ": state is field 3; utime and stime are fields 14 and 15.
            let fields = text[text.index(after: end)...].split(separator: " ")
            if fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) {
                total += (user + system) / ticks
            }
        }
        return total
    }
}
