import Crypto
import Foundation

/// Writes checkpoints: each rank its shard, then the coordinator the manifest that commits them.
public enum CheckpointWriter {
    /// Bytes written (and hashed) per system call.
    static let chunkBytes = 8 << 20

    /// Writes one rank's shard: a temporary name in the step directory (created if needed, 0755), all bytes, fsync,
    /// rename to the final name, fsync the directory. Returns its record (size and SHA-256 computed while writing,
    /// one pass). On any failure (e.g. ENOSPC) removes the temporary file and throws a CheckpointError whose message
    /// names the path and the errno text (and says the disk is full for ENOSPC/EDQUOT); never leaves a file under the
    /// final name that is not complete.
    ///
    /// `elements` is the rank's slice only (`CheckpointLayout.slice`), starting at `firstElement` of the state.
    public static func writeShard(
        root: String,
        step: UInt64,
        rank: Int,
        worldSize: Int,
        firstElement: Int,
        elements: UnsafeBufferPointer<Float>
    ) throws -> ShardRecord {
        guard worldSize >= 1, (0..<worldSize).contains(rank), firstElement >= 0 else {
            throw CheckpointError(
                .invalidArgument, "shard of rank \(rank) of \(worldSize) from element \(firstElement): no such rank")
        }
        let directory = CheckpointLayout.stepDirectory(root: root, step: step)
        try Self.createStepDirectory(root: root, directory: directory)
        let file = CheckpointLayout.shardFileName(rank: rank, worldSize: worldSize)
        let path = CheckpointLayout.join(directory, file)
        let temporary = DurableFile.temporaryName(for: path)
        var hasher = SHA256()
        do {
            var descriptor = try DurableFile.open(temporary, O_WRONLY | O_CREAT | O_TRUNC)
            let chunkElements = Self.chunkBytes / CheckpointLayout.bytesPerElement
            var start = 0
            #if _endian(big)
                var swapped = [UInt32](repeating: 0, count: min(chunkElements, elements.count))
            #endif
            while start < elements.count {
                let chunk = UnsafeBufferPointer(rebasing: elements[start..<min(start + chunkElements, elements.count)])
                #if _endian(little)
                    let bytes = UnsafeRawBufferPointer(chunk)
                    hasher.update(bufferPointer: bytes)
                    try DurableFile.writeAll(descriptor, bytes)
                #else
                    for (index, value) in chunk.enumerated() { swapped[index] = value.bitPattern.littleEndian }
                    try swapped.withUnsafeBytes { all in
                        let bytes = UnsafeRawBufferPointer(rebasing: all[0..<(chunk.count * 4)])
                        hasher.update(bufferPointer: bytes)
                        try DurableFile.writeAll(descriptor, bytes)
                    }
                #endif
                start += chunk.count
            }
            try DurableFile.sync(descriptor)
            try descriptor.close()
            CrashPoint.afterShardData.reached(step: step)
            try DurableFile.rename(temporary, path)
        } catch {
            _ = unlink(temporary)
            throw error
        }
        CrashPoint.afterShardRename.reached(step: step)
        try DurableFile.syncDirectory(directory)
        return ShardRecord(
            rank: rank,
            file: file,
            firstElement: firstElement,
            elements: elements.count,
            bytes: elements.count * CheckpointLayout.bytesPerElement,
            sha256: Self.hex(hasher.finalize())
        )
    }

    /// The coordinator's commit: checks that every shard file named in the manifest exists with its recorded size
    /// (not re-hashing: ranks already hashed while writing), then writes manifest.json (pretty JSON, sorted keys) via
    /// temp name + fsync + rename + directory fsync, and fsyncs ROOT too.
    ///
    /// Also refuses (`.corrupt`) a manifest that does not validate, e.g. whose shards leave a gap: it would never load.
    public static func commit(_ manifest: CheckpointManifest, root: String) throws {
        let directory = CheckpointLayout.stepDirectory(root: root, step: manifest.step)
        let path = CheckpointLayout.join(directory, CheckpointLayout.manifestFileName)
        try manifest.validate(path: path)
        for shard in manifest.shards {
            let shardPath = CheckpointLayout.join(directory, shard.file)
            guard let info = try DurableFile.status(shardPath) else {
                throw CheckpointError(
                    .missing,
                    "cannot commit step \(manifest.step): shard \(shardPath) of rank \(shard.rank) does not exist")
            }
            guard Int(info.st_size) == shard.bytes else {
                throw CheckpointError(
                    .corrupt,
                    "cannot commit step \(manifest.step): shard \(shardPath) of rank \(shard.rank) has \(info.st_size) bytes, the rank reported \(shard.bytes)"
                )
            }
        }
        CrashPoint.beforeManifest.reached(step: manifest.step)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes: [UInt8]
        do {
            bytes = Array(try encoder.encode(manifest)) + [UInt8(ascii: "\n")]
        } catch {
            throw CheckpointError(.io, "could not encode the manifest of step \(manifest.step): \(error)")
        }
        try DurableFile.replace(path, with: bytes, crashAfterTemporary: (.afterManifestTemp, manifest.step))
        try DurableFile.syncDirectory(root)
    }

    // MARK: - Helpers

    /// Creates the step directory (and root) if needed; a new directory's entry is made durable in root.
    static func createStepDirectory(root: String, directory: String) throws {
        if try DurableFile.createDirectory(directory) {
            try DurableFile.syncDirectory(root)
        }
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var result: [UInt8] = []
        for byte in digest {
            result.append(digits[Int(byte >> 4)])
            result.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: result, as: UTF8.self)
    }
}
