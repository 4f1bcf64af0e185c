import ArgumentParser
import Etcd
import Foundation
import JobModel
import LocalCluster
import Synchronization
import Workload

/// The main job in one command: a coordinator and agents as separate processes on loopback
/// (certificates and single-use tokens made for the run), training the reference model on the
/// digits data set, with failures and growth on request.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Train the reference model with a local coordinator and agents on loopback.",
        discussion: """
            Starts a coordinator and agents as separate processes, each agent joining over mutual TLS
            with its own single-use token, and trains a perceptron on the bundled digits data set
            (--model torch-digits and torch-minilm run PyTorch scripts as the agents' workers instead).
            --kill-agent-at-step kills one agent with SIGKILL mid-run and --add-agent-at-step starts
            one more; the job continues in place. At the end it prints the test accuracy, every
            generation change with its recovery time, and the sample accounting (from sample ids).
            """
    )

    @Option(help: "Agents at the start.")
    var agents: Int = 4

    @Option(
        help:
            "Global steps to train: default 1500 of 64 samples; with torch-minilm 40 of 32 samples (one epoch of its data)."
    )
    var steps: UInt64?

    @Option(help: "Kill one agent with SIGKILL once the job reaches this step.")
    var killAgentAtStep: UInt64?

    @Option(help: "Start one more agent once the job reaches this step.")
    var addAgentAtStep: UInt64?

    @Option(help: "Stop one agent with SIGTERM once the job reaches this step (it leaves cleanly).")
    var terminateAgentAtStep: UInt64?

    @Option(help: "Optimizer: sgd (momentum 0.9, learning rate 0.1) or adam (learning rate 0.001).")
    var optimizer: String = "sgd"

    @Option(
        name: [.customLong("model"), .customLong("workload")],
        help:
            "Model: digits (the perceptron), synthetic (a large model with a made-up gradient, to exercise the all-reduce), torch-digits (examples/torch/digits/train.py, a PyTorch script run by each agent as its worker) or torch-minilm (examples/torch/minilm/train.py: the pretrained all-MiniLM-L6-v2 fine-tuned to tell four topics apart, likewise)."
    )
    var model: String = "digits"

    @Option(
        help:
            "The Python interpreter of the torch workloads (with torch and the ringmaster package installed); default: $RINGMASTER_PYTHON, else .venv/bin/python under the current directory if there is one, else python3."
    )
    var python: String?

    @Option(
        help:
            "With --model torch-digits or torch-minilm: run this script instead of the example's train.py (it gets --data and the example's data set's path)."
    )
    var script: String?

    @Option(help: "With a torch model: the longest wait for one answer of a worker, in seconds.")
    var stepTimeout: Int = 60

    @Option(
        help:
            "With a torch model: worker processes per agent, each taking a slice of the agent's share of the batch (default: one per GPU the machine has, one without GPUs)."
    )
    var workersPerNode: Int?

    @Option(
        help:
            "With a torch model: the device the example script trains on, `cpu`, `cuda` or `auto` (passed as its --device; the example's default is auto: cuda when PyTorch sees a GPU)."
    )
    var device: String?

    @Option(help: "Parameters of the synthetic model.")
    var parameters: Int = 10_000_000

    @Option(help: "Save checkpoints under this directory (an absolute path).")
    var checkpointDir: String?

    @Option(help: "Steps between checkpoints.")
    var checkpointInterval: UInt64 = 100

    @Option(help: "Resume from the checkpoints under --checkpoint-dir: `latest`, or the newest at or before a step.")
    var resume: String?

    @Option(
        help: "Kill -9 every process once a checkpoint at or after this step is committed (resume later with --resume)."
    )
    var preemptAtStep: UInt64?

    @Option(help: "Keep the run's files (certificates, coordinator state, the trained model) in this directory.")
    var directory: String?

    @Option(help: "Seconds the whole run may take.")
    var timeout: Double = 600

    @Option(
        help:
            "Hold this many connections to each agent's data-plane port through the job (half sending garbage), as a port scan would."
    )
    var floodDataPlane: Int?

    @Option(
        help:
            "Hold this many TLS connections without a client certificate to the coordinator through the job (from 127.0.0.2)."
    )
    var floodControl: Int?

    @Option(
        help:
            "Drop every packet to the first agent's data-plane port once the job reaches this step, until the next generation (needs root and tc)."
    )
    var cutDataPlaneAtStep: UInt64?

    @Option(help: "The agents' --collective-timeout in seconds (default 60).")
    var collectiveTimeout: Double?

    @Option(help: "The job's data plane: auto (RDMA where every agent has a device), tcp or rdma.")
    var transport: String = "auto"

    @Option(help: "Start this many of the agents with --rdma off, so that they announce no RDMA device.")
    var agentsWithoutRdma: Int = 0

    @Option(
        help:
            "The coordinator's lease in seconds (default 2): longer on a machine too loaded for agents to heartbeat in time, such as an emulated one."
    )
    var lease: Double?

    @Option(
        help:
            "Run this many coordinators sharing the etcd store of --etcd, one leading (default 1: one coordinator on SQLite)."
    )
    var coordinators: Int = 1

    @Option(
        help:
            "With --coordinators: the running etcd cluster they share, etcd://HOST:PORT[,HOST:PORT...] (loopback) or etcds://... (TLS)."
    )
    var etcd: String?

    @Option(help: "With --etcd etcds://: the coordinators' --etcd-ca (the CA of the members' certificates).")
    var etcdCa: String?

    @Option(help: "With --etcd etcds://: the coordinators' --etcd-cert (their client certificate).")
    var etcdCert: String?

    @Option(help: "With --etcd etcds://: the coordinators' --etcd-key (the client certificate's key, 0600).")
    var etcdKey: String?

    @Option(help: "With --coordinators: kill -9 the leading coordinator once the job reaches this step.")
    var killLeaderAtStep: UInt64?

    @Option(help: "With --coordinators: their --leader-lease in whole seconds (default 2).")
    var leaderLease: Int = 2

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    /// `--steps`, else the model's default: a run of the transformer takes about a second a step here.
    var totalSteps: UInt64 { self.steps ?? (self.model == "torch-minilm" ? 40 : 1500) }

    func validate() throws {
        guard (1...16).contains(self.agents) else { throw ValidationError("--agents must be between 1 and 16") }
        guard self.totalSteps > 0 else { throw ValidationError("--steps must be positive") }
        guard ["sgd", "adam"].contains(self.optimizer) else { throw ValidationError("--optimizer must be sgd or adam") }
        guard ["digits", "synthetic", "torch-digits", "torch-minilm"].contains(self.model) else {
            throw ValidationError("--model must be digits, synthetic, torch-digits or torch-minilm")
        }
        guard TransportRequest(rawValue: self.transport) != nil else {
            throw ValidationError("--transport must be auto, tcp or rdma, not \(self.transport)")
        }
        guard (0...self.agents).contains(self.agentsWithoutRdma) else {
            throw ValidationError("--agents-without-rdma must be from 0 to --agents (\(self.agents))")
        }
        if let timeout = self.collectiveTimeout, !(0.5...86_400).contains(timeout) {
            throw ValidationError("--collective-timeout must be from 0.5 to 86400 seconds")
        }
        if let step = self.cutDataPlaneAtStep, step >= self.totalSteps {
            throw ValidationError(
                "--cut-data-plane-at-step \(step) is not before the last step (--steps \(self.totalSteps))")
        }
        if let lease = self.lease, !(1...600).contains(lease) {
            throw ValidationError("--lease must be from 1 to 600 seconds")
        }
        guard self.parameters >= 1 else { throw ValidationError("--parameters must be positive") }
        if let device = self.device, !["cpu", "cuda", "auto"].contains(device), !device.hasPrefix("cuda:") {
            throw ValidationError("--device must be cpu, cuda or auto, not \(device)")
        }
        if let workers = self.workersPerNode, !(1...TorchSettings.maximumWorkersPerNode).contains(workers) {
            throw ValidationError("--workers-per-node must be from 1 to \(TorchSettings.maximumWorkersPerNode)")
        }
        guard (1...86_400).contains(self.stepTimeout) else {
            throw ValidationError("--step-timeout must be from 1 to 86400 seconds")
        }
        if (self.resume != nil || self.preemptAtStep != nil) && self.checkpointDir == nil {
            throw ValidationError("--resume and --preempt-at-step need --checkpoint-dir")
        }
        if let resume = self.resume, resume != "latest", UInt64(resume) == nil {
            throw ValidationError("--resume must be `latest` or a step number, not \(resume)")
        }
        guard self.checkpointInterval > 0 else { throw ValidationError("--checkpoint-interval must be positive") }
        guard (1...7).contains(self.coordinators) else { throw ValidationError("--coordinators must be from 1 to 7") }
        if self.coordinators > 1 {
            let needs =
                "--coordinators \(self.coordinators) needs --etcd etcd://HOST:PORT,... or etcds://... (scripts/etcd-cluster.sh start DIR [--tls] runs one on loopback)"
            guard let etcd = self.etcd else { throw ValidationError(needs) }
            let address: EtcdAddress
            do {
                address = try EtcdAddress(parsing: etcd)
            } catch {
                throw ValidationError("\(needs): \(error)")
            }
            if !address.secure && !self.etcdArguments.isEmpty {
                throw ValidationError("--etcd-ca, --etcd-cert and --etcd-key go with --etcd etcds://")
            }
            guard address.secure || address.isLoopback else {
                throw ValidationError(
                    "--etcd \(address) is not on loopback: the demo's coordinators speak plain HTTP to etcd only there; give etcds://... with --etcd-ca, --etcd-cert and --etcd-key"
                )
            }
        } else if self.etcd != nil || self.killLeaderAtStep != nil || !self.etcdArguments.isEmpty {
            throw ValidationError("--etcd, its TLS files and --kill-leader-at-step go with --coordinators 2 or more")
        }
        if let step = self.killLeaderAtStep, step >= self.totalSteps {
            throw ValidationError(
                "--kill-leader-at-step \(step) is not before the last step (--steps \(self.totalSteps))")
        }
        guard self.leaderLease >= 2 else { throw ValidationError("--leader-lease must be at least 2 seconds") }
        if self.killAgentAtStep != nil || self.terminateAgentAtStep != nil {
            let stopped = (self.killAgentAtStep == nil ? 0 : 1) + (self.terminateAgentAtStep == nil ? 0 : 1)
            guard self.agents > stopped else {
                throw ValidationError(
                    "--agents must be more than the agents killed or stopped, or nobody is left to train")
            }
        }
        for (flag, step) in [
            ("--kill-agent-at-step", self.killAgentAtStep), ("--add-agent-at-step", self.addAgentAtStep),
            ("--terminate-agent-at-step", self.terminateAgentAtStep),
        ] {
            if let step, step >= self.totalSteps {
                throw ValidationError("\(flag) \(step) is not before the last step (--steps \(self.totalSteps))")
            }
        }
    }

    /// The coordinators' TLS flags, for those given (paths made absolute: they run elsewhere).
    var etcdArguments: [String] {
        [("--etcd-ca", self.etcdCa), ("--etcd-cert", self.etcdCert), ("--etcd-key", self.etcdKey)].flatMap {
            flag, path in path.map { [flag, URL(fileURLWithPath: $0).standardizedFileURL.path] } ?? []
        }
    }

    func run() async throws {
        var options = TrainingDemo.Options(
            executable: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        options.agents = self.agents
        options.steps = self.totalSteps
        options.killAgentAtStep = self.killAgentAtStep
        options.addAgentAtStep = self.addAgentAtStep
        options.terminateAgentAtStep = self.terminateAgentAtStep
        options.directory = self.directory.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        options.checkpointDirectory = self.checkpointDir.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        options.checkpointInterval = self.checkpointInterval
        options.resume = self.resume.map { $0 == "latest" ? .latest : UInt64($0).map { .atOrBefore($0) } ?? .latest }
        options.preemptAtStep = self.preemptAtStep
        options.timeoutSeconds = self.timeout
        options.floodDataPlane = self.floodDataPlane
        options.floodControl = self.floodControl
        options.workersPerNode = self.workersPerNode
        options.device = self.device
        options.transport = TransportRequest(rawValue: self.transport) ?? .auto
        options.agentsWithoutRDMA = self.agentsWithoutRdma
        options.leaseSeconds = self.lease
        options.cutDataPlaneAtStep = self.cutDataPlaneAtStep
        options.collectiveTimeoutSeconds = self.collectiveTimeout
        options.coordinators = self.coordinators
        options.etcd = self.coordinators > 1 ? self.etcd : nil
        options.etcdArguments = self.etcdArguments
        options.killLeaderAtStep = self.killLeaderAtStep
        options.leaderLease = self.leaderLease
        switch self.model {
        case "synthetic": options.model = .synthetic(parameters: self.parameters)
        case "torch-digits":
            options.model = .torchDigits(
                script: try self.script.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
                    ?? Self.example("digits/train.py"),
                python: Self.interpreter(self.python), stepTimeoutSeconds: self.stepTimeout)
        case "torch-minilm":
            options.model = .torchMiniLM(
                script: try self.script.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
                    ?? Self.example("minilm/train.py"),
                data: try Self.example("minilm/data/topics.csv.gz"), python: Self.interpreter(self.python),
                stepTimeoutSeconds: self.stepTimeout)
            // A global batch of 32 sentences: about a second a step for a 22.6 M-parameter transformer on two cores.
            options.batchSize = 32
        default: options.model = .digits(optimizer: TrainingDemo.Optimizer(rawValue: self.optimizer) ?? .sgd)
        }
        let json = self.json
        let bar = ProgressBar(enabled: !json)
        if !json {
            if self.model == "torch-digits" {
                print(
                    "ringmaster demo: \(self.agents) agent(s) on loopback, each running examples/torch/digits/train.py (PyTorch) as its worker"
                )
            } else if self.model == "torch-minilm" {
                print(
                    "ringmaster demo: \(self.agents) agent(s) on loopback, each running examples/torch/minilm/train.py (PyTorch, all-MiniLM-L6-v2 fine-tuned on four topics) as its worker"
                )
            } else if self.model == "synthetic" {
                print(
                    "ringmaster demo: \(self.agents) agent(s) on loopback, training a synthetic model of \(self.parameters) parameters"
                )
            } else {
                print(
                    "ringmaster demo: \(self.agents) agent(s) on loopback, training a 64-128-10 perceptron on the digits data set (\(self.optimizer))"
                )
            }
        }
        let demo = TrainingDemo(options: options)
        // Ctrl-C or SIGTERM ends the run without leaving its processes behind.
        let handlers = ([SIGINT, SIGTERM] as [Int32]).map { number -> any DispatchSourceSignal in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                demo.killAll()
                Foundation.exit(128 + number)
            }
            source.resume()
            return source
        }
        defer { for handler in handlers { handler.cancel() } }
        let result: TrainingDemo.Result
        do {
            result = try await demo.run(
                progress: { bar.show($0) },
                say: { text in bar.say(text) }
            )
        } catch {
            bar.finish()
            throw CommandFailure(description: "demo failed: \(error)")
        }
        bar.finish()
        if json {
            let object: [String: Any] = [
                "test_accuracy": result.testAccuracy,
                "final_loss": result.finalLoss,
                "steps": result.steps,
                "generations": result.generations,
                "recoveries": result.recoveries.map {
                    ["generation": $0.generation, "cause": $0.cause, "world_size": $0.worldSize, "seconds": $0.seconds]
                },
                "transports": result.transports.map {
                    ["generation": $0.generation, "transport": $0.transport, "reason": $0.reason] as [String: Any]
                },
                "samples_seen": result.samplesSeen,
                "samples_repeated": result.samplesRepeated,
                "samples_skipped": result.samplesSkipped,
                "param_hash": result.paramHash,
                "replica_divergences": result.divergences,
                "seconds": result.seconds,
                "samples_per_second": result.samplesPerSecond,
                "model_path": result.modelPath ?? NSNull(),
                "terminated_exit_status": result.terminatedExitStatus,
                "last_checkpoint_step": result.lastCheckpointStep,
                "checkpoint_failures": result.checkpointFailures,
                "resumed_from_step": result.resumedFromStep.map { $0 as Any } ?? NSNull(),
                "preempted": result.preempted,
                "peak_threads": result.peakThreads,
                "peak_rss_bytes": result.peakRSSBytes,
                "worker_processes": result.workerProcesses,
                "worker_exits": result.workerExits,
                "refusals": result.refusals,
                "cpu_seconds": result.cpuSeconds,
                "flood_opened": result.floodOpened,
                "flood_closed_by_peer": result.floodClosedByPeer,
                "leader_failover": result.leaderFailover.map {
                    [
                        "step": $0.step, "killed": $0.killed, "new_leader": $0.newLeader,
                        "elected_seconds": $0.electedSeconds, "agents_connected_seconds": $0.agentsConnectedSeconds,
                        "first_step_seconds": $0.firstStepSeconds,
                    ] as [String: Any]
                } ?? NSNull(),
            ]
            try printJSON(object)
            return
        }
        print("")
        if result.preempted {
            print(
                "preempted at step \(result.steps) with the checkpoint at step \(result.lastCheckpointStep) committed; resume with --resume latest"
            )
            return
        }
        if let resumed = result.resumedFromStep { print("resumed from the checkpoint at step \(resumed)") }
        print(
            String(
                format: "trained %llu steps in %.1f s (%.0f samples/s)", result.steps, result.seconds,
                result.samplesPerSecond))
        if self.model == "digits" {
            print(
                String(
                    format: "test accuracy %.2f%% on the held-out fifth; final loss %.4f", result.testAccuracy * 100,
                    result.finalLoss))
        } else if self.model == "torch-minilm" {
            print(
                String(
                    format: "test accuracy %.2f%% on the 320 test sentences; final loss %.4f",
                    result.testAccuracy * 100, result.finalLoss))
        } else {
            print(String(format: "final loss %.4f", result.finalLoss))
        }
        print("generations: \(result.generations)")
        if let last = result.transports.last { print("data plane: \(last.transport) (\(last.reason))") }
        for recovery in result.recoveries {
            print(
                String(
                    format: "  generation %llu (%@, %d agents): training resumed %.3f s after the event",
                    recovery.generation, recovery.cause, recovery.worldSize, recovery.seconds))
        }
        print(
            "samples: \(result.samplesSeen) seen, \(result.samplesRepeated) repeated, \(result.samplesSkipped) skipped (counted from sample ids)"
        )
        print("parameters: hash \(result.paramHash), replicas diverged at \(result.divergences) check(s)")
        for (name, status) in result.terminatedExitStatus.sorted(by: { $0.key < $1.key }) {
            print("\(name) stopped with SIGTERM and exited with status \(status)")
        }
        if let path = result.modelPath { print("model: \(path)") }
        let peaks = result.peakThreads.keys.sorted().map {
            "\($0) \(result.peakThreads[$0]!) threads, \((result.peakRSSBytes[$0] ?? 0) >> 20) MiB"
        }
        print("peaks: \(peaks.joined(separator: "; "))")
        if result.floodOpened > 0 {
            print(
                "floods: \(result.floodOpened) connection(s) opened, \(result.floodClosedByPeer) closed by the other side"
            )
        }
    }
}

