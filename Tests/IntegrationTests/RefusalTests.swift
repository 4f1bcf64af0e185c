import Agent
import ControlPlane
import Coordinator
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Testing

/// Every refusal of the control channel, over real sockets and real TLS against an in-process
/// coordinator: each is logged with a clear reason, and nothing in the refused request is acted on
/// (checked in the coordinator's durable state).
@Suite("Control channel refusals", .timeLimit(.minutes(2)))
struct RefusalTests {
    /// An agent (not running, just joining) whose data directory lives in the coordinator's test directory.
    func agent(_ coordinator: TestCoordinator, _ name: String, log: LineLog = LineLog(name: "agent log"))
        -> AgentService
    {
        var configuration = AgentConfiguration(
            coordinator: coordinator.address,
            dataDirectory: "\(coordinator.directory.path)/\(name)",
            nodeName: name
        )
        configuration.reconnectInitialDelaySeconds = 0.05
        return AgentService(configuration: configuration, logger: log.logger(label: name))
    }

    func refusal(_ error: any Error) -> String {
        if case ControlClientError.refused(_, let message) = error { return message }
        return "\(error)"
    }

    // MARK: - Tokens

    @Test func aTokenUsedTwice_isRefused_andOnlyTheFirstNodeIsAdmitted() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let (token, pin) = try await coordinator.createToken()
        _ = try await self.agent(coordinator, "node-a").join(token: token, pin: pin)

