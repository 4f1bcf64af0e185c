import Crypto
import Foundation

/// One step directory under a checkpoint root, as `CheckpointReader.listing` finds it (nothing verified).
public struct CheckpointListing: Sendable, Hashable {
    /// The step it saves.
    public var step: UInt64
    /// Its path.
    public var path: String
    /// Whether it holds a manifest (committed).
    public var committed: Bool
    /// Names of the shard files under their final names.
    public var shardFiles: [String]
    /// Names of temporary files (a save in progress, or one that crashed).
    public var temporaryFiles: [String]
    /// Bytes of every file in it.
    public var bytes: Int
}

/// Reads checkpoints back, verifying everything a manifest claims before handing out the state.
public enum CheckpointReader {
    /// Step directories under root that have a manifest file, newest step first (manifest not parsed yet).
    public static func committedSteps(root: String) throws -> [UInt64] {
        try Self.stepDirectories(root: root).filter { step in
            let manifest = CheckpointLayout.join(
                CheckpointLayout.stepDirectory(root: root, step: step), CheckpointLayout.manifestFileName)
            return try DurableFile.status(manifest) != nil
        }
    }

    /// Every step directory under root, committed or not, newest step first; none if root does not exist.
    public static func stepDirectories(root: String) throws -> [UInt64] {
        guard let names = try DurableFile.names(in: root) else { return [] }
        return names.compactMap { name -> UInt64? in
            guard let step = CheckpointLayout.step(fromDirectoryName: name),
                DurableFile.isDirectory(CheckpointLayout.join(root, name))
            else { return nil }
            return step
        }.sorted(by: >)
    }

    /// What each step directory under root holds, newest step first (for `ringmaster checkpoint list`).
    public static func listing(root: String) throws -> [CheckpointListing] {
        try Self.stepDirectories(root: root).map { step in
            let path = CheckpointLayout.stepDirectory(root: root, step: step)
            let names = try DurableFile.names(in: path) ?? []
            var bytes = 0
            for name in names {
                if let info = try DurableFile.status(CheckpointLayout.join(path, name)) { bytes += Int(info.st_size) }
            }
            return CheckpointListing(
                step: step,
                path: path,
                committed: names.contains(CheckpointLayout.manifestFileName),
                shardFiles: names.filter { CheckpointLayout.worldSize(fromShardFileName: $0) != nil }.sorted(),
                temporaryFiles: names.filter(DurableFile.isTemporaryName).sorted(),
                bytes: bytes
            )
        }
    }

    /// Reads and checks the manifest of `step` without reading shards: it parses, validates
    /// (format, coverage, sizes) and records the step of its directory.
    public static func manifest(root: String, step: UInt64) throws -> CheckpointManifest {
        let path = CheckpointLayout.join(
            CheckpointLayout.stepDirectory(root: root, step: step), CheckpointLayout.manifestFileName)
        let bytes: [UInt8]
        do {
            bytes = try DurableFile.readWholeFile(path)
        } catch let error as CheckpointError where error.code == .missing {
            throw CheckpointError(
                .missing, "step \(step) is not committed: \(path) does not exist", systemError: error.systemError)
        }
        let manifest: CheckpointManifest
        do {
            manifest = try JSONDecoder().decode(CheckpointManifest.self, from: Data(bytes))
        } catch {
            throw CheckpointError(.corrupt, "\(path) does not parse as a manifest: \(Self.describe(error))")
        }
        try manifest.validate(path: path)
        guard manifest.step == step else {
            throw CheckpointError(
                .corrupt, "\(path) records step \(manifest.step) but sits in the directory of step \(step)")
        }
        return manifest
    }

