import Foundation
import JobModel
import Workload
import Yams

/// Reads a job spec from YAML, refusing unknown, missing and mistyped fields by name.
///
/// ```yaml
/// name: digits
/// workload: {kind: mlp, hidden: [128], optimizer: sgd, learning_rate: 0.1}
/// dataset: {path: data/digits.csv.gz, samples: 1437}
/// batch_size: 64
/// steps: 1500          # or epochs: 65 (23 steps of 64 samples per epoch)
/// seed: 42
/// nodes: {min: 2, max: 4}
/// checkpoint: {directory: /mnt/shared/ckpt/digits, interval_steps: 100, keep: 3}
/// resume: latest                  # or a step: start from the newest committed checkpoint at or before it
/// transport: auto                 # or tcp, or rdma (only nodes with a usable RDMA port)
/// ```
public enum JobSpecParser {
    static let topLevel: Set<String> = [
        "name", "workload", "dataset", "batch_size", "steps", "epochs", "seed", "nodes", "checkpoint", "resume",
        "transport",
    ]

    /// Parses and validates a spec. The text passes `JobSpecScreen` first (size, anchors and
    /// aliases, nesting, value count), so no spec costs more than bounded memory and time.
    public static func parse(yaml text: String) throws(JobSpecError) -> JobSpec {
        try JobSpecScreen.check(text)
        let document: Any?
        do {
            document = try Yams.compose(yaml: text).map { try self.value(of: $0) }
        } catch let error as JobSpecError {
            throw error
        } catch {
            throw JobSpecError(field: "(document)", reason: "is not valid YAML: \(error)")
        }
        guard let root = document as? [String: Any] else {
            throw JobSpecError(
                field: "(document)", reason: "must be a YAML mapping of fields (name, workload, dataset, ...)")
        }
        try self.refuseUnknown(root, known: self.topLevel, in: nil)

        let name = try self.string(root, "name")
        let workload = try self.mapping(root, "workload")
        let kind = try self.string(workload, "kind", in: "workload")
        var parameters = workload
        parameters["kind"] = nil
        let parametersYAML = parameters.isEmpty ? "" : ((try? Yams.dump(object: parameters, sortKeys: true)) ?? "")

        let dataset = try self.mapping(root, "dataset")
        try self.refuseUnknown(dataset, known: ["path", "samples"], in: "dataset")
        let path = try self.string(dataset, "path", in: "dataset")
        let samples = try self.integer(dataset, "samples", in: "dataset")
        do {
            try WorkloadCatalog.validate(
                kind: kind, yaml: parametersYAML, datasetPath: path, datasetSamples: samples)
        } catch {
            let message = (error as? WorkloadError)?.message ?? "\(error)"
            throw JobSpecError(field: "workload", reason: "is not valid: \(message)")
        }
        let batch = try self.integer(root, "batch_size")

        let steps: UInt64
        switch (root["steps"], root["epochs"]) {
        case (.some, .some):
            throw JobSpecError(field: "steps", reason: "and `epochs` are both given; give one")
        case (.some, .none):
            steps = UInt64(clamping: try self.integer(root, "steps"))
        case (.none, .some):
            let epochs = try self.integer(root, "epochs")
            guard epochs > 0 else { throw JobSpecError(field: "epochs", reason: "must be positive") }
            guard samples > 0, batch > 0 else {
                steps = 0
                break
            }
            steps = UInt64(epochs) * UInt64((samples + batch - 1) / batch)
        case (.none, .none):
            throw JobSpecError(field: "steps", reason: "is missing: give `steps` (global steps) or `epochs`")
        }
        let seed = root["seed"] == nil ? 0 : try self.integer(root, "seed")
        guard seed >= 0 else { throw JobSpecError(field: "seed", reason: "must not be negative") }

        let nodes = try self.mapping(root, "nodes")
        try self.refuseUnknown(nodes, known: ["min", "max"], in: "nodes")
        let minNodes = try self.integer(nodes, "min", in: "nodes")
        let maxNodes = nodes["max"] == nil ? minNodes : try self.integer(nodes, "max", in: "nodes")

        var spec = JobSpec(
            name: name,
            workloadKind: kind,
            workloadParameters: parametersYAML,
            datasetPath: path,
            datasetSamples: samples,
            globalBatchSize: batch,
            steps: steps,
            seed: UInt64(seed),
            minNodes: minNodes,
            maxNodes: maxNodes
        )
        if root["checkpoint"] != nil {
            let checkpoint = try self.mapping(root, "checkpoint")
            try self.refuseUnknown(checkpoint, known: ["directory", "interval_steps", "keep"], in: "checkpoint")
            spec.checkpointDirectory = try self.string(checkpoint, "directory", in: "checkpoint")
            let interval =
                checkpoint["interval_steps"] == nil
                ? 100 : try self.integer(checkpoint, "interval_steps", in: "checkpoint")
            guard interval > 0 else {
                throw JobSpecError(field: "checkpoint.interval_steps", reason: "must be positive")
            }
            spec.checkpointIntervalSteps = UInt64(interval)
            spec.checkpointKeep = checkpoint["keep"] == nil ? 3 : try self.integer(checkpoint, "keep", in: "checkpoint")
        }
        if let resume = root["resume"] {
            if let text = resume as? String, text == "latest" {
                spec.resume = .latest
            } else if let step = resume as? Int, step >= 0 {
                spec.resume = .atOrBefore(UInt64(step))
            } else {
                throw JobSpecError(
                    field: "resume", reason: "must be `latest` or a step number, not \(self.describe(resume))")
            }
        }
        if let transport = root["transport"] {
            guard let text = transport as? String, let request = TransportRequest(rawValue: text) else {
                throw JobSpecError(
                    field: "transport",
                    reason:
                        "must be auto, tcp or rdma, not \(self.describe(transport)) (auto: RDMA where every member has a device, TCP otherwise)"
                )
            }
            spec.transportRequest = request
        }
        try spec.validate()
        return spec
    }

