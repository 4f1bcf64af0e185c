import Foundation
import JobModel
import Testing
import Workload

@testable import Coordinator

@Suite("Job spec parser")
struct JobSpecParserTests {
    static let valid = """
        name: digits
        workload:
          kind: mlp
          hidden: [128]
          learning_rate: 0.1
        dataset: {path: data/digits.csv.gz, samples: 1437}
        batch_size: 64
        steps: 1500
        seed: 42
        nodes: {min: 2, max: 4}
        checkpoint: {directory: /mnt/ckpt/digits, interval_steps: 100, keep: 3}
        """

    @Test func theExampleSpec_parses() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("coordinator/examples/digits.yaml")
        let spec = try JobSpecParser.parse(yaml: try String(contentsOf: url, encoding: .utf8))
        #expect(spec.name == "digits" && spec.minNodes == 2 && spec.maxNodes == 4)
        #expect(spec.workloadParameters.contains("learning_rate"))
    }

    @Test func theTorchExampleSpec_parses_withItsScriptArgsAndEnvironment() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("coordinator/examples/torch-digits.yaml")
        let spec = try JobSpecParser.parse(yaml: try String(contentsOf: url, encoding: .utf8))
        #expect(spec.workloadKind == "torch")
        let settings = try TorchSettings(yaml: spec.workloadParameters)
        #expect(settings.script == "/srv/ringmaster/examples/torch/digits/train.py")
        #expect(settings.arguments == ["--data", "/srv/ringmaster/data/digits.csv.gz", "--lr", "0.01"])
        #expect(settings.environment == ["OMP_NUM_THREADS": "1"])
        #expect(settings.python == "/srv/ringmaster/.venv/bin/python" && settings.stepTimeoutSeconds == 60)
        #expect(settings.workersPerNode == nil, "left out: one per GPU the node sees")
        #expect(try TorchSettings(yaml: "{script: t.py, workers_per_node: 4}").workersPerNode == 4)
        // What the spec writer reads back is the same spec.
        #expect(try JobSpecParser.parse(yaml: JobSpecParser.yaml(spec)) == spec)
    }

    @Test func theMiniLMExampleSpec_parses_andNamesTheExamplesDataSet() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let spec = try JobSpecParser.parse(
            yaml: try String(
                contentsOf: url.appendingPathComponent("coordinator/examples/torch-minilm.yaml"), encoding: .utf8))
        let settings = try TorchSettings(yaml: spec.workloadParameters)
        #expect(settings.script.hasSuffix("examples/torch/minilm/train.py"))
        #expect(settings.arguments.contains("--device") && settings.stepTimeoutSeconds == 120)
        #expect(settings.environment["HF_HUB_OFFLINE"] == "1", "nothing is downloaded at run time")
        // The sample count is the example's training set, as the demo uses it.
        #expect(spec.datasetSamples == 1280 && spec.globalBatchSize == 32)
        #expect(
            FileManager.default.fileExists(atPath: url.appendingPathComponent("examples/torch/minilm/train.py").path))
    }

    @Test(arguments: [
        ("workload: {kind: torch}", "needs `script`"),
        ("workload: {kind: torch, script: t.py, args: --lr}", "`args` must be a list"),
        ("workload: {kind: torch, script: t.py, env: [A]}", "`env` must be a mapping"),
        ("workload: {kind: torch, script: t.py, env: {RINGMASTER_WORKER_TOKEN: x}}", "may not set RINGMASTER_"),
        ("workload: {kind: torch, script: t.py, interpreter: python3}", "unknown workload setting `interpreter`"),
        ("workload: {kind: torch, script: t.py, step_timeout_seconds: 0}", "`step_timeout_seconds` must be"),
        ("workload: {kind: torch, script: t.py, workers_per_node: 0}", "`workers_per_node` must be"),
        ("workload: {kind: torch, script: t.py, workers_per_node: 65}", "`workers_per_node` must be"),
        ("workload: {kind: torch, script: t.py, workers_per_node: two}", "`workers_per_node` must be"),
    ])
    func aMalformedTorchWorkload_isRefused_namingTheSetting(workload: String, says: String) {
        let text = """
            name: t
            \(workload)
            dataset: {path: /data/set, samples: 100}
            batch_size: 10
            steps: 10
            nodes: {min: 1}
            """
        #expect {
            try JobSpecParser.parse(yaml: text)
        } throws: { error in
            let description = "\(error)"
            return description.contains("workload") && description.contains(says)
        }
    }

    @Test func aValidSpec_parsesEveryField() throws {
        let spec = try JobSpecParser.parse(yaml: JobSpecParserTests.valid)
        #expect(spec.name == "digits")
        #expect(spec.workloadKind == "mlp")
        #expect(spec.workloadParameters.contains("hidden") && !spec.workloadParameters.contains("kind"))
        #expect(spec.datasetPath == "data/digits.csv.gz" && spec.datasetSamples == 1437)
        #expect(spec.globalBatchSize == 64 && spec.steps == 1500 && spec.seed == 42)
        #expect(
            spec.checkpointDirectory == "/mnt/ckpt/digits" && spec.checkpointIntervalSteps == 100
                && spec.checkpointKeep == 3)
    }

    @Test func epochs_becomeSteps_includingTheLastPartialBatch() throws {
        let spec = try JobSpecParser.parse(
            yaml: JobSpecParserTests.valid.replacingOccurrences(of: "steps: 1500", with: "epochs: 2"))
        #expect(spec.steps == 2 * 23)  // 1437 samples / 64 per batch = 22 full batches and a partial one
    }

    @Test(arguments: [
        ("batch_size: 64", "batch_size: -64", "batch_size"),
        ("batch_size: 64", "batch_size: lots", "batch_size"),
        ("dataset: {path: data/digits.csv.gz, samples: 1437}", "", "dataset"),
        ("dataset: {path: data/digits.csv.gz, samples: 1437}", "dataset: {samples: 1437}", "dataset.path"),
        ("nodes: {min: 2, max: 4}", "nodes: {min: 4, max: 2}", "nodes.max"),
        ("nodes: {min: 2, max: 4}", "nodes: {min: 0, max: 2}", "nodes.min"),
        ("name: digits", "name: Digits_1", "name"),
        ("seed: 42", "seed: 42\nbatchsize: 3", "batchsize"),
        ("steps: 1500", "", "steps"),
        ("steps: 1500", "steps: 1500\nepochs: 3", "steps"),
        (
            "checkpoint: {directory: /mnt/ckpt/digits, interval_steps: 100, keep: 3}",
            "checkpoint: {directory: relative/dir}", "checkpoint.directory"
        ),
    ])
    func badFields_areRefusedByName(original: String, replacement: String, field: String) {
        let yaml = JobSpecParserTests.valid.replacingOccurrences(of: original, with: replacement)
        #expect {
            try JobSpecParser.parse(yaml: yaml)
        } throws: { error in
            guard let error = error as? JobSpecError else { return false }
            return error.field == field && error.description.contains("`\(field)`")
        }
    }

    @Test func notYAML_orNotAMapping_isRefused() {
        #expect(throws: JobSpecError.self) { try JobSpecParser.parse(yaml: "name: [unclosed") }
        #expect(throws: JobSpecError.self) { try JobSpecParser.parse(yaml: "- a\n- b") }
    }
}

