#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Deletes old checkpoints and the leftovers of failed saves.
public enum CheckpointRetention {
    /// Keeps the newest `keep` (>= 1) committed checkpoints; deletes older committed ones, and step directories without
    /// a manifest that are older than the newest committed one (leftovers of failed or crashed saves). Never deletes
    /// the newest committed checkpoint, nor an uncommitted directory newer than it (a save in progress). Returns the
    /// deleted directories, oldest first.
    ///
    /// One more guard: if none of the kept checkpoints is complete by a cheap check (manifest parses and validates,
    /// every shard file has its recorded size; no hashing), the newest older checkpoint that is complete is kept
    /// too, so that pruning never removes the checkpoint `loadLatest` would fall back to.
    ///
    /// A directory is deleted manifest first (then the directory is fsynced), so a deletion cut short by a crash
    /// leaves an uncommitted leftover, never a committed checkpoint with shards missing.
    @discardableResult
    public static func prune(root: String, keep: Int) throws -> [String] {
        guard keep >= 1 else {
            throw CheckpointError(
                .invalidArgument, "retention must keep at least 1 checkpoint, was asked to keep \(keep)")
        }
        let steps = try CheckpointReader.stepDirectories(root: root)
        let committed = try CheckpointReader.committedSteps(root: root)
        guard let newest = committed.first else { return [] }
        var kept = Set(committed.prefix(keep))
        if !kept.contains(where: { Self.isComplete(root: root, step: $0) }),
            let fallback = committed.dropFirst(keep).first(where: { Self.isComplete(root: root, step: $0) })
        {
            kept.insert(fallback)
        }
        let committedSet = Set(committed)
        var deleted: [String] = []
        for step in steps.sorted() {
            let delete = committedSet.contains(step) ? !kept.contains(step) : step < newest
            guard delete else { continue }
            let directory = CheckpointLayout.stepDirectory(root: root, step: step)
            try Self.removeStepDirectory(directory)
            deleted.append(directory)
        }
        if !deleted.isEmpty { try DurableFile.syncDirectory(root) }
        return deleted
    }

    /// The cheap completeness check: manifest valid, every shard present with its recorded size.
    static func isComplete(root: String, step: UInt64) -> Bool {
        guard let manifest = try? CheckpointReader.manifest(root: root, step: step) else { return false }
        let directory = CheckpointLayout.stepDirectory(root: root, step: step)
        return manifest.shards.allSatisfy { shard in
            guard let info = try? DurableFile.status(CheckpointLayout.join(directory, shard.file)) else { return false }
            return Int(info.st_size) == shard.bytes
        }
    }

    /// Removes a step directory: the manifest first (made durable), then every other file, then the directory.
    static func removeStepDirectory(_ directory: String) throws {
        let manifest = CheckpointLayout.join(directory, CheckpointLayout.manifestFileName)
        if try DurableFile.status(manifest) != nil {
            try DurableFile.remove(manifest)
            try DurableFile.syncDirectory(directory)
        }
        for name in try DurableFile.names(in: directory) ?? [] {
            let path = CheckpointLayout.join(directory, name)
            var info = stat()
            if lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR {
                try Self.removeStepDirectory(path)
            } else {
                try DurableFile.remove(path)
            }
        }
        guard rmdir(directory) == 0 || errno == ENOENT else {
            throw CheckpointError.system("could not remove directory \(directory)")
        }
    }
}