    /// Loads and verifies one checkpoint: manifest parses and has formatVersion 1; shards cover 0..<stateCount
    /// exactly once; every shard file exists, has its recorded size, and its SHA-256 matches; returns the manifest and
    /// the reassembled full state. Any problem throws CheckpointError(.corrupt/.missing) naming the file and what is
    /// wrong (`.incompatible` for another format version or element type).
    public static func load(root: String, step: UInt64) throws -> (manifest: CheckpointManifest, state: [Float]) {
        let manifest = try Self.manifest(root: root, step: step)
        let directory = CheckpointLayout.stepDirectory(root: root, step: step)
        // Sizes first, so that a damaged manifest cannot make us allocate what no file backs.
        for shard in manifest.shards {
            try Self.checkSize(CheckpointLayout.join(directory, shard.file), record: shard)
        }
        let state = try [Float](unsafeUninitializedCapacity: manifest.stateCount) { buffer, initialized in
            // Validation guarantees the shards tile 0..<stateCount, so every element gets written
            // (or the load throws); `initialized` stays 0 until then so nothing uninitialised escapes.
            let raw = UnsafeMutableRawBufferPointer(buffer)
            for shard in manifest.shards {
                let bytes = UnsafeMutableRawBufferPointer(
                    rebasing: raw[
                        (shard.firstElement * CheckpointLayout.bytesPerElement)..<((shard.firstElement + shard.elements)
                            * CheckpointLayout.bytesPerElement)]
                )
                try Self.readShard(CheckpointLayout.join(directory, shard.file), record: shard, into: bytes)
            }
            #if _endian(big)
                for index in 0..<manifest.stateCount {
                    buffer[index] = Float(bitPattern: UInt32(littleEndian: buffer[index].bitPattern))
                }
            #endif
            initialized = manifest.stateCount
        }
        return (manifest, state)
    }

    /// Checks one checkpoint as `load` does (the manifest, every shard's presence, size and
    /// SHA-256) without keeping the state: shards stream through one buffer of
    /// `CheckpointWriter.chunkBytes`, so memory does not grow with the model. Throws as `load`.
    public static func verify(root: String, step: UInt64) throws -> CheckpointManifest {
        let manifest = try Self.manifest(root: root, step: step)
        let directory = CheckpointLayout.stepDirectory(root: root, step: step)
        for shard in manifest.shards {
            try Self.checkSize(CheckpointLayout.join(directory, shard.file), record: shard)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: CheckpointWriter.chunkBytes, alignment: 64)
        defer { buffer.deallocate() }
        for shard in manifest.shards {
            try Self.streamShard(CheckpointLayout.join(directory, shard.file), record: shard) { _, count in
                UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            }
        }
        return manifest
    }

    /// The newest committed checkpoint (at or before `step` if given) that verifies (see
    /// `verify`), with the newer ones that failed and why, as `loadLatest` finds them.
    public static func verifyLatest(
        root: String,
        atOrBefore step: UInt64? = nil
    ) throws -> (manifest: CheckpointManifest, skipped: [(step: UInt64, error: CheckpointError)]) {
        let found = try Self.newest(root: root, atOrBefore: step) { try Self.verify(root: root, step: $0) }
        return (found.value, found.skipped)
    }

    /// The newest committed checkpoint (at or before `step` if given) that loads; `skipped` lists newer ones that failed
    /// with why (the caller logs them loudly). Throws .noValidCheckpoint (listing each failure, or saying there is none
    /// under root) when none loads.
    public static func loadLatest(
        root: String,
        atOrBefore step: UInt64? = nil
    ) throws -> (manifest: CheckpointManifest, state: [Float], skipped: [(step: UInt64, error: CheckpointError)]) {
        let found = try Self.newest(root: root, atOrBefore: step) { try Self.load(root: root, step: $0) }
        return (found.value.manifest, found.value.state, found.skipped)
    }