    /// The YAML document of `spec`, as an operator would write it: `parse(yaml:)` reads it back
    /// to an equal spec (a spec given in `epochs` comes back in `steps`).
    public static func yaml(_ spec: JobSpec) -> String {
        var workload: [String: Any] = [:]
        if !spec.workloadParameters.isEmpty,
            let parameters = (try? Yams.load(yaml: spec.workloadParameters)) as? [String: Any]
        {
            workload = parameters
        }
        workload["kind"] = spec.workloadKind
        var document: [String: Any] = [
            "name": spec.name,
            "workload": workload,
            "dataset": ["path": spec.datasetPath, "samples": spec.datasetSamples],
            "batch_size": spec.globalBatchSize,
            "steps": Int(clamping: spec.steps),
            "seed": Int(clamping: spec.seed),
            "nodes": ["min": spec.minNodes, "max": spec.maxNodes],
        ]
        if let directory = spec.checkpointDirectory {
            document["checkpoint"] = [
                "directory": directory, "interval_steps": Int(clamping: spec.checkpointIntervalSteps),
                "keep": spec.checkpointKeep,
            ]
        }
        switch spec.resume {
        case .latest: document["resume"] = "latest"
        case .atOrBefore(let step): document["resume"] = Int(clamping: step)
        case nil: break
        }
        if let transport = spec.transportRequest { document["transport"] = transport.rawValue }
        // Every value above is text, a number or a mapping of them: dumping cannot fail.
        return (try? Yams.dump(object: document, sortKeys: true)) ?? ""
    }

    // MARK: - Values

    /// The value a composed node stands for: a mapping as `[String: Any]`, a sequence as `[Any]`, a
    /// scalar as Yams resolves it (`Int`, `Double`, `Bool`, `NSNull`, `String`...). Built here
    /// rather than by `Yams.load`, whose constructor traps on a mapping key that is not text (a
    /// crash of the coordinator from one line of YAML, found by `ringmaster bench spec-fuzz`).
    static func value(of node: Node) throws(JobSpecError) -> Any {
        switch node {
        case .scalar:
            return Constructor.default.any(from: node)
        case .sequence(let sequence):
            var values: [Any] = []
            for item in sequence { values.append(try self.value(of: item)) }
            return values
        case .mapping(let mapping):
            var values: [String: Any] = [:]
            for (key, value) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw JobSpecError(
                        field: "(document)",
                        reason:
                            "has a key that is not text (line \((key.mark?.line).map(String.init) ?? "?")); every key of a job spec is a field name"
                    )
                }
                values[scalar.string] = try self.value(of: value)
            }
            return values
        case .alias:
            // `JobSpecScreen` refuses aliases before anything is composed.
            throw JobSpecError(
                field: "(document)", reason: "uses an alias; anchors and aliases are not allowed in job specs")
        }
    }

    // MARK: - Fields

    /// A value as an error message shows it: at most 80 characters of it.
    static func describe(_ value: Any) -> String {
        let text = "\(value)"
        return text.count > 80 ? "\(text.prefix(80))..." : text
    }

    static func path(_ key: String, _ parent: String?) -> String {
        parent.map { "\($0).\(key)" } ?? key
    }

    static func refuseUnknown(_ mapping: [String: Any], known: Set<String>, in parent: String?) throws(JobSpecError) {
        if let unknown = mapping.keys.sorted().first(where: { !known.contains($0) }) {
            throw JobSpecError(
                field: self.path(unknown, parent),
                reason: "is not a known field; known fields here: \(known.sorted().joined(separator: ", "))"
            )
        }
    }

    static func value(_ mapping: [String: Any], _ key: String, in parent: String?) throws(JobSpecError) -> Any {
        guard let value = mapping[key], !(value is NSNull) else {
            throw JobSpecError(field: self.path(key, parent), reason: "is missing")
        }
        return value
    }

    static func string(_ mapping: [String: Any], _ key: String, in parent: String? = nil) throws(JobSpecError) -> String
    {
        let value = try self.value(mapping, key, in: parent)
        guard let text = value as? String else {
            throw JobSpecError(field: self.path(key, parent), reason: "must be text, not \(self.describe(value))")
        }
        return text
    }

    static func integer(_ mapping: [String: Any], _ key: String, in parent: String? = nil) throws(JobSpecError) -> Int {
        let value = try self.value(mapping, key, in: parent)
        guard let number = value as? Int else {
            throw JobSpecError(
                field: self.path(key, parent), reason: "must be a whole number, not \(self.describe(value))")
        }
        return number
    }

    static func mapping(_ mapping: [String: Any], _ key: String, in parent: String? = nil) throws(JobSpecError)
        -> [String: Any]
    {
        let value = try self.value(mapping, key, in: parent)
        guard let nested = value as? [String: Any] else {
            throw JobSpecError(
                field: self.path(key, parent), reason: "must be a mapping of fields, not \(self.describe(value))")
        }
        return nested
    }
}
