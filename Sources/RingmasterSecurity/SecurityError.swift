/// An error from certificates, tokens or credential files.
///
/// Descriptions say what was wrong and what to do instead. They never include a token secret or
/// key material: callers pass identifiers (a token id, a node id, a path), never the secret itself.
public struct SecurityError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable code.
    public enum Code: String, Sendable, Hashable {
        /// A join token string is malformed.
        case malformedToken
        /// The token id is unknown, or the proof of its secret did not verify.
        case invalidToken
        /// The token's time to live has passed.
        case tokenExpired
        /// The token was already used for a join; tokens are single-use.
        case tokenAlreadyUsed
        /// A CA pin string is malformed.
        case malformedPin
        /// A certificate signing request is malformed or its signature is wrong.
        case invalidCSR
        /// A name or identity in a certificate is not valid.
        case invalidIdentity
        /// The peer's certificate chain did not verify (wrong CA, expired, wrong role).
        case untrustedPeer
        /// Reading or writing a credential file failed.
        case fileAccess
        /// Credentials expected on disk are missing.
        case missingCredentials
        /// A certificate or key could not be built or encoded.
        case certificateEncoding
    }

    /// The stable code.
    public var code: Code
    /// Operator-facing text.
    public var message: String
    /// The error that caused this one, if any (never one that carries secret bytes).
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
