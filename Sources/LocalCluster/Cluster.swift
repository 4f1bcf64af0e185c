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

    /// Coordinators of a set that shares an etcd store, one of which leads.
    public struct Replicas: Sendable {
        /// How many coordinators.
        public var count: Int
        /// The store, `etcd://HOST:PORT,...` or `etcds://...` (a running cluster).
        public var store: String
        /// Flags added to each coordinator's for the store: `--etcd-ca`, `--etcd-cert` and
        /// `--etcd-key` with `etcds://`.
        public var storeArguments: [String] = []
        /// Their `--leader-lease`, in seconds.
        public var leaderLease: Int
        /// Their `--etcd-prefix`: one of this run's own, so that runs sharing a store never meet.
        public var prefix: String

        public init(count: Int, store: String, leaderLease: Int = 2) {
            self.count = count
            self.store = store
            self.leaderLease = leaderLease
            self.prefix = "/ringmaster-demo-\(UUID().uuidString.prefix(8).lowercased())/"
        }
    }

    /// Several coordinators instead of one, when given.
    let replicas: Replicas?
    /// The coordinators, by index (one without `replicas`), and every address agents are given.
    public let coordinators = Mutex<[ChildProcess]>([])
    let addressesBox = Mutex<CoordinatorAddresses?>(nil)

    public init(
        directory: String, executable: String, coordinatorArguments: [String] = [],
        agentArguments: @escaping @Sendable (Int) -> [String] = { _ in [] }, replicas: Replicas? = nil
    ) {
        self.directory = directory
        self.executable = executable
        self.coordinatorArguments = coordinatorArguments
        self.agentArguments = agentArguments
        self.replicas = replicas
    }

    /// The coordinator's address (of a set: the one to try now).
    public var address: ControlAddress? {
        self.addressesBox.withLock { $0 }?.current ?? self.addressBox.withLock { $0 }
    }

    /// Every coordinator address, comma-separated, as agents and the CLI take them.
    var coordinatorArgument: String? {
        self.addressesBox.withLock { $0 }.map(\.description) ?? self.addressBox.withLock { $0 }.map(\.description)
    }

    /// The coordinator that leads now, by its own log (its last word on the matter is that it
    /// leads), among those alive.
    public func leader() -> ChildProcess? {
        self.coordinators.withLock { $0 }.first { coordinator in
            !coordinator.hasExited
                && coordinator.output.lines.last(where: {
                    $0.contains("this coordinator leads") || $0.contains("this coordinator no longer leads")
                })?.contains("this coordinator leads") == true
        }
    }

    /// Starts the coordinators of `replicas` on free loopback ports: the first creates the CA and
    /// leads; the others get a copy of its CA (as an operator copies it) and stand by.
    func startReplicas(_ replicas: Replicas) async throws -> [ControlAddress] {
        let ports = try (0..<replicas.count).map { _ in try Self.freePort() }
        let first = "\(self.directory)/coordinator-0"
        var addresses: [ControlAddress] = []
        for (index, port) in ports.enumerated() {
            let state = "\(self.directory)/coordinator-\(index)"
            if index > 0 {
                try SecureFile.createDirectory(state)
                for file in ["ca.key", "ca.crt"] {
                    let target = "\(state)/\(file)"
                    try? FileManager.default.removeItem(atPath: target)
                    try FileManager.default.copyItem(atPath: "\(first)/\(file)", toPath: target)
                    _ = chmod(target, 0o600)
                }
            }
            let coordinator = try ChildProcess(
                name: "coordinator-\(index)",
                executable: self.executable,
                arguments: [
                    "coordinator", "--state-dir", state, "--listen", "127.0.0.1:\(port)", "--settle-window", "200ms",
                    "--store", replicas.store, "--leader-lease", "\(replicas.leaderLease)s",
                    "--etcd-prefix", replicas.prefix,
                ] + replicas.storeArguments + self.coordinatorArguments
            )
            self.children.withLock { $0.append(coordinator) }
            self.coordinators.withLock { $0.append(coordinator) }
            _ = try await coordinator.waitForLine(within: 30, "coordinator-\(index)'s listening address") {
                $0.hasPrefix("listening ")
            }
            if index == 0 {
                _ = try await coordinator.waitForLine(within: 30, "coordinator-0 to lead") {
                    $0.contains("this coordinator leads")
                }
            }
            addresses.append(ControlAddress(host: "127.0.0.1", port: port))
        }
        return addresses
    }

    /// A loopback port free now (the kernel's pick for a socket bound to port 0, then closed).
    public static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw LocalClusterError("socket() failed: errno \(errno)") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw LocalClusterError("bind() to a free port failed: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Starts the coordinator and returns an operator's client for it.
    public func startCoordinator() async throws -> ControlClient {
        if let replicas = self.replicas {
            let addresses = CoordinatorAddresses(try await self.startReplicas(replicas))
            self.addressesBox.withLock { $0 = addresses }
            var client = try self.operatorClient(
                address: addresses.current, stateDirectory: "\(self.directory)/coordinator-0")
            client.addresses = addresses
            return client
        }
        let coordinator = try ChildProcess(
            name: "coordinator",
            executable: self.executable,
            arguments: [
                "coordinator", "--state-dir", "\(self.directory)/coordinator", "--listen", "127.0.0.1:0",
                "--settle-window", "200ms",
            ] + self.coordinatorArguments
        )
        self.children.withLock { $0.append(coordinator) }
        self.coordinators.withLock { $0.append(coordinator) }
        let line = try await coordinator.waitForLine(within: 30, "the coordinator's listening address") {
            $0.hasPrefix("listening ")
        }
        let address = try ControlAddress(parsing: String(line.dropFirst("listening ".count)))
        self.addressBox.withLock { $0 = address }
        return try self.operatorClient(address: address, stateDirectory: "\(self.directory)/coordinator")
    }

    /// An operator identity, as `ringmaster cert issue --role operator` makes on the coordinator
    /// host, and a client of `address` with it.
    func operatorClient(address: ControlAddress, stateDirectory: String) throws -> ControlClient {
        guard let authority = try CertificateAuthority.load(directory: stateDirectory) else {
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
        guard let address = self.coordinatorArgument else { throw LocalClusterError("the coordinator is not running") }
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
        guard let address = self.coordinatorArgument else { throw LocalClusterError("the coordinator is not running") }
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
