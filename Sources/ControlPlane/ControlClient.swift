import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RingmasterSecurity
import RingmasterWire

/// Opens TLS control connections to a coordinator, as an agent or the CLI.
///
/// The coordinator is checked by a `PeerVerifier` (a CA, or a pin when joining); when it is
/// refused, the error thrown is the verifier's, which says why, not TLS's generic alert.
public struct ControlClient: Sendable {
    /// Host and port of the coordinator.
    public var host: String
    /// The coordinator's control port.
    public var port: Int
    /// Client credentials for mutual TLS, or nil to connect anonymously (to join).
    public var credentials: Credentials?
    /// How the coordinator is recognised.
    public var serverTrust: PeerVerifier.Trust
    /// The largest frame accepted or sent.
    public var maximumFrameBytes: Int
    /// Time allowed to connect and finish the TLS handshake.
    public var connectTimeoutSeconds: Double
    /// How many times to try connecting and handshaking before giving up. A busy coordinator
    /// closes some unauthenticated connections under a flood (see the coordinator's
    /// `ConnectionBudget`); nothing has been sent yet then, so trying again is always safe. A
    /// coordinator this client does not trust is not tried again.
    public var connectAttempts: Int = 3

    /// Makes a client.
    public init(
        host: String,
        port: Int,
        credentials: Credentials?,
        serverTrust: PeerVerifier.Trust,
        maximumFrameBytes: Int = FrameLimits.defaultMaximumPayloadBytes,
        connectTimeoutSeconds: Double = 10
    ) {
        self.host = host
        self.port = port
        self.credentials = credentials
        self.serverTrust = serverTrust
        self.maximumFrameBytes = maximumFrameBytes
        self.connectTimeoutSeconds = connectTimeoutSeconds
    }

    /// The coordinators of a set, when there are several: `withConnection` goes to the one
    /// `addresses` says, follows a standby's referral to the leader, and moves to the next address
    /// when one cannot be reached (`host` and `port` are then not used).
    public var addresses: CoordinatorAddresses?

    /// A client that uses `credentials` and trusts their CA.
    public init(address: ControlAddress, credentials: Credentials) {
        self.init(
            host: address.host,
            port: address.port,
            credentials: credentials,
            serverTrust: .certificate(credentials.caCertificate)
        )
    }

    /// A client of whichever of `addresses` leads, with `credentials`, trusting their CA.
    public init(addresses: CoordinatorAddresses, credentials: Credentials) {
        self.init(address: addresses.current, credentials: credentials)
        self.addresses = addresses
    }

    /// Connects and completes the TLS handshake (trying up to `connectAttempts` times, 100 ms then
    /// 200 ms apart), then runs `body` with the connection and closes it.
    public func withConnection<Result: Sendable>(
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        _ body: @escaping @Sendable (ControlSession) async throws -> Result
    ) async throws -> Result {
        guard let addresses = self.addresses else { return try await self.withOneConnection(on: group, body) }
        // Each address once, and each referral: a set without a leader fails naming what each said.
        // A standby refuses the first request, so `body` has done nothing when it is run again.
        var failures: [String] = []
        for _ in 0..<(2 * addresses.all.count) {
            let address = addresses.current
            var client = self
            (client.host, client.port, client.addresses) = (address.host, address.port, nil)
            do {
                return try await client.withOneConnection(on: group, body)
            } catch let error as ControlClientError {
                switch error {
                case .connect:
                    failures.append("\(error)")
                    addresses.unreachable(address)
                case .notLeader(_, let leader):
                    failures.append("\(error)")
                    addresses.referred(to: leader, by: address)
                case .closed, .refused, .noLeader:
                    throw error
                }
            }
        }
        throw ControlClientError.noLeader(addresses: "\(addresses)", failures: failures)
    }