    /// The first committed step, newest first (at or before `step` if given), for which
    /// `attempt` succeeds, with the newer steps it failed on. Throws .noValidCheckpoint (listing
    /// each failure, or saying there is none under root) when it fails on all.
    static func newest<Value>(
        root: String,
        atOrBefore step: UInt64?,
        _ attempt: (UInt64) throws -> Value
    ) throws -> (value: Value, skipped: [(step: UInt64, error: CheckpointError)]) {
        let candidates = try Self.committedSteps(root: root).filter { step == nil || $0 <= step! }
        var skipped: [(step: UInt64, error: CheckpointError)] = []
        for candidate in candidates {
            do {
                return (try attempt(candidate), skipped)
            } catch let error as CheckpointError {
                skipped.append((candidate, error))
            }
        }
        let bound = step.map { " at or before step \($0)" } ?? ""
        guard !skipped.isEmpty else {
            throw CheckpointError(.noValidCheckpoint, "no committed checkpoint under \(root)\(bound)")
        }
        let reasons = skipped.map { "step \($0.step): \($0.error.message)" }.joined(separator: "; ")
        throw CheckpointError(
            .noValidCheckpoint,
            "none of the \(skipped.count) committed checkpoints under \(root)\(bound) loads: \(reasons)")
    }

    // MARK: - Shards

    /// Reads one shard into `destination` (exactly its recorded size), hashing as it reads.
    static func readShard(_ path: String, record: ShardRecord, into destination: UnsafeMutableRawBufferPointer) throws {
        precondition(destination.count == record.bytes, "the destination is not the shard's size")
        try Self.streamShard(path, record: record) { offset, count in
            UnsafeMutableRawBufferPointer(rebasing: destination[offset..<(offset + count)])
        }
    }

    /// Reads one shard of its recorded size in chunks of at most `CheckpointWriter.chunkBytes`,
    /// each into the buffer `place(offset, count)` returns, hashing as it goes; throws unless the
    /// file has that size and its SHA-256 matches the record.
    static func streamShard(
        _ path: String,
        record: ShardRecord,
        place: (_ offset: Int, _ count: Int) -> UnsafeMutableRawBufferPointer
    ) throws {
        let descriptor: DurableFile.Descriptor
        do {
            descriptor = try DurableFile.open(path, O_RDONLY)
        } catch let error as CheckpointError where error.code == .missing {
            throw CheckpointError(
                .missing, "shard \(path) of rank \(record.rank) does not exist", systemError: error.systemError)
        }
        var info = stat()
        guard fstat(descriptor.fd, &info) == 0 else { throw CheckpointError.system("could not stat \(path)") }
        try Self.checkSize(Int(info.st_size), path: path, record: record)
        var hasher = SHA256()
        var offset = 0
        while offset < record.bytes {
            let end = min(offset + CheckpointWriter.chunkBytes, record.bytes)
            let chunk = place(offset, end - offset)
            let count = try DurableFile.readFully(descriptor, into: chunk)
            guard count == chunk.count else {
                throw CheckpointError(
                    .corrupt,
                    "shard \(path) of rank \(record.rank) ended after \(offset + count) of \(record.bytes) bytes while being read"
                )
            }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(chunk))
            offset = end
        }
        let digest = CheckpointWriter.hex(hasher.finalize())
        guard digest == record.sha256 else {
            throw CheckpointError(
                .corrupt,
                "shard \(path) of rank \(record.rank) has SHA-256 \(digest), the manifest records \(record.sha256)")
        }
    }

    /// Throws unless the shard file exists with its recorded size.
    static func checkSize(_ path: String, record: ShardRecord) throws {
        guard let info = try DurableFile.status(path) else {
            throw CheckpointError(.missing, "shard \(path) of rank \(record.rank) does not exist", systemError: ENOENT)
        }
        try Self.checkSize(Int(info.st_size), path: path, record: record)
    }

    static func checkSize(_ size: Int, path: String, record: ShardRecord) throws {
        guard size == record.bytes else {
            throw CheckpointError(
                .corrupt,
                "shard \(path) of rank \(record.rank) has \(size) bytes, the manifest records \(record.bytes)\(size < record.bytes ? " (truncated)" : "")"
            )
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context):
            return "invalid JSON or value at \(Self.path(context.codingPath)): \(context.debugDescription)"
        case DecodingError.keyNotFound(let key, let context):
            return "no \"\(key.stringValue)\" at \(Self.path(context.codingPath))"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at \(Self.path(context.codingPath)): \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }

    static func path(_ codingPath: [any CodingKey]) -> String {
        codingPath.isEmpty
            ? "the top level" : codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }
}
