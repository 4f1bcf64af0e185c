import RingmasterSecurity
import RingmasterWire
import Testing

@testable import Coordinator

@Suite("Access policy")
struct AccessPolicyTests {
    static func envelope(_ build: (inout Envelope) -> Void) -> Envelope {
        var envelope = Envelope()
        build(&envelope)
        return envelope
    }

    static let join = envelope { $0.joinBegin = .init() }
    static let joinRequest = envelope { $0.joinRequest = .init() }
    static let hello = envelope { $0.agentHello = .init() }
    static let heartbeat = envelope { $0.heartbeat = .init() }
    static let renew = envelope { $0.renewRequest = .init() }
    static let admin = envelope { $0.adminRequest = .with { $0.nodeList = .init() } }
    static let assignment = envelope { $0.assignment = .init() }

    @Test func withoutACertificate_onlyJoinMessagesAreAllowed() {
        #expect(AccessPolicy.decide(role: nil, envelope: Self.join) == .allow)
        #expect(AccessPolicy.decide(role: nil, envelope: Self.joinRequest) == .allow)
        for envelope in [Self.hello, Self.heartbeat, Self.renew, Self.admin, Self.assignment] {
            guard case .refuse(let reason) = AccessPolicy.decide(role: nil, envelope: envelope) else {
                Issue.record("\(envelope.kind) allowed without a certificate")
                continue
            }
            #expect(reason.contains(envelope.kind))
        }
    }

    @Test func agents_mayRunSessions_butNotAdminRequestsOrJoins() {
        for envelope in [Self.hello, Self.heartbeat, Self.renew] {
            #expect(AccessPolicy.decide(role: .agent, envelope: envelope) == .allow, "\(envelope.kind)")
        }
        #expect(
            AccessPolicy.decide(role: .agent, envelope: Self.admin)
                == .refuse("admin_request needs an operator certificate, not an agent certificate")
        )
        #expect(AccessPolicy.decide(role: .agent, envelope: Self.join) != .allow)
    }

    @Test func operators_mayMakeAdminRequests_butNotPoseAsAgents() {
        #expect(AccessPolicy.decide(role: .operator, envelope: Self.admin) == .allow)
        #expect(AccessPolicy.decide(role: .operator, envelope: Self.hello) != .allow)
        #expect(AccessPolicy.decide(role: .operator, envelope: Self.heartbeat) != .allow)
    }

    @Test(arguments: [PeerIdentity.Role?.none, .agent, .operator, .coordinator])
    func coordinatorOnlyMessages_andEmptyEnvelopes_areRefusedFromEveryone(role: PeerIdentity.Role?) {
        #expect(
            AccessPolicy.decide(role: role, envelope: Self.assignment)
                == .refuse("assignment is sent only by the coordinator"))
        #expect(AccessPolicy.decide(role: role, envelope: Envelope()) != .allow)
    }
}

@Suite("Join exchange")
struct JoinExchangeTests {
    @Test func beginThenRequest_forTheSameTokenAndName_returnsTheNonce() throws {
        var exchange = JoinExchange()
        let nonce: [UInt8] = [1, 2, 3]
        #expect(try exchange.begin(tokenID: "t", nodeName: "n", nonce: nonce).get() == nonce)
        #expect(try exchange.request(tokenID: "t", nodeName: "n").get() == nonce)
        #expect(exchange.state == .finished)
    }

    @Test func requestWithoutBegin_isRefused() {
        var exchange = JoinExchange()
        #expect(throws: JoinRefusal.self) { try exchange.request(tokenID: "t", nodeName: "n").get() }
    }

    @Test func requestForAnotherTokenOrName_isRefused() {
        var byToken = JoinExchange()
        _ = byToken.begin(tokenID: "t", nodeName: "n", nonce: [1])
        #expect(throws: JoinRefusal.self) { try byToken.request(tokenID: "other", nodeName: "n").get() }
        var byName = JoinExchange()
        _ = byName.begin(tokenID: "t", nodeName: "n", nonce: [1])
        #expect(throws: JoinRefusal.self) { try byName.request(tokenID: "t", nodeName: "other").get() }
    }

    @Test func aSecondBeginOrRequest_isRefused() {
        var exchange = JoinExchange()
        _ = exchange.begin(tokenID: "t", nodeName: "n", nonce: [1])
        #expect(throws: JoinRefusal.self) { try exchange.begin(tokenID: "t", nodeName: "n", nonce: [2]).get() }
        #expect(throws: JoinRefusal.self) { try exchange.request(tokenID: "t", nodeName: "n").get() }
    }
}