    func withOneConnection<Result: Sendable>(
        on group: any EventLoopGroup,
        _ body: @escaping @Sendable (ControlSession) async throws -> Result
    ) async throws -> Result {
        var attempt = 1
        while true {
            let connection: ControlPipeline.Connection
            do {
                connection = try await self.connect(on: group)
            } catch is ControlClientError where attempt < self.connectAttempts {
                try await Task.sleep(for: .milliseconds(100 << (attempt - 1)))
                attempt += 1
                continue
            }
            return try await connection.executeThenClose { inbound, outbound in
                let session = ControlSession(inbound: inbound, outbound: outbound, peer: "\(self.host):\(self.port)")
                return try await body(session)
            }
        }
    }

    /// One attempt to connect and complete the TLS handshake. A coordinator the verifier refuses
    /// throws the verifier's error (not retried); anything else, `ControlClientError.connect`.
    func connect(on group: any EventLoopGroup) async throws -> ControlPipeline.Connection {
        let refusal = NIOLockedValueBox<SecurityError?>(nil)
        let verifier = PeerVerifier(trust: self.serverTrust, allowedRoles: [.coordinator])
        let context = try ControlTLS.clientContext(credentials: self.credentials)
        let maximumFrameBytes = self.maximumFrameBytes
        let connection: ControlPipeline.Connection
        let handshake: EventLoopFuture<NIOSSLCertificate?>
        do {
            (connection, handshake) = try await ClientBootstrap(group: group)
                .connectTimeout(.milliseconds(Int64(self.connectTimeoutSeconds * 1000)))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: self.host, port: self.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let tls = try NIOSSLClientHandler(
                            context: context,
                            serverHostname: nil,
                            customVerificationCallback: verifier.callback { error in
                                refusal.withLockedValue { $0 = error }
                            }
                        )
                        try channel.pipeline.syncOperations.addHandler(tls)
                        return try ControlPipeline.wrap(channel: channel, maximumFrameBytes: maximumFrameBytes)
                    }
                }
        } catch {
            throw ControlClientError.connect(host: self.host, port: self.port, underlying: error)
        }
        do {
            // The handshake runs as soon as the channel is active; wait for it so a refused
            // coordinator fails here with the verifier's reason.
            try await withDeadline(
                seconds: self.connectTimeoutSeconds,
                waitingFor: "the TLS handshake with \(self.host):\(self.port)"
            ) {
                _ = try await handshake.get()
            }
        } catch {
            try? await connection.channel.close()
            if let refused = refusal.withLockedValue({ $0 }) { throw refused }
            throw ControlClientError.connect(host: self.host, port: self.port, underlying: error)
        }
        return connection
    }
}

