import Foundation
import NIOSSL
import RingmasterSecurity
import Testing

@testable import Etcd

/// The TLS files a coordinator is given for `etcds://` are checked when it starts, each refusal
/// naming the file and what to give instead, never what the file holds. (A handshake with a real
/// etcd over TLS is in IntegrationTests' state-store and coordinator-set tests.)
@Suite("etcd TLS files")
struct EtcdTLSTests {
    /// Two CAs made by the coordinator's own code: each directory holds `ca.crt` and its `ca.key`
    /// (0600), which serve here as a certificate and its key.
    final class Files {
        let root: String
        let first: String
        let second: String

        init() throws {
            self.root =
                FileManager.default.temporaryDirectory.appendingPathComponent(
                    "ringmaster-etcd-tls-\(UUID().uuidString.prefix(8))"
                ).path
            self.first = "\(self.root)/first"
            self.second = "\(self.root)/second"
            _ = try CertificateAuthority.loadOrCreate(directory: self.first, now: Date())
            _ = try CertificateAuthority.loadOrCreate(directory: self.second, now: Date())
        }

        deinit { try? FileManager.default.removeItem(atPath: self.root) }

        func write(_ name: String, _ text: String, mode: Int = 0o600) throws -> String {
            let path = "\(self.root)/\(name)"
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
            return path
        }
    }

    static func refusal(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func test_aCAAndAMatchingCertificateAndKey_load() throws {
        let files = try Files()
        let tls = try EtcdTLS(
            caFile: "\(files.first)/ca.crt", certificateFile: "\(files.first)/ca.crt", keyFile: "\(files.first)/ca.key")
        #expect(tls.caFile == "\(files.first)/ca.crt")
        #expect(tls.configuration.certificateChain.count == 1)
        // A CA alone (a cluster without --client-cert-auth), and the system's roots alone, load too.
        #expect(try EtcdTLS(caFile: "\(files.first)/ca.crt", certificateFile: nil, keyFile: nil).certificateFile == nil)
        #expect(try EtcdTLS(caFile: nil, certificateFile: nil, keyFile: nil).configuration.certificateChain.isEmpty)
    }

    /// The files are loaded again only when one changed on disk; a rotation caught half done (a
    /// new certificate beside the old key) is refused as at start, and the one before stays valid.
    @Test func test_reloaded_loadsTheFilesAgainOnlyWhenOneChanged_andRefusesAHalfDoneRotation() throws {
        let files = try Files()
        let (certificate, key) = ("\(files.root)/client.crt", "\(files.root)/client.key")
        func place(_ source: String, at path: String) throws {
            try? FileManager.default.removeItem(atPath: path + ".new")
            try FileManager.default.copyItem(atPath: source, toPath: path + ".new")
            #expect(rename(path + ".new", path) == 0)
        }
        try place("\(files.first)/ca.crt", at: certificate)
        try place("\(files.first)/ca.key", at: key)
        let tls = try EtcdTLS(caFile: nil, certificateFile: certificate, keyFile: key)
        #expect(try tls.reloaded() == nil)

        try place("\(files.second)/ca.crt", at: certificate)
        let message = try #require(Self.refusal { _ = try tls.reloaded() }, "a certificate beside another's key loaded")
        #expect(message.contains("is not the key of the certificate"), "\(message)")

        try place("\(files.second)/ca.key", at: key)
        let fresh = try #require(try tls.reloaded(), "the rotated files were not loaded again")
        let second = try NIOSSLCertificate.fromPEMFile("\(files.second)/ca.crt")
        #expect(fresh.configuration.certificateChain == second.map { .certificate($0) })
        #expect(try fresh.reloaded() == nil)
        // Rewritten in place (the same inode) counts as well.
        let text = try String(contentsOfFile: "\(files.first)/ca.crt", encoding: .utf8)
        try Data(text.utf8).write(to: URL(fileURLWithPath: certificate))
        #expect(Self.refusal { _ = try fresh.reloaded() }?.contains("is not the key of the certificate") == true)
    }

    @Test func test_aKeyThatIsNotTheCertificates_isRefusedNamingBothFiles() throws {
        let files = try Files()
        let message = try #require(
            Self.refusal {
                _ = try EtcdTLS(
                    caFile: nil, certificateFile: "\(files.first)/ca.crt", keyFile: "\(files.second)/ca.key")
            })
        #expect(message.contains("\(files.second)/ca.key") && message.contains("\(files.first)/ca.crt"))
        #expect(message.contains("is not the key of the certificate"))
    }

    @Test func test_aKeyOthersCanRead_isRefusedSayingHowToFixIt() throws {
        let files = try Files()
        let key = try String(contentsOfFile: "\(files.first)/ca.key", encoding: .utf8)
        let open = try files.write("open.key", key, mode: 0o644)
        let message = try #require(
            Self.refusal {
                _ = try EtcdTLS(caFile: nil, certificateFile: "\(files.first)/ca.crt", keyFile: open)
            })
        #expect(message.contains("chmod 600 \(open)") && message.contains("644"))
        // The key's text is in no message.
        #expect(!message.contains("PRIVATE KEY"))
    }

    @Test func test_filesThatAreMissingOrNotPEM_areRefusedNamingTheOption() throws {
        let files = try Files()
        let junk = try files.write("junk.pem", "not a certificate\n")
        let cases: [(String, () throws -> Void)] = [
            (
                "--etcd-ca \(files.root)/missing.crt cannot be read",
                {
                    _ = try EtcdTLS(caFile: "\(files.root)/missing.crt", certificateFile: nil, keyFile: nil)
                }
            ),
            (
                "--etcd-ca \(junk) holds no PEM certificate",
                {
                    _ = try EtcdTLS(caFile: junk, certificateFile: nil, keyFile: nil)
                }
            ),
            (
                "--etcd-cert \(junk) holds no PEM certificate",
                {
                    _ = try EtcdTLS(caFile: nil, certificateFile: junk, keyFile: "\(files.first)/ca.key")
                }
            ),
            (
                "--etcd-key \(junk) holds no unencrypted PEM private key",
                {
                    _ = try EtcdTLS(caFile: nil, certificateFile: "\(files.first)/ca.crt", keyFile: junk)
                }
            ),
            (
                "--etcd-cert and --etcd-key go together",
                {
                    _ = try EtcdTLS(caFile: nil, certificateFile: "\(files.first)/ca.crt", keyFile: nil)
                }
            ),
            (
                "--etcd-cert and --etcd-key go together",
                {
                    _ = try EtcdTLS(caFile: nil, certificateFile: nil, keyFile: "\(files.first)/ca.key")
                }
            ),
        ]
        for (expected, body) in cases {
            let message = Self.refusal(body)
            #expect(message?.contains(expected) == true, "expected \(expected), got \(message ?? "no refusal")")
        }
    }
}
