import Foundation
import Testing

@testable import Workload

@Suite("Gzip and the digits data set")
struct DatasetTests {
    static let hello: [UInt8] = [
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7,
        0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
    ]
    static let world: [UInt8] = [
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x2b, 0xcf, 0x2f, 0xca, 0x49, 0xe1,
        0x02, 0x00, 0xa8, 0x61, 0x38, 0xdd, 0x06, 0x00, 0x00, 0x00,
    ]

    static func bundledBytes() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: DigitsDataset.bundledURL()))
    }

    @Test func test_gzip_decompressesKnownBytes_andConcatenatedMembers() throws {
        #expect(try Gzip.decompress(Self.hello) == Array("hello\n".utf8))
        #expect(try Gzip.decompress(Self.hello + Self.world) == Array("hello\nworld\n".utf8))
    }

    @Test func test_gzip_bundledFile_holds1797RowsOf65Columns() throws {
        let text = String(decoding: try Gzip.decompress(Self.bundledBytes()), as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1797)
        #expect(lines.allSatisfy { $0.split(separator: ",", omittingEmptySubsequences: false).count == 65 })
        #expect(lines.first?.hasPrefix("0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0") == true)
        #expect(lines.first?.hasSuffix(",0") == true)  // the first image is a 0
    }

    @Test func test_gzip_flippedByte_throwsCorruptCompressedData() throws {
        var bytes = try Self.bundledBytes()
        bytes[bytes.count / 2] ^= 0xff
        let error = try #require(throws: WorkloadError.self) { try Gzip.decompress(bytes) }
        #expect(error.code == .corruptCompressedData)
        #expect(error.description.contains("not valid gzip"))
    }

    @Test func test_gzip_cutShort_orNotGzip_orEmpty_throwsWithAReason() throws {
        let bytes = try Self.bundledBytes()
        let cut = try #require(throws: WorkloadError.self) { try Gzip.decompress(Array(bytes[0..<(bytes.count / 2)])) }
        #expect(cut.code == .corruptCompressedData && cut.message.contains("cut short"))
        let text = try #require(throws: WorkloadError.self) { try Gzip.decompress(Array("0,1,2\n".utf8)) }
        #expect(text.code == .corruptCompressedData)
        let empty = try #require(throws: WorkloadError.self) { try Gzip.decompress([]) }
        #expect(empty.code == .corruptCompressedData && empty.message.contains("empty"))
    }

    /// A CSV of `rows` rows; row `r` has pixel 0 = r % 17, the other pixels = 16, label = r % 10.
    static func csv(rows: Int) -> String {
        (0..<rows).map { row in
            ([String(row % 17)] + Array(repeating: "16", count: 63) + [String(row % 10)]).joined(separator: ",")
        }.joined(separator: "\n") + "\n"
    }

    @Test func test_split_holdsOutEveryRowWhoseIndexIsAMultipleOf5() throws {
        let dataset = try DigitsDataset(csv: Self.csv(rows: 12))
        #expect(dataset.testRows == [0, 5, 10])
        #expect(dataset.trainingRows == [1, 2, 3, 4, 6, 7, 8, 9, 11])
        #expect(dataset.trainCount == 9 && dataset.testCount == 3)
        #expect(dataset.trainingLabels == [1, 2, 3, 4, 6, 7, 8, 9, 1])
        #expect(dataset.testLabels == [0, 5, 0])
        // Sample i's features are the scaled pixels of training row i.
        #expect(dataset.trainingSample(3).first == 0.25)  // row 4's first pixel, 4, scaled
        #expect(dataset.trainingSample(3).dropFirst().allSatisfy { $0 == 1 })
        #expect(dataset.trainingSample(3).count == 64 && dataset.trainingLabel(3) == 4)
    }

    @Test func test_bundled_splitsInto1437TrainingAnd360TestRows() throws {
        let dataset = try DigitsDataset.bundled()
        #expect(dataset.trainCount == 1437 && dataset.testCount == 360)
        #expect(dataset.featureCount == 64 && dataset.classCount == 10)
        #expect(dataset.trainingRows.allSatisfy { $0 % 5 != 0 } && dataset.testRows.allSatisfy { $0 % 5 == 0 })
        #expect(Set(dataset.trainingRows + dataset.testRows) == Set(0..<1797))
        #expect(dataset.trainingFeatures.count == 1437 * 64 && dataset.testFeatures.count == 360 * 64)
        #expect(dataset.trainingFeatures.allSatisfy { $0 >= 0 && $0 <= 1 } && dataset.trainingFeatures.max() == 1)
        #expect(Set(dataset.trainingLabels) == Set(0..<10) && Set(dataset.testLabels) == Set(0..<10))
        // The first test row is the file's first image (a 0): 0,0,5,13,... scaled by 1/16.
        #expect(Array(dataset.testFeatures[0..<4]) == [0, 0, 5.0 / 16, 13.0 / 16] && dataset.testLabels[0] == 0)
    }

    @Test func test_path_readsPlainAndCompressedFiles_andNamesAMissingFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "workload-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let plain = directory.appendingPathComponent("digits.csv")
        try Gzip.decompress(Self.bundledBytes()).withUnsafeBufferPointer { try Data(buffer: $0).write(to: plain) }
        let fromPlain = try DigitsDataset(path: plain.path)
        let fromCompressed = try DigitsDataset(path: DigitsDataset.bundledURL().path)
        #expect(fromPlain.trainingFeatures == fromCompressed.trainingFeatures)
        #expect(fromPlain.testLabels == fromCompressed.testLabels)
        let missing = directory.appendingPathComponent("absent.csv.gz").path
        let error = try #require(throws: WorkloadError.self) { try DigitsDataset(path: missing) }
        #expect(error.code == .unreadableFile && error.message.contains(missing))
    }

    @Test(arguments: [
        (3, "16,", "line 3: found 66 comma-separated values; expected 65"),
        (2, "", "line 2: found 64 comma-separated values; expected 65"),
    ])
    func test_csv_wrongFieldCount_namesTheLine(row: Int, extra: String, expected: String) throws {
        var lines = Self.csv(rows: 4).split(separator: "\n").map(String.init)
        if extra.isEmpty {
            lines[row - 1] = lines[row - 1].split(separator: ",").dropLast().joined(separator: ",")
        } else {
            lines[row - 1] = extra + lines[row - 1]
        }
        let error = try #require(throws: WorkloadError.self) { try DigitsDataset(csv: lines.joined(separator: "\n")) }
        #expect(error.code == .malformedData)
        #expect(error.message.contains(expected), "\(error)")
    }

    @Test func test_csv_badValues_nameLineColumnAndValue() throws {
        func failure(_ row: Int, _ column: Int, _ value: String) throws -> WorkloadError {
            var lines = Self.csv(rows: 4).split(separator: "\n").map { $0.split(separator: ",").map(String.init) }
            lines[row - 1][column - 1] = value
            let text = lines.map { $0.joined(separator: ",") }.joined(separator: "\n")
            return try #require(throws: WorkloadError.self) { try DigitsDataset(csv: text) }
        }
        #expect(try failure(2, 5, "x7").message == "line 2, column 5: \"x7\" is not a number")
        #expect(try failure(4, 1, "17").message == "line 4, column 1: pixel value 17 is outside 0...16")
        #expect(try failure(1, 64, "-1").message == "line 1, column 64: pixel value -1 is outside 0...16")
        #expect(try failure(3, 65, "10").message == "line 3, column 65: label 10 is not a digit 0 to 9")
        #expect(try failure(3, 65, "2.5").message == "line 3, column 65: label 2.5 is not a digit 0 to 9")
        #expect(try failure(3, 2, "").message == "line 3, column 2: \"\" is not a number")
    }

    @Test func test_csv_blankLinesAndCRLF_areAccepted_andCountedInLineNumbers() throws {
        let rows = Self.csv(rows: 3).split(separator: "\n")
        let dataset = try DigitsDataset(csv: "\(rows[0])\r\n\r\n\(rows[1])\r\n\(rows[2])")
        #expect(dataset.trainCount + dataset.testCount == 3)
        let error = try #require(throws: WorkloadError.self) { try DigitsDataset(csv: "\(rows[0])\n\n1,2,3\n") }
        #expect(error.message.hasPrefix("line 3:"))
        #expect(throws: WorkloadError.self) { try DigitsDataset(csv: "\n\n") }
    }
}