/// A handshaken control connection: send envelopes, await replies with deadlines.
public final class ControlSession: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<Envelope>
    let iterator: IteratorBox
    /// The peer's address, for messages.
    public let peer: String
    let nextRequestID = NIOLockedValueBox<UInt64>(1)

    init(
        inbound: NIOAsyncChannelInboundStream<Envelope>, outbound: NIOAsyncChannelOutboundWriter<Envelope>, peer: String
    ) {
        self.outbound = outbound
        self.iterator = IteratorBox(inbound.makeAsyncIterator())
        self.peer = peer
    }

    /// Sends one envelope; a connection that has ended throws `closed`.
    public func send(_ envelope: Envelope) async throws {
        do {
            try await self.outbound.write(envelope)
        } catch let error as CancellationError {
            throw error
        } catch {
            throw ControlClientError.closed(peer: self.peer, waitingFor: "\(envelope.kind) to be sent (\(error))")
        }
    }

    /// Receives the next envelope with no deadline of its own, for a reader whose liveness is
    /// bounded elsewhere (a heartbeat lease that cancels it). Throws when the connection closes.
    public func next() async throws -> Envelope {
        try await Self.next(self.iterator, peer: self.peer, waitingFor: "the next message")
    }

    /// Receives the next envelope, or throws if the connection closes or `seconds` pass first.
    public func receive(within seconds: Double, waitingFor what: String) async throws -> Envelope {
        let iterator = self.iterator
        let peer = self.peer
        return try await withDeadline(seconds: seconds, waitingFor: "\(what) from \(peer)") {
            try await Self.next(iterator, peer: peer, waitingFor: what)
        }
    }

    /// The next envelope. A connection that ends, cleanly or not (a reset, a TLS stream cut short
    /// when the coordinator's process dies), throws `closed`, so that callers that move on to
    /// another coordinator see one error for it.
    static func next(_ iterator: IteratorBox, peer: String, waitingFor what: String) async throws -> Envelope {
        let envelope: Envelope?
        do {
            envelope = try await iterator.next()
        } catch let error as ControlClientError {
            throw error
        } catch let error as CancellationError {
            throw error
        } catch let error as WireError {
            // A frame that does not decode is the peer's fault, not the connection's end.
            throw error
        } catch {
            throw ControlClientError.closed(peer: peer, waitingFor: "\(what) (\(error))")
        }
        guard let envelope else { throw ControlClientError.closed(peer: peer, waitingFor: what) }
        return envelope
    }

    /// Sends `envelope` with a fresh request id and returns the reply; an `Error` reply is thrown.
    public func request(_ envelope: Envelope, within seconds: Double = 10) async throws -> Envelope {
        var envelope = envelope
        envelope.requestID = self.nextRequestID.withLockedValue { id in
            defer { id += 1 }
            return id
        }
        try await self.send(envelope)
        let reply = try await self.receive(within: seconds, waitingFor: "a reply to \(envelope.kind)")
        if case .error(let error) = reply.body {
            if error.code == .notLeader {
                throw ControlClientError.notLeader(peer: self.peer, leader: try? ControlAddress(parsing: error.leader))
            }
            throw ControlClientError.refused(code: error.code, message: error.message)
        }
        return reply
    }
}

/// An async iterator shared behind a lock so `ControlSession` can be `Sendable`; only one
/// receive runs at a time (the lock is held across none of them: `next` is called from one task).
final class IteratorBox: @unchecked Sendable {
    // Safe because every caller of `next` is the session's single receiving task: the agent's
    // session loop or the CLI's request, never two at once.
    var iterator: NIOAsyncChannelInboundStream<Envelope>.AsyncIterator

    init(_ iterator: NIOAsyncChannelInboundStream<Envelope>.AsyncIterator) {
        self.iterator = iterator
    }

    func next() async throws -> Envelope? {
        try await self.iterator.next()
    }
}

/// Why a control client call failed.
public enum ControlClientError: Error, Sendable, CustomStringConvertible {
    /// Could not connect or complete the TLS handshake.
    case connect(host: String, port: Int, underlying: any Error)
    /// The coordinator closed the connection while a reply was awaited.
    case closed(peer: String, waitingFor: String)
    /// The coordinator answered with an error.
    case refused(code: Ringmaster_V1_Error.Code, message: String)
    /// The coordinator is a standby of a set; `leader` leads, when the standby knows it.
    case notLeader(peer: String, leader: ControlAddress?)
    /// No coordinator of a set could be reached or led; what each said.
    case noLeader(addresses: String, failures: [String])

    public var description: String {
        switch self {
        case .noLeader(let addresses, let failures):
            return "no coordinator of \(addresses) leads: \(failures.joined(separator: "; "))"
        case .notLeader(let peer, let leader):
            return "the coordinator at \(peer) is a standby; "
                + (leader.map { "the leader is at \($0)" } ?? "no coordinator leads yet")
        case .connect(let host, let port, let underlying):
            return "could not connect to the coordinator at \(host):\(port): \(underlying)"
        case .closed(let peer, let what):
            return "the coordinator at \(peer) closed the connection while waiting for \(what)"
        case .refused(let code, let message):
            return "the coordinator refused the request (\(code)): \(message)"
        }
    }
}

