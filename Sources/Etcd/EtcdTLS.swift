import Foundation
import NIOSSL

#if canImport(Glibc)
    import Glibc
#endif

/// A store address, `etcd://HOST:PORT[,HOST:PORT...]` (plain HTTP) or `etcds://...` (TLS), with
/// every client endpoint of the cluster.
public struct EtcdAddress: Sendable, Hashable, CustomStringConvertible {
    /// The cluster's client endpoints, `host:port`.
    public var endpoints: [String]
    /// Whether the client speaks TLS to them (`etcds://`).
    public var secure: Bool

    public init(endpoints: [String], secure: Bool) {
        self.endpoints = endpoints
        self.secure = secure
    }

    /// Parses `etcd://` or `etcds://` followed by one or more comma-separated `HOST:PORT`.
    public init(parsing address: String) throws {
        let scheme: String
        if address.hasPrefix("etcds://") {
            scheme = "etcds://"
            self.secure = true
        } else if address.hasPrefix("etcd://") {
            scheme = "etcd://"
            self.secure = false
        } else {
            throw EtcdError(
                .refused,
                "the store address \(address) is not etcd://HOST:PORT[,HOST:PORT...] (plain HTTP) or etcds://HOST:PORT[,...] (TLS), for example etcds://10.0.0.5:2379"
            )
        }
        let endpoints = address.dropFirst(scheme.count).split(separator: ",").map {
            String($0).trimmingCharacters(in: .whitespaces)
        }
        guard !endpoints.isEmpty else {
            throw EtcdError(.refused, "the store address \(address) names no endpoint: give \(scheme)HOST:PORT")
        }
        for endpoint in endpoints {
            guard let colon = endpoint.lastIndex(of: ":"), !endpoint[..<colon].isEmpty,
                let port = Int(endpoint[endpoint.index(after: colon)...]), (1...65535).contains(port)
            else {
                throw EtcdError(
                    .refused, "the store address \(address) has an endpoint \(endpoint) that is not HOST:PORT")
            }
        }
        self.endpoints = endpoints
    }

    /// Whether every endpoint is this machine's loopback (`localhost`, 127.0.0.0/8, `[::1]`), where
    /// plain HTTP crosses no network. A name that only resolves to loopback does not count.
    public var isLoopback: Bool {
        self.endpoints.allSatisfy { endpoint in
            let host = endpoint[..<(endpoint.lastIndex(of: ":") ?? endpoint.endIndex)]
            if host == "localhost" || host == "[::1]" { return true }
            let octets = host.split(separator: ".", omittingEmptySubsequences: false)
            return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
        }
    }

    public var description: String { (self.secure ? "etcds://" : "etcd://") + self.endpoints.joined(separator: ",") }
}

/// What a client needs to speak TLS to etcd (`etcds://`): the CA that signed the members' server
/// certificates and, for a cluster that runs with `--client-cert-auth`, a client certificate and
/// its key. Loaded and checked when the coordinator starts, so that a wrong file is named then
/// rather than at the first write, and loaded again when the files change on disk (`reloaded()`),
/// so that certificates a PKI rotates reach a coordinator that runs for months. Messages name the
/// files, never what is in them.
public struct EtcdTLS: Sendable {
    /// The CA file (nil: the system's trust roots).
    public let caFile: String?
    /// The client certificate file (nil: no client certificate).
    public let certificateFile: String?
    /// The client key file (nil: no client certificate).
    public let keyFile: String?
    let configuration: TLSConfiguration
    /// How the three files stood on disk just before they were read.
    let stamps: [FileStamp?]