/// A one-line progress bar on a terminal, or a line per tenth of the run otherwise.
final class ProgressBar: Sendable {
    let enabled: Bool
    let terminal = isatty(STDOUT_FILENO) != 0
    let state = Mutex<(lastTenth: Int, drawn: Bool)>((-1, false))

    init(enabled: Bool) {
        self.enabled = enabled
    }

    func show(_ progress: TrainingDemo.Progress) {
        guard self.enabled, progress.totalSteps > 0 else { return }
        let fraction = Double(progress.step) / Double(progress.totalSteps)
        let width = 30
        let filled = Int(fraction * Double(width))
        let text = String(
            format: "[%@%@] step %llu/%llu  loss %.4f  world %d  gen %llu  %.0f samples/s",
            String(repeating: "#", count: filled), String(repeating: ".", count: width - filled),
            progress.step, progress.totalSteps, progress.loss, progress.worldSize, progress.generation,
            progress.samplesPerSecond
        )
        if self.terminal {
            FileHandle.standardOutput.write(Data("\r\u{1B}[K\(text)".utf8))
            self.state.withLock { $0.drawn = true }
        } else {
            let tenth = Int(fraction * 10)
            let show = self.state.withLock { state -> Bool in
                guard tenth > state.lastTenth else { return false }
                state.lastTenth = tenth
                return true
            }
            if show { print(text) }
        }
    }

