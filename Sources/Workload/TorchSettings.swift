import Foundation
import Yams

/// The settings of a `kind: torch` workload: the user's PyTorch script and how to run it.
///
/// ```yaml
/// workload:
///   kind: torch
///   script: /srv/jobs/train.py      # absolute, or relative to the agent's working directory
///   args: [--lr, "0.01"]           # optional
///   env: {OMP_NUM_THREADS: "1"}    # optional
///   python: /opt/venv/bin/python   # optional, default python3 (looked up on PATH)
///   step_timeout_seconds: 60       # optional: longest wait for one answer of the worker
///   workers_per_node: 2            # optional: default one per visible GPU, one on a CPU-only node
/// ```
public struct TorchSettings: Sendable, Hashable {
    /// The user's script.
    public var script: String
    /// Its arguments.
    public var arguments: [String]
    /// Extra environment variables of the worker.
    public var environment: [String: String]
    /// The interpreter.
    public var python: String
    /// The longest wait for one answer of the worker (a step, an update, a save); default 60 s,
    /// the agent's default collective timeout: a worker that hangs holds its peers up that long.
    public var stepTimeoutSeconds: Int
    /// Worker processes each agent runs (each takes a slice of the node's share of the batch;
    /// their gradients are summed on the node before the job's all-reduce); nil: one per GPU the
    /// node sees, one on a node without GPUs.
    public var workersPerNode: Int?

    /// The most workers per node a job may ask for.
    public static let maximumWorkersPerNode = 64

    /// The keys a torch workload accepts beside `kind`.
    public static let keys = ["script", "args", "env", "python", "step_timeout_seconds", "workers_per_node"]

    /// Reads the settings from the workload's YAML mapping (without `kind`), refusing what is
    /// unknown or malformed with the key named.
    public init(yaml text: String) throws {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw WorkloadError(.invalidSetting, "the torch workload's settings are not valid YAML: \(error)")
        }
        guard let mapping = node?.mapping else {
            throw WorkloadError(
                .invalidSetting, "a torch workload needs `script`: the path of the training script to run")
        }
        var values: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string, Self.keys.contains(name) else {
                throw WorkloadError(
                    .invalidSetting,
                    "unknown workload setting `\(key.string ?? "?")` for kind torch; the accepted keys are \(Self.keys.joined(separator: ", "))"
                )
            }
            values[name] = value
        }
        guard let script = values["script"]?.string, !script.isEmpty else {
            throw WorkloadError(
                .invalidSetting, "a torch workload needs `script`: the path of the training script to run")
        }
        self.script = script
        if let args = values["args"] {
            guard let sequence = args.sequence else {
                throw WorkloadError(.invalidSetting, "workload setting `args` must be a list of strings")
            }
            self.arguments = try sequence.map { item in
                guard let scalar = item.scalar else {
                    throw WorkloadError(.invalidSetting, "workload setting `args` must be a list of strings")
                }
                return scalar.string
            }
        } else {
            self.arguments = []
        }
        self.environment = [:]
        if let env = values["env"] {
            guard let entries = env.mapping else {
                throw WorkloadError(.invalidSetting, "workload setting `env` must be a mapping of names to strings")
            }
            for (key, value) in entries {
                guard let name = key.string, !name.isEmpty, !name.contains("="), let scalar = value.scalar else {
                    throw WorkloadError(
                        .invalidSetting, "workload setting `env` must be a mapping of names (without `=`) to strings")
                }
                guard !name.hasPrefix("RINGMASTER_") else {
                    throw WorkloadError(
                        .invalidSetting,
                        "workload setting `env` may not set \(name): the agent sets RINGMASTER_ variables")
                }
                self.environment[name] = scalar.string
            }
        }
        self.python = values["python"]?.string ?? "python3"
        guard !self.python.isEmpty else {
            throw WorkloadError(
                .invalidSetting, "workload setting `python` is empty; name an interpreter or leave it out")
        }
        if let timeout = values["step_timeout_seconds"] {
            guard let seconds = timeout.int, (1...86_400).contains(seconds) else {
                throw WorkloadError(
                    .invalidSetting, "workload setting `step_timeout_seconds` must be a whole number from 1 to 86400")
            }
            self.stepTimeoutSeconds = seconds
        } else {
            self.stepTimeoutSeconds = 60
        }
        if let workers = values["workers_per_node"] {
            guard let count = workers.int, (1...Self.maximumWorkersPerNode).contains(count) else {
                throw WorkloadError(
                    .invalidSetting,
                    "workload setting `workers_per_node` must be a whole number from 1 to \(Self.maximumWorkersPerNode), or left out (one per GPU the node sees)"
                )
            }
            self.workersPerNode = count
        }
    }
}