    /// Loads the files. `certificateFile` and `keyFile` go together; the key must be PEM, not
    /// encrypted, and readable by its owner alone (like `ca.key`), and it must be the
    /// certificate's.
    public init(caFile: String?, certificateFile: String?, keyFile: String?) throws {
        // Taken before the files are read, so that a change made while they are read is seen by
        // the next `reloaded()` rather than missed.
        let stamps = [caFile, certificateFile, keyFile].map { $0.flatMap(FileStamp.init(path:)) }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.certificateVerification = .fullVerification
        if let caFile {
            let certificates = try Self.certificates(in: caFile, what: "--etcd-ca")
            configuration.trustRoots = .certificates(certificates)
        }
        switch (certificateFile, keyFile) {
        case (nil, nil):
            break
        case (let certificateFile?, let keyFile?):
            let chain = try Self.certificates(in: certificateFile, what: "--etcd-cert")
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(try Self.privateKey(in: keyFile))
        case (.some, nil), (nil, .some):
            throw EtcdError(
                .refused,
                "--etcd-cert and --etcd-key go together: give both (the client certificate etcd accepts, and its key), or neither"
            )
        }
        do {
            // Builds the context once so that a key that is not the certificate's is found here.
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            if let certificateFile, let keyFile {
                throw EtcdError(
                    .refused,
                    "--etcd-key \(keyFile) is not the key of the certificate in --etcd-cert \(certificateFile) (\(error)): give the key the certificate was issued for"
                )
            }
            throw EtcdError(.refused, "could not set up TLS to etcd with --etcd-ca \(caFile ?? "(none)"): \(error)")
        }
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.configuration = configuration
        self.stamps = stamps
    }

    /// The files loaded afresh when any of them changed on disk since this was loaded (replaced,
    /// rewritten, or a symbolic link turned to another file, as a mounted Kubernetes secret is);
    /// nil when none did. Throws, as `init` does, when they changed and do not load together, for
    /// example between a rotation's writing of the certificate and of its key: the caller keeps
    /// what it has and asks again later.
    public func reloaded() throws -> EtcdTLS? {
        let now = [self.caFile, self.certificateFile, self.keyFile].map { $0.flatMap(FileStamp.init(path:)) }
        guard now != self.stamps else { return nil }
        return try EtcdTLS(caFile: self.caFile, certificateFile: self.certificateFile, keyFile: self.keyFile)
    }

    /// Where a file stands on disk: which file it is and when and how it was last written. Any
    /// change of content that a rotation makes (a new file renamed over the old, or the old one
    /// rewritten) changes it.
    struct FileStamp: Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: Int64
        var modifiedNanoseconds: Int64
        var changed: Int64
        var changedNanoseconds: Int64

        /// The file's stamp, following symbolic links; nil when it cannot be looked at (then
        /// loading it says why).
        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            self.device = UInt64(info.st_dev)
            self.inode = UInt64(info.st_ino)
            self.size = Int64(info.st_size)
            self.modified = Int64(info.st_mtim.tv_sec)
            self.modifiedNanoseconds = Int64(info.st_mtim.tv_nsec)
            self.changed = Int64(info.st_ctim.tv_sec)
            self.changedNanoseconds = Int64(info.st_ctim.tv_nsec)
        }
    }

    static func contents(of path: String, what: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EtcdError(.refused, "\(what) \(path) cannot be read: give the path of a PEM file this user can read")
        }
        return [UInt8](data)
    }

    static func certificates(in path: String, what: String) throws -> [NIOSSLCertificate] {
        let bytes = try Self.contents(of: path, what: what)
        let certificates = try? NIOSSLCertificate.fromPEMBytes(bytes)
        guard let certificates, !certificates.isEmpty else {
            throw EtcdError(
                .refused, "\(what) \(path) holds no PEM certificate (-----BEGIN CERTIFICATE-----): give a PEM file")
        }
        return certificates
    }

    static func privateKey(in path: String) throws -> NIOSSLPrivateKey {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw EtcdError(.refused, "--etcd-key \(path) cannot be read: give the path of the client key")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw EtcdError(
                .refused,
                "--etcd-key \(path) can be read by others (mode \(String(info.st_mode & 0o777, radix: 8))): chmod 600 \(path), so that only its owner can"
            )
        }
        let bytes = try Self.contents(of: path, what: "--etcd-key")
        guard let key = try? NIOSSLPrivateKey(bytes: bytes, format: .pem) else {
            throw EtcdError(
                .refused,
                "--etcd-key \(path) holds no unencrypted PEM private key: give the client certificate's key in PEM, without a passphrase"
            )
        }
        return key
    }
}