    func say(_ text: String) {
        guard self.enabled else { return }
        if self.terminal && self.state.withLock({ $0.drawn }) {
            FileHandle.standardOutput.write(Data("\r\u{1B}[K".utf8))
        }
        print(text)
    }

    func finish() {
        if self.enabled && self.terminal && self.state.withLock({ $0.drawn }) { print("") }
    }
}

extension DemoCommand {
    /// An example script of `examples/torch`: under $RINGMASTER_EXAMPLES_DIR, else found from the
    /// executable up (a build under .build/ of a checkout), else under the current directory.
    static func example(_ relative: String) throws -> String {
        var candidates: [String] = []
        if let directory = ProcessInfo.processInfo.environment["RINGMASTER_EXAMPLES_DIR"], !directory.isEmpty {
            candidates.append("\(directory)/torch/\(relative)")
        }
        var directory = URL(
            fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                ?? CommandLine.arguments[0]
        ).deletingLastPathComponent()
        for _ in 0..<5 {
            candidates.append(directory.appendingPathComponent("examples/torch/\(relative)").path)
            directory = directory.deletingLastPathComponent()
        }
        candidates.append(FileManager.default.currentDirectoryPath + "/examples/torch/\(relative)")
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw ValidationError(
                "could not find examples/torch/\(relative); run from a checkout of Ringmaster or set RINGMASTER_EXAMPLES_DIR to its examples directory"
            )
        }
        return URL(fileURLWithPath: found).standardizedFileURL.path
    }

    /// The interpreter of torch workloads: `given`, else $RINGMASTER_PYTHON, else the checkout's
    /// .venv, else python3.
    static func interpreter(_ given: String?) -> String {
        if let given, !given.isEmpty { return given }
        if let python = ProcessInfo.processInfo.environment["RINGMASTER_PYTHON"], !python.isEmpty { return python }
        let venv = FileManager.default.currentDirectoryPath + "/.venv/bin/python"
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : "python3"
    }
}
