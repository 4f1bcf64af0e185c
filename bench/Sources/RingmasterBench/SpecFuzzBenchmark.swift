import Coordinator
import Foundation
import JobModel
import LocalCluster

/// Random and mutated job specs through the coordinator's parser (`JobSpecParser.parse`, the
/// screen included), in this process: each must come back as a spec or a `JobSpecError`, within
/// `maximumParseSeconds`, with resident memory staying within `maximumGrowthBytes` of where it
/// started. A crash ends the process, which is the other way the run fails.
///
/// Inputs, seeded so that a run can be repeated: the example spec mutated (bytes flipped, inserted,
/// deleted, ranges copied elsewhere, YAML tokens spliced in: anchors, aliases, merge keys, tags,
/// flow brackets, block scalars, document markers), generated trees (deep, wide, with aliases to
/// earlier nodes), alias bombs of random shape, and plain random bytes.
public enum SpecFuzzBenchmark {
    /// What a run found.
    public struct Result: Sendable {
        public var iterations: Int
        public var accepted: Int
        public var refused: Int
        public var seconds: Double
        /// The slowest parse, and the kind of input it was.
        public var slowestSeconds: Double
        public var slowestKind: String
        public var startRSS: Int
        public var peakRSS: Int
        /// Inputs over the time limit (each a failure).
        public var overTime: Int
        public var bytesParsed: Int
    }

    static let example = """
        # The reference workload
        name: digits
        workload:
          kind: mlp
          hidden: [128]
          optimizer: sgd
          learning_rate: 0.1
          momentum: 0.9
        dataset:
          path: builtin:digits  # bundled
          samples: 1437
        batch_size: 64
        steps: 1500
        seed: 42
        nodes:
          min: 2
          max: 4
        checkpoint:
          directory: /mnt/shared/ringmaster/digits
          interval_steps: 100
          keep: 3
        resume: latest
        """

    static let tokens = [
        "&a ", "*a", "&b ", "*b", "<<: *a\n", "!!binary ", "!!str ", "!!int ", "!!map ", "!!seq ", "!custom ", "? ",
        ": ", "- ",
        "[", "]", "{", "}", ",", "|\n  ", ">\n  ", "\"", "'", "#", "\t", "\n", "\n  ", "---\n", "...\n", "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n",
        "99999999999999999999999999", "-1", "0x7fffffffffffffff", "1e309", ".nan", "~", "null", "true", "\u{0}",
        "\u{FEFF}", "é", "\\u0000",
    ]

    /// Runs `iterations` inputs from `seed`.
    public static func run(
        iterations: Int,
        seed: UInt64,
        maximumParseSeconds: Double = 1,
        progress: (Int) -> Void = { _ in }
    ) -> Result {
        var generator = SplitMix64(seed: seed)
        let pid = getpid()
        let startRSS = ProcessSampler.status(of: pid)?.rss ?? 0
        var result = Result(
            iterations: iterations, accepted: 0, refused: 0, seconds: 0, slowestSeconds: 0, slowestKind: "",
            startRSS: startRSS, peakRSS: startRSS, overTime: 0, bytesParsed: 0
        )
        let started = ContinuousClock.now
        for index in 0..<iterations {
            let (kind, text) = self.input(&generator)
            result.bytesParsed += text.utf8.count
            let begun = ContinuousClock.now
            do {
                _ = try JobSpecParser.parse(yaml: text)
                result.accepted += 1
            } catch {
                result.refused += 1  // typed: always a JobSpecError
            }
            let elapsed = ContinuousClock.now - begun
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if seconds > result.slowestSeconds {
                result.slowestSeconds = seconds
                result.slowestKind = kind
            }
            if seconds > maximumParseSeconds { result.overTime += 1 }
            if index % 1000 == 999 {
                result.peakRSS = max(result.peakRSS, ProcessSampler.status(of: pid)?.rss ?? 0)
                progress(index + 1)
            }
        }
        result.peakRSS = max(result.peakRSS, ProcessSampler.status(of: pid)?.rss ?? 0)
        let elapsed = ContinuousClock.now - started
        result.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return result
    }

    /// One input and its kind.
    static func input(_ generator: inout SplitMix64) -> (String, String) {
        switch generator.next() % 10 {
        case 0..<5: return ("mutated example", self.mutate(Array(self.example.utf8), &generator))
        case 5, 6: return ("generated tree", self.tree(&generator))
        case 7: return ("alias bomb", self.bomb(&generator))
        case 8: return ("mutated tree", self.mutate(Array(self.tree(&generator).utf8), &generator))
        default:
            let count = Int(generator.next() % 2048)
            return (
                "random bytes",
                String(decoding: (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }, as: UTF8.self)
            )
        }
    }

