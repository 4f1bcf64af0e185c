/// An error from the coordinator service.
public struct CoordinatorError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code.
    public enum Code: String, Sendable, Hashable {
        /// The state store (SQLite, or etcd) could not be read or written.
        case stateStore
        /// This coordinator lost the leadership of the set sharing an etcd store: it may not
        /// change the state, and stops serving.
        case notLeading
        /// The file system under the state directory is full: a change could not be saved.
        case stateFull
        /// The configuration is not usable.
        case configuration
        /// The control listener could not start.
        case listen
        /// A request cannot be carried out as asked (e.g. no checkpoint fits a resume).
        case invalidRequest
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text.
    public var message: String
    /// The cause, if any.
    public var underlying: (any Error)?

    /// Makes an error.
    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        if let underlying = self.underlying {
            return "\(self.code.rawValue): \(self.message) (\(underlying))"
        }
        return "\(self.code.rawValue): \(self.message)"
    }
}
