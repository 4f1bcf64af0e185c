import Etcd
import Foundation
import LocalCluster

#if canImport(Glibc)
    import Glibc
#endif

/// A real etcd cluster on loopback for one test, run by scripts/etcd-cluster.sh (which CI uses too)
/// in a directory of its own; `stop` ends it. Its ports are drawn at random from 24000 to 29998 so
/// that clusters of tests run one after another never meet a member still closing.
final class EtcdCluster: Sendable {
    let directory: TestDirectory
    let endpoints: [String]
    let members: Int
    /// Whether clients speak TLS and must show a client certificate (`--tls`).
    let tls: Bool

    /// Starts `members` members serving clients on `host` (over TLS with client certificates
    /// when `tls`) and waits, with the script's deadline, until the cluster serves.
    init(members: Int = 3, host: String = "127.0.0.1", tls: Bool = false) async throws {
        self.directory = try TestDirectory()
        self.members = members
        self.tls = tls
        let basePort = 24000 + 2 * members * Int.random(in: 0..<(5998 / (2 * members)))
        let output = try await Self.script(
            [
                "start", self.directory.path, "--members", "\(members)", "--base-port", "\(basePort)", "--host",
                host,
            ] + (tls ? ["--tls"] : []), within: 40)
        guard let line = output.last(where: { $0.contains(":") }) else {
            throw CommandError("etcd-cluster.sh start printed no endpoints: \(output)")
        }
        self.endpoints = line.split(separator: ",").map(String.init)
        guard self.endpoints.count == members else {
            throw CommandError("etcd-cluster.sh start printed \(line), expected \(members) endpoints")
        }
    }

    /// A test that ends without `stop` (it failed) leaves no member running.
    deinit {
        let pids = (try? String(contentsOfFile: "\(self.directory.path)/pids", encoding: .utf8)) ?? ""
        for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) where pid > 0 {
            // Only an etcd: a member that ended long ago may have left its pid to another process.
            let name = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? ""
            if name.hasPrefix("etcd") { Glibc.kill(pid, SIGKILL) }
        }
    }

    /// The members' client ports.
    var ports: [Int] { self.endpoints.compactMap { $0.split(separator: ":").last.flatMap { Int($0) } } }

    /// `etcd://` (or `etcds://`) with every member.
    var address: String { (self.tls ? "etcds://" : "etcd://") + self.endpoints.joined(separator: ",") }

    /// With `tls`: the CA, client certificate and key the script made (`DIR/tls`).
    var caFile: String { "\(self.directory.path)/tls/ca.crt" }
    var certificateFile: String { "\(self.directory.path)/tls/client.crt" }
    var keyFile: String { "\(self.directory.path)/tls/client.key" }

    /// What a client needs to reach this cluster: nil for plain HTTP, else the script's CA and
    /// client certificate.
    func clientTLS() throws -> EtcdTLS? {
        guard self.tls else { return nil }
        return try EtcdTLS(caFile: self.caFile, certificateFile: self.certificateFile, keyFile: self.keyFile)
    }

    /// A client of every member, over TLS when the cluster speaks it.
    func client(timeout: Duration = .seconds(3)) throws -> EtcdClient {
        EtcdClient(endpoints: self.endpoints, tls: try self.clientTLS(), timeout: timeout)
    }

    /// The coordinator's flags for this store: `--store` and, with TLS, the client's files.
    var storeArguments: [String] {
        ["--store", self.address]
            + (self.tls
                ? ["--etcd-ca", self.caFile, "--etcd-cert", self.certificateFile, "--etcd-key", self.keyFile] : [])
    }

    /// kill -9 of member `index`.
    func kill(_ index: Int) async throws {
        _ = try await Self.script(["kill", self.directory.path, "\(index)"], within: 20)
    }

    /// Starts member `index` again on its data, and waits until it is healthy.
    func restart(_ index: Int) async throws {
        _ = try await Self.script(["restart", self.directory.path, "\(index)"], within: 40)
    }

    /// Stops every member (their data stays in the directory until the test ends).
    func stop() async {
        _ = try? await Self.script(["stop", self.directory.path], within: 40)
    }

    /// Runs the script to completion; throws with its last lines when it fails.
    static func script(_ arguments: [String], within seconds: Double) async throws -> [String] {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/etcd-cluster.sh").path
        guard FileManager.default.fileExists(atPath: "/usr/bin/etcd") || Self.onPath("etcd") else {
            throw CommandError("etcd is not installed: run scripts/setup.sh (it installs etcd-server and etcd-client)")
        }
        let process = try ChildProcess(name: "etcd-cluster.sh \(arguments[0])", executable: path, arguments: arguments)
        let status = try await process.waitForExit(within: seconds)
        guard status == 0 else {
            throw CommandError(
                "`etcd-cluster.sh \(arguments.joined(separator: " "))` exited \(status): \(process.output.lines.suffix(20).joined(separator: "\n"))"
            )
        }
        return process.standardOutput.lines
    }

    static func onPath(_ name: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(name)")
        }
    }
}

/// A network namespace joined to this one by a veth pair, host side `hostAddress`/30 and namespace
/// side `address`/30, for a process that must be reachable while some of its traffic is cut
/// (`TrafficCut` on `device` in `name`). Removed (with its veth) when released.
final class NetworkNamespace: Sendable {
    let name: String
    let hostAddress: String
    let address: String
    /// The namespace's end of the pair.
    let device: String

    init() throws {
        let tag = String(UUID().uuidString.prefix(6).lowercased())
        let subnet = Int.random(in: 0..<64) * 4
        self.name = "rm-\(tag)"
        self.hostAddress = "10.231.\(subnet / 256).\(subnet % 256 + 1)"
        self.address = "10.231.\(subnet / 256).\(subnet % 256 + 2)"
        self.device = "rmn-\(tag)"
        let host = "rmh-\(tag)"
        try Self.ip(["netns", "add", self.name])
        do {
            try Self.ip(["link", "add", host, "type", "veth", "peer", "name", self.device])
            try Self.ip(["link", "set", self.device, "netns", self.name])
            try Self.ip(["addr", "add", "\(self.hostAddress)/30", "dev", host])
            try Self.ip(["link", "set", host, "up"])
            try Self.ip(["netns", "exec", self.name, "ip", "addr", "add", "\(self.address)/30", "dev", self.device])
            try Self.ip(["netns", "exec", self.name, "ip", "link", "set", self.device, "up"])
            try Self.ip(["netns", "exec", self.name, "ip", "link", "set", "lo", "up"])
        } catch {
            try? Self.ip(["netns", "del", self.name])
            throw error
        }
    }

    deinit { try? Self.ip(["netns", "del", self.name]) }

    static func ip(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip"] + arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw CommandError(
                "ip \(arguments.joined(separator: " ")) failed (network namespaces need root and iproute2): \(String(decoding: message, as: UTF8.self))"
            )
        }
    }
}
