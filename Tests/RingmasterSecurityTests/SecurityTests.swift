import Crypto
import Foundation
import Testing
import X509

@testable import RingmasterSecurity

/// A temporary directory removed when the test ends.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("\(NSTemporaryDirectory())/ringmaster-test-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { throw SecurityError(.fileAccess, "mkdtemp failed") }
        self.path = String(cString: result)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: self.path)
    }
}

@Suite("Join tokens and proofs")
struct JoinTokenTests {
    @Test func encodedToken_parsesBackToTheSameIDAndSecret() throws {
        let token = JoinToken.generate()
        let parsed = try JoinToken(parsing: "  \(token.encoded)\n")
        #expect(parsed.id == token.id)
        #expect(parsed.secret == token.secret)
        #expect(token.secret.count == 32)
    }

    @Test func description_redactsTheSecret() {
        let token = JoinToken.generate()
        #expect(!"\(token)".contains(Base64URL.encode(token.secret)))
        #expect("\(token)".contains(token.id))
        #expect("\(token)".contains("redacted"))
    }

    @Test(arguments: [
        "", "rmj1", "rmj1.abc.def", "rmj2.0123456789abcdef.AAAA",
        "rmj1.0123456789abcdeg.\(String(repeating: "A", count: 43))",
        "rmj1.0123456789abcdef.short", "rmj1.0123456789abcdef.\(String(repeating: "*", count: 43))",
    ])
    func malformedTokens_areRefusedWithAHint(text: String) {
        #expect {
            try JoinToken(parsing: text)
        } throws: { error in
            guard let error = error as? SecurityError else { return false }
            return error.code == .malformedToken && error.message.contains("token")
        }
    }

    @Test func proof_verifiesOnlyForTheSameSecretNonceNameAndCSR() {
        let token = JoinToken.generate()
        let nonce = JoinProof.makeNonce()
        let csr: [UInt8] = Array("csr bytes".utf8)
        let proof = JoinProof.compute(secret: token.secret, nonce: nonce, nodeName: "node-a", csrDER: csr)
        #expect(JoinProof.isValid(proof, secret: token.secret, nonce: nonce, nodeName: "node-a", csrDER: csr))
        #expect(
            !JoinProof.isValid(
                proof, secret: JoinToken.generate().secret, nonce: nonce, nodeName: "node-a", csrDER: csr))
        #expect(
            !JoinProof.isValid(
                proof, secret: token.secret, nonce: JoinProof.makeNonce(), nodeName: "node-a", csrDER: csr))
        #expect(!JoinProof.isValid(proof, secret: token.secret, nonce: nonce, nodeName: "node-b", csrDER: csr))
        #expect(!JoinProof.isValid(proof, secret: token.secret, nonce: nonce, nodeName: "node-a", csrDER: csr + [0]))
        // The proof is a MAC, not the secret.
        #expect(proof != token.secret)
    }

    @Test func base64url_roundTripsEveryLength() {
        for length in 0..<40 {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            let encoded = Base64URL.encode(bytes)
            #expect(!encoded.contains("=") && !encoded.contains("+") && !encoded.contains("/"))
            #expect(Base64URL.decode(encoded) == bytes)
        }
    }
}

