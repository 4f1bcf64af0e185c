import Foundation
import LocalCluster
import Testing

/// A PyTorch job end to end: `ringmaster demo --model torch-digits` runs the user's script
/// (`examples/torch/digits/train.py`) as each agent's worker process, with real agents, a real
/// coordinator and real PyTorch (the interpreter of `.venv`, made by scripts/setup-python.sh).
///
/// Tolerance: runs with different world sizes sum the same gradients in different orders, so
/// their models differ by rounding carried through 300 steps of Adam; they must end within
/// `accuracyTolerance` of each other's test accuracy and within `parameterTolerance` in the mean
/// absolute difference of their parameters.
@Suite("PyTorch workers on real processes", .serialized, .timeLimit(.minutes(10)))
struct TorchJobTests {
    static let steps = 300
    static let accuracyTolerance = 0.03
    static let parameterTolerance: Float = 0.02

    struct Run {
        let json: [String: Any]
        let parameters: [Float]

        var accuracy: Double { self.json["test_accuracy"] as? Double ?? -1 }
        func count(_ key: String) -> Int { (self.json[key] as? NSNumber)?.intValue ?? -1 }
        var workers: [String: [Int]] { self.json["worker_processes"] as? [String: [Int]] ?? [:] }
    }

    /// The interpreter with torch and the ringmaster package, as scripts/setup-python.sh makes it.
    static func python() throws -> String {
        let path = FileManager.default.currentDirectoryPath + "/.venv/bin/python"
        try #require(
            FileManager.default.isExecutableFile(atPath: path),
            "no \(path): run scripts/setup-python.sh (it installs torch and the ringmaster package into .venv)")
        return path
    }

    func demo(
        _ label: String, _ arguments: [String], environment: [String: String] = [:], python: String? = nil
    ) async throws -> Run {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-torch-\(label)-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let demo = try ChildProcess(
            name: "demo \(label)",
            executable: try ringmasterExecutable(),
            arguments: [
                "demo", "--json", "--model", "torch-digits", "--python", try python ?? Self.python(), "--steps",
                "\(Self.steps)",
                "--directory", directory, "--timeout", "240",
            ] + arguments,
            environment: environment
        )
        let status = try await demo.waitForExit(within: 300)
        try #require(status == 0, "demo \(label) failed: \(demo.output.lines.suffix(30).joined(separator: "\n"))")
        let text = demo.standardOutput.lines.last { $0.hasPrefix("{") } ?? ""
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            "demo \(label) printed no JSON: \(text)")
        guard json["preempted"] as? Bool != true else { return Run(json: json, parameters: []) }
        let path = try #require(json["model_path"] as? String, "demo \(label) names no model file")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let parameters = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return Run(json: json, parameters: parameters)
    }

    static func meanDifference(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count, !a.isEmpty else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.reduce(0, +) / Float(a.count)
    }

    @Test func test_killAndJoin_survivorsKeepTheirWorkers_everySampleOnce_modelAsUninterrupted() async throws {
        let reference = try await self.demo("reference", ["--agents", "2"])
        #expect(reference.accuracy > 0.9, "the uninterrupted run trains (test accuracy \(reference.accuracy))")
        #expect(reference.count("generations") == 1)

        let run = try await self.demo(
            "kill-join", ["--agents", "3", "--kill-agent-at-step", "60", "--add-agent-at-step", "100"])
        #expect(run.count("generations") == 3, "killed, then joined: \(run.json["recoveries"] ?? [])")
        #expect(run.count("samples_repeated") == 0)
        #expect(run.count("samples_skipped") == 0)
        #expect(run.count("replica_divergences") == 0)
        // The two survivors (agent-0, agent-1) trained in all three generations with the worker
        // they started first: one worker process each. The killed agent-2 had one, the joiner one.
        let workers = run.workers
        #expect(workers["agent-0"]?.count == 1, "agent-0's workers: \(workers["agent-0"] ?? [])")
        #expect(workers["agent-1"]?.count == 1, "agent-1's workers: \(workers["agent-1"] ?? [])")
        #expect(workers["agent-3"]?.count == 1, "the joiner started one worker: \(workers)")
        #expect(
            abs(run.accuracy - reference.accuracy) <= Self.accuracyTolerance,
            "test accuracy \(run.accuracy) against \(reference.accuracy) uninterrupted")
        let difference = Self.meanDifference(run.parameters, reference.parameters)
        #expect(
            difference <= Self.parameterTolerance,
            "mean absolute parameter difference \(difference) from the uninterrupted run")
        print(
            "torch kill-join: accuracy \(run.accuracy) (uninterrupted \(reference.accuracy)), mean |Δparameter| \(difference), recoveries \(run.json["recoveries"] ?? [])"
        )
    }

    /// Worker counts: the same job (global batch 64, 300 steps) on 1 node with 1 worker, 1 node
    /// with 2, 2 nodes with 2 each and 4 nodes with 1 each. The node's share of every batch is
    /// sliced over its workers and their gradients summed on the node, so only the order of the
    /// sums differs: the models must agree far closer than `parameterTolerance` (measured: a mean
    /// absolute difference of 9e-5 between 1 x 1 and the others, 0 among 1 x 2, 2 x 2 and 4 x 1).
    static let workerCountTolerance: Float = 0.002

    @Test func test_oneTwoAndFourWorkers_endWithinTolerance() async throws {
        let shapes: [(nodes: Int, workers: Int)] = [(1, 1), (1, 2), (2, 2), (4, 1)]
        var runs: [Run] = []
        for shape in shapes {
            let run = try await self.demo(
                "\(shape.nodes)x\(shape.workers)",
                ["--agents", "\(shape.nodes)", "--workers-per-node", "\(shape.workers)"])
            #expect(run.count("samples_repeated") == 0 && run.count("samples_skipped") == 0)
            // 300 steps of 64 over 1,437 samples: 13 epochs of 23 batches (the last one of 29), and
            // one batch more.
            #expect(run.count("samples_seen") == 13 * 1437 + 64, "every sample of every batch was trained on once")
            #expect(
                run.workers.count == shape.nodes && run.workers.values.allSatisfy { $0.count == shape.workers },
                "\(shape.workers) worker process(es) on each of \(shape.nodes) node(s): \(run.workers)")
            runs.append(run)
        }
        let reference = runs[0]
        #expect(reference.accuracy > 0.9, "1 x 1 trains (test accuracy \(reference.accuracy))")
        for (shape, run) in zip(shapes, runs).dropFirst() {
            let difference = Self.meanDifference(run.parameters, reference.parameters)
            #expect(
                difference <= Self.workerCountTolerance,
                "\(shape.nodes) x \(shape.workers): mean absolute parameter difference \(difference) from 1 x 1")
            #expect(abs(run.accuracy - reference.accuracy) <= Self.accuracyTolerance)
            print(
                "torch \(shape.nodes) x \(shape.workers): accuracy \(run.accuracy) (1 x 1: \(reference.accuracy)), mean |Δparameter| \(difference)"
            )
        }
    }

    @Test func test_killAndJoin_withTwoWorkersPerNode_survivorsKeepBoth_everySampleOnce() async throws {
        let reference = try await self.demo("reference-1x1", ["--agents", "1"])
        // The joiner starts with two thirds of the job left: its process, session and two workers
        // must be up before the job ends, and a loaded CI machine once took longer than the last
        // third (100 steps) to start them.
        let run = try await self.demo(
            "kill-join-x2",
            [
                "--agents", "3", "--workers-per-node", "2", "--kill-agent-at-step", "60", "--add-agent-at-step",
                "100",
            ])
        #expect(run.count("generations") == 3, "killed, then joined: \(run.json["recoveries"] ?? [])")
        #expect(run.count("samples_repeated") == 0)
        #expect(run.count("samples_skipped") == 0)
        #expect(run.count("replica_divergences") == 0)
        // Each survivor kept the two workers it started first; the joiner started two.
        for agent in ["agent-0", "agent-1", "agent-3"] {
            #expect(run.workers[agent]?.count == 2, "\(agent)'s workers: \(run.workers)")
        }
        let difference = Self.meanDifference(run.parameters, reference.parameters)
        #expect(
            difference <= Self.parameterTolerance,
            "mean absolute parameter difference \(difference) from the uninterrupted 1 x 1 run")
        #expect(abs(run.accuracy - reference.accuracy) <= Self.accuracyTolerance)
    }

    @Test func test_sigterm_finishesTheStep_leaves_andItsWorkerExitsCleanly() async throws {
        // The interpreter as a path relative to the agents' working directory (the checkout): the
        // agent makes it absolute before the worker runs in its script's directory.
        _ = try Self.python()
        let run = try await self.demo(
            "sigterm", ["--agents", "3", "--terminate-agent-at-step", "100"], python: ".venv/bin/python")
        #expect(run.count("samples_repeated") == 0)
        #expect(run.count("samples_skipped") == 0)
        let exits = run.json["terminated_exit_status"] as? [String: Int] ?? [:]
        #expect(exits.values.allSatisfy { $0 == 0 } && exits.count == 1, "the stopped agent exits 0: \(exits)")
        // Its worker was told to stop and exited with status 0. (The demo stops the other agents as
        // soon as the job is over, so whether theirs log their stop first is a race.)
        let workerExits = run.json["worker_exits"] as? [String: [String]] ?? [:]
        for name in exits.keys {
            #expect(workerExits[name] == ["0"], "\(name)'s worker exits cleanly: \(workerExits)")
        }
        #expect(run.accuracy > 0.9)
    }

    /// How the failing script fails (Fixtures/failing_train.py), and what the refusal must say.
    static let failures: [(mode: String, says: String)] = [
        ("raise", "injected failure at step 100"),
        ("kill", "killed by signal 9"),
        ("exit", "left the loop over job.steps()"),
        ("hang", "did not answer in time"),
    ]

    @Test(arguments: Self.failures.map(\.mode))
    func test_aFailingWorker_isReportedWithItsLastLines_itsNodeLeaves_andTheOthersGoOn(mode: String) async throws {
        let script = FileManager.default.currentDirectoryPath + "/Tests/IntegrationTests/Fixtures/failing_train.py"
        let run = try await self.demo(
            "fail-\(mode)", ["--agents", "3", "--script", script, "--step-timeout", "10"],
            environment: ["FAIL_NODE": "agent-2", "FAIL_STEP": "100", "FAIL_MODE": mode])
        let refusals = run.json["refusals"] as? [String: String] ?? [:]
        let says = try #require(Self.failures.first { $0.mode == mode }?.says)
        #expect(refusals.keys.sorted() == ["agent-2"], "only the failing node left: \(refusals)")
        #expect(
            refusals["agent-2"]?.contains(says) == true, "job status says why (\(says)): \(refusals["agent-2"] ?? "")")
        #expect(run.count("generations") == 2, "the others went on in a generation of their own")
        #expect(run.count("samples_repeated") == 0)
        #expect(run.count("samples_skipped") == 0)
        #expect(run.count("steps") == Self.steps, "the job finished")
        #expect(run.accuracy > 0.9)
        // The survivors kept their workers; the failed one was not restarted in this job.
        #expect(run.workers["agent-0"]?.count == 1 && run.workers["agent-1"]?.count == 1, "\(run.workers)")
        #expect(run.workers["agent-2"]?.count == 1, "\(run.workers)")
        print("torch worker failure \(mode): \(run.json["recoveries"] ?? []) refusal: \(refusals["agent-2"] ?? "")")
    }

    @Test func test_aCheckpointSavedWith4Workers_resumesWith3_andItsManifestNamesEveryTensor() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-torch-checkpoints-\(UUID().uuidString.prefix(8))"
        ).path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let checkpoints = ["--checkpoint-dir", root, "--checkpoint-interval", "50"]
        let lost = try await self.demo("save-4", ["--agents", "4", "--preempt-at-step", "150"] + checkpoints)
        #expect(lost.json["preempted"] as? Bool == true, "the whole cluster was lost after a checkpoint")
        let saved = try #require(lost.json["last_checkpoint_step"] as? Int)
        let manifestPath = "\(root)/step-\(String(format: "%012d", saved))/manifest.json"
        let manifest = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
                as? [String: Any], "no manifest at \(manifestPath)")
        #expect(manifest["worldSize"] as? Int == 4, "saved by 4 workers")
        let tensors = manifest["tensors"] as? [[String: Any]] ?? []
        let names = tensors.compactMap { $0["name"] as? String }
        // The perceptron 64-128-10 under Adam: 4 parameters, and Adam's step, exp_avg and
        // exp_avg_sq for each.
        #expect(tensors.count == 16, "\(names)")
        #expect(names.first == "parameter 0.weight")
        #expect(tensors.first?["shape"] as? [Int] == [128, 64] && tensors.first?["dtype"] as? String == "float32")
        #expect(names.contains { $0.contains("exp_avg_sq") }, "the optimizer's state is named too: \(names)")

        let resumed = try await self.demo("resume-3", ["--agents", "3", "--resume", "latest"] + checkpoints)
        #expect(resumed.json["resumed_from_step"] as? Int == saved)
        #expect(resumed.count("steps") == Self.steps)
        #expect(resumed.count("samples_repeated") == 0)
        #expect(resumed.count("samples_skipped") == 0)
        #expect(resumed.accuracy > 0.9, "test accuracy \(resumed.accuracy) after resuming with 3")
    }
}
