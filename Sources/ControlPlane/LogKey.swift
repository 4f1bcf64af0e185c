/// Metadata keys of every log line, in one place so that logs from every service can be queried
/// by the same names.
public enum LogKey {
    /// The job id.
    public static let job = "job"
    /// The generation number.
    public static let generation = "generation"
    /// The rank within a generation.
    public static let rank = "rank"
    /// The node id.
    public static let node = "node"
    /// The remote address of a connection.
    public static let peer = "peer"
    /// The identity (role and name) a peer's certificate carries.
    public static let identity = "identity"
    /// The kind of a control message.
    public static let message = "message"
    /// Why something was refused or failed.
    public static let reason = "reason"
    /// A join token's public id (never its secret).
    public static let tokenID = "token_id"
    /// An error.
    public static let error = "error"
}
