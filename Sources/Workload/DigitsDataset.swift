import Foundation

/// The hand-written digits data set, parsed, scaled, and split into a training and a test part.
///
/// The bundled copy (`Resources/digits.csv.gz`) holds 1,797 images of hand-written digits,
/// 8 by 8 pixels with values 0 to 16. Each line of the CSV is one image: its 64 pixel values,
/// row by row, then its label 0 to 9; there is no header line. The images are the test part of
/// the UCI "Optical Recognition of Handwritten Digits" data set by E. Alpaydin and C. Kaynak
/// (1998), published under CC BY 4.0; the file is the copy that scikit-learn ships in its wheel
/// (`sklearn/datasets/data/digits.csv.gz`). The project carries it so that the reference workload
/// runs on a machine with no network access.
///
/// Pixels are scaled to 0...1 (divided by 16). The split is fixed and needs no randomness: every
/// row whose index (from 0, blank lines not counted) is a multiple of 5 is held out as the test set
/// (`index % heldOutModulus == heldOutResidue`), and the remaining rows, in file order, are the
/// training set. For the bundled file
/// that is 360 test rows and 1,437 training rows. Sample ids that a trainer hands to a workload are
/// indices `0..<trainCount` into the training set.
public struct DigitsDataset: Sendable {
    /// Pixels per image (8 by 8).
    public static let featureCount = 64
    /// Distinct labels (the digits 0 to 9).
    public static let classCount = 10
    /// The largest pixel value in the file; features are divided by it.
    public static let maximumPixel: Float = 16
    /// Rows are held out for the test set when `index % heldOutModulus == heldOutResidue`.
    public static let heldOutModulus = 5
    /// See ``heldOutModulus``.
    public static let heldOutResidue = 0

    /// Pixels per image (always ``featureCount``).
    public var featureCount: Int { Self.featureCount }
    /// Distinct labels (always ``classCount``).
    public var classCount: Int { Self.classCount }
    /// Rows in the training set.
    public var trainCount: Int { self.trainingLabels.count }
    /// Rows in the held-out test set.
    public var testCount: Int { self.testLabels.count }

    /// Training features, row-major, each in 0...1: sample `i` is
    /// `trainingFeatures[i * featureCount ..< (i + 1) * featureCount]`.
    public let trainingFeatures: [Float]
    /// Training labels, 0 to 9.
    public let trainingLabels: [Int32]
    /// Test features, row-major like ``trainingFeatures``.
    public let testFeatures: [Float]
    /// Test labels, 0 to 9.
    public let testLabels: [Int32]
    /// For each training sample, the index of its row in the file (0-based, blank lines not counted).
    public let trainingRows: [Int]
    /// For each test sample, the index of its row in the file.
    public let testRows: [Int]

    /// The data set bundled with this module.
    public static func bundled() throws -> DigitsDataset {
        try DigitsDataset(path: Self.bundledURL().path)
    }

    /// Where the bundled `digits.csv.gz` lies. Looked for (without `Bundle.module`, which stops the
    /// process when its bundle is missing) in `RINGMASTER_SHARE_DIR`, in the resource bundle
    /// SwiftPM puts beside the executable (`Ringmaster_Workload.resources`), in `../share/ringmaster`
    /// next to the executable, then in `/usr/local/share/ringmaster` and `/usr/share/ringmaster`.
    public static func bundledURL() throws -> URL {
        let name = "digits.csv.gz"
        var directories: [String] = []
        if let share = ProcessInfo.processInfo.environment["RINGMASTER_SHARE_DIR"], !share.isEmpty {
            directories.append(share)
        }
        let executable =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let beside = URL(fileURLWithPath: executable).deletingLastPathComponent()
        directories.append(beside.appendingPathComponent("Ringmaster_Workload.resources").path)
        directories.append(beside.deletingLastPathComponent().appendingPathComponent("share/ringmaster").path)
        directories += ["/usr/local/share/ringmaster", "/usr/share/ringmaster"]
        for directory in directories where FileManager.default.isReadableFile(atPath: "\(directory)/\(name)") {
            return URL(fileURLWithPath: "\(directory)/\(name)")
        }
        throw WorkloadError(
            .unreadableFile,
            "the bundled digits data set (\(name)) is not installed: looked in \(directories.joined(separator: ", ")); copy Ringmaster_Workload.resources from the build beside the ringmaster executable, or put \(name) in /usr/share/ringmaster, or give dataset.path as a CSV file"
        )
    }

