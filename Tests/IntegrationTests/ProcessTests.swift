import ControlPlane
import Foundation
import LocalCluster
import NIOConcurrencyHelpers
import RingmasterSecurity
import RingmasterWire
import Testing

/// The `ringmaster` executable built next to this test bundle (or `RINGMASTER_BINARY`).
func ringmasterExecutable() throws -> String {
    if let path = ProcessInfo.processInfo.environment["RINGMASTER_BINARY"] { return path }
    let testBinary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: testBinary).deletingLastPathComponent().appendingPathComponent("ringmaster").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw CommandError("no ringmaster executable at \(path): run `swift build` first, or set RINGMASTER_BINARY")
    }
    return path
}

/// A coordinator and agents as real processes on loopback, driven through the real CLI.
final class ProcessCluster: Sendable {
    let directory: TestDirectory
    let executable: String
    let port: Int
    let coordinator: NIOLockedBox<ChildProcess>
    /// The coordinator's state directory.
    let stateDirectory: String
    /// Extra arguments the coordinator starts with (every time).
    let coordinatorArguments: [String]
    /// The soft limit on open files the coordinator starts under, if not the inherited one.
    let softDescriptorLimit: Int?

    init(stateDirectory: String? = nil, coordinatorArguments: [String] = [], softDescriptorLimit: Int? = nil)
        async throws
    {
        self.directory = try TestDirectory()
        self.executable = try ringmasterExecutable()
        self.stateDirectory = stateDirectory ?? "\(self.directory.path)/coordinator"
        self.coordinatorArguments = coordinatorArguments
        self.softDescriptorLimit = softDescriptorLimit
        let first = try Self.startCoordinator(
            name: "coordinator", executable: self.executable, stateDirectory: self.stateDirectory,
            listen: "127.0.0.1:0",
            arguments: coordinatorArguments, softDescriptorLimit: softDescriptorLimit
        )
        let line = try await first.standardOutput.waitForLine(within: 30, "its listening address") {
            $0.hasPrefix("listening ")
        }
        self.port = try ControlAddress(parsing: String(line.dropFirst("listening ".count))).port
        self.coordinator = NIOLockedBox(first)
        try await self.run(
            [
                "cert", "issue", "--role", "operator", "--name", "tester", "--state-dir", self.stateDirectory,
                "--out", "\(self.directory.path)/operator",
            ]
        )
    }

    /// Starts a coordinator process, under a lower soft limit on open files when one is given
    /// (as a systemd service without `LimitNOFILE` starts: 1,024, with a higher hard limit).
    static func startCoordinator(
        name: String,
        executable: String,
        stateDirectory: String,
        listen: String,
        arguments: [String],
        softDescriptorLimit: Int?
    ) throws -> ChildProcess {
        let command = [executable, "coordinator", "--state-dir", stateDirectory, "--listen", listen] + arguments
        guard let limit = softDescriptorLimit else {
            return try ChildProcess(name: name, executable: executable, arguments: Array(command.dropFirst()))
        }
        return try ChildProcess(
            name: name, executable: "/bin/bash",
            arguments: ["-c", "ulimit -Sn \(limit) && exec \"$@\"", "bash"] + command)
    }

    var address: String { "127.0.0.1:\(self.port)" }

    /// The operator's credentials, for admin requests made from the test itself.
    func operatorCredentials() throws -> Credentials {
        guard let credentials = try Credentials.load(directory: "\(self.directory.path)/operator") else {
            throw CommandError("no operator credentials in \(self.directory.path)/operator")
        }
        return credentials
    }

    /// One admin request over a mutual-TLS session of its own, from the test process.
    func admin(_ fill: (inout Ringmaster_V1_AdminRequest) -> Void) async throws -> Envelope {
        var envelope = Envelope()
        fill(&envelope.adminRequest)
        let request = envelope
        return try await ControlClient(
            address: ControlAddress(host: "127.0.0.1", port: self.port), credentials: try self.operatorCredentials()
        )
        .withConnection { session in try await session.request(request) }
    }

