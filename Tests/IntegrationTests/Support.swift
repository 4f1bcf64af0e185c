import ControlPlane
import Coordinator
import Foundation
import LocalCluster
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import RingmasterSecurity
import RingmasterWire
import X509

// MARK: - Captured logs

/// A log handler that renders each record as one line (level, message, sorted metadata) into a
/// `LineLog`, so tests can wait for a log line and grep everything that was logged.
struct CapturingLogHandler: LogHandler {
    let log: LineLog
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(
        level: Logger.Level,
        message: Logger.Message,
        metadata: Logger.Metadata?,
        source: String,
        file: String,
        function: String,
        line: UInt
    ) {
        let merged = self.metadata.merging(metadata ?? [:]) { $1 }
        let rendered = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        self.log.append("\(level) \(message) \(rendered)")
    }
}

extension LineLog {
    /// A logger whose lines land in this log.
    func logger(label: String) -> Logger {
        Logger(label: label) { _ in CapturingLogHandler(log: self) }
    }
}

// MARK: - Time

/// A wall clock that a test can move forward, for token and certificate expiry.
final class AdjustableClock: Sendable {
    let offset = NIOLockedValueBox<TimeInterval>(0)

    func now() -> Date { Date().addingTimeInterval(self.offset.withLockedValue { $0 }) }

    func advance(by seconds: TimeInterval) {
        self.offset.withLockedValue { $0 += seconds }
    }
}

// MARK: - An in-process coordinator on a real socket

/// A `CoordinatorService` listening on a free loopback port with real TLS, its logs captured, and
/// an operator identity for admin requests.
final class TestCoordinator: Sendable {
    let directory: TestDirectory
    let log = LineLog(name: "coordinator log")
    let clock = AdjustableClock()
    let service: CoordinatorService
    let task: Task<Void, any Error>
    let port: Int
    let operatorCredentials: Credentials

    /// `store` makes the state store from the state directory's path (default: SQLite there).
    init(
        configure: (inout CoordinatorConfiguration) -> Void = { _ in },
        store: ((String) throws -> any StateStore)? = nil
    ) async throws {
        self.directory = try TestDirectory()
        var configuration = CoordinatorConfiguration(stateDirectory: "\(self.directory.path)/state")
        configuration.listenPort = 0
        configure(&configuration)
        let clock = self.clock
        let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
        let service = try CoordinatorService(
            configuration: configuration,
            logger: self.log.logger(label: "coordinator"),
            now: { clock.now() },
            store: try store?(configuration.stateDirectory),
            onListening: { port in
                portContinuation.yield(port)
                portContinuation.finish()
            }
        )
        self.service = service
        self.task = Task { try await service.run() }
        self.port = try await withDeadline(seconds: 10, waitingFor: "the coordinator to listen") {
            for await port in portStream { return port }
            throw CommandError("the coordinator stopped before it listened")
        }
        guard let authority = try CertificateAuthority.load(directory: configuration.stateDirectory) else {
            throw CommandError("the coordinator did not create its CA")
        }
        self.operatorCredentials = try Self.credentials(from: authority, role: .operator, name: "tester", clock: clock)
        self.authority = authority
    }

    let authority: CertificateAuthority

    var address: ControlAddress { ControlAddress(host: "127.0.0.1", port: self.port) }

    /// Credentials issued by `authority` (this coordinator's CA or another one).
    static func credentials(
        from authority: CertificateAuthority,
        role: PeerIdentity.Role,
        name: String,
        clock: AdjustableClock,
        validFrom: TimeInterval = -60,
        validFor: TimeInterval = 3600
    ) throws -> Credentials {
        let key = KeyAndRequest.makeKey()
        let now = clock.now()
        let certificate = try authority.issue(
            publicKey: key.publicKey,
            identity: try PeerIdentity(role: role, name: name),
            notBefore: now.addingTimeInterval(validFrom),
            notAfter: now.addingTimeInterval(validFrom + validFor)
        )
        return try Credentials(privateKey: key, certificate: certificate, caCertificate: authority.certificate)
    }