    /// Loads a `.csv` file, or a gzip-compressed one (recognised by its gzip header, whatever its name).
    public init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw WorkloadError(
                .unreadableFile, "cannot read the digits data at \(path): \(error.localizedDescription)")
        }
        var bytes = [UInt8](data)
        if bytes.count >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
            do {
                bytes = try Gzip.decompress(bytes)
            } catch let error as WorkloadError {
                throw WorkloadError(error.code, "\(path): \(error.message)")
            }
        }
        try self.init(csvBytes: bytes)
    }

    /// Parses CSV text: one image per line, 64 pixel values (0...16) then a label (0...9).
    public init(csv: String) throws {
        try self.init(csvBytes: Array(csv.utf8))
    }

    /// Parses CSV bytes (UTF-8 or ASCII). Blank lines are skipped; line numbers in errors count from 1.
    public init(csvBytes bytes: [UInt8]) throws {
        let rows = try Self.parse(bytes)
        let width = Self.featureCount
        var trainingFeatures: [Float] = []
        var trainingLabels: [Int32] = []
        var testFeatures: [Float] = []
        var testLabels: [Int32] = []
        var trainingRows: [Int] = []
        var testRows: [Int] = []
        trainingFeatures.reserveCapacity(rows.features.count)
        for row in 0..<rows.labels.count {
            let pixels = rows.features[(row * width)..<((row + 1) * width)]
            if row % Self.heldOutModulus == Self.heldOutResidue {
                testFeatures.append(contentsOf: pixels)
                testLabels.append(rows.labels[row])
                testRows.append(row)
            } else {
                trainingFeatures.append(contentsOf: pixels)
                trainingLabels.append(rows.labels[row])
                trainingRows.append(row)
            }
        }
        guard !trainingLabels.isEmpty else {
            throw WorkloadError(
                .malformedData,
                "the digits data has \(rows.labels.count) rows, which leaves no training rows; expected hundreds")
        }
        self.trainingFeatures = trainingFeatures
        self.trainingLabels = trainingLabels
        self.testFeatures = testFeatures
        self.testLabels = testLabels
        self.trainingRows = trainingRows
        self.testRows = testRows
    }

    /// Training sample `index`'s label.
    public func trainingLabel(_ index: Int) -> Int {
        Int(self.trainingLabels[index])
    }

    /// Training sample `index`'s 64 scaled pixels.
    public func trainingSample(_ index: Int) -> ArraySlice<Float> {
        self.trainingFeatures[(index * Self.featureCount)..<((index + 1) * Self.featureCount)]
    }

    // MARK: - Parsing

    /// All rows of the file in order: scaled features (row-major) and labels.
    static func parse(_ bytes: [UInt8]) throws -> (features: [Float], labels: [Int32]) {
        var features: [Float] = []
        var labels: [Int32] = []
        features.reserveCapacity(bytes.count / 2)
        var lineNumber = 0
        var start = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            lineNumber += 1
            var lineEnd = end
            if lineEnd > start && bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
            if !Self.isBlank(bytes[start..<lineEnd]) {
                let label = try Self.parseLine(bytes[start..<lineEnd], lineNumber: lineNumber, into: &features)
                labels.append(label)
            }
            start = end + 1
        }
        guard !labels.isEmpty else {
            throw WorkloadError(
                .malformedData, "the digits data has no rows; expected lines of 64 pixel values and a label")
        }
        return (features, labels)
    }

    static func isBlank(_ line: ArraySlice<UInt8>) -> Bool {
        line.allSatisfy { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
    }

    /// Appends one line's scaled pixels to `features` and returns its label.
    static func parseLine(_ line: ArraySlice<UInt8>, lineNumber: Int, into features: inout [Float]) throws -> Int32 {
        let expectedFields = Self.featureCount + 1
        let fields = line.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard fields.count == expectedFields else {
            throw WorkloadError(
                .malformedData,
                "line \(lineNumber): found \(fields.count) comma-separated values; expected \(expectedFields) (64 pixels, then the label)"
            )
        }
        for (column, field) in fields.enumerated() {
            guard let value = Self.number(field) else {
                throw WorkloadError(
                    .malformedData,
                    "line \(lineNumber), column \(column + 1): \"\(Self.text(field))\" is not a number"
                )
            }
            if column < Self.featureCount {
                guard value >= 0 && value <= Double(Self.maximumPixel) else {
                    throw WorkloadError(
                        .malformedData,
                        "line \(lineNumber), column \(column + 1): pixel value \(Self.text(field)) is outside 0...16"
                    )
                }
                features.append(Float(value) / Self.maximumPixel)
            } else {
                guard value >= 0 && value < Double(Self.classCount) && value.rounded() == value else {
                    throw WorkloadError(
                        .malformedData,
                        "line \(lineNumber), column \(column + 1): label \(Self.text(field)) is not a digit 0 to 9"
                    )
                }
                return Int32(value)
            }
        }
        // Unreachable: the field count was checked above and the last field returns.
        throw WorkloadError(.malformedData, "line \(lineNumber): no label")
    }

    /// A field's value: plain digits fast, anything else through `Double(String)`.
    static func number(_ field: ArraySlice<UInt8>) -> Double? {
        var trimmed = field
        while let first = trimmed.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
            trimmed.removeFirst()
        }
        while let last = trimmed.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") { trimmed.removeLast() }
        guard !trimmed.isEmpty else { return nil }
        if trimmed.count <= 9 && trimmed.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
            var value = 0
            for digit in trimmed { value = value * 10 + Int(digit - UInt8(ascii: "0")) }
            return Double(value)
        }
        guard let value = Double(Self.text(trimmed)), value.isFinite else { return nil }
        return value
    }

    /// A field as text for an error message (cut short if long).
    static func text(_ field: ArraySlice<UInt8>) -> String {
        let shown = field.prefix(40)
        return String(decoding: shown, as: UTF8.self) + (field.count > 40 ? "..." : "")
    }
}