    /// A CLI command's exit status and everything it printed.
    func attempt(_ arguments: [String], within seconds: Double = 60) async throws -> (status: Int32, lines: [String]) {
        let process = try ChildProcess(
            name: "ringmaster \(arguments.prefix(2).joined(separator: " "))", executable: self.executable,
            arguments: arguments)
        let status = try await process.waitForExit(within: seconds)
        return (status, process.output.lines)
    }

    /// The operator's identity options for the CLI.
    var operatorOptions: [String] { ["--coordinator", self.address, "--identity", "\(self.directory.path)/operator"] }

    /// Runs a CLI command to completion and returns its standard output; throws on a non-zero exit.
    @discardableResult
    func run(_ arguments: [String]) async throws -> [String] {
        let process = try ChildProcess(
            name: "ringmaster \(arguments.prefix(2).joined(separator: " "))", executable: self.executable,
            arguments: arguments)
        let status = try await process.waitForExit(within: 60)
        guard status == 0 else {
            throw CommandError(
                "`ringmaster \(arguments.joined(separator: " "))` exited \(status): \(process.output.lines.suffix(5))")
        }
        return process.standardOutput.lines
    }

    /// Creates a token through the CLI, as an operator would.
    func createToken() async throws -> (token: String, pin: String) {
        let output = try await self.run(
            [
                "token", "create", "--ttl", "10m", "--json", "--coordinator", self.address, "--identity",
                "\(self.directory.path)/operator",
            ]
        )
        let object = try JSONSerialization.jsonObject(with: Data(output.joined().utf8)) as? [String: Any]
        guard let token = object?["token"] as? String, let pin = object?["ca_pin"] as? String else {
            throw CommandError("token create printed \(output)")
        }
        return (token, pin)
    }

    /// Node ids and whether each is connected, as `ringmaster node list --json` reports them.
    func nodes() async throws -> [String: Bool] {
        let output = try await self.run(
            ["node", "list", "--json", "--coordinator", self.address, "--identity", "\(self.directory.path)/operator"]
        )
        let object = try JSONSerialization.jsonObject(with: Data(output.joined().utf8)) as? [String: Any]
        let nodes = object?["nodes"] as? [[String: Any]] ?? []
        return Dictionary(
            uniqueKeysWithValues: nodes.map { ($0["node"] as? String ?? "?", $0["connected"] as? Bool ?? false) })
    }

    func startAgent(_ name: String, token: (token: String, pin: String)?) throws -> ChildProcess {
        var arguments = [
            "agent", "--coordinator", self.address, "--data-dir", "\(self.directory.path)/\(name)", "--name", name,
            "--data-plane-listen", "127.0.0.1:0",
        ]
        var environment: [String: String] = [:]
        if let token {
            arguments += ["--ca-pin", token.pin]
            environment["RINGMASTER_TOKEN"] = token.token
        }
        return try ChildProcess(name: name, executable: self.executable, arguments: arguments, environment: environment)
    }

    /// Kills the coordinator with SIGKILL and starts it again on the same port and state.
    func restartCoordinator() async throws -> ChildProcess {
        let old = self.coordinator.value
        old.signal(SIGKILL)
        _ = try await old.waitForExit(within: 10)
        let next = try Self.startCoordinator(
            name: "coordinator (restarted)", executable: self.executable, stateDirectory: self.stateDirectory,
            listen: self.address,
            arguments: self.coordinatorArguments, softDescriptorLimit: self.softDescriptorLimit
        )
        try await next.standardOutput.waitForLine(within: 30, "its listening address") { $0.hasPrefix("listening ") }
        self.coordinator.value = next
        return next
    }
}

