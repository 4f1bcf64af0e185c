import Agent
import ArgumentParser
import Collectives
import Foundation
import LocalCluster
import Logging
import RingmasterBench
import Verbs
import Workload

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (figures recorded in bench/README.md).",
        subcommands: [
            AllReduce.self, AllReduceWorker.self, Reduce.self, Machine.self, Rendezvous.self, Recovery.self,
            Checkpoint.self, SpecFuzz.self, NodeSum.self, Fleet.self,
        ]
    )

    struct Machine: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "machine",
            abstract: "The coordinator state machine alone: time per generation change with N simulated nodes."
        )

        @Option(help: "Simulated nodes.")
        var nodes: Int = 10_000

        @Option(help: "Failures (and returns) to time.")
        var changes: Int = 50

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            let result = try MachineBenchmark.run(nodes: self.nodes, changes: self.changes)
            if self.json {
                let object: [String: Any] = [
                    "nodes": result.nodes, "changes": result.changes, "median_ms": result.medianMilliseconds,
                    "p99_ms": result.p99Milliseconds, "max_ms": result.maxMilliseconds,
                    "actions_per_change": result.actionsPerChange,
                ]
                try printJSON(object)
                return
            }
            print(
                String(
                    format: "state machine, %d nodes, %d generation changes (setup %.1f s):", result.nodes,
                    result.changes, result.setupSeconds))
            print(
                String(
                    format: "  median %.2f ms, p99 %.2f ms, max %.2f ms per change (%d actions each)",
                    result.medianMilliseconds, result.p99Milliseconds, result.maxMilliseconds, result.actionsPerChange))
        }
    }

    struct Checkpoint: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "checkpoint",
            abstract:
                "Checkpoint saves: sharded write throughput against dd, and the step-time cost of saving while training.",
            discussion: """
                Throughput: RANKS writers save their shards of one state at once (temporary name, fsync, \
                rename, directory fsync), then the manifest is committed; compared with one \
                `dd bs=1M conv=fsync` of the same bytes to the same directory. Overhead: the synthetic \
                model trained by the demo's processes, with and without a checkpoint every \
                --interval steps.
                """
        )

        @Option(help: "Writers (ranks).")
        var ranks: Int = 4

        @Option(help: "Size of the state in MiB.")
        var megabytes: Int = 256

        @Option(help: "Directory to write to (the file system under test).")
        var directory: String = NSTemporaryDirectory()

        @Option(help: "Rounds of each write.")
        var rounds: Int = 3

        @Option(help: "Steps between checkpoints in the overhead run (0: skip that run).")
        var interval: UInt64 = 10

        @Option(help: "Parameters of the synthetic model in the overhead run.")
        var parameters: Int = 10_000_000

        @Option(help: "Steps of each overhead run.")
        var steps: UInt64 = 100

        func run() async throws {
            let result = try CheckpointBenchmark.run(
                ranks: self.ranks, megabytes: self.megabytes, directory: self.directory, rounds: self.rounds
            ) { print($0) }
            let megabytes = Double(result.bytes) / 1e6
            print(
                String(
                    format:
                        "sharded save, %d ranks, %.0f MB: median %.3f s (%.0f MB/s); dd conv=fsync: median %.3f s (%.0f MB/s); ratio %.2fx",
                    self.ranks, megabytes, result.shardedMedian, megabytes / result.shardedMedian,
                    result.sequentialMedian, megabytes / result.sequentialMedian,
                    result.sequentialMedian / result.shardedMedian
                ))
            guard self.interval > 0 else { return }
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            var seconds: [Bool: Double] = [:]
            for saving in [false, true] {
                let root = "\(self.directory)/bench-overhead-\(getpid())"
                try? FileManager.default.removeItem(atPath: root)
                defer { try? FileManager.default.removeItem(atPath: root) }
                var options = TrainingDemo.Options(executable: executable)
                options.agents = self.ranks
                options.steps = self.steps
                options.model = .synthetic(parameters: self.parameters)
                if saving {
                    options.checkpointDirectory = root
                    options.checkpointInterval = self.interval
                }
                let run = try await TrainingDemo(options: options).run(progress: { _ in }, say: { _ in })
                seconds[saving] = run.seconds
                print(
                    String(
                        format: "%@: %llu steps in %.2f s (%.1f ms/step)%@",
                        saving ? "checkpoint every \(self.interval) steps" : "no checkpoints",
                        run.steps, run.seconds, run.seconds * 1000 / Double(run.steps),
                        saving
                            ? ", \(run.lastCheckpointStep / self.interval) committed, \(run.checkpointFailures) failed"
                            : ""
                    ))
            }
            if let without = seconds[false], let with = seconds[true] {
                print(String(format: "step-time overhead of saving: %.1f%%", (with / without - 1) * 100))
            }
        }
    }

    struct Recovery: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "recovery",
            abstract: "Recovery after kill -9: from the kill to the first step completed in the new generation.",
            discussion: """
                Each trial trains the reference job with a coordinator and agents as real processes \
                (default settings), kills one agent with SIGKILL at a random step, and measures from \
                the kill to the first step the coordinator commits in the generation that follows.
                """
        )

        @Option(help: "Trials.")
        var trials: Int = 10

        @Option(help: "Agents at the start of each trial.")
        var agents: Int = 3

        @Option(help: "Steps per trial.")
        var steps: UInt64 = 600

        @Flag(help: "Print JSON.")
        var json = false

        func validate() throws {
            guard self.trials >= 1 else { throw ValidationError("--trials must be at least 1") }
            guard self.agents >= 2 else {
                throw ValidationError("--agents must be at least 2, so that one is left after the kill")
            }
            guard self.steps >= 100 else { throw ValidationError("--steps must be at least 100") }
        }

        func run() async throws {
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            var seconds: [Double] = []
            for trial in 1...self.trials {
                var options = TrainingDemo.Options(executable: executable)
                options.agents = self.agents
                options.steps = self.steps
                options.killAgentAtStep = UInt64.random(in: (self.steps / 10)...(self.steps / 2))
                let result = try await TrainingDemo(options: options).run(progress: { _ in }, say: { _ in })
                guard let recovery = result.recoveries.first(where: { $0.cause == "disconnected" }),
                    recovery.seconds >= 0
                else {
                    throw CommandFailure(
                        description: "trial \(trial): no recovery from the kill was recorded (\(result.recoveries))")
                }
                guard result.samplesRepeated == 0, result.samplesSkipped == 0 else {
                    throw CommandFailure(
                        description:
                            "trial \(trial): \(result.samplesRepeated) samples repeated, \(result.samplesSkipped) skipped"
                    )
                }
                seconds.append(recovery.seconds)
                if !self.json {
                    print(
                        String(
                            format: "trial %d: kill at step %llu, training resumed after %.3f s", trial,
                            options.killAgentAtStep!, recovery.seconds))
                }
            }
            let sorted = seconds.sorted()
            let median =
                sorted.count % 2 == 1
                ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            if self.json {
                let object: [String: Any] = [
                    "trials": self.trials, "agents": self.agents, "seconds": seconds, "median_s": median,
                    "max_s": sorted.last!,
                ]
                try printJSON(object)
            } else {
                print(
                    String(
                        format:
                            "kill -9 to the first step after it: median %.3f s, min %.3f s, max %.3f s over %d trials",
                        median, sorted.first!, sorted.last!, self.trials))
            }
        }
    }

    struct Rendezvous: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rendezvous",
            abstract: "Rendezvous over real mutual TLS: last join to every agent holding its assignment."
        )

        @Option(help: "Agents.")
        var agents: Int = 64

        @Option(help: "Rounds.")
        var rounds: Int = 5

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            let json = self.json
            let result = try await RendezvousBenchmark.run(
                agents: self.agents, rounds: self.rounds, executable: executable
            ) { line in
                if !json { print(line) }
            }
            if json {
                let object: [String: Any] = [
                    "agents": result.agents, "rounds_ms": result.roundsMilliseconds,
                    "median_ms": result.medianMilliseconds,
                    "start_to_assigned_ms": result.totalMilliseconds,
                ]
                try printJSON(object)
                return
            }
            print(
                String(
                    format:
                        "median over %d rounds: %.1f ms from the last join to all %d agents holding their assignment",
                    result.roundsMilliseconds.count, result.medianMilliseconds, result.agents))
        }
    }

    struct AllReduce: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "allreduce",
            abstract:
                "All-reduce between N local processes over loopback TCP (or N threads in process), as nccl-tests reports it."
        )

        @Option(help: "Ranks (processes over tcp, threads in process).")
        var ranks: Int = 2

        @Option(help: "Message sizes in bytes (K, M, G suffixes).")
        var sizes: String = "4K,64K,1M,16M,64M"

        @Option(
            help:
                "tcp (separate processes over loopback), rdma (separate processes over RDMA verbs, set up through loopback TCP; needs an RDMA device) or inprocess (threads, no sockets)."
        )
        var transport: String = "tcp"

        @Option(help: "Element type: float32, float16 or bfloat16.")
        var type: String = "float32"

        @Option(help: "automatic, ring or recursive-doubling.")
        var algorithm: String = "automatic"

        @Option(help: "The ring's piece size in bytes (K, M suffixes); default: the communicator's.")
        var ringChunk: String?

        @Flag(help: "Print JSON.")
        var json = false

        func validate() throws {
            guard (2...64).contains(self.ranks) else { throw ValidationError("--ranks must be 2 to 64") }
            guard ["tcp", "rdma", "inprocess"].contains(self.transport) else {
                throw ValidationError("--transport \(self.transport) is not one of tcp, rdma, inprocess")
            }
            if self.transport == "rdma", !RDMADevice.all().contains(where: { $0.usable }) {
                let found = RDMADevice.all().map(\.name)
                throw ValidationError(
                    "--transport rdma needs an active RDMA device; this machine has \(found.isEmpty ? "none" : "none usable (\(found.joined(separator: ", ")))") (scripts/rdma-guest.sh runs one in a qemu guest)"
                )
            }
            guard DataType(rawValue: self.type) != nil else {
                throw ValidationError("--type \(self.type) is not one of float32, float16, bfloat16")
            }
            guard Communicator.Algorithm(rawValue: self.algorithm) != nil else {
                throw ValidationError("--algorithm must be automatic, ring or recursive-doubling")
            }
            _ = try self.settings()
        }

        func settings() throws -> AllReduceBenchmark.Settings {
            let type = DataType(rawValue: self.type) ?? .float32
            let sizes = try AllReduceBenchmark.parseSizes(self.sizes)
            if let uneven = sizes.first(where: { $0 % type.size != 0 }) {
                throw ValidationError(
                    "--sizes: \(uneven) bytes is not a whole number of \(type.rawValue) elements (\(type.size) bytes each)"
                )
            }
            var chunk: Int?
            if let text = self.ringChunk {
                guard let value = try? AllReduceBenchmark.parseSizes(text).first, value >= 4096 else {
                    throw ValidationError("--ring-chunk \(text): give a size of at least 4K, e.g. 1M")
                }
                chunk = value
            }
            return AllReduceBenchmark.Settings(
                sizes: sizes, type: type, algorithm: Communicator.Algorithm(rawValue: self.algorithm) ?? .automatic,
                ringChunkBytes: chunk, rdma: self.transport == "rdma"
            )
        }

        func run() async throws {
            let settings = try self.settings()
            let inProcess = self.transport == "inprocess"
            let ceiling = inProcess ? AllReduceBenchmark.copyCeiling() : try AllReduceBenchmark.loopbackCeiling()
            let ceilingName =
                inProcess
                ? "memory copy ceiling (one thread)"
                : self.transport == "rdma"
                    ? "loopback TCP ceiling (one stream; for RDMA compare ib_write_bw, bench/rdma-guest-bench.sh)"
                    : "loopback TCP ceiling (one stream)"
            let json = self.json
            if !json {
                print(
                    String(
                        format: "%@: %.2f GB/s; %d ranks, %@, %@ sum", ceilingName, ceiling, self.ranks, self.transport,
                        self.type))
            }
            let rows: [AllReduceBenchmark.Row]
            if inProcess {
                rows = try AllReduceBenchmark.runInProcess(ranks: self.ranks, settings: settings) { line in
                    if !json { print(line) }
                }
            } else {
                let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
                rows = try await AllReduceBenchmark.run(executable: executable, ranks: self.ranks, settings: settings) {
                    line in
                    if !json { print(line) }
                }
            }
            if json {
                let object: [String: Any] = [
                    "ranks": self.ranks, "transport": self.transport, "type": self.type, "ceiling_gbps": ceiling,
                    "rows": rows.map { row in
                        [
                            "bytes": row.bytes, "iterations": row.iterations, "p50_us": row.p50Microseconds,
                            "p99_us": row.p99Microseconds,
                            "algbw_gbps": row.algorithmGBps, "busbw_gbps": row.busGBps,
                            "busbw_of_ceiling": row.busGBps / ceiling,
                            "cpu_us_per_op": row.cpuMicrosecondsPerOperation, "algorithm": row.algorithm,
                        ] as [String: Any]
                    },
                ]
                try printJSON(object)
            } else {
                for row in rows {
                    print(
                        String(
                            format: "%10d B: busbw %.3f GB/s = %.1f%% of the %@", row.bytes, row.busGBps,
                            100 * row.busGBps / ceiling, ceilingName))
                }
            }
        }
    }

    struct SpecFuzz: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "spec-fuzz",
            abstract:
                "Random and mutated job specs through the coordinator's parser: no crash, bounded time and memory.",
            discussion: """
                Exits 1 if any spec took longer than --max-parse-seconds or resident memory grew by \
                more than --max-growth-mib; a crash ends the process. Seeded: the same seed gives the \
                same inputs.
                """
        )

        @Option(help: "Specs to parse.")
        var iterations: Int = 100_000

        @Option(help: "Seed of the inputs.")
        var seed: UInt64 = 1

        @Option(help: "Longest one spec may take.")
        var maxParseSeconds: Double = 1

        @Option(help: "Most resident memory may grow, in MiB.")
        var maxGrowthMib: Int = 256

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let result = SpecFuzzBenchmark.run(
                iterations: self.iterations, seed: self.seed, maximumParseSeconds: self.maxParseSeconds)
            let growth = max(0, result.peakRSS - result.startRSS)
            if self.json {
                let object: [String: Any] = [
                    "iterations": result.iterations, "accepted": result.accepted, "refused": result.refused,
                    "seconds": result.seconds,
                    "slowest_seconds": result.slowestSeconds, "slowest_kind": result.slowestKind,
                    "over_time": result.overTime,
                    "start_rss_bytes": result.startRSS, "peak_rss_bytes": result.peakRSS,
                    "bytes_parsed": result.bytesParsed,
                ]
                try printJSON(object)
            } else {
                print(
                    String(
                        format:
                            "%d specs (%d accepted, %d refused, %.1f MB) in %.1f s; slowest %.1f ms (%@); resident memory %d MiB, at most %d MiB",
                        result.iterations, result.accepted, result.refused, Double(result.bytesParsed) / 1e6,
                        result.seconds,
                        result.slowestSeconds * 1000, result.slowestKind, result.startRSS >> 20, result.peakRSS >> 20))
            }
            if result.overTime > 0 || growth > self.maxGrowthMib << 20 {
                FileHandle.standardError.write(
                    Data(
                        "spec-fuzz: \(result.overTime) spec(s) over \(self.maxParseSeconds) s; memory grew by \(growth >> 20) MiB (limit \(self.maxGrowthMib))\n"
                            .utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Fleet: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fleet",
            abstract: "A fleet of simulated agents (mutual-TLS sessions in one process) against a real coordinator.",
            discussion: """
                Every agent heartbeats at the coordinator's interval; then a job of all of them trains at \
                --steps-per-second (each member reporting its sample ids), then agents are dropped one at a \
                time. Prints the coordinator's CPU per second (idle and training), its resident memory, \
                heartbeat round trips, the time from a drop to the last survivor holding its new \
                assignment, and the coordinator CPU each step costs beyond the idle baseline.
                """
        )

        @Option(help: "Simulated agents.")
        var agents: Int = 1000

        @Option(help: "Steps per second the job trains at.")
        var stepsPerSecond: Double = 10

        @Option(help: "Seconds of heartbeats alone, for the idle baseline.")
        var idleSeconds: Double = 5

        @Option(help: "Seconds of training measured.")
        var trainingSeconds: Double = 20

        @Option(help: "Agents dropped one at a time after training.")
        var drops: Int = 5

        @Flag(help: "Print JSON.")
        var json = false

        func validate() throws {
            guard self.agents >= 2 else { throw ValidationError("--agents must be at least 2") }
            guard self.drops >= 0, self.drops < self.agents else {
                throw ValidationError("--drops must be between 0 and --agents - 1")
            }
            guard self.stepsPerSecond > 0, self.stepsPerSecond <= 1000 else {
                throw ValidationError("--steps-per-second must be above 0 and at most 1000")
            }
            guard self.idleSeconds >= 1, self.trainingSeconds >= 1 else {
                throw ValidationError("--idle-seconds and --training-seconds must be at least 1")
            }
        }

        func run() async throws {
            var options = FleetBenchmark.Options(
                executable: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            options.agents = self.agents
            options.stepsPerSecond = self.stepsPerSecond
            options.idleSeconds = self.idleSeconds
            options.trainingSeconds = self.trainingSeconds
            options.drops = self.drops
            let json = self.json
            let result = try await FleetBenchmark.run(options) { line in
                if !json { print(line) }
            }
            let drops = result.dropMilliseconds.sorted()
            if json {
                let object: [String: Any] = [
                    "agents": result.agents, "idle_cpu": result.idleCPU, "training_cpu": result.trainingCPU,
                    "resident_bytes": result.residentBytes,
                    "heartbeat_p50_ms": result.heartbeat(quantile: 0.5),
                    "heartbeat_p99_ms": result.heartbeat(quantile: 0.99),
                    "heartbeats": result.heartbeatMilliseconds.count,
                    "committed_steps_per_second": result.committedStepsPerSecond,
                    "sent_steps_per_second": result.sentStepsPerSecond,
                    "step_cost_us": result.stepCostMicroseconds, "drop_to_last_assignment_ms": drops,
                    "samples_repeated": result.samplesRepeated, "samples_skipped": result.samplesSkipped,
                ]
                try printJSON(object)
            } else {
                print(
                    String(
                        format: """
                            fleet of %d agents:
                              coordinator CPU: %.3f cores idle (heartbeats), %.3f cores training; resident %.0f MiB
                              heartbeat round trip: p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d heartbeats)
                              steps: %.2f/s sent, %.2f/s committed; %.0f us of coordinator CPU per step beyond idle
                              drop to the last survivor holding its assignment: median %.0f ms, max %.0f ms (%d drops)
                              samples repeated %llu, skipped %llu
                            """, result.agents, result.idleCPU, result.trainingCPU,
                        Double(result.residentBytes) / 1_048_576, result.heartbeat(quantile: 0.5),
                        result.heartbeat(quantile: 0.99), result.heartbeatMilliseconds.last ?? Double.nan,
                        result.heartbeatMilliseconds.count, result.sentStepsPerSecond,
                        result.committedStepsPerSecond, result.stepCostMicroseconds,
                        FleetBenchmark.quantile(drops, 0.5), drops.last ?? Double.nan, drops.count,
                        result.samplesRepeated, result.samplesSkipped))
            }
            guard result.samplesRepeated == 0, result.samplesSkipped == 0 else {
                throw CommandFailure(
                    description:
                        "the job's account found \(result.samplesRepeated) samples repeated and \(result.samplesSkipped) skipped: the simulated members did not report what real ones would"
                )
            }
        }
    }

    struct NodeSum: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node-sum",
            abstract:
                "The node-local sum of a torch job's gradients: worker processes to the agent through shared memory and back, on the real path (bench/node-sum.sh sets it beside Open MPI's shared-memory transport)."
        )

        @Option(help: "Worker processes on the node.")
        var workers: Int = 2

        @Option(help: "Gradient sizes in bytes (K, M, G suffixes).")
        var sizes: String = "64K,1M,16M,64M"

        @Option(help: "The Python interpreter with the ringmaster package (default as for the demo).")
        var python: String?

        @Option(help: "The worker script.")
        var script: String = "bench/node_sum_worker.py"

        @Option(help: "Timed seconds per size, at least (and at least 20 iterations).")
        var seconds: Double = 1

        @Flag(help: "Print one JSON object per size.")
        var json = false

        func run() throws {
            guard (1...TorchSettings.maximumWorkersPerNode).contains(self.workers) else {
                throw ValidationError("--workers must be from 1 to \(TorchSettings.maximumWorkersPerNode)")
            }
            let sizes = try AllReduceBenchmark.parseSizes(self.sizes)
            if let bad = sizes.first(where: { $0 <= 0 || $0 % 4 != 0 }) {
                throw ValidationError("--sizes: \(bad) is not a positive multiple of 4 bytes")
            }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
                "ringmaster-node-sum-\(UUID().uuidString.prefix(8))"
            ).path
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var logger = Logger(label: "bench")
            logger.logLevel = .warning
            let rows = try NodeSumBenchmark.run(
                workers: self.workers, sizes: sizes, python: DemoCommand.interpreter(self.python),
                script: URL(fileURLWithPath: self.script).standardizedFileURL.path, directory: directory,
                minimumSeconds: self.seconds, logger: logger)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            for row in rows {
                if self.json {
                    print(String(decoding: try encoder.encode(row), as: UTF8.self))
                } else {
                    print(
                        String(
                            format:
                                "%10d B  %d workers  sum p50 %10.1f us  p99 %10.1f us  algbw %6.2f GB/s  iteration p50 %10.1f us  cpu %9.1f us/op",
                            row.bytes, self.workers, row.p50Microseconds, row.p99Microseconds,
                            row.algorithmBandwidth, row.iterationP50Microseconds, row.cpuMicrosecondsPerOperation))
                }
            }
        }
    }

    struct Reduce: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reduce",
            abstract:
                "The reduction kernels alone (destination += source, one thread) against a memory copy, per element type."
        )

        @Option(help: "Buffer sizes in bytes (K, M, G suffixes): one in cache and one not, by default.")
        var sizes: String = "256K,64M"

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let sizes = try AllReduceBenchmark.parseSizes(self.sizes)
            if let bad = sizes.first(where: { $0 <= 0 || $0 % 4 != 0 }) {
                throw ValidationError("--sizes: \(bad) is not a positive multiple of 4 bytes")
            }
            let rows = ReductionBenchmark.run(types: DataType.allCases, sizes: sizes)
            if self.json {
                let object = rows.map {
                    [
                        "kernels": $0.kernels, "type": $0.type, "bytes": $0.bytes, "add_gbps": $0.addGBps,
                        "copy_gbps": $0.copyGBps,
                    ] as [String: Any]
                }
                try printJSON(object)
                return
            }
            for row in rows {
                print(
                    String(
                        format: "%-8@ %-9@ %10d B  add %6.2f GB/s  copy %6.2f GB/s  add/copy %.2f", row.kernels,
                        row.type, row.bytes, row.addGBps, row.copyGBps, row.addGBps / row.copyGBps))
            }
        }
    }

    struct AllReduceWorker: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "allreduce-worker",
            abstract: "One rank of `bench allreduce` (started by it; reads the address list on standard input).",
            shouldDisplay: false
        )

        @Option var rank: Int
        @Option var world: Int
        @Option var sizes: String
        @Option var algorithm: String = "automatic"
        @Option var type: String = "float32"
        @Option var ringChunk: Int?
        @Option var transport: String = "tcp"

        func run() throws {
            guard let hex = ProcessInfo.processInfo.environment["RINGMASTER_BENCH_SECRET"], hex.count == 64 else {
                throw ValidationError("RINGMASTER_BENCH_SECRET must hold 32 bytes in hex")
            }
            let secret = stride(from: 0, to: 64, by: 2).map { offset -> UInt8 in
                let start = hex.index(hex.startIndex, offsetBy: offset)
                return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16) ?? 0
            }
            let settings = AllReduceBenchmark.Settings(
                sizes: self.sizes.split(separator: ",").compactMap { Int($0) },
                type: DataType(rawValue: self.type) ?? .float32,
                algorithm: Communicator.Algorithm(rawValue: self.algorithm) ?? .automatic,
                ringChunkBytes: self.ringChunk, rdma: self.transport == "rdma"
            )
            try AllReduceBenchmark.worker(rank: self.rank, world: self.world, settings: settings, secret: secret)
        }
    }
}
