import CYaml
import JobModel

/// The checks a job spec's text passes before anything is built from it, so that no spec can
/// cost the coordinator more than a bounded amount of memory and time.
///
/// YAML's anchors and aliases let a few hundred bytes describe billions of values (the "billion
/// laughs"): each level of aliases multiplies the one below. Yams expands aliases when it builds
/// values, and hashes whole subtrees when it checks a mapping's keys for duplicates, so an alias
/// bomb costs memory without end or time exponential in its size. The screen therefore walks the
/// parser's events (libyaml, the parser Yams itself uses, which keeps its own stack and so reads
/// any nesting without recursion) before Yams sees the text, and refuses:
///
/// - text longer than `maximumBytes`;
/// - any anchor (`&name`) or alias (`*name`): a job spec has no use for them;
/// - nesting deeper than `maximumDepth` (a spec is three levels deep);
/// - more than `maximumNodes` values in all.
///
/// With those refused, what Yams builds is at most `maximumNodes` values from at most
/// `maximumBytes` of text, and the walk itself reads each byte once.
public enum JobSpecScreen {
    /// The longest spec accepted (1 MiB).
    public static let maximumBytes = 1 << 20
    /// The deepest nesting of mappings and sequences accepted.
    public static let maximumDepth = 16
    /// The most values (scalars, sequences, mappings) a spec may hold.
    public static let maximumNodes = 10_000

    /// Refuses `text` if it breaks one of the limits; returns quietly otherwise, syntax errors
    /// included (Yams reports those, with their position, when it parses the same text).
    public static func check(_ text: String) throws(JobSpecError) {
        let size = text.utf8.count
        guard size <= Self.maximumBytes else {
            throw JobSpecError(
                field: "(document)",
                reason: "is \(size) bytes long; a job spec may be at most \(Self.maximumBytes) bytes (1 MiB)"
            )
        }
        var copy = text
        let outcome: JobSpecError? = copy.withUTF8 { bytes in Self.walk(bytes) }
        if let outcome { throw outcome }
    }

    /// Walks the parser's events over `bytes`; the first limit broken, or nil.
    static func walk(_ bytes: UnsafeBufferPointer<UInt8>) -> JobSpecError? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            return JobSpecError(
                field: "(document)", reason: "could not be read: the YAML parser could not start (out of memory?)")
        }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
        var depth = 0
        var nodes = 0
        while true {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) == 1 else {
                // libyaml's scanner reads flow collections ahead, so `[[[[...` can stop at its own
                // nesting limit (1,000) before this walk sees the levels: the same refusal.
                let problem = parser.problem.map { String(cString: $0) } ?? ""
                if problem.contains("nesting level") {
                    return JobSpecError(
                        field: "(document)",
                        reason:
                            "nests mappings and lists more than \(Self.maximumDepth) deep (line \(Int(parser.problem_mark.line) + 1)); a job spec needs three levels"
                    )
                }
                return nil  // a syntax error: Yams reports it, with its position
            }
            defer { yaml_event_delete(&event) }
            let line = Int(event.start_mark.line) + 1
            let anchor: UnsafeMutablePointer<yaml_char_t>?
            switch event.type {
            case YAML_STREAM_END_EVENT:
                return nil
            case YAML_ALIAS_EVENT:
                return JobSpecError(
                    field: "(document)",
                    reason:
                        "uses an alias (*\(Self.name(event.data.alias.anchor))) on line \(line); anchors and aliases are not allowed in job specs: write each value out"
                )
            case YAML_SCALAR_EVENT:
                anchor = event.data.scalar.anchor
                nodes += 1
            case YAML_SEQUENCE_START_EVENT:
                anchor = event.data.sequence_start.anchor
                nodes += 1
                depth += 1
            case YAML_MAPPING_START_EVENT:
                anchor = event.data.mapping_start.anchor
                nodes += 1
                depth += 1
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                depth -= 1
                continue
            default:
                continue
            }
            if let anchor {
                return JobSpecError(
                    field: "(document)",
                    reason:
                        "defines an anchor (&\(Self.name(anchor))) on line \(line); anchors and aliases are not allowed in job specs: write each value out"
                )
            }
            if depth > Self.maximumDepth {
                return JobSpecError(
                    field: "(document)",
                    reason:
                        "nests mappings and lists more than \(Self.maximumDepth) deep (line \(line)); a job spec needs three levels"
                )
            }
            if nodes > Self.maximumNodes {
                return JobSpecError(
                    field: "(document)",
                    reason:
                        "holds more than \(Self.maximumNodes) values (at line \(line)); a job spec needs a few dozen"
                )
            }
        }
    }

    /// An anchor's name for an error message (at most 40 characters of it).
    static func name(_ anchor: UnsafeMutablePointer<yaml_char_t>?) -> String {
        guard let anchor else { return "" }
        let text = String(cString: UnsafeRawPointer(anchor).assumingMemoryBound(to: CChar.self))
        return text.count > 40 ? "\(text.prefix(40))..." : text
    }
}
