/// An error from loading a data set or configuring a workload.
///
/// The description says what was wrong and what would be accepted instead, so an operator can fix
/// a job spec or a data file from the message alone.
public struct WorkloadError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, as a stable code that tests and callers can match on.
    public enum Code: String, Sendable, Hashable {
        /// Bytes that should be gzip or zlib data are not (bad header, bad checksum, cut short).
        case corruptCompressedData
        /// A data file's text is not the expected CSV layout (the message names the line).
        case malformedData
        /// A data file could not be read (missing, unreadable, or the bundled copy is absent).
        case unreadableFile
        /// A workload setting has an unknown key or a value outside what is accepted.
        case invalidSetting
        /// The process that runs the workload (a PyTorch worker) could not start, failed, exited
        /// or stopped answering; the message says which, with its exit status and last lines.
        case workerFailed
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text: what was wrong and what is accepted.
    public var message: String

    /// Makes an error with a code and a message.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        "\(self.code.rawValue): \(self.message)"
    }
}
