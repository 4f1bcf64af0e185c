import Crypto
import X509

/// A pin on a CA: `sha256:` followed by the hex SHA-256 of the CA certificate's
/// SubjectPublicKeyInfo. A joining agent has no CA yet; it accepts the coordinator only if the
/// chain the coordinator presents contains a CA whose key hashes to the pin.
public struct CAPin: Hashable, Sendable, CustomStringConvertible {
    /// The SHA-256 digest of the pinned SubjectPublicKeyInfo.
    public let digest: [UInt8]

    /// The pin of a certificate's public key.
    public init(certificate: Certificate) {
        self.digest = Array(SHA256.hash(data: certificate.publicKey.subjectPublicKeyInfoBytes))
    }

    /// Parses `sha256:<64 hex digits>`.
    public init(parsing text: String) throws {
        let text = text.trimmingWhitespace()
        guard text.hasPrefix("sha256:"), let digest = Hex.decode(String(text.dropFirst(7))), digest.count == 32 else {
            throw SecurityError(
                .malformedPin,
                "a CA pin looks like sha256:<64 hex digits>; copy it from `ringmaster token create`"
            )
        }
        self.digest = digest
    }

    /// Whether `certificate`'s public key is the pinned one.
    public func matches(_ certificate: Certificate) -> Bool {
        CAPin(certificate: certificate) == self
    }

    public var description: String { "sha256:\(Hex.encode(self.digest))" }
}
