import ControlPlane
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import RingmasterSecurity
import RingmasterWire
import X509

/// What a standby coordinator serves on its control address while another leads: it completes
/// TLS as every coordinator of the set does (a certificate from the shared CA, so agents' pins
/// hold), reads the first message of each connection, answers `NOT_LEADER` naming the leader's
/// address when it knows it, and closes. Agents and the CLI then go to the leader.
final class StandbyListener: Sendable {
    let configuration: CoordinatorConfiguration
    let context: NIOSSLContext
    let caCertificate: Certificate
    /// The leader's control address, as the election last saw it.
    let leader: @Sendable () -> String?
    let logger: Logger
    let onListening: @Sendable (Int) -> Void

    init(
        configuration: CoordinatorConfiguration, context: NIOSSLContext, caCertificate: Certificate,
        leader: @escaping @Sendable () -> String?, logger: Logger, onListening: @escaping @Sendable (Int) -> Void
    ) {
        self.configuration = configuration
        self.context = context
        self.caCertificate = caCertificate
        self.leader = leader
        self.logger = logger
        self.onListening = onListening
    }

    /// Serves until cancelled.
    func run() async throws {
        let verifier = PeerVerifier(trust: .certificate(self.caCertificate), allowedRoles: [.agent, .operator])
        let context = self.context
        let maximumFrameBytes = self.configuration.maximumFrameBytes
        let accepted = AcceptedChannels()
        let server: NIOAsyncChannel<ControlPipeline.Connection, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: self.configuration.listenHost, port: self.configuration.listenPort) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        accepted.register(channel)
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLServerHandler(
                                context: context, customVerificationCallback: verifier.callback { _ in })
                        )
                        return try ControlPipeline.wrap(channel: channel, maximumFrameBytes: maximumFrameBytes).0
                    }
                }
        } catch {
            throw CoordinatorError(
                .listen,
                "could not listen on \(self.configuration.listenHost):\(self.configuration.listenPort) as a standby",
                underlying: error)
        }
        self.onListening(server.channel.localAddress?.port ?? self.configuration.listenPort)
        self.logger.info("standing by", metadata: ["leader": "\(self.leader() ?? "not known yet")"])
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                // Elected or stopped: connections accepted and not yet handed over are closed, so
                // that their clients move on at once (see `AcceptedChannels`).
                defer { accepted.closeAll() }
                for try await connection in inbound {
                    group.addTask { await self.refer(connection) }
                }
            }
        }
    }

    /// Answers the connection's first message with the leader's address, then closes it.
    func refer(_ connection: ControlPipeline.Connection) async {
        let seconds = self.configuration.handshakeTimeoutSeconds
        try? await withDeadline(seconds: seconds, waitingFor: "a first message on a standby's connection") {
            try await connection.executeThenClose { inbound, outbound in
                for try await envelope in inbound {
                    try await outbound.write(self.referral(requestID: envelope.requestID))
                    return
                }
            }
        }
        try? await connection.channel.close()
    }

    /// `NOT_LEADER`, with the leader's address when known.
    func referral(requestID: UInt64) -> Envelope {
        let leader = self.leader()
        var envelope = Envelope.error(
            .notLeader,
            leader.map { "this coordinator is a standby; the leader is at \($0)" }
                ?? "this coordinator is a standby and no coordinator leads yet; try again in a moment",
            requestID: requestID)
        envelope.error.leader = leader ?? ""
        return envelope
    }
}