/// A `host:port` address of a coordinator.
public struct ControlAddress: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address.
    public var host: String
    /// TCP port.
    public var port: Int

    /// Makes an address.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (or `[v6]:port`).
    public init(parsing text: String) throws {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else {
            throw ControlAddressError(text: text)
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ControlAddressError(text: text) }
        self.host = host
        self.port = port
    }

    public var description: String {
        self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
    }
}

/// The coordinators a client may reach, one of which leads, and the one to try next: after a
/// referral, the leader named (unless it just could not be reached: a standby names the old leader
/// until its lease ends); after a failure to connect, the next in the list. Each method says
/// whether every address has had its turn since the last pause, so that a caller waits then, and
/// only then: during a leader change a client goes round the set at once, without sleeping
/// between standbys, and never spins.
public final class CoordinatorAddresses: Sendable, CustomStringConvertible {
    /// Every address given, in order.
    public let all: [ControlAddress]
    struct State {
        var current: ControlAddress
        var index = 0
        /// Addresses that could not be reached since the last pause.
        var unreachable: Swift.Set<ControlAddress> = []
        /// Attempts since the last pause.
        var tries = 0
    }
    let state: NIOLockedValueBox<State>

    /// The addresses of `a:7600,b:7600,...` (at least one).
    public convenience init(parsing text: String) throws {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.isEmpty else { throw ControlAddressError(text: text) }
        self.init(try parts.map { try ControlAddress(parsing: $0) })
    }

    public init(_ all: [ControlAddress]) {
        precondition(!all.isEmpty, "a client needs at least one coordinator address")
        self.all = all
        self.state = NIOLockedValueBox(State(current: all[0]))
    }

    /// The address to try now.
    public var current: ControlAddress { self.state.withLockedValue { $0.current } }

    /// `address` could not be reached: the next one in the list is tried. Returns whether to pause
    /// first (every address has had its turn).
    @discardableResult
    public func unreachable(_ address: ControlAddress) -> Bool {
        self.state.withLockedValue { state in
            state.unreachable.insert(address)
            Self.advance(&state, past: address, in: self.all)
            return Self.counted(&state, in: self.all)
        }
    }

    /// A standby at `standby` named `leader` (or no one): the leader is tried next, unless it just
    /// could not be reached or is the standby itself; then the address after the standby. Returns
    /// whether to pause first.
    @discardableResult
    public func referred(to leader: ControlAddress?, by standby: ControlAddress) -> Bool {
        self.state.withLockedValue { state in
            if let leader, leader != standby, !state.unreachable.contains(leader) {
                state.current = leader
            } else {
                Self.advance(&state, past: standby, in: self.all)
            }
            return Self.counted(&state, in: self.all)
        }
    }

    /// A session with `address` got going: the next trouble starts a fresh round.
    public func connected(_ address: ControlAddress) {
        self.state.withLockedValue { state in
            state.unreachable = []
            state.tries = 0
        }
    }

    /// Moves to the address after `address` in the list (after the current position, for an
    /// address not in it: a referral's).
    static func advance(_ state: inout State, past address: ControlAddress, in all: [ControlAddress]) {
        let position = all.firstIndex(of: address) ?? state.index
        state.index = (position + 1) % all.count
        state.current = all[state.index]
    }

    static func counted(_ state: inout State, in all: [ControlAddress]) -> Bool {
        state.tries += 1
        guard state.tries >= all.count else { return false }
        state.tries = 0
        state.unreachable = []
        return true
    }

    public var description: String { self.all.map(\.description).joined(separator: ",") }
}

/// A malformed `host:port`.
public struct ControlAddressError: Error, Sendable, CustomStringConvertible {
    /// The text given.
    public var text: String
    public var description: String { "\"\(self.text)\" is not an address: use HOST:PORT, e.g. 127.0.0.1:7600" }
}
