import Checkpointing
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory under the temporary directory, removed when the test drops it.
final class TestDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("\(NSTemporaryDirectory())/ringmaster-ckpt-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else {
            throw TestFailure("mkdtemp failed: \(String(cString: strerror(errno)))")
        }
        self.path = String(cString: result)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: self.path)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The `ringmaster` executable built next to this test bundle (or `RINGMASTER_BINARY`).
func ringmasterExecutable() throws -> String {
    if let path = ProcessInfo.processInfo.environment["RINGMASTER_BINARY"] { return path }
    let testBinary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: testBinary).deletingLastPathComponent().appendingPathComponent("ringmaster").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw TestFailure("no ringmaster executable at \(path): run `swift build` first, or set RINGMASTER_BINARY")
    }
    return path
}

/// A state of `count` elements with arbitrary bit patterns (NaN payloads, infinities, subnormals,
/// negative zero included), so that "bit-identical" means more than "equal as numbers".
func scrambledState(count: Int, seed: UInt64) -> [Float] {
    var x = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in
        // SplitMix64.
        x = x &+ 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Float(bitPattern: UInt32(truncatingIfNeeded: z ^ (z >> 31)))
    }
}

/// The state `ringmaster checkpoint write-test --seed seed` saves.
func writeTestState(count: Int, seed: Int) -> [Float] {
    (0..<count).map { Float($0 % 1000) * 0.5 + Float(seed) }
}

/// Writes every rank's shard of `state` in this process and commits them, as ranks and coordinator would.
@discardableResult
func writeCheckpoint(
    root: String,
    step: UInt64,
    world: Int,
    state: [Float],
    configure: (inout CheckpointManifest) -> Void = { _ in }
) throws -> CheckpointManifest {
    let shards = try state.withUnsafeBufferPointer { all in
        try (0..<world).map { rank in
            let slice = CheckpointLayout.slice(elements: state.count, rank: rank, worldSize: world)
            return try CheckpointWriter.writeShard(
                root: root, step: step, rank: rank, worldSize: world,
                firstElement: slice.lowerBound, elements: UnsafeBufferPointer(rebasing: all[slice])
            )
        }
    }
    var manifest = CheckpointManifest(
        job: "job-a", generation: 7, step: step, cursorEpoch: 2, permutationSeed: 0xFEDC_BA98_7654_3210,
        worldSize: world, stateCount: state.count, parameterCount: state.count / 3,
        workloadKind: "mlp", workloadSpec: "{\"hidden\":[64,32]}", shards: shards,
        committedUnixMilliseconds: 1_795_000_000_123
    )
    configure(&manifest)
    try CheckpointWriter.commit(manifest, root: root)
    return manifest
}

/// The bit patterns of a state, to compare states exactly (NaN != NaN as floats).
func bits(_ state: [Float]) -> [UInt32] { state.map(\.bitPattern) }

/// The names in a directory, or [] if it does not exist.
func names(in directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
}

/// Runs `body` expecting a CheckpointError and returns it; records an issue if none is thrown.
func expectCheckpointError(
    _ comment: Comment? = nil,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> CheckpointError? {
    do {
        try body()
        Issue.record(
            "expected a CheckpointError, none was thrown. \(comment.map { "\($0)" } ?? "")",
            sourceLocation: sourceLocation)
    } catch let error as CheckpointError {
        return error
    } catch {
        Issue.record("expected a CheckpointError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}
