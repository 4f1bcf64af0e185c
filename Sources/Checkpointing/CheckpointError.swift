#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why saving, loading or pruning a checkpoint failed, with a message an operator can act on.
public struct CheckpointError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure it is, for callers that react differently (a full disk vs. a damaged checkpoint).
    public enum Code: String, Sendable {
        /// A system call failed (permissions, a vanished mount, an I/O error).
        case io
        /// The file system is full or the quota is exhausted (ENOSPC, EDQUOT).
        case noSpace
        /// A file exists but does not hold what the manifest says (size, hash, coverage, JSON).
        case corrupt
        /// A file the checkpoint needs does not exist.
        case missing
        /// The checkpoint is of a format or element type this version does not read.
        case incompatible
        /// No committed checkpoint under the root loads.
        case noValidCheckpoint
        /// The caller passed a value the operation cannot work with (e.g. keeping 0 checkpoints).
        case invalidArgument
    }

    /// What kind of failure it is.
    public var code: Code
    /// What failed, naming the path and the cause.
    public var message: String
    /// The errno of the failed system call, when one failed.
    public var systemError: Int32?

    /// An error with `code` and `message`.
    public init(_ code: Code, _ message: String, systemError: Int32? = nil) {
        self.code = code
        self.message = message
        self.systemError = systemError
    }

    public var description: String { "checkpoint error (\(self.code.rawValue)): \(self.message)" }

    /// The error for a failed system call, from `errno` as it is now: `what` names the operation and the path.
    static func system(_ what: String, errno code: Int32 = errno) -> CheckpointError {
        let text = "\(what): \(String(cString: strerror(code))) (errno \(code))"
        switch code {
        case ENOSPC, EDQUOT:
            return CheckpointError(.noSpace, "\(text): the disk is full (or the quota is exhausted)", systemError: code)
        case ENOENT:
            return CheckpointError(.missing, text, systemError: code)
        default:
            return CheckpointError(.io, text, systemError: code)
        }
    }
}