    /// Creates a join token through the admin API, as `ringmaster token create` does.
    func createToken(ttlSeconds: UInt32 = 600) async throws -> (token: JoinToken, pin: CAPin) {
        let reply = try await ControlClient(address: self.address, credentials: self.operatorCredentials).withConnection
        { session in
            var envelope = Envelope()
            envelope.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = ttlSeconds } }
            return try await session.request(envelope)
        }
        let created = reply.adminReply.tokenCreate
        return (try JoinToken(parsing: created.token), try CAPin(parsing: created.caPin))
    }

    func stop() async {
        self.task.cancel()
        _ = try? await self.task.value
    }
}

/// A temporary directory removed when the test ends.
final class TestDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("\(NSTemporaryDirectory())/ringmaster-it-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else { throw CommandError("mkdtemp failed") }
        self.path = String(cString: result)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: self.path)
    }
}

/// A small tmpfs mounted on a fresh temporary directory, for tests of full disks (needs root; the
/// tests run as root, and say so when the mount fails).
final class Tmpfs: Sendable {
    let path: String

    init(label: String, size: String) async throws {
        self.path =
            FileManager.default.temporaryDirectory.appendingPathComponent(
                "ringmaster-\(label)-\(UUID().uuidString.prefix(8))"
            ).path
        try FileManager.default.createDirectory(atPath: self.path, withIntermediateDirectories: true)
        let mounted = try ChildProcess(
            name: "mount", executable: "/bin/mount",
            arguments: ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", self.path])
        guard try await mounted.waitForExit(within: 10) == 0 else {
            try? FileManager.default.removeItem(atPath: self.path)
            throw CommandError("could not mount a tmpfs (tests run as root): \(mounted.output.lines)")
        }
    }

    /// Unmounts it (lazily, should a process still hold a file there) and removes the directory.
    func unmount() {
        let unmount = Process()
        unmount.executableURL = URL(fileURLWithPath: "/bin/umount")
        unmount.arguments = ["-l", self.path]
        if (try? unmount.run()) != nil { unmount.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: self.path)
    }
}

struct CommandError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - A TLS client that writes raw bytes

/// A TLS connection to the coordinator that writes arbitrary bytes (bad frames, garbage) and
/// reports when the coordinator closes it.
final class RawTLSClient: Sendable {
    let channel: any Channel
    let received = NIOLockedValueBox<[UInt8]>([])

    init(port: Int, credentials: Credentials?, trust: PeerVerifier.Trust) async throws {
        let context = try ControlTLS.clientContext(credentials: credentials)
        let verifier = PeerVerifier(trust: trust, allowedRoles: [.coordinator])
        let received = self.received
        let (channel, handshake) = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(
                        context: context,
                        serverHostname: nil,
                        customVerificationCallback: verifier.callback { _ in }
                    )
                    let watcher = HandshakeWatcher(promise: channel.eventLoop.makePromise())
                    try channel.pipeline.syncOperations.addHandlers([tls, watcher, ByteSink(received: received)])
                    return (channel, watcher.promise.futureResult)
                }
            }
        self.channel = channel
        _ = try await withDeadline(seconds: 10, waitingFor: "the raw client's TLS handshake") {
            try await handshake.get()
        }
    }

    func write(_ bytes: [UInt8]) async throws {
        try await self.channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func close() async {
        try? await self.channel.close()
    }

    /// Waits until the coordinator closes the connection.
    func waitUntilClosed(within seconds: Double) async throws {
        try await withDeadline(seconds: seconds, waitingFor: "the coordinator to close the connection") {
            try await self.channel.closeFuture.get()
        }
    }

    final class ByteSink: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<[UInt8]>
        init(received: NIOLockedValueBox<[UInt8]>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = Self.unwrapInboundIn(data)
            self.received.withLockedValue { $0.append(contentsOf: buffer.readableBytesView) }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}

/// One frame holding `envelope`.
func frameBytes(_ envelope: Envelope) throws -> [UInt8] {
    var buffer = ByteBuffer()
    try FrameEncoder.write(envelope, into: &buffer)
    return Array(buffer.readableBytesView)
}

/// An admin request that would create a token if it were ever acted on.
func tokenCreateRequest() -> Envelope {
    var envelope = Envelope()
    envelope.requestID = 1
    envelope.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = 60 } }
    return envelope
}
