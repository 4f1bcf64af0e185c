#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Places in a save where tests kill the writing process for real, to check that a crash anywhere
/// leaves the last committed checkpoint loadable and no incomplete file under a final name.
///
/// The writer reads the environment variable `RINGMASTER_CRASH_AT` once (the first time a crash
/// point is passed); when the save reaches the point it names, the process prints one line to
/// standard error (`ringmaster: crash point <name> reached, killing this process with SIGKILL`) and
/// sends itself SIGKILL (`kill(getpid(), SIGKILL)`), exactly like `kill -9`: no cleanup runs. An unset
/// or unknown value disables the hook. Production never sets it. `POINT@STEP` arms the point only
/// for the save of checkpoint step STEP (so that earlier checkpoints commit first).
public enum CrashPoint: String, Sendable, CaseIterable {
    /// In `writeShard`: the temporary file holds all bytes and is fsynced, not yet renamed.
    case afterShardData = "after-shard-data"
    /// In `writeShard`: the shard was renamed to its final name; its directory is not yet fsynced.
    case afterShardRename = "after-shard-rename"
    /// In `commit`: every shard checked, the manifest not yet written at all.
    case beforeManifest = "before-manifest"
    /// In `commit`: the manifest's temporary file is written and fsynced, not yet renamed.
    case afterManifestTemp = "after-manifest-temp"

    /// The name of the environment variable that arms a crash point.
    public static let environmentVariable = "RINGMASTER_CRASH_AT"

    /// The armed point and step, read from the environment once (a global `let` is initialised
    /// exactly once).
    static let armed: (point: CrashPoint, step: UInt64?)? = {
        guard let value = getenv(CrashPoint.environmentVariable) else { return nil }
        let parts = String(cString: value).split(separator: "@", maxSplits: 1).map(String.init)
        guard let first = parts.first, let point = CrashPoint(rawValue: first) else { return nil }
        return (point, parts.count == 2 ? UInt64(parts[1]) : nil)
    }()

    /// Kills this process with SIGKILL if `self` is the armed point (for the save of `step`, when
    /// a step was given); returns otherwise.
    func reached(step: UInt64) {
        guard let armed = Self.armed, armed.point == self, armed.step == nil || armed.step == step else { return }
        let line = "ringmaster: crash point \(self.rawValue) reached, killing this process with SIGKILL\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        kill(getpid(), SIGKILL)
        // SIGKILL cannot be caught; should delivery be delayed, do not go on writing.
        while true { pause() }
    }
}