@Suite("Job spec writer")
struct JobSpecWriterTests {
    @Test(arguments: [
        JobSpecParserTests.valid + "\nresume: latest",
        """
        name: big
        workload: {kind: synthetic, parameters: 1000, buckets: 8}
        dataset: {path: synthetic, samples: 100000}
        batch_size: 64
        epochs: 2
        nodes: {min: 2}
        """,
        """
        name: again
        workload: {kind: mlp, hidden: [16, 8], optimizer: adam, learning_rate: 0.001}
        dataset: {path: builtin:digits, samples: 1437}
        batch_size: 64
        steps: 10
        nodes: {min: 1, max: 1}
        checkpoint: {directory: /c, interval_steps: 5}
        resume: 300
        """,
    ])
    func aWrittenSpec_parsesBackToTheSameSpec(document: String) throws {
        let spec = try JobSpecParser.parse(yaml: document)
        let text = JobSpecParser.yaml(spec)
        #expect(try JobSpecParser.parse(yaml: text) == spec, "\(text)")
    }

    @Test func transport_isAutoUnlessTheSpecSaysTcpOrRdma_andIsWrittenBack() throws {
        #expect(try JobSpecParser.parse(yaml: JobSpecParserTests.valid).transport == .auto)
        for request in TransportRequest.allCases {
            let spec = try JobSpecParser.parse(yaml: JobSpecParserTests.valid + "\ntransport: \(request.rawValue)")
            #expect(spec.transport == request)
            #expect(try JobSpecParser.parse(yaml: JobSpecParser.yaml(spec)) == spec)
        }
    }

    @Test(arguments: ["transport: infiniband", "transport: 3", "transport: [rdma]", "transport: RDMA"])
    func anUnknownTransport_isRefused_sayingWhatItMayBe(line: String) {
        #expect {
            try JobSpecParser.parse(yaml: JobSpecParserTests.valid + "\n" + line)
        } throws: { error in
            guard let error = error as? JobSpecError else { return false }
            return error.field == "transport" && error.description.contains("auto, tcp or rdma")
        }
    }

    @Test func aSpecSavedBeforeTransportExisted_decodes_asAuto() throws {
        let spec = try JobSpecParser.parse(yaml: JobSpecParserTests.valid)
        var object = try #require(
            try JSONSerialization.jsonObject(with: JSONEncoder().encode(spec)) as? [String: Any])
        object["transportRequest"] = nil
        let decoded = try JSONDecoder().decode(JobSpec.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(decoded.transport == .auto && decoded.name == spec.name)
    }
}
