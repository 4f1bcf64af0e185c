import ControlPlane
import Foundation
import RingmasterSecurity
import RingmasterWire
import Synchronization

/// Steps per second over the last few seconds.
struct RateMeter {
    var samples: [(step: UInt64, at: Date)] = []

    mutating func add(step: UInt64, at: Date) {
        self.samples.append((step, at))
        self.samples.removeAll { at.timeIntervalSince($0.at) > 2 }
    }

    var stepsPerSecond: Double {
        guard let first = self.samples.first, let last = self.samples.last, last.at > first.at else { return 0 }
        return Double(last.step - min(last.step, first.step)) / last.at.timeIntervalSince(first.at)
    }
}

/// The processes of a local run.
public final class Cluster: Sendable {
    let directory: String
    let executable: String
    public let children = Mutex<[ChildProcess]>([])
    public let agents = Mutex<[Int: ChildProcess]>([:])
    let addressBox = Mutex<ControlAddress?>(nil)
    /// Arguments added to the coordinator's command line (e.g. `--lease 10s`).
    let coordinatorArguments: [String]
    /// Arguments added to `agent-INDEX`'s command line (e.g. `--rdma off`).
    let agentArguments: @Sendable (Int) -> [String]

    public init(
        directory: String, executable: String, coordinatorArguments: [String] = [],
        agentArguments: @escaping @Sendable (Int) -> [String] = { _ in [] }
    ) {
        self.directory = directory
        self.executable = executable
        self.coordinatorArguments = coordinatorArguments
        self.agentArguments = agentArguments
    }

    public var address: ControlAddress? { self.addressBox.withLock { $0 } }

    /// Starts the coordinator and returns an operator's client for it.
    public func startCoordinator() async throws -> ControlClient {
        let coordinator = try ChildProcess(
            name: "coordinator",
            executable: self.executable,
            arguments: [
                "coordinator", "--state-dir", "\(self.directory)/coordinator", "--listen", "127.0.0.1:0",
                "--settle-window", "200ms",
            ] + self.coordinatorArguments
        )
        self.children.withLock { $0.append(coordinator) }
        let line = try await coordinator.waitForLine(within: 30, "the coordinator's listening address") {
            $0.hasPrefix("listening ")
        }
        let address = try ControlAddress(parsing: String(line.dropFirst("listening ".count)))
        self.addressBox.withLock { $0 = address }
        // An operator identity, as `ringmaster cert issue --role operator` makes on the coordinator host.
        guard let authority = try CertificateAuthority.load(directory: "\(self.directory)/coordinator") else {
            throw LocalClusterError("the coordinator did not create its CA")
        }
        let key = KeyAndRequest.makeKey()
        return ControlClient(
            address: address,
            credentials: try Credentials(
                privateKey: key,
                certificate: try authority.issue(
                    publicKey: key.publicKey,
                    identity: try PeerIdentity(role: .operator, name: "demo"),
                    notBefore: Date().addingTimeInterval(-60),
                    notAfter: Date().addingTimeInterval(3600)
                ),
                caCertificate: authority.certificate
            )
        )
    }

    /// Starts `agent-INDEX` with a fresh single-use token (passed in the environment, never argv).
    public func startAgent(index: Int, admin: ControlClient) async throws {
        let token = try await Self.admin(admin) { $0.tokenCreate = .with { $0.ttlSeconds = 600 } }.adminReply
            .tokenCreate
        try self.startAgent(index: index, token: token)
    }

    /// Joins `agent-INDEX` (key, CSR, certificate in its data directory) without starting it.
    public func joinAgent(index: Int, token: Ringmaster_V1_TokenCreateReply) async throws {
        guard let address = self.address else { throw LocalClusterError("the coordinator is not running") }
        let name = "agent-\(index)"
        let join = try ChildProcess(
            name: "\(name) join",
            executable: self.executable,
            arguments: [
                "agent", "join", "--coordinator", "\(address)", "--data-dir", "\(self.directory)/\(name)", "--name",
                name,
                "--ca-pin", token.caPin,
            ],
            environment: ["RINGMASTER_TOKEN": token.token]
        )
        let status = try await join.waitForExit(within: 60)
        guard status == 0 else {
            throw LocalClusterError("\(name) could not join: \(join.output.lines.suffix(5).joined(separator: "\n"))")
        }
    }

    /// Starts `agent-INDEX`, with a single-use token to join with, or with the credentials it has.
    public func startAgent(index: Int, token: Ringmaster_V1_TokenCreateReply?) throws {
        guard let address = self.address else { throw LocalClusterError("the coordinator is not running") }
        let name = "agent-\(index)"
        var arguments = [
            "agent", "--coordinator", "\(address)", "--data-dir", "\(self.directory)/\(name)", "--name", name,
            "--data-plane-listen", "127.0.0.1:0",
        ]
        arguments += self.agentArguments(index)
        if let token { arguments += ["--ca-pin", token.caPin] }
        let agent = try ChildProcess(
            name: name,
            executable: self.executable,
            arguments: arguments,
            environment: token.map { ["RINGMASTER_TOKEN": $0.token] } ?? [:]
        )
        self.children.withLock { $0.append(agent) }
        self.agents.withLock { $0[index] = agent }
    }

    /// Writes what each process printed to `NAME.log` in the run's directory (for a kept run).
    public func writeLogs() {
        for child in self.children.withLock({ $0 }) {
            let name = child.name.replacingOccurrences(of: " ", with: "-")
            let text = child.output.lines.joined(separator: "\n") + "\n"
            FileManager.default.createFile(atPath: "\(self.directory)/\(name).log", contents: Data(text.utf8))
        }
    }

    public func agent(index: Int) throws -> ChildProcess {
        guard let agent = self.agents.withLock({ $0[index] }) else {
            throw LocalClusterError("no agent-\(index) was started")
        }
        return agent
    }

    public func waitForConnected(admin: ControlClient, count: Int, within seconds: Double) async throws {
        try await withDeadline(seconds: seconds, waitingFor: "\(count) agent(s) to connect") {
            while true {
                let nodes = try await Self.admin(admin) { $0.nodeList = .init() }.adminReply.nodeList.nodes
                if nodes.filter(\.connected).count >= count { return }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    public func stopAll() async {
        for child in self.children.withLock({ $0 }).reversed() {
            _ = await child.stop(grace: 10)
        }
    }

    public static func admin(
        _ client: ControlClient, _ build: @escaping @Sendable (inout Ringmaster_V1_AdminRequest) -> Void
    )
        async throws -> Envelope
    {
        try await client.withConnection { session in try await Self.request(session, build) }
    }

    public static func request(_ session: ControlSession, _ build: (inout Ringmaster_V1_AdminRequest) -> Void)
        async throws
        -> Envelope
    {
        var envelope = Envelope()
        build(&envelope.adminRequest)
        let reply = try await session.request(envelope)
        if case .error(let error) = reply.body { throw LocalClusterError("the coordinator refused: \(error.message)") }
        return reply
    }
}
