import Crypto
import Foundation
import X509

/// An identity's private key, its certificate, and the CA certificate it trusts, as kept in a
/// directory (`key.pem`, `cert.pem`, `ca.pem`; all 0600, the directory 0700).
///
/// Agents keep theirs in their data directory; operators in an identity directory for the CLI;
/// the coordinator holds its server credentials in memory only (re-issued at every start).
public struct Credentials: Sendable {
    /// The private key; it never leaves the machine it was made on.
    public var privateKey: Certificate.PrivateKey
    /// The certificate issued by the coordinator's CA.
    public var certificate: Certificate
    /// The CA that issued `certificate`, which the holder trusts for its peers.
    public var caCertificate: Certificate

    static let keyFile = "key.pem"
    static let certificateFile = "cert.pem"
    static let caFile = "ca.pem"

    /// Bundles credentials after checking that the key is the certificate's.
    public init(privateKey: Certificate.PrivateKey, certificate: Certificate, caCertificate: Certificate) throws {
        guard privateKey.publicKey == certificate.publicKey else {
            throw SecurityError(.invalidIdentity, "the issued certificate is not for this private key")
        }
        self.privateKey = privateKey
        self.certificate = certificate
        self.caCertificate = caCertificate
    }

    /// The identity the certificate carries.
    public var identity: PeerIdentity {
        get throws { try PeerIdentity(certificate: self.certificate) }
    }

    /// Whether the certificate is two thirds through its lifetime (or past it), so that it should
    /// be renewed now.
    public func renewalDue(now: Date) -> Bool {
        let start = self.certificate.notValidBefore
        let lifetime = self.certificate.notValidAfter.timeIntervalSince(start)
        return now >= start.addingTimeInterval(lifetime * 2 / 3)
    }

    /// Loads credentials from `directory`, or returns nil if it holds none.
    public static func load(directory: String) throws -> Credentials? {
        guard let certificateBytes = try SecureFile.read("\(directory)/\(self.certificateFile)") else { return nil }
        guard let keyBytes = try SecureFile.read("\(directory)/\(self.keyFile)"),
            let caBytes = try SecureFile.read("\(directory)/\(self.caFile)")
        else {
            throw SecurityError(
                .missingCredentials,
                "\(directory) has a certificate but not its key or CA; remove the directory's *.pem files and join again with a new token"
            )
        }
        return try Credentials(
            privateKey: try PEM.privateKey(keyBytes, path: "\(directory)/\(self.keyFile)"),
            certificate: try PEM.certificate(certificateBytes, path: "\(directory)/\(self.certificateFile)"),
            caCertificate: try PEM.certificate(caBytes, path: "\(directory)/\(self.caFile)")
        )
    }

    /// Writes the credentials to `directory` (created 0700 if needed), each file 0600 and durable.
    /// The certificate is written last, so a crash midway leaves either the old set or an
    /// incomplete one that `load` reports, never a certificate paired with the wrong key.
    public func save(directory: String) throws {
        try SecureFile.createDirectory(directory)
        try SecureFile.write(Array(try PEM.encode(self.privateKey).utf8), to: "\(directory)/\(Self.keyFile)")
        try SecureFile.write(Array(try PEM.encode(self.caCertificate).utf8), to: "\(directory)/\(Self.caFile)")
        try SecureFile.write(Array(try PEM.encode(self.certificate).utf8), to: "\(directory)/\(Self.certificateFile)")
    }
}

/// A fresh key and a PKCS#10 request for it, as an agent makes before joining or renewing.
public struct KeyAndRequest: Sendable {
    /// The new private key.
    public let privateKey: Certificate.PrivateKey
    /// DER of the signed certificate signing request.
    public let csrDER: [UInt8]

    /// Makes a P-256 key and a CSR naming `name` (the coordinator decides the real identity).
    public static func make(name: String) throws -> KeyAndRequest {
        let privateKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        do {
            let csr = try CertificateSigningRequest(
                version: .v1,
                subject: try DistinguishedName { CommonName(name) },
                privateKey: privateKey,
                attributes: CertificateSigningRequest.Attributes(),
                signatureAlgorithm: .ecdsaWithSHA256
            )
            return KeyAndRequest(privateKey: privateKey, csrDER: try PEM.der(csr))
        } catch {
            throw SecurityError(.certificateEncoding, "could not make a certificate signing request", underlying: error)
        }
    }
}

extension KeyAndRequest {
    /// A fresh P-256 private key.
    public static func makeKey() -> Certificate.PrivateKey {
        Certificate.PrivateKey(P256.Signing.PrivateKey())
    }
}
