import ControlPlane
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import RingmasterSecurity
import RingmasterWire
import ServiceLifecycle
import Synchronization
import X509

/// Settings of a coordinator.
public struct CoordinatorConfiguration: Sendable {
    /// Address the control listener binds.
    public var listenHost: String = "127.0.0.1"
    /// Port the control listener binds (0: any free port, reported through `onListening`).
    public var listenPort: Int = 7600
    /// Directory of the CA and the state database (created 0700).
    public var stateDirectory: String
    /// DNS names the coordinator's server certificate carries.
    public var serverDNSNames: [String] = ["localhost"]
    /// IP addresses the coordinator's server certificate carries.
    public var serverIPAddresses: [String] = ["127.0.0.1", "::1"]
    /// Lifetime of the certificates issued to agents.
    public var agentCertificateLifetimeSeconds: Double = 24 * 3600
    /// Largest control frame accepted.
    public var maximumFrameBytes: Int = FrameLimits.defaultMaximumPayloadBytes
    /// How often agents heartbeat.
    public var heartbeatIntervalMilliseconds: UInt32 = 500
    /// How long a node's lease lasts without a heartbeat.
    public var leaseMilliseconds: UInt32 = 2000
    /// Time a new connection has to finish its TLS handshake.
    public var handshakeTimeoutSeconds: Double = 10

    /// Settings with defaults and a state directory.
    public init(stateDirectory: String) {
        self.stateDirectory = stateDirectory
    }
}

/// The coordinator as a service: a mutual-TLS control listener in front of the CA and the
/// state database.
///
/// Each connection is served by its own task: the TLS handshake (client certificates checked by
/// a `PeerVerifier`), then a loop over the connection's `Envelope`s. Every message passes the
/// `AccessPolicy` before it is handled; a refused message, a bad frame or a failed handshake is
/// logged with its reason and closes the connection without being acted on.
public final class CoordinatorService: Service, Sendable {
    let configuration: CoordinatorConfiguration
    let logger: Logger
    let now: @Sendable () -> Date
    let onListening: @Sendable (Int) -> Void
    let store: StateStore
    let authority: CertificateAuthority
    let serverContext: NIOSSLContext
    let sessions = Mutex<[String: Int]>([:])

    /// Loads or creates the CA and the state database. Starts nothing: `run` does.
    public init(
        configuration: CoordinatorConfiguration,
        logger: Logger,
        now: @escaping @Sendable () -> Date = { Date() },
        onListening: @escaping @Sendable (Int) -> Void = { _ in }
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.now = now
        self.onListening = onListening
        let current = now()
        self.authority = try CertificateAuthority.loadOrCreate(directory: configuration.stateDirectory, now: current)
        self.store = try StateStore(path: "\(configuration.stateDirectory)/state.sqlite")
        let key = KeyAndRequest.makeKey()
        let certificate = try self.authority.issue(
            publicKey: key.publicKey,
            identity: try PeerIdentity(role: .coordinator, name: "coordinator"),
            notBefore: current.addingTimeInterval(-300),
            notAfter: current.addingTimeInterval(365 * 24 * 3600),
            dnsNames: configuration.serverDNSNames,
            ipAddresses: configuration.serverIPAddresses
        )
        self.serverContext = try ControlTLS.serverContext(
            credentials: try Credentials(privateKey: key, certificate: certificate, caCertificate: self.authority.certificate)
        )
    }

    /// The CA's pin, which joining agents check.
    public var caPin: CAPin { self.authority.pin }

    /// The state database (for the CLI and tests on the same host).
    public var state: StateStore { self.store }

    // MARK: - Listening

