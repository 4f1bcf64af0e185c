/// Why a call to etcd failed. The message names the cluster's endpoints and the operation, never a
/// key's value (values hold join-token secrets and the data-plane key).
public struct EtcdError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code.
    public enum Code: String, Sendable, Hashable {
        /// No endpoint could be reached, or none answered before the deadline: the cluster is
        /// down, partitioned from this process, or without a quorum.
        case unavailable
        /// An endpoint answered, but refused the request (a lease that has expired, a malformed
        /// request): retrying the same request will not help.
        case refused
        /// An answer that does not decode as the etcd v3 JSON gateway's: not etcd, or a version
        /// this client does not speak.
        case protocolError
        /// The request went out but no answer came before the deadline: it may or may not have
        /// been carried out.
        case outcomeUnknown
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text.
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { self.message }
}
