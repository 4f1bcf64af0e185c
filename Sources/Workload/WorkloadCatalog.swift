import Foundation
import Yams

/// The workloads an agent can run, by the `workload.kind` of a job spec.
///
/// - `mlp`: the reference workload, a perceptron (``MLPWorkload``) on the digits data set.
///   `dataset.path` is `builtin:digits` (the copy bundled with Ringmaster) or a CSV file, plain
///   or gzip-compressed, in the same layout; `dataset.samples` is its training part.
/// - `synthetic`: a large model with a cheap made-up gradient (``SyntheticWorkload``), to exercise
///   the all-reduce. `dataset.path` is `synthetic`; `dataset.samples` is any positive count.
///   Settings: `parameters` (default 10,000,000) and `buckets` (default 8).
/// - `torch`: the user's own PyTorch script (``TorchSettings``), run by the agent as a worker
///   process; `dataset.path` is the script's business (it is passed on, not read by Ringmaster)
///   and `dataset.samples` the size of the training set its sample ids index.
public enum WorkloadCatalog {
    /// The kinds a job spec may name.
    public static let kinds = ["mlp", "synthetic", "torch"]
    /// The path that names the bundled digits data set.
    public static let bundledDigits = "builtin:digits"
    /// Training samples in the bundled digits set (the other fifth is held out for testing).
    public static let bundledDigitsTrainingSamples = 1437

    /// Makes the workload a job describes; the same inputs give bit-identical workloads on every agent.
    public static func make(
        kind: String,
        parameters: [String: String],
        datasetPath: String,
        datasetSamples: Int,
        seed: UInt64
    ) throws -> any TrainingWorkload {
        switch kind {
        case "mlp":
            let settings = try MLPSettings(parameters: parameters, seed: seed)
            let dataset =
                datasetPath == Self.bundledDigits ? try DigitsDataset.bundled() : try DigitsDataset(path: datasetPath)
            return MLPWorkload(dataset: dataset, settings: settings)
        case "synthetic":
            let shape = try Self.syntheticShape(parameters, datasetPath: datasetPath)
            return SyntheticWorkload(
                parameterCount: shape.parameters, buckets: shape.buckets, trainingSamples: datasetSamples, seed: seed)
        case "torch":
            throw WorkloadError(
                .invalidSetting, "a torch workload runs as a worker process that the agent starts, not in-process")
        default:
            throw Self.unknownKind(kind)
        }
    }

    /// Checks a job's workload settings, as the YAML mapping the job spec gives under `workload`
    /// (without `kind`), without loading any data (for refusing a bad spec at submit).
    public static func validate(kind: String, yaml: String, datasetPath: String, datasetSamples: Int) throws {
        if kind == "torch" {
            _ = try TorchSettings(yaml: yaml)
            guard datasetSamples > 0 else {
                throw WorkloadError(
                    .invalidSetting,
                    "dataset.samples is \(datasetSamples); give the number of training samples the script's sample ids index"
                )
            }
            return
        }
        try Self.validate(
            kind: kind, parameters: try Self.parameters(fromYAML: yaml), datasetPath: datasetPath,
            datasetSamples: datasetSamples)
    }

    /// Checks the flat settings of a workload written in Swift.
    public static func validate(kind: String, parameters: [String: String], datasetPath: String, datasetSamples: Int)
        throws
    {
        switch kind {
        case "mlp":
            _ = try MLPSettings(parameters: parameters, seed: 0)
            if datasetPath == Self.bundledDigits && datasetSamples != Self.bundledDigitsTrainingSamples {
                throw WorkloadError(
                    .invalidSetting,
                    "dataset.samples is \(datasetSamples), but the bundled digits set has \(Self.bundledDigitsTrainingSamples) training samples; set it to \(Self.bundledDigitsTrainingSamples)"
                )
            }
        case "synthetic":
            _ = try Self.syntheticShape(parameters, datasetPath: datasetPath)
        case "torch":
            throw WorkloadError(.invalidSetting, "a torch workload's settings are checked from its YAML")
        default:
            throw Self.unknownKind(kind)
        }
    }

    static func unknownKind(_ kind: String) -> WorkloadError {
        WorkloadError(
            .invalidSetting, "unknown workload kind `\(kind)`; the kinds are \(Self.kinds.joined(separator: ", "))")
    }

    static func syntheticShape(_ parameters: [String: String], datasetPath: String) throws -> (
        parameters: Int, buckets: Int
    ) {
        let accepted = ["parameters", "buckets"]
        for key in parameters.keys.sorted() where !accepted.contains(key) {
            throw WorkloadError(
                .invalidSetting,
                "unknown workload setting `\(key)` for kind synthetic; the accepted keys are \(accepted.joined(separator: ", "))"
            )
        }
        guard datasetPath == "synthetic" else {
            throw WorkloadError(
                .invalidSetting,
                "the synthetic workload makes its own data: set dataset.path to `synthetic`, not `\(datasetPath)`")
        }
        func integer(_ key: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
            guard let text = parameters[key] else { return value }
            guard let number = Int(text.replacingOccurrences(of: "_", with: "")), range.contains(number) else {
                throw WorkloadError(
                    .invalidSetting,
                    "workload setting `\(key)` is `\(text)`; give a whole number from \(range.lowerBound) to \(range.upperBound)"
                )
            }
            return number
        }
        let count = try integer("parameters", default: 10_000_000, range: 1...1_000_000_000)
        let buckets = try integer("buckets", default: 8, range: 1...1024)
        return (count, min(buckets, count))
    }

    /// A job's workload settings (the YAML mapping a job spec gives under `workload`, without
    /// `kind`) as flat text values: scalars as written, sequences joined with commas.
    public static func parameters(fromYAML text: String) throws -> [String: String] {
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { return [:] }
        guard let node = try Yams.compose(yaml: text), let mapping = node.mapping else {
            throw WorkloadError(.invalidSetting, "the workload settings must be a mapping of keys to values")
        }
        var result: [String: String] = [:]
        for (key, value) in mapping {
            guard let name = key.string else {
                throw WorkloadError(.invalidSetting, "a workload setting's key is not text")
            }
            if let sequence = value.sequence {
                result[name] = try sequence.map { item -> String in
                    guard let scalar = item.scalar else {
                        throw WorkloadError(.invalidSetting, "workload setting `\(name)` must be a list of numbers")
                    }
                    return scalar.string
                }.joined(separator: ",")
            } else if let scalar = value.scalar {
                result[name] = scalar.string
            } else {
                throw WorkloadError(
                    .invalidSetting, "workload setting `\(name)` must be a value or a list, not a mapping")
            }
        }
        return result
    }
}
