import Crypto
import Foundation
import SwiftASN1
import X509

/// The coordinator's certificate authority: an ECDSA P-256 key and a self-signed certificate kept
/// in the coordinator's state directory (`ca.key`, `ca.crt`, both 0600).
///
/// It issues short-lived certificates whose subject alternative names carry a `PeerIdentity`.
/// Agents' and operators' certificates are for client authentication only; the coordinator's own
/// is for server authentication only, so a stolen agent certificate cannot pose as the coordinator.
public struct CertificateAuthority: Sendable {
    /// The CA certificate that every identity chains to.
    public let certificate: Certificate
    let privateKey: Certificate.PrivateKey

    /// The pin agents use to recognise this CA before they hold its certificate.
    public var pin: CAPin { CAPin(certificate: self.certificate) }

    static let keyFile = "ca.key"
    static let certificateFile = "ca.crt"
    static let lifetime: TimeInterval = 10 * 365 * 24 * 3600

    /// Loads the CA from `directory`, or creates it there on first start.
    public static func loadOrCreate(directory: String, now: Date) throws -> CertificateAuthority {
        try SecureFile.createDirectory(directory)
        if let existing = try self.load(directory: directory) {
            return existing
        }
        let key = P256.Signing.PrivateKey()
        let privateKey = Certificate.PrivateKey(key)
        let name = try DistinguishedName {
            OrganizationName("Ringmaster")
            CommonName("Ringmaster coordinator CA")
        }
        let certificate: Certificate
        do {
            certificate = try Certificate(
                version: .v3,
                serialNumber: Certificate.SerialNumber(),
                publicKey: privateKey.publicKey,
                notValidBefore: now.addingTimeInterval(-300),
                notValidAfter: now.addingTimeInterval(self.lifetime),
                issuer: name,
                subject: name,
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: privateKey.publicKey)
                },
                issuerPrivateKey: privateKey
            )
        } catch {
            throw SecurityError(.certificateEncoding, "could not create the CA certificate", underlying: error)
        }
        let ca = CertificateAuthority(certificate: certificate, privateKey: privateKey)
        // Key first: a crash between the two writes leaves a key without a certificate, which
        // `load` treats as "not created yet" rather than a certificate whose key is lost.
        try SecureFile.write(Array(try PEM.encode(privateKey).utf8), to: "\(directory)/\(self.keyFile)")
        try SecureFile.write(Array(try PEM.encode(certificate).utf8), to: "\(directory)/\(self.certificateFile)")
        return ca
    }

    /// Loads an existing CA, or returns nil if `directory` has none.
    public static func load(directory: String) throws -> CertificateAuthority? {
        guard let certificateBytes = try SecureFile.read("\(directory)/\(self.certificateFile)") else { return nil }
        guard let keyBytes = try SecureFile.read("\(directory)/\(self.keyFile)") else {
            throw SecurityError(
                .missingCredentials,
                "\(directory)/\(self.certificateFile) exists but its key \(self.keyFile) does not; restore the key from backup or move the state directory aside to create a new CA"
            )
        }
        let certificate = try PEM.certificate(certificateBytes, path: "\(directory)/\(self.certificateFile)")
        let privateKey = try PEM.privateKey(keyBytes, path: "\(directory)/\(self.keyFile)")
        guard privateKey.publicKey == certificate.publicKey else {
            throw SecurityError(
                .missingCredentials, "\(directory)/\(self.keyFile) is not the key of \(self.certificateFile)")
        }
        return CertificateAuthority(certificate: certificate, privateKey: privateKey)
    }

    /// Issues a certificate for `identity` over `publicKey`, valid from `notBefore` to `notAfter`.
    ///
    /// `dnsNames` and `ipAddresses` are added as subject alternative names (for the coordinator's
    /// server certificate).
    public func issue(
        publicKey: Certificate.PublicKey,
        identity: PeerIdentity,
        notBefore: Date,
        notAfter: Date,
        dnsNames: [String] = [],
        ipAddresses: [String] = []
    ) throws -> Certificate {
        var alternativeNames: [GeneralName] = [.uniformResourceIdentifier(identity.uri)]
        alternativeNames += dnsNames.map { .dnsName($0) }
        for address in ipAddresses {
            guard let bytes = IPAddressBytes.parse(address) else {
                throw SecurityError(.invalidIdentity, "\"\(address)\" is not an IPv4 or IPv6 address")
            }
            alternativeNames.append(.ipAddress(ASN1OctetString(contentBytes: bytes[...])))
        }
        let usage: ExtendedKeyUsage.Usage = identity.role == .coordinator ? .serverAuth : .clientAuth
        do {
            return try Certificate(
                version: .v3,
                serialNumber: Certificate.SerialNumber(),
                publicKey: publicKey,
                notValidBefore: notBefore,
                notValidAfter: notAfter,
                issuer: self.certificate.subject,
                subject: try DistinguishedName {
                    OrganizationName("Ringmaster")
                    OrganizationalUnitName(identity.role.rawValue)
                    CommonName(identity.name)
                },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([usage])
                    SubjectAlternativeNames(alternativeNames)
                    AuthorityKeyIdentifier(
                        keyIdentifier: try self.certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
                },
                issuerPrivateKey: self.privateKey
            )
        } catch let error as SecurityError {
            throw error
        } catch {
            throw SecurityError(
                .certificateEncoding, "could not issue a certificate for \(identity)", underlying: error)
        }
    }

    /// Issues a certificate for the key in a CSR after checking the CSR's signature (which proves
    /// the requester holds the key). The CSR's subject is ignored: `identity` is what the
    /// coordinator decided, not what the requester asked for.
    public func issue(
        csrDER: [UInt8],
        identity: PeerIdentity,
        notBefore: Date,
        notAfter: Date
    ) throws -> Certificate {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(derEncoded: csrDER)
        } catch {
            throw SecurityError(
                .invalidCSR, "the certificate signing request does not parse as PKCS#10 DER", underlying: error)
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw SecurityError(.invalidCSR, "the certificate signing request's signature does not match its key")
        }
        return try self.issue(publicKey: csr.publicKey, identity: identity, notBefore: notBefore, notAfter: notAfter)
    }
}

/// Helpers for PEM and DER encoding of certificates, keys and CSRs.
public enum PEM {
    /// PEM text of a certificate.
    public static func encode(_ certificate: Certificate) throws -> String {
        try certificate.serializeAsPEM().pemString
    }

    /// PEM text of a private key (PKCS#8).
    public static func encode(_ key: Certificate.PrivateKey) throws -> String {
        try key.serializeAsPEM().pemString
    }

    /// DER bytes of a certificate.
    public static func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    /// DER bytes of a CSR.
    public static func der(_ csr: CertificateSigningRequest) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(csr)
        return serializer.serializedBytes
    }

    static func certificate(_ bytes: [UInt8], path: String) throws -> Certificate {
        do {
            return try Certificate(pemEncoded: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw SecurityError(.missingCredentials, "\(path) is not a PEM certificate", underlying: error)
        }
    }

    static func privateKey(_ bytes: [UInt8], path: String) throws -> Certificate.PrivateKey {
        do {
            return try Certificate.PrivateKey(pemEncoded: String(decoding: bytes, as: UTF8.self))
        } catch {
            // The underlying error is not attached: a key parser's message could quote key bytes.
            throw SecurityError(.missingCredentials, "\(path) is not a PEM private key")
        }
    }
}

enum IPAddressBytes {
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
