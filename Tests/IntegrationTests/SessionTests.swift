import Agent
import ControlPlane
import Coordinator
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Testing
import X509

@Suite("Agent sessions", .timeLimit(.minutes(2)))
struct SessionTests {
    func agent(
        _ coordinator: TestCoordinator,
        _ name: String,
        log: LineLog,
        token: JoinToken? = nil,
        pin: CAPin? = nil,
        now: @escaping @Sendable () -> Date = { Date() }
    ) -> AgentService {
        var configuration = AgentConfiguration(
            coordinator: coordinator.address,
            dataDirectory: "\(coordinator.directory.path)/\(name)",
            nodeName: name
        )
        configuration.joinToken = token
        configuration.caPin = pin
        configuration.reconnectInitialDelaySeconds = 0.05
        return AgentService(configuration: configuration, logger: log.logger(label: name), now: now)
    }

    @Test func anAgentWhoseCertificateExpiredOffline_saysSo_andJoinsAgainWithANewToken() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let log = LineLog(name: "agent log")
        let (first, pin) = try await coordinator.createToken()
        let original = try await self.agent(coordinator, "node-a", log: log, token: first, pin: pin).credentials()
        let twoDaysLater: @Sendable () -> Date = { Date().addingTimeInterval(2 * 86400) }

        await #expect {
            try await self.agent(coordinator, "node-a", log: log, now: twoDaysLater).credentials()
        } throws: { error in
            (error as? AgentError)?.code == .certificateExpired && "\(error)".contains("join again with a new token")
        }
        let (second, _) = try await coordinator.createToken()
        let rejoined = try await self.agent(coordinator, "node-a", log: log, token: second, pin: pin, now: twoDaysLater)
            .credentials()
        #expect(rejoined.certificate.serialNumber != original.certificate.serialNumber)
        #expect(try coordinator.service.state.nodes().map(\.id) == ["node-a"])
        #expect(try coordinator.service.state.tokens().map(\.redeemedBy) == ["node-a", "node-a"])
    }

    @Test func anAgent_renewsItsCertificate_overMutualTLS_beforeItExpires() async throws {
        // Certificates live 3 s here, so renewal (at two thirds of the lifetime) comes within the test.
        let coordinator = try await TestCoordinator {
            $0.agentCertificateLifetimeSeconds = 3
            $0.heartbeatIntervalMilliseconds = 100
        }
        defer { Task { await coordinator.stop() } }
        let (token, pin) = try await coordinator.createToken()
        let log = LineLog(name: "agent log")
        let service = self.agent(coordinator, "node-a", log: log, token: token, pin: pin)
        let running = Task { try await service.run() }
        defer { running.cancel() }

        try await log.waitForLine(within: 10, "its first session") { $0.contains("connected to the coordinator") }
        let first = try #require(try Credentials.load(directory: "\(coordinator.directory.path)/node-a"))
        try await log.waitForLine(within: 10, "a renewal") { $0.contains("renewed the agent certificate") }
        try await coordinator.log.waitForLine(within: 5, "the renewal") {
            $0.contains("renewed an agent certificate") && $0.contains("node-a")
        }
        let renewed = try #require(try Credentials.load(directory: "\(coordinator.directory.path)/node-a"))
        #expect(renewed.certificate.serialNumber != first.certificate.serialNumber)
        #expect(renewed.certificate.notValidAfter > first.certificate.notValidAfter)
        #expect(renewed.privateKey.publicKey != first.privateKey.publicKey, "a fresh key with every renewal")
        #expect(try renewed.identity == (try PeerIdentity(role: .agent, name: "node-a")))
        // The session goes on past the first certificate's expiry on renewed certificates.
        let expiry = first.certificate.notValidAfter.timeIntervalSinceNow
        try await log.waitForLine(within: 15, "a third certificate", occurrence: 2) {
            $0.contains("renewed the agent certificate")
        }
        #expect(expiry < 3.5)
        #expect(try coordinator.service.state.nodes().map(\.id) == ["node-a"])
    }

    @Test func tokenSecretsAndPrivateKeys_neverReachALogLine_evenWhenAJoinFails() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        let agentLog = LineLog(name: "agent log")
        let (token, pin) = try await coordinator.createToken()
        let forged = JoinToken(id: token.id, secret: JoinToken.generate().secret)

        // A failed join (wrong secret), a good one, a reuse, and a session.
        await #expect(throws: (any Error).self) {
            try await self.agent(coordinator, "node-x", log: agentLog).join(token: forged, pin: pin)
        }
        let service = self.agent(coordinator, "node-a", log: agentLog, token: token, pin: pin)
        let running = Task { try await service.run() }
        defer { running.cancel() }
        try await agentLog.waitForLine(within: 10, "a session") { $0.contains("connected to the coordinator") }
        await #expect(throws: (any Error).self) {
            try await self.agent(coordinator, "node-b", log: agentLog).join(token: token, pin: pin)
        }
        try await coordinator.log.waitForLine(within: 5, "the refused reuse") { $0.contains("already used") }

        let logs = (coordinator.log.lines + agentLog.lines).joined(separator: "\n")
        #expect(logs.contains(token.id), "the logs talk about the token, by its id")
        for secret in [token, forged].map({ String($0.encoded.split(separator: ".").last!) }) {
            #expect(!logs.contains(secret), "a token secret is in the logs")
        }
        for keyFile in ["node-a/key.pem", "state/ca.key"] {
            let lines = try keyBodyLines("\(coordinator.directory.path)/\(keyFile)")
            #expect(!lines.isEmpty)
            for line in lines {
                #expect(!logs.contains(line), "\(keyFile) material is in the logs")
            }
        }
    }
}