        await #expect {
            try await self.agent(coordinator, "node-b").join(token: token, pin: pin)
        } throws: { error in
            self.refusal(error).contains("already used")
        }
        try await coordinator.log.waitForLine(within: 5, "the refused second use") {
            $0.contains("refused a join") && $0.contains("already used") && $0.contains(token.id)
        }
        #expect(try coordinator.service.state.nodes().map(\.id) == ["node-a"])
        #expect(try Credentials.load(directory: "\(coordinator.directory.path)/node-b") == nil)
    }

    @Test func anExpiredToken_isRefused_andAdmitsNoNode() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let (token, pin) = try await coordinator.createToken(ttlSeconds: 60)
        coordinator.clock.advance(by: 61)

        await #expect {
            try await self.agent(coordinator, "node-a").join(token: token, pin: pin)
        } throws: { error in
            self.refusal(error).contains("expired")
        }
        try await coordinator.log.waitForLine(within: 5, "the refused expired token") {
            $0.contains("refused a join") && $0.contains("expired")
        }
        #expect(try coordinator.service.state.nodes().isEmpty)
        #expect(try coordinator.service.state.tokens().map(\.redeemedBy) == [nil])
    }

    @Test func aWrongTokenSecret_isRefused_andTheTokenStaysUsable() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let (token, pin) = try await coordinator.createToken()
        let forged = JoinToken(id: token.id, secret: JoinToken.generate().secret)

        await #expect {
            try await self.agent(coordinator, "intruder").join(token: forged, pin: pin)
        } throws: { error in
            self.refusal(error).contains("does not verify")
        }
        try await coordinator.log.waitForLine(within: 5, "the refused proof") {
            $0.contains("refused a join") && $0.contains("does not verify") && $0.contains("intruder")
        }
        #expect(try coordinator.service.state.nodes().isEmpty)
        // The failed attempt consumed nothing: the real holder can still join with it.
        _ = try await self.agent(coordinator, "node-a").join(token: token, pin: pin)
        #expect(try coordinator.service.state.nodes().map(\.id) == ["node-a"])
    }

    @Test func aWrongCAPin_makesTheAgentRefuseTheCoordinator_beforeSendingAnything() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let (token, _) = try await coordinator.createToken()
        let elsewhere = try TestDirectory()
        let otherPin = try CertificateAuthority.loadOrCreate(directory: elsewhere.path, now: Date()).pin

        await #expect {
            try await self.agent(coordinator, "node-a").join(token: token, pin: otherPin)
        } throws: { error in
            "\(error)".contains("does not match the pin")
        }
        // The token was never presented, so it is still unused.
        #expect(try coordinator.service.state.tokens().map(\.redeemedBy) == [nil])
    }

    // MARK: - Certificates

    @Test func aClientCertificateFromAnotherCA_isRefusedAtTheHandshake() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let elsewhere = try TestDirectory()
        let otherCA = try CertificateAuthority.loadOrCreate(directory: elsewhere.path, now: Date())
        var credentials = try TestCoordinator.credentials(
            from: otherCA, role: .operator, name: "mallory", clock: coordinator.clock)
        credentials.caCertificate = coordinator.authority.certificate  // it trusts the real coordinator

        await #expect(throws: (any Error).self) {
            try await ControlClient(address: coordinator.address, credentials: credentials).withConnection { session in
                try await session.request(tokenCreateRequest())
            }
        }
        try await coordinator.log.waitForLine(within: 5, "the refused certificate") {
            $0.contains("refused a client certificate") && $0.contains("not issued by this coordinator's CA")
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
    }

    @Test func anExpiredClientCertificate_isRefusedAtTheHandshake() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let expired = try TestCoordinator.credentials(
            from: coordinator.authority,
            role: .operator,
            name: "former",
            clock: coordinator.clock,
            validFrom: -7200,
            validFor: 3600
        )

        await #expect(throws: (any Error).self) {
            try await ControlClient(address: coordinator.address, credentials: expired).withConnection { session in
                try await session.request(tokenCreateRequest())
            }
        }
        try await coordinator.log.waitForLine(within: 5, "the refused expired certificate") {
            $0.contains("refused a client certificate") && $0.contains("expired at")
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
    }

    @Test func noClientCertificate_mayOnlyJoin() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let anonymous = ControlClient(
            host: "127.0.0.1",
            port: coordinator.port,
            credentials: nil,
            serverTrust: .pin(coordinator.authority.pin)
        )
        await #expect {
            try await anonymous.withConnection { session in try await session.request(tokenCreateRequest()) }
        } throws: { error in
            guard case ControlClientError.refused(let code, let message) = error else { return false }
            return code == .permissionDenied && message.contains("needs a client certificate")
        }
        await #expect(throws: ControlClientError.self) {
            try await anonymous.withConnection { session in
                var heartbeat = Envelope()
                heartbeat.heartbeat = .with { $0.jobID = "job" }
                return try await session.request(heartbeat)
            }
        }
        try await coordinator.log.waitForLine(within: 5, "the refused anonymous admin request") {
            $0.contains("refused a control message") && $0.contains("admin_request")
                && $0.contains("needs a client certificate")
        }
        try await coordinator.log.waitForLine(within: 5, "the refused anonymous heartbeat") {
            $0.contains("refused a control message") && $0.contains("heartbeat")
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
    }

    @Test func anAgentCertificate_cannotMakeAdminRequests() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let (token, pin) = try await coordinator.createToken()
        let credentials = try await self.agent(coordinator, "node-a").join(token: token, pin: pin)

        await #expect {
            try await ControlClient(address: coordinator.address, credentials: credentials).withConnection { session in
                try await session.request(tokenCreateRequest())
            }
        } throws: { error in
            self.refusal(error).contains("needs an operator certificate")
        }
        try await coordinator.log.waitForLine(within: 5, "the refused admin request from an agent") {
            $0.contains("refused a control message") && $0.contains("agent node-a")
                && $0.contains("operator certificate")
        }
        #expect(try coordinator.service.state.tokens().count == 1, "only the token the agent joined with")
    }

    // MARK: - Frames

    @Test func aFrameOverTheLimit_closesTheConnection_withoutReadingIt() async throws {
        let coordinator = try await TestCoordinator { $0.maximumFrameBytes = 64 * 1024 }
        defer { Task { await coordinator.stop() } }
        let client = try await RawTLSClient(
            port: coordinator.port,
            credentials: coordinator.operatorCredentials,
            trust: .certificate(coordinator.authority.certificate)
        )
        let declared = UInt32(64 * 1024 + 1)
        let header = withUnsafeBytes(of: declared.bigEndian) { Array($0) }
        try await client.write(header + (try frameBytes(tokenCreateRequest())))
        try await client.waitUntilClosed(within: 5)
        try await coordinator.log.waitForLine(within: 5, "the refused oversized frame") {
            $0.contains("closed a control connection") && $0.contains("frameTooLarge") && $0.contains("65537")
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
        #expect(client.received.withLockedValue { $0 }.isEmpty, "no reply to anything in the connection")
    }

    @Test func aTruncatedFrame_isNotActedOn() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let client = try await RawTLSClient(
            port: coordinator.port,
            credentials: coordinator.operatorCredentials,
            trust: .certificate(coordinator.authority.certificate)
        )
        let frame = try frameBytes(tokenCreateRequest())
        try await client.write(Array(frame.dropLast()))
        await client.close()
        try await coordinator.log.waitForLine(within: 5, "the truncated frame") {
            $0.contains("closed a control connection") && $0.contains("truncatedFrame")
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
    }

    @Test(arguments: [
        ("random bytes", (0..<256).map { UInt8(truncatingIfNeeded: $0 &* 167 &+ 13) }, "frameTooLarge"),
        ("a frame of 0xFF", [0, 0, 0, 16] + [UInt8](repeating: 0xFF, count: 16), "undecodableFrame"),
        ("an empty frame", [0, 0, 0, 0], "zeroLengthFrame"),
    ])
    func garbageAfterTheHandshake_closesTheConnection(label: String, bytes: [UInt8], code: String) async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let client = try await RawTLSClient(
            port: coordinator.port,
            credentials: coordinator.operatorCredentials,
            trust: .certificate(coordinator.authority.certificate)
        )
        try await client.write(bytes + (try frameBytes(tokenCreateRequest())))
        try await client.waitUntilClosed(within: 5)
        try await coordinator.log.waitForLine(within: 5, "the refused \(label)") {
            $0.contains("closed a control connection") && $0.contains(code)
        }
        #expect(try coordinator.service.state.tokens().isEmpty)
    }

    /// A connection without a client certificate that finishes its TLS handshake and then says
    /// nothing holds an unauthenticated slot only until the join deadline; one with a certificate
    /// is not closed by it.
    @Test func anIdleConnectionWithoutACertificate_isClosedAtTheJoinDeadline_andAnAuthenticatedOneIsNot() async throws {
        let coordinator = try await TestCoordinator { $0.joinTimeoutSeconds = 0.5 }
        defer { Task { await coordinator.stop() } }
        let trust = PeerVerifier.Trust.certificate(coordinator.authority.certificate)
        let anonymous = try await RawTLSClient(port: coordinator.port, credentials: nil, trust: trust)
        let started = ContinuousClock.now
        try await anonymous.waitUntilClosed(within: 5)
        #expect(ContinuousClock.now - started >= .milliseconds(400), "closed at the deadline, not at once")
        // An operator's session outlives the join deadline: a second anonymous connection, opened
        // after it, is closed at its deadline, and the session is still answered.
        let reply = try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
            .withConnection { session in
                let later = try await RawTLSClient(port: coordinator.port, credentials: nil, trust: trust)
                try await later.waitUntilClosed(within: 5)
                return try await session.request(tokenCreateRequest())
            }
        #expect(!reply.adminReply.tokenCreate.token.isEmpty)
    }
}
