/// The one message type that travels in a control frame (generated from `proto/ringmaster.proto`).
public typealias Envelope = Ringmaster_V1_Envelope

extension Envelope {
    /// A short name for the message's body, for log lines and metrics (never its contents).
    public var kind: String {
        guard let body = self.body else { return "empty" }
        switch body {
        case .joinBegin: return "join_begin"
        case .joinChallenge: return "join_challenge"
        case .joinRequest: return "join_request"
        case .joinReply: return "join_reply"
        case .agentHello: return "agent_hello"
        case .helloReply: return "hello_reply"
        case .renewRequest: return "renew_request"
        case .renewReply: return "renew_reply"
        case .heartbeat: return "heartbeat"
        case .heartbeatAck: return "heartbeat_ack"
        case .assignment: return "assignment"
        case .stepReport: return "step_report"
        case .leave: return "leave"
        case .drain: return "drain"
        case .abort: return "abort"
        case .cursorUpdate: return "cursor_update"
        case .generationFailed: return "generation_failed"
        case .shardReady: return "shard_ready"
        case .checkpointCommitted: return "checkpoint_committed"
        case .adminRequest: return "admin_request"
        case .adminReply: return "admin_reply"
        case .error: return "error"
        }
    }

    /// An envelope carrying an error reply.
    public static func error(
        _ code: Ringmaster_V1_Error.Code,
        _ message: String,
        requestID: UInt64 = 0
    ) -> Envelope {
        var envelope = Envelope()
        envelope.requestID = requestID
        envelope.error = .with {
            $0.code = code
            $0.message = message
        }
        return envelope
    }
}
