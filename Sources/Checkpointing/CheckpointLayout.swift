/// Checkpoints of a data-parallel job, written by every rank at once and committed by the coordinator.
///
/// Every rank holds the full training state, a flat vector of `stateCount` float32 elements (the
/// parameters, then the optimizer state). To save it, rank `r` of `w` writes only its own contiguous
/// slice, `slice(elements:rank:worldSize:)`, as one raw little-endian file (a *shard*) under the
/// step's directory. Each shard is written under a temporary name, fsynced, renamed to its final
/// name and its directory fsynced, so a shard under its final name is always complete. When every
/// rank has reported its shard (with the size and SHA-256 it computed while writing), the
/// coordinator writes `manifest.json` the same way: the manifest's presence is the commit. A step
/// directory without a manifest is a save that failed or is still running, and is never loaded.
///
/// ```
/// ROOT/step-000000000300/shard-00000-of-00004.bin
/// ROOT/step-000000000300/shard-00001-of-00004.bin
/// ...
/// ROOT/step-000000000300/manifest.json
/// ```
///
/// Loading verifies everything the manifest claims (coverage of the state, sizes, hashes) and falls
/// back to an older checkpoint when the newest is damaged; retention deletes old checkpoints and the
/// leftovers of failed saves, manifest first, so a half-deleted checkpoint never looks committed.
public enum CheckpointLayout {
    /// The prefix of a step directory's name; the step follows, zero-padded to 12 digits.
    public static let stepDirectoryPrefix = "step-"
    /// The name of the manifest inside a step directory; its presence means the step is committed.
    public static let manifestFileName = "manifest.json"

    /// The directory of step `step` under `root`: `ROOT/step-000000000300`.
    public static func stepDirectory(root: String, step: UInt64) -> String {
        Self.join(root, Self.stepDirectoryName(step: step))
    }

    /// The name (not the path) of step `step`'s directory.
    public static func stepDirectoryName(step: UInt64) -> String {
        Self.stepDirectoryPrefix + Self.zeroPadded(step, width: 12)
    }

    /// The step a directory name stands for, or nil if `name` is not a step directory's name.
    public static func step(fromDirectoryName name: String) -> UInt64? {
        guard name.hasPrefix(Self.stepDirectoryPrefix) else { return nil }
        let digits = name.dropFirst(Self.stepDirectoryPrefix.count)
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        return UInt64(digits)
    }

    /// The file name of rank `rank`'s shard in a world of `worldSize`: `shard-00001-of-00004.bin`.
    public static func shardFileName(rank: Int, worldSize: Int) -> String {
        let rank = Self.zeroPadded(UInt64(max(rank, 0)), width: 5)
        let world = Self.zeroPadded(UInt64(max(worldSize, 0)), width: 5)
        return "shard-\(rank)-of-\(world).bin"
    }

    /// The world size a shard's file name records (`shard-00001-of-00004.bin` gives 4), or nil.
    public static func worldSize(fromShardFileName name: String) -> Int? {
        guard name.hasPrefix("shard-"), name.hasSuffix(".bin"), let of = name.range(of: "-of-") else { return nil }
        return Int(name[of.upperBound..<name.index(name.endIndex, offsetBy: -4)])
    }

    /// The elements rank `rank` of `worldSize` saves: contiguous, sizes differ by at most one, covering 0..<elements.
    ///
    /// The first `elements % worldSize` ranks hold one element more than the others.
    public static func slice(elements: Int, rank: Int, worldSize: Int) -> Range<Int> {
        precondition(
            worldSize >= 1 && (0..<worldSize).contains(rank) && elements >= 0,
            "rank \(rank) of \(worldSize), \(elements) elements")
        let base = elements / worldSize
        let extra = elements % worldSize
        let start = rank * base + min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }

    /// Bytes per element of the only element type, `float32-le`.
    public static let bytesPerElement = MemoryLayout<Float>.size
    /// The element type every manifest of format 1 records.
    public static let elementType = "float32-le"

    // MARK: - Paths

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    static func zeroPadded(_ value: UInt64, width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }

    /// Whether `name` may name a file inside a step directory (a manifest is input: it must not
    /// point outside its directory).
    static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\0")
    }
}