    /// Serves control connections until graceful shutdown (SIGTERM) or cancellation.
    public func run() async throws {
        let context = self.serverContext
        let verifier = PeerVerifier(
            trust: .certificate(self.authority.certificate),
            allowedRoles: [.agent, .operator],
            now: self.now
        )
        let maximumFrameBytes = self.configuration.maximumFrameBytes
        let logger = self.logger
        let server: NIOAsyncChannel<(ControlPipeline.Connection, EventLoopFuture<Void>), Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: self.configuration.listenHost, port: self.configuration.listenPort) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let peer = channel.remoteAddress?.description ?? "unknown"
                        let tls = NIOSSLServerHandler(
                            context: context,
                            customVerificationCallback: verifier.callback { error in
                                logger.warning(
                                    "refused a client certificate",
                                    metadata: [LogKey.peer: "\(peer)", LogKey.reason: "\(error.message)"]
                                )
                            }
                        )
                        try channel.pipeline.syncOperations.addHandler(tls)
                        return try ControlPipeline.wrap(channel: channel, maximumFrameBytes: maximumFrameBytes)
                    }
                }
        } catch {
            throw CoordinatorError(
                .listen,
                "could not listen on \(self.configuration.listenHost):\(self.configuration.listenPort); is another coordinator running?",
                underlying: error
            )
        }
        let port = server.channel.localAddress?.port ?? self.configuration.listenPort
        self.logger.info(
            "coordinator listening",
            metadata: [
                "address": "\(self.configuration.listenHost):\(port)",
                "ca_pin": "\(self.caPin)",
                "state_directory": "\(self.configuration.stateDirectory)",
            ]
        )
        self.onListening(port)
        do {
            // Graceful shutdown cancels the listener and every connection's task.
            try await cancelWhenGracefulShutdown {
                try await server.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await (connection, handshake) in inbound {
                            group.addTask { await self.serve(connection, handshake: handshake) }
                        }
                    }
                }
            }
        } catch is CancellationError {
            // The orderly way to stop.
        }
        self.logger.info("coordinator stopped")
    }

    // MARK: - One connection

    func serve(_ connection: ControlPipeline.Connection, handshake: EventLoopFuture<Void>) async {
        let channel = connection.channel
        var logger = self.logger
        logger[metadataKey: LogKey.peer] = "\(channel.remoteAddress?.description ?? "unknown")"
        let peer: (identity: PeerIdentity, certificate: Certificate)?
        do {
            try await withDeadline(seconds: self.configuration.handshakeTimeoutSeconds, waitingFor: "the TLS handshake") {
                try await handshake.get()
            }
            peer = try await Self.peerCertificate(of: channel)
        } catch {
            logger.warning("closed a connection before its TLS handshake completed", metadata: [LogKey.reason: "\(error)"])
            try? await channel.close()
            return
        }
        let identity = peer?.identity
        if let identity { logger[metadataKey: LogKey.identity] = "\(identity)" }
        let nodeID = identity?.role == .agent ? identity?.name : nil
        if let nodeID { self.sessionOpened(nodeID) }
        defer { if let nodeID { self.sessionClosed(nodeID) } }

        do {
            try await connection.executeThenClose { inbound, outbound in
                var join = JoinExchange()
                for try await envelope in inbound {
                    if case .refuse(let reason) = AccessPolicy.decide(role: identity?.role, envelope: envelope) {
                        logger.warning(
                            "refused a control message",
                            metadata: [LogKey.message: "\(envelope.kind)", LogKey.reason: "\(reason)"]
                        )
                        try await outbound.write(.error(.permissionDenied, reason, requestID: envelope.requestID))
                        return
                    }
                    let outcome = self.handle(envelope, from: peer, join: &join, logger: logger)
                    for reply in outcome.replies {
                        try await outbound.write(reply)
                    }
                    if outcome.close { return }
                }
            }
        } catch {
            logger.warning("closed a control connection", metadata: [LogKey.reason: "\(error)"])
        }
    }

    static func peerCertificate(of channel: any Channel) async throws -> (identity: PeerIdentity, certificate: Certificate)? {
        let certificate = try await channel.pipeline.handler(type: NIOSSLServerHandler.self).flatMapThrowing {
            try $0.peerCertificate
        }.get()
        guard let certificate else { return nil }
        let parsed = try Certificate(derEncoded: try certificate.toDERBytes())
        return (try PeerIdentity(certificate: parsed), parsed)
    }

    // MARK: - Messages

    /// What to send back, and whether to close the connection after.
    struct Outcome {
        var replies: [Envelope]
        var close = false
    }

    func handle(
        _ envelope: Envelope,
        from peer: (identity: PeerIdentity, certificate: Certificate)?,
        join: inout JoinExchange,
        logger: Logger
    ) -> Outcome {
        let requestID = envelope.requestID
        let identity = peer?.identity
        switch envelope.body {
        case .joinBegin(let begin):
            return self.joinBegin(begin, requestID: requestID, join: &join, logger: logger)
        case .joinRequest(let request):
            return self.joinRequest(request, requestID: requestID, join: &join, logger: logger)
        case .agentHello(let hello):
            guard let identity else { return Outcome(replies: [], close: true) }
            logger.info(
                "agent session started",
                metadata: [LogKey.node: "\(identity.name)", "data_plane": "\(hello.dataPlaneAddresses.joined(separator: ","))"]
            )
            var reply = Envelope()
            reply.requestID = requestID
            reply.helloReply = .with {
                $0.nodeID = identity.name
                $0.heartbeatIntervalMs = self.configuration.heartbeatIntervalMilliseconds
                $0.leaseMs = self.configuration.leaseMilliseconds
                $0.certificateNotAfterUnix = Int64(peer?.certificate.notValidAfter.timeIntervalSince1970 ?? 0)
            }
            return Outcome(replies: [reply])
        case .heartbeat(let heartbeat):
            var reply = Envelope()
            reply.requestID = requestID
            reply.heartbeatAck = .with {
                $0.jobID = heartbeat.jobID
                $0.generation = heartbeat.generation
            }
            return Outcome(replies: [reply])
        case .renewRequest(let renew):
            guard let identity else { return Outcome(replies: [], close: true) }
            return self.renew(renew, identity: identity, requestID: requestID, logger: logger)
        case .adminRequest(let admin):
            return self.admin(admin, requestID: requestID, logger: logger)
        case .stepReport, .leave, .shardReady:
            return Outcome(replies: [
                .error(.unsupported, "\(envelope.kind) is not handled by this coordinator version yet", requestID: requestID)
            ])
        case .joinChallenge, .joinReply, .helloReply, .renewReply, .heartbeatAck, .assignment, .drain, .abort,
            .checkpointCommitted, .adminReply, .error, .none:
            // The access policy refuses these before they get here.
            return Outcome(replies: [], close: true)
        }
    }

    func joinBegin(_ begin: Ringmaster_V1_JoinBegin, requestID: UInt64, join: inout JoinExchange, logger: Logger) -> Outcome {
        var logger = logger
        logger[metadataKey: LogKey.tokenID] = "\(begin.tokenID)"
        logger[metadataKey: LogKey.node] = "\(begin.nodeName)"
        do {
            try PeerIdentity.validate(name: begin.nodeName)
            _ = try self.store.usableToken(id: begin.tokenID, now: self.now())
        } catch {
            return self.refuseJoin(error, requestID: requestID, logger: logger)
        }
        switch join.begin(tokenID: begin.tokenID, nodeName: begin.nodeName, nonce: JoinProof.makeNonce()) {
        case .success(let nonce):
            var reply = Envelope()
            reply.requestID = requestID
            reply.joinChallenge = .with { $0.nonce = Data(nonce) }
            return Outcome(replies: [reply])
        case .failure(let refusal):
            return self.refuseJoin(refusal, requestID: requestID, logger: logger)
        }
    }

    func joinRequest(_ request: Ringmaster_V1_JoinRequest, requestID: UInt64, join: inout JoinExchange, logger: Logger) -> Outcome {
        var logger = logger
        logger[metadataKey: LogKey.tokenID] = "\(request.tokenID)"
        logger[metadataKey: LogKey.node] = "\(request.nodeName)"
        do {
            let nonce = try join.request(tokenID: request.tokenID, nodeName: request.nodeName).get()
            let now = self.now()
            let token = try self.store.usableToken(id: request.tokenID, now: now)
            let csrDER = Array(request.csrDer)
            guard
                JoinProof.isValid(
                    Array(request.proof),
                    secret: token.secret,
                    nonce: nonce,
                    nodeName: request.nodeName,
                    csrDER: csrDER
                )
            else {
                throw SecurityError(
                    .invalidToken,
                    "the proof for join token \(request.tokenID) does not verify: the agent does not hold this token's secret"
                )
            }
            let identity = try PeerIdentity(role: .agent, name: request.nodeName)
            let certificate = try self.authority.issue(
                csrDER: csrDER,
                identity: identity,
                notBefore: now.addingTimeInterval(-self.clockSkewAllowance),
                notAfter: now.addingTimeInterval(self.configuration.agentCertificateLifetimeSeconds)
            )
            try self.store.redeem(
                tokenID: request.tokenID,
                node: identity.name,
                certificateNotAfter: certificate.notValidAfter,
                now: now
            )
            logger.info("agent joined", metadata: ["certificate_not_after": "\(certificate.notValidAfter)"])
            var reply = Envelope()
            reply.requestID = requestID
            reply.joinReply = .with {
                $0.nodeID = identity.name
                $0.certificateDer = Data((try? PEM.der(certificate)) ?? [])
                $0.caCertificateDer = Data((try? PEM.der(self.authority.certificate)) ?? [])
            }
            return Outcome(replies: [reply], close: true)
        } catch {
            return self.refuseJoin(error, requestID: requestID, logger: logger)
        }
    }

    func refuseJoin(_ error: any Error, requestID: UInt64, logger: Logger) -> Outcome {
        let message: String
        switch error {
        case let error as SecurityError: message = error.message
        case let error as JoinRefusal: message = error.reason
        default: message = "the join could not be completed: \(error)"
        }
        logger.warning("refused a join", metadata: [LogKey.reason: "\(message)"])
        return Outcome(replies: [.error(.invalidToken, message, requestID: requestID)], close: true)
    }

    func renew(_ renew: Ringmaster_V1_RenewRequest, identity: PeerIdentity, requestID: UInt64, logger: Logger) -> Outcome {
        let now = self.now()
        do {
            let certificate = try self.authority.issue(
                csrDER: Array(renew.csrDer),
                identity: identity,
                notBefore: now.addingTimeInterval(-self.clockSkewAllowance),
                notAfter: now.addingTimeInterval(self.configuration.agentCertificateLifetimeSeconds)
            )
            try self.store.renewed(node: identity.name, certificateNotAfter: certificate.notValidAfter, now: now)
            logger.info("renewed an agent certificate", metadata: ["certificate_not_after": "\(certificate.notValidAfter)"])
            var reply = Envelope()
            reply.requestID = requestID
            reply.renewReply = .with { $0.certificateDer = Data((try? PEM.der(certificate)) ?? []) }
            return Outcome(replies: [reply])
        } catch {
            logger.warning("refused a certificate renewal", metadata: [LogKey.reason: "\(error)"])
            return Outcome(replies: [.error(.invalidRequest, "renewal refused: \(error)", requestID: requestID)])
        }
    }

    func admin(_ admin: Ringmaster_V1_AdminRequest, requestID: UInt64, logger: Logger) -> Outcome {
        var reply = Envelope()
        reply.requestID = requestID
        do {
            switch admin.request {
            case .tokenCreate(let create):
                let ttl = create.ttlSeconds == 0 ? 3600 : create.ttlSeconds
                let now = self.now()
                let token = JoinToken.generate()
                let expires = now.addingTimeInterval(Double(ttl))
                try self.store.add(token: token, expires: expires, now: now)
                logger.info("created a join token", metadata: [LogKey.tokenID: "\(token.id)", "expires": "\(expires)"])
                reply.adminReply = .with {
                    $0.tokenCreate = .with {
                        $0.token = token.encoded
                        $0.caPin = self.caPin.description
                        $0.expiresUnix = Int64(expires.timeIntervalSince1970)
                    }
                }
            case .nodeList:
                let connected = self.sessions.withLock { $0 }
                let nodes = try self.store.nodes()
                reply.adminReply = .with {
                    $0.nodeList = .with {
                        $0.nodes = nodes.map { node in
                            .with {
                                $0.nodeID = node.id
                                $0.connected = (connected[node.id] ?? 0) > 0
                                $0.state = $0.connected ? "connected" : "disconnected"
                                $0.joinedUnix = Int64(node.joined.timeIntervalSince1970)
                                $0.certificateNotAfterUnix = Int64(node.certificateNotAfter.timeIntervalSince1970)
                            }
                        }
                    }
                }
            case .none:
                return Outcome(replies: [.error(.invalidRequest, "an admin request with no request in it", requestID: requestID)])
            }
        } catch {
            logger.error("an admin request failed", metadata: [LogKey.error: "\(error)"])
            return Outcome(replies: [.error(.internal, "\(error)", requestID: requestID)])
        }
        return Outcome(replies: [reply])
    }

    /// How far back an issued certificate's validity starts, so that a peer whose clock is a
    /// little behind accepts it: a minute, or a twentieth of a (short, test) lifetime.
    var clockSkewAllowance: TimeInterval {
        min(60, self.configuration.agentCertificateLifetimeSeconds / 20)
    }

    // MARK: - Sessions

    func sessionOpened(_ node: String) {
        self.sessions.withLock { $0[node, default: 0] += 1 }
    }

    func sessionClosed(_ node: String) {
        self.sessions.withLock { sessions in
            sessions[node, default: 1] -= 1
            if sessions[node] == 0 { sessions[node] = nil }
        }
    }
}