@Suite("Certificate authority")
struct CertificateAuthorityTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func firstStart_createsTheCAWithPrivateFiles_andLaterStartsLoadIt() throws {
        let directory = try TemporaryDirectory()
        let state = "\(directory.path)/state"
        let created = try CertificateAuthority.loadOrCreate(directory: state, now: self.now)
        #expect(SecureFile.permissions(of: "\(state)/ca.key") == 0o600)
        #expect(SecureFile.permissions(of: "\(state)/ca.crt") == 0o600)
        #expect(SecureFile.permissions(of: state) == 0o700)
        let loaded = try CertificateAuthority.loadOrCreate(directory: state, now: self.now.addingTimeInterval(100))
        #expect(loaded.pin == created.pin)
        #expect(loaded.certificate == created.certificate)
        let key = try #require(try SecureFile.read("\(state)/ca.key"))
        #expect(String(decoding: key, as: UTF8.self).contains("PRIVATE KEY"))
    }

    @Test func aCertificateWithoutItsKey_isAClearError() throws {
        let directory = try TemporaryDirectory()
        _ = try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        unlink("\(directory.path)/ca.key")
        #expect {
            try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        } throws: { error in
            (error as? SecurityError)?.code == .missingCredentials
        }
    }

    @Test func issuedFromACSR_carriesTheCoordinatorsIdentity_notTheRequestersSubject() throws {
        let directory = try TemporaryDirectory()
        let ca = try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        let request = try KeyAndRequest.make(name: "i-claim-to-be-the-coordinator")
        let identity = try PeerIdentity(role: .agent, name: "node-7")
        let certificate = try ca.issue(
            csrDER: request.csrDER,
            identity: identity,
            notBefore: self.now,
            notAfter: self.now.addingTimeInterval(86400)
        )
        #expect(try PeerIdentity(certificate: certificate) == identity)
        #expect(certificate.publicKey == request.privateKey.publicKey)
        #expect(certificate.issuer == ca.certificate.subject)
        #expect(ca.certificate.publicKey.isValidSignature(certificate.signature, for: certificate))
    }

    @Test func aCSRWithABadSignature_isRefused() throws {
        let directory = try TemporaryDirectory()
        let ca = try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        var der = try KeyAndRequest.make(name: "node").csrDER
        der[der.count - 5] ^= 0x01  // inside the signature
        #expect {
            try ca.issue(
                csrDER: der, identity: try PeerIdentity(role: .agent, name: "node"), notBefore: self.now,
                notAfter: self.now + 60)
        } throws: { error in
            (error as? SecurityError)?.code == .invalidCSR
        }
    }

    @Test(arguments: ["", "-a", "a-", "UPPER", "has space", "dot.ted", String(repeating: "a", count: 64)])
    func invalidNames_areRefused(name: String) {
        #expect(throws: SecurityError.self) { try PeerIdentity.validate(name: name) }
    }

    @Test(arguments: ["a", "node-1", "gpu-host-17", String(repeating: "z", count: 63)])
    func validNames_areAccepted(name: String) throws {
        try PeerIdentity.validate(name: name)
    }
}

@Suite("Peer verification")
struct PeerVerifierTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func makeCA(_ directory: TemporaryDirectory, _ name: String = "ca") throws -> CertificateAuthority {
        try CertificateAuthority.loadOrCreate(directory: "\(directory.path)/\(name)", now: self.now)
    }

    func leaf(_ ca: CertificateAuthority, _ role: PeerIdentity.Role, _ name: String, from: Date? = nil, to: Date? = nil)
        throws -> Certificate
    {
        try ca.issue(
            publicKey: KeyAndRequest.makeKey().publicKey,
            identity: try PeerIdentity(role: role, name: name),
            notBefore: from ?? self.now.addingTimeInterval(-60),
            notAfter: to ?? self.now.addingTimeInterval(3600)
        )
    }

    func verifier(_ trust: PeerVerifier.Trust, _ roles: Set<PeerIdentity.Role>) -> PeerVerifier {
        let now = self.now
        return PeerVerifier(trust: trust, allowedRoles: roles, now: { now })
    }

    @Test func aLeafFromTheCA_isTrusted_andItsIdentityReturned() async throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        let identity = try await self.verifier(.certificate(ca.certificate), [.agent])
            .verify(chain: [try self.leaf(ca, .agent, "node-1"), ca.certificate])
        #expect(identity == (try PeerIdentity(role: .agent, name: "node-1")))
    }

    @Test func aLeafFromAnotherCA_isRefused_namingTheCA() async throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        let other = try self.makeCA(directory, "other")
        await #expect {
            try await self.verifier(.certificate(ca.certificate), [.agent]).verify(chain: [
                try self.leaf(other, .agent, "node-1")
            ])
        } throws: { error in
            "\(error)".contains("not issued by this coordinator's CA")
        }
    }

    @Test func anExpiredLeaf_isRefused_sayingWhenItExpired() async throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        let expired = try self.leaf(ca, .agent, "node-1", from: self.now - 7200, to: self.now - 3600)
        await #expect {
            try await self.verifier(.certificate(ca.certificate), [.agent]).verify(chain: [expired])
        } throws: { error in
            "\(error)".contains("expired at")
        }
    }

    @Test func aLeafWithTheWrongRole_isRefused() async throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        await #expect {
            try await self.verifier(.certificate(ca.certificate), [.coordinator]).verify(chain: [
                try self.leaf(ca, .agent, "node-1")
            ])
        } throws: { error in
            "\(error)".contains("only coordinator may connect")
        }
    }

    @Test func pinTrust_acceptsTheMatchingCA_andRefusesAnother() async throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        let other = try self.makeCA(directory, "other")
        let server = try self.leaf(ca, .coordinator, "coordinator")
        _ = try await self.verifier(.pin(ca.pin), [.coordinator]).verify(chain: [server, ca.certificate])
        await #expect {
            try await self.verifier(.pin(other.pin), [.coordinator]).verify(chain: [server, ca.certificate])
        } throws: { error in
            "\(error)".contains("does not match the pin")
        }
        // A chain that merely contains the pinned CA but whose leaf is signed by another CA is refused too.
        let impostor = try self.leaf(other, .coordinator, "coordinator")
        await #expect(throws: SecurityError.self) {
            try await self.verifier(.pin(ca.pin), [.coordinator]).verify(chain: [impostor, ca.certificate])
        }
    }

    @Test func pins_parseAndPrintTheSameWay() throws {
        let directory = try TemporaryDirectory()
        let ca = try self.makeCA(directory)
        let text = ca.pin.description
        #expect(text.hasPrefix("sha256:") && text.count == 7 + 64)
        #expect(try CAPin(parsing: text) == ca.pin)
        #expect(throws: SecurityError.self) { try CAPin(parsing: "sha256:abcd") }
        #expect(throws: SecurityError.self) { try CAPin(parsing: "md5:" + String(repeating: "0", count: 64)) }
    }
}

