import RingmasterSecurity
import RingmasterWire

/// Which peers may send which messages to the coordinator.
///
/// The peer's role comes from its verified certificate (nil: it presented none). A connection
/// without a certificate may only join; agents may run sessions; operators may make admin
/// requests. Messages only the coordinator sends are refused from anyone. Decided before a
/// message is handled, so a refused message is never acted on.
public enum AccessPolicy {
    /// The decision for one message.
    public enum Decision: Sendable, Hashable {
        /// Handle the message.
        case allow
        /// Refuse it and close the connection, for this operator-facing reason.
        case refuse(String)
    }

    /// Decides whether a peer with `role` may send `envelope`.
    public static func decide(role: PeerIdentity.Role?, envelope: Envelope) -> Decision {
        guard let body = envelope.body else {
            return .refuse("an Envelope with no message")
        }
        let allowed: Set<PeerIdentity.Role?>
        switch body {
        case .joinBegin, .joinRequest:
            allowed = [nil]
        case .agentHello, .renewRequest, .heartbeat, .stepReport, .leave, .shardReady, .generationFailed:
            allowed = [.agent]
        case .adminRequest:
            allowed = [.operator]
        case .joinChallenge, .joinReply, .helloReply, .renewReply, .heartbeatAck, .assignment, .drain, .abort,
            .cursorUpdate,
            .checkpointCommitted, .adminReply, .error:
            allowed = []
        }
        if allowed.contains(role) {
            return .allow
        }
        return .refuse(self.reason(role: role, kind: envelope.kind, allowed: allowed))
    }

    static func reason(role: PeerIdentity.Role?, kind: String, allowed: Set<PeerIdentity.Role?>) -> String {
        if allowed.isEmpty {
            return "\(kind) is sent only by the coordinator"
        }
        if allowed == [nil] {
            return "\(kind) is for joining; this connection already has a certificate"
        }
        let needed = allowed.compactMap { $0?.rawValue }.sorted().joined(separator: " or ")
        guard let role else {
            return "\(kind) needs a client certificate (\(needed)); connections without one may only join"
        }
        return "\(kind) needs an \(needed) certificate, not an \(role.rawValue) certificate"
    }
}

/// The order of a join on one anonymous connection: `JoinBegin`, then `JoinRequest` answering
/// the challenge, then the connection ends. A value with no I/O; the service feeds it messages.
public struct JoinExchange: Sendable {
    /// Where the exchange stands.
    public enum State: Sendable, Hashable {
        /// Waiting for `JoinBegin`.
        case awaitingBegin
        /// A challenge was sent for this token, node name and nonce.
        case challenged(tokenID: String, nodeName: String, nonce: [UInt8])
        /// A certificate was issued (or the join failed); nothing more is accepted.
        case finished
    }

    /// Where the exchange stands.
    public private(set) var state: State = .awaitingBegin

    /// Makes an exchange waiting for `JoinBegin`.
    public init() {}

    /// `JoinBegin` arrived; returns the challenge nonce to send, or a reason to refuse.
    public mutating func begin(tokenID: String, nodeName: String, nonce: [UInt8]) -> Result<[UInt8], JoinRefusal> {
        switch self.state {
        case .awaitingBegin:
            self.state = .challenged(tokenID: tokenID, nodeName: nodeName, nonce: nonce)
            return .success(nonce)
        case .challenged, .finished:
            self.state = .finished
            return .failure(JoinRefusal("join_begin arrived twice on one connection"))
        }
    }

    /// `JoinRequest` arrived; returns the nonce it must prove, or a reason to refuse.
    public mutating func request(tokenID: String, nodeName: String) -> Result<[UInt8], JoinRefusal> {
        switch self.state {
        case .awaitingBegin:
            self.state = .finished
            return .failure(JoinRefusal("join_request arrived before join_begin; no challenge was issued"))
        case .challenged(let challengedToken, let challengedName, let nonce):
            self.state = .finished
            guard challengedToken == tokenID, challengedName == nodeName else {
                return .failure(JoinRefusal("join_request names a different token or node than join_begin did"))
            }
            return .success(nonce)
        case .finished:
            return .failure(JoinRefusal("this connection's join already ended; connect again to retry"))
        }
    }
}

/// Why a join's message order was refused.
public struct JoinRefusal: Error, Sendable, Hashable {
    /// Operator-facing reason.
    public var reason: String
    init(_ reason: String) { self.reason = reason }
}