    static func mutate(_ original: [UInt8], _ generator: inout SplitMix64) -> String {
        var bytes = original
        for _ in 0..<(1 + Int(generator.next() % 8)) {
            let position = bytes.isEmpty ? 0 : Int(generator.next() % UInt64(bytes.count))
            switch generator.next() % 6 {
            case 0 where !bytes.isEmpty:
                bytes[position] ^= UInt8(truncatingIfNeeded: 1 << (generator.next() % 8))
            case 1:
                bytes.insert(UInt8(truncatingIfNeeded: generator.next()), at: position)
            case 2 where !bytes.isEmpty:
                let end = min(bytes.count, position + Int(generator.next() % 64))
                bytes.removeSubrange(position..<end)
            case 3 where !bytes.isEmpty:
                // A range copied elsewhere, sometimes many times over.
                let end = min(bytes.count, position + Int(generator.next() % 128))
                let copies = generator.next() % 4 == 0 ? Int(generator.next() % 200) : 1
                let target = Int(generator.next() % UInt64(bytes.count))
                bytes.insert(
                    contentsOf: Array(repeating: Array(bytes[position..<end]), count: copies).joined(), at: target)
            default:
                let token = self.tokens[Int(generator.next() % UInt64(self.tokens.count))]
                bytes.insert(contentsOf: Array(token.utf8), at: position)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A random YAML document: nested mappings and sequences, scalars, and aliases to anchors
    /// defined earlier in it.
    static func tree(_ generator: inout SplitMix64) -> String {
        var anchors: [String] = []
        var text = ""
        // A budget of nodes, so that the generator itself stays small (its branching would
        // otherwise grow trees without end); the depth still reaches past the screen's limit.
        var budget = 50 + Int(generator.next() % 400)
        func node(_ depth: Int, _ generator: inout SplitMix64) {
            budget -= 1
            let choice = depth > 40 || budget <= 0 ? 0 : generator.next() % 6
            var anchor = ""
            if generator.next() % 5 == 0 {
                let name = "n\(anchors.count)"
                anchors.append(name)
                anchor = "&\(name) "
            }
            switch choice {
            case 0, 1:
                if !anchors.isEmpty && generator.next() % 3 == 0 {
                    text += "*\(anchors[Int(generator.next() % UInt64(anchors.count))])"
                } else {
                    text +=
                        anchor
                        + ["x", "42", "-7", "3.5", "\"q\"", "true", "~", "builtin:digits"][Int(generator.next() % 8)]
                }
            case 2, 3:
                text += anchor + "["
                for index in 0..<Int(generator.next() % 6) {
                    if index > 0 { text += ", " }
                    node(depth + 1, &generator)
                }
                text += "]"
            default:
                text += anchor + "{"
                for index in 0..<Int(generator.next() % 6) {
                    if index > 0 { text += ", " }
                    text +=
                        ["name", "workload", "kind", "nodes", "min", "max", "steps", "k\(index)"][
                            Int(generator.next() % 8)] + ": "
                    node(depth + 1, &generator)
                }
                text += "}"
            }
        }
        node(0, &generator)
        return text
    }

    /// An alias bomb of random depth and fan-out, its aliases as values or as keys.
    static func bomb(_ generator: inout SplitMix64) -> String {
        let levels = 3 + Int(generator.next() % 12)
        let fanOut = 2 + Int(generator.next() % 9)
        return self.aliasBomb(levels: levels, fanOut: fanOut, asKeys: generator.next() % 2 == 0)
    }

    /// A job spec of `levels` levels of aliases, each `fanOut` aliases of the level below
    /// (fanOut^levels values once expanded), as sequence items or, with `asKeys`, as mapping keys
    /// (which a YAML library hashes whole to find duplicates).
    public static func aliasBomb(levels: Int, fanOut: Int, asKeys: Bool = false) -> String {
        var lines = [
            "name: bomb", "l0: &l0 [" + Array(repeating: "\"lol\"", count: fanOut).joined(separator: ",") + "]",
        ]
        for level in 1...levels {
            let below = "*l\(level - 1)"
            let body =
                asKeys
                ? "{"
                    + (0..<fanOut).map {
                        "? [\(String(repeating: "[", count: $0))\(below)\(String(repeating: "]", count: $0))] : \($0)"
                    }.joined(separator: ", ") + "}"
                : "[" + Array(repeating: below, count: fanOut).joined(separator: ",") + "]"
            lines.append("l\(level): &l\(level) \(body)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