/// A value behind a lock, for test fixtures shared across tasks.
final class NIOLockedBox<Value: Sendable>: Sendable {
    let box: NIOLockedValueBox<Value>
    init(_ value: Value) { self.box = NIOLockedValueBox(value) }
    var value: Value {
        get { self.box.withLockedValue { $0 } }
        set { self.box.withLockedValue { $0 = newValue } }
    }
}

@Suite("Coordinator and agents as processes", .timeLimit(.minutes(3)))
struct ProcessTests {
    static let connected: @Sendable (String) -> Bool = { $0.contains("connected to the coordinator") }

    @Test func agentsJoinWithTokens_andReconnectWithTheirCertificates_afterARestartOfEitherSide() async throws {
        let cluster = try await ProcessCluster()
        let tokenA = try await cluster.createToken()
        let tokenB = try await cluster.createToken()
        var agentA = try cluster.startAgent("node-a", token: tokenA)
        let agentB = try cluster.startAgent("node-b", token: tokenB)
        defer {
            for process in [agentA, agentB, cluster.coordinator.value] { process.signal(SIGKILL) }
        }

        // Both join with their tokens and hold mutual-TLS sessions.
        for agent in [agentA, agentB] {
            try await agent.waitForLine(within: 30, "that it joined") { $0.contains("joined the coordinator") }
            try await agent.waitForLine(within: 30, "its first session", where: Self.connected)
        }
        #expect(try await cluster.nodes() == ["node-a": true, "node-b": true])
        for file in ["key.pem", "cert.pem", "ca.pem"] {
            #expect(SecureFile.permissions(of: "\(cluster.directory.path)/node-a/\(file)") == 0o600, "\(file)")
        }
        #expect(SecureFile.permissions(of: "\(cluster.directory.path)/coordinator/ca.key") == 0o600)

        // The coordinator crashes and comes back: both agents reconnect with their certificates.
        let restarted = try await cluster.restartCoordinator()
        for agent in [agentA, agentB] {
            try await agent.waitForLine(
                within: 30, "a session with the restarted coordinator", occurrence: 2, where: Self.connected)
        }
        try await restarted.waitForLine(within: 10, "node-a's session") {
            $0.contains("agent session started") && $0.contains("node-a")
        }
        #expect(try await cluster.nodes() == ["node-a": true, "node-b": true])

        // An agent restarts without a token: it uses its stored certificate, and joins nothing new.
        #expect(await agentA.stop(grace: 10) == 0, "SIGTERM ends the agent cleanly")
        agentA = try cluster.startAgent("node-a", token: nil)
        try await agentA.waitForLine(within: 30, "a session after its restart", where: Self.connected)
        #expect(agentA.output.count { $0.contains("joined the coordinator") } == 0)
        #expect(try await cluster.nodes() == ["node-a": true, "node-b": true])

        // Token secrets and private keys never reached any log line of any process.
        let logs = (agentA.output.lines + agentB.output.lines + restarted.output.lines).joined(separator: "\n")
        #expect(logs.contains("node-a"), "the logs are not empty")
        for token in [tokenA.token, tokenB.token] {
            let secret = String(token.split(separator: ".").last!)
            #expect(!logs.contains(secret), "a token secret is in the logs")
        }
        for keyFile in ["node-a/key.pem", "node-b/key.pem", "coordinator/ca.key"] {
            for line in try keyBodyLines("\(cluster.directory.path)/\(keyFile)") {
                #expect(!logs.contains(line), "\(keyFile) material is in the logs")
            }
        }

        for process in [agentA, agentB] {
            #expect(await process.stop(grace: 10) == 0)
        }
        #expect(await cluster.coordinator.value.stop(grace: 10) == 0)
    }
}

/// The base64 lines of a PEM private key (the key material itself).
func keyBodyLines(_ path: String) throws -> [String] {
    guard let bytes = try SecureFile.read(path) else { throw CommandError("no key at \(path)") }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        .filter { !$0.hasPrefix("-----") && $0.count >= 16 }
}
