import NIOCore
import NIOSSL
import NIOTLS
import RingmasterWire

/// The channel pipeline of a control connection, on both ends: TLS, then frames of `Envelope`s.
public enum ControlPipeline {
    /// The element type of a control connection seen from async code.
    public typealias Connection = NIOAsyncChannel<Envelope, Envelope>

    /// Adds a handshake watcher and the framing handlers behind an already added TLS handler, and
    /// wraps the channel for async use. Returns the connection and a future that succeeds with the
    /// peer's certificate (nil if it presented none) when the TLS handshake completes, and fails if
    /// it does not. Must run on the channel's event loop.
    public static func wrap(
        channel: any Channel,
        maximumFrameBytes: Int
    ) throws -> (connection: Connection, handshake: EventLoopFuture<NIOSSLCertificate?>) {
        let operations = channel.pipeline.syncOperations
        let watcher = HandshakeWatcher(promise: channel.eventLoop.makePromise())
        try operations.addHandler(watcher)
        try operations.addHandler(ByteToMessageHandler(FrameDecoder(maximumPayloadBytes: maximumFrameBytes)))
        try operations.addHandler(MessageToByteHandler(FrameEncoder(maximumPayloadBytes: maximumFrameBytes)))
        return (try Connection(wrappingChannelSynchronously: channel), watcher.promise.futureResult)
    }
}

/// Turns NIOSSL's handshake-completed event into a future of the peer's certificate, read at
/// that moment (so it is known even if the peer closes before anyone asks): succeeded on the
/// event, failed by the first error or by the channel closing before it.
public final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    /// Completed when the handshake ends, one way or the other.
    public let promise: EventLoopPromise<NIOSSLCertificate?>
    var done = false

    /// Makes a watcher that completes `promise`.
    public init(promise: EventLoopPromise<NIOSSLCertificate?>) {
        self.promise = promise
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, !self.done {
            self.done = true
            let certificate = try? context.pipeline.syncOperations.nioSSL_peerCertificate()
            self.promise.succeed(certificate ?? nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !self.done {
            self.done = true
            self.promise.fail(error)
        }
        context.fireErrorCaught(error)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if !self.done {
            self.done = true
            self.promise.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        if !self.done {
            self.done = true
            self.promise.fail(ChannelError.ioOnClosedChannel)
        }
    }
}

/// Runs `body` but gives up after `seconds`, throwing a `DeadlineExceeded` that names `what`.
public func withDeadline<Result: Sendable>(
    seconds: Double,
    waitingFor what: String,
    _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
    try await withThrowingTaskGroup(of: Result.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            throw DeadlineExceeded(what: what, seconds: seconds)
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

/// A wait that ran past its deadline.
public struct DeadlineExceeded: Error, Sendable, CustomStringConvertible {
    /// What was waited for.
    public var what: String
    /// How long.
    public var seconds: Double

    public var description: String { "gave up after \(self.seconds) s waiting for \(self.what)" }
}
