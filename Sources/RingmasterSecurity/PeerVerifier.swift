import Foundation
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// Decides whether a TLS peer's certificate chain is trusted, and says why not when it is not.
///
/// It replaces BoringSSL's own verification (through NIOSSL's custom verification callback) so
/// that a refusal names its reason: not issued by this CA, expired, wrong role, pin mismatch.
/// Trust is either a CA certificate (every mutual-TLS connection) or a pin (an agent joining for
/// the first time, which holds no CA yet and picks it out of the presented chain by its pin).
public struct PeerVerifier: Sendable {
    /// What the verifier trusts.
    public enum Trust: Sendable {
        /// Chains must lead to this CA certificate.
        case certificate(Certificate)
        /// Chains must include a CA whose key matches this pin; that CA becomes the root.
        case pin(CAPin)
    }

    /// The trust anchor.
    public let trust: Trust
    /// Roles the peer's leaf certificate may carry.
    public let allowedRoles: Set<PeerIdentity.Role>
    /// Reads the time for expiry checks (injected so tests can move it).
    public let now: @Sendable () -> Date

    /// Makes a verifier.
    public init(trust: Trust, allowedRoles: Set<PeerIdentity.Role>, now: @escaping @Sendable () -> Date = { Date() }) {
        self.trust = trust
        self.allowedRoles = allowedRoles
        self.now = now
    }

    /// Verifies a chain given leaf first, returning the leaf's identity.
    public func verify(chain: [Certificate]) async throws -> PeerIdentity {
        guard let leaf = chain.first else {
            throw SecurityError(.untrustedPeer, "the peer presented no certificate")
        }
        let root: Certificate
        switch self.trust {
        case .certificate(let certificate):
            root = certificate
        case .pin(let pin):
            guard let pinned = chain.first(where: { pin.matches($0) }) else {
                throw SecurityError(
                    .untrustedPeer,
                    "the coordinator's CA does not match the pin \(pin); check the pin and the coordinator address"
                )
            }
            root = pinned
        }
        let identity = try PeerIdentity(certificate: leaf)
        guard self.allowedRoles.contains(identity.role) else {
            throw SecurityError(
                .untrustedPeer,
                "the peer's certificate is for \(identity), but only \(self.allowedRoles.map(\.rawValue).sorted().joined(separator: ", ")) may connect here"
            )
        }
        let validationTime = self.now()
        guard leaf.notValidAfter > validationTime else {
            throw SecurityError(
                .untrustedPeer,
                "the certificate of \(identity) expired at \(leaf.notValidAfter); renew it or join again with a new token"
            )
        }
        guard leaf.notValidBefore <= validationTime else {
            throw SecurityError(
                .untrustedPeer,
                "the certificate of \(identity) is not valid before \(leaf.notValidBefore); check the clocks of both machines"
            )
        }
        var verifier = Verifier(rootCertificates: CertificateStore([root])) {
            RFC5280Policy(validationTime: validationTime)
        }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(chain.dropFirst()))
        switch result {
        case .validCertificate:
            return identity
        case .couldNotValidate(let failures):
            let reasons = failures.map { String(describing: $0.policyFailureReason) }
            throw SecurityError(
                .untrustedPeer,
                reasons.isEmpty
                    ? "the certificate of \(identity) was not issued by this coordinator's CA"
                    : "the certificate of \(identity) failed verification: \(reasons.joined(separator: "; "))"
            )
        }
    }

    /// A NIOSSL callback that runs `verify` and reports refusals to `onRefusal`.
    public func callback(
        onRefusal: @escaping @Sendable (SecurityError) -> Void
    ) -> NIOSSLCustomVerificationCallback {
        { presented, promise in
            promise.completeWithTask {
                do {
                    let chain = try presented.map { try Certificate(derEncoded: try $0.toDERBytes()) }
                    _ = try await self.verify(chain: chain)
                    return .certificateVerified
                } catch let error as SecurityError {
                    onRefusal(error)
                    return .failed
                } catch {
                    onRefusal(SecurityError(.untrustedPeer, "the peer's certificate does not parse", underlying: error))
                    return .failed
                }
            }
        }
    }
}

/// TLS settings of the control plane: TLS 1.3 only, ECDSA P-256 identities.
public enum ControlTLS {
    /// The coordinator's server context: presents its chain and asks for (but does not demand) a
    /// client certificate, so that a joining agent can connect; without one, a connection may only
    /// join. Presented client certificates are checked by a `PeerVerifier` callback.
    public static func serverContext(credentials: Credentials) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try self.nioCertificate(credentials.certificate)),
                .certificate(try self.nioCertificate(credentials.caCertificate)),
            ],
            privateKey: .privateKey(try self.nioKey(credentials.privateKey))
        )
        configuration.minimumTLSVersion = .tlsv13
        configuration.certificateVerification = .optionalVerification
        configuration.trustRoots = .certificates([try self.nioCertificate(credentials.caCertificate)])
        return try NIOSSLContext(configuration: configuration)
    }

    /// A client context; with `credentials` it presents them (mutual TLS), without it connects
    /// anonymously (joining). The server is checked by a `PeerVerifier` callback.
    public static func clientContext(credentials: Credentials?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([])
        if let credentials {
            configuration.certificateChain = [.certificate(try self.nioCertificate(credentials.certificate))]
            configuration.privateKey = .privateKey(try self.nioKey(credentials.privateKey))
        }
        return try NIOSSLContext(configuration: configuration)
    }

    static func nioCertificate(_ certificate: Certificate) throws -> NIOSSLCertificate {
        try NIOSSLCertificate(bytes: try PEM.der(certificate), format: .der)
    }

    static func nioKey(_ key: Certificate.PrivateKey) throws -> NIOSSLPrivateKey {
        do {
            return try NIOSSLPrivateKey(bytes: Array(try PEM.encode(key).utf8), format: .pem)
        } catch {
            throw SecurityError(.certificateEncoding, "could not load the private key into TLS")
        }
    }
}