@Suite("Credentials on disk")
struct CredentialsTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func saved_withPrivatePermissions_andLoadedBack() throws {
        let directory = try TemporaryDirectory()
        let ca = try CertificateAuthority.loadOrCreate(directory: "\(directory.path)/ca", now: self.now)
        let key = KeyAndRequest.makeKey()
        let certificate = try ca.issue(
            publicKey: key.publicKey,
            identity: try PeerIdentity(role: .agent, name: "node-1"),
            notBefore: self.now,
            notAfter: self.now + 3000
        )
        let credentials = try Credentials(privateKey: key, certificate: certificate, caCertificate: ca.certificate)
        let data = "\(directory.path)/agent/data"
        try credentials.save(directory: data)
        for file in ["key.pem", "cert.pem", "ca.pem"] {
            #expect(SecureFile.permissions(of: "\(data)/\(file)") == 0o600, "\(file)")
        }
        #expect(SecureFile.permissions(of: data) == 0o700)
        let loaded = try #require(try Credentials.load(directory: data))
        #expect(loaded.certificate == certificate)
        #expect(loaded.privateKey.publicKey == key.publicKey)
        #expect(try loaded.identity.name == "node-1")
        #expect(try Credentials.load(directory: "\(directory.path)/empty") == nil)
    }

    @Test func renewalIsDue_twoThirdsThroughTheLifetime() throws {
        let directory = try TemporaryDirectory()
        let ca = try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        let key = KeyAndRequest.makeKey()
        let certificate = try ca.issue(
            publicKey: key.publicKey,
            identity: try PeerIdentity(role: .agent, name: "n"),
            notBefore: self.now,
            notAfter: self.now + 3000
        )
        let credentials = try Credentials(privateKey: key, certificate: certificate, caCertificate: ca.certificate)
        #expect(!credentials.renewalDue(now: self.now + 1999))
        #expect(credentials.renewalDue(now: self.now + 2000))
        #expect(credentials.renewalDue(now: self.now + 5000))
    }

    @Test func aKeyThatIsNotTheCertificatesKey_isRefused() throws {
        let directory = try TemporaryDirectory()
        let ca = try CertificateAuthority.loadOrCreate(directory: directory.path, now: self.now)
        let certificate = try ca.issue(
            publicKey: KeyAndRequest.makeKey().publicKey,
            identity: try PeerIdentity(role: .agent, name: "n"),
            notBefore: self.now,
            notAfter: self.now + 60
        )
        #expect(throws: SecurityError.self) {
            try Credentials(
                privateKey: KeyAndRequest.makeKey(), certificate: certificate, caCertificate: ca.certificate)
        }
    }
}
