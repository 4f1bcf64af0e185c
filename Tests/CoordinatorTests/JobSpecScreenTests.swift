import Foundation
import JobModel
import Testing

@testable import Coordinator

/// Job specs that would cost the coordinator unbounded memory or time are refused before Yams
/// builds anything from them, with a message that says what to write instead.
@Suite("Job spec limits")
struct JobSpecScreenTests {
    /// The "billion laughs": nine levels of nine aliases each, 9^9 (387 million) strings once expanded.
    static let aliasBomb: String = {
        var lines = ["name: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
        let letters = Array("abcdefghi")
        for index in 1..<letters.count {
            let previous = letters[index - 1]
            lines.append(
                "\(letters[index]): &\(letters[index]) ["
                    + Array(repeating: "*\(previous)", count: 9).joined(separator: ",") + "]")
        }
        return lines.joined(separator: "\n") + "\n"
    }()

    /// Aliases as mapping keys: Yams hashes each key (the whole expanded subtree) to find duplicates.
    static let keyBomb: String = {
        var lines = ["a: &a [x, x, x, x, x, x, x, x]"]
        let letters = Array("abcdefghij")
        for index in 1..<letters.count {
            let previous = letters[index - 1]
            lines.append(
                "\(letters[index]): &\(letters[index]) {? *\(previous) : 1, ? [*\(previous)] : 2, ? [[*\(previous)]] : 3}"
            )
        }
        return lines.joined(separator: "\n") + "\n"
    }()

    func refusal(_ yaml: String) -> JobSpecError? {
        do {
            _ = try JobSpecParser.parse(yaml: yaml)
            return nil
        } catch {
            return error
        }
    }

    @Test func theAliasBomb_isRefused_namingTheAlias() throws {
        #expect(Self.aliasBomb.utf8.count < 700)
        let error = try #require(self.refusal(Self.aliasBomb))
        #expect(error.field == "(document)")
        #expect(error.reason.contains("anchor") && error.reason.contains("write each value out"), "\(error)")
    }

    @Test func aliasesAsMappingKeys_areRefused() throws {
        let error = try #require(self.refusal(Self.keyBomb))
        #expect(error.reason.contains("anchors and aliases are not allowed"), "\(error)")
    }

    @Test func anAliasToAnUndefinedAnchor_andAnAnchorAlone_areRefused() throws {
        #expect(try #require(self.refusal("name: *nowhere\n")).reason.contains("alias (*nowhere) on line 1"))
        #expect(
            try #require(self.refusal("name: x\nworkload: &w {kind: mlp}\n")).reason.contains("anchor (&w) on line 2"))
    }

    @Test func deepNesting_isRefused_beforeAnythingIsBuilt() throws {
        let deep = "name: " + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "\n"
        let error = try #require(self.refusal(deep))
        #expect(error.reason.contains("more than \(JobSpecScreen.maximumDepth) deep"), "\(error)")
        let unclosed = String(repeating: "{a: ", count: 200_000)
        #expect(try #require(self.refusal(unclosed)).reason.contains("deep"))
    }

    @Test func aSpecOverOneMebibyte_isRefused_sayingTheLimit() throws {
        let big = "name: x\nfiller: \"" + String(repeating: "y", count: JobSpecScreen.maximumBytes) + "\"\n"
        let error = try #require(self.refusal(big))
        #expect(error.reason.contains("at most \(JobSpecScreen.maximumBytes) bytes"), "\(error)")
    }

    @Test func tooManyValues_areRefused() throws {
        let many =
            "name: x\nlist: [" + Array(repeating: "1", count: JobSpecScreen.maximumNodes + 1).joined(separator: ",")
            + "]\n"
        #expect(try #require(self.refusal(many)).reason.contains("more than \(JobSpecScreen.maximumNodes) values"))
    }

    @Test func ampersandsAndAsterisksInsideValues_areNotAnchorsOrAliases() throws {
        let spec = try JobSpecParser.parse(
            yaml: JobSpecParserTests.valid
                .replacingOccurrences(of: "path: data/digits.csv.gz", with: "path: \"/data/r&d/*digits*.csv.gz\"")
                .replacingOccurrences(of: "name: digits", with: "name: digits # &not *an alias")
        )
        #expect(spec.datasetPath == "/data/r&d/*digits*.csv.gz")
    }

    /// Yams' own constructor traps on these (a force unwrap of the key as text): one line of YAML
    /// would have ended the coordinator. They are refused, naming the problem.
    @Test(arguments: [
        "[a]: 1\n", "name: x\n{a: 1}: 2\n", "? [x]\n: 1\n", "name: !!set {? [x]}\n", "nodes: {? {min: 1} : 2}\n",
    ])
    func aKeyThatIsNotText_isRefused_notACrash(yaml: String) throws {
        let error = try #require(self.refusal(yaml))
        #expect(error.reason.contains("key that is not text"), "\(error)")
    }

    @Test func aHugeValue_inAnError_isShortened() throws {
        let error = try #require(
            self.refusal(
                JobSpecParserTests.valid.replacingOccurrences(
                    of: "batch_size: 64",
                    with: "batch_size: [" + Array(repeating: "7", count: 5000).joined(separator: ",") + "]")))
        #expect(error.field == "batch_size")
        #expect(error.description.count < 300, "\(error.description.count) characters")
    }
}
