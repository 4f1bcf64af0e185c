import NIOConcurrencyHelpers
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
        // Torn down on deinit, not through `executeThenClose` alone: a listener's accepted
        // connections reach its accept loop through NIO's server stream, which drops those it
        // still holds when the loop's task is cancelled (a standby elected, a leader deposed,
        // SIGTERM) or when the listening channel closes as one activates (apple/swift-nio#2813).
        // Wrapped by `init(wrappingChannelSynchronously:)`, a dropped connection traps the
        // process ("Deinited NIOAsyncWriter without calling finish()") once it closes; wrapped
        // here, it does not (and `AcceptedChannels` closes it, so that its client moves on). The
        // initializer is deprecated for this teardown, which is wanted here; every connection
        // served still ends through `executeThenClose`.
        let connection = try Connection(synchronouslyWrapping: channel)
        return (connection, watcher.promise.futureResult)
    }

    /// Sends a frame encoded already (an `AssignmentFrames` frame): written below the frame
    /// encoder, in order with the writes made through `channel` before and after it. Nothing is
    /// written on a channel that has closed.
    public static func writeAndFlush(frame: ByteBuffer, to channel: any Channel) {
        let write: @Sendable () -> Void = {
            guard
                let encoder = try? channel.pipeline.syncOperations.context(
                    handlerType: MessageToByteHandler<FrameEncoder>.self)
            else { return }
            encoder.writeAndFlush(NIOAny(frame), promise: nil)
        }
        // As `Channel.writeAndFlush` does: at once on the channel's event loop, queued behind what
        // is queued there otherwise.
        if channel.eventLoop.inEventLoop {
            write()
        } else {
            channel.eventLoop.execute(write)
        }
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
///
/// Returns as soon as either the body finishes or the deadline passes, and cancels the other.
/// It does not wait for a cancelled body to wind down: a body stuck in a wait that ignores
/// cancellation cannot hold the caller past its deadline.
public func withDeadline<Result: Sendable>(
    seconds: Double,
    waitingFor what: String,
    _ body: @escaping @Sendable () async throws -> Result
) async throws -> Result {
    let race = DeadlineRace<Result>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { continuation in
            race.start(continuation: continuation, body: body, seconds: seconds, what: what)
        }
    } onCancel: {
        race.finish(.failure(CancellationError()))
    }
}

/// The state of one `withDeadline`: whichever of body, timer or cancellation finishes first
/// resumes the caller; the others are cancelled and their results dropped.
final class DeadlineRace<Result: Sendable>: Sendable {
    struct State {
        var continuation: CheckedContinuation<Result, any Error>?
        var early: Swift.Result<Result, any Error>?
        var tasks: [Task<Void, Never>] = []
    }

    let state = NIOLockedValueBox(State())

    func start(
        continuation: CheckedContinuation<Result, any Error>,
        body: @escaping @Sendable () async throws -> Result,
        seconds: Double,
        what: String
    ) {
        let work = Task {
            do {
                self.finish(.success(try await body()))
            } catch {
                self.finish(.failure(error))
            }
        }
        let timer = Task {
            do {
                try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
                self.finish(.failure(DeadlineExceeded(what: what, seconds: seconds)))
            } catch {
                // Cancelled because the race is over.
            }
        }
        let early: Swift.Result<Result, any Error>? = self.state.withLockedValue { state in
            if let early = state.early { return early }
            state.continuation = continuation
            state.tasks = [work, timer]
            return nil
        }
        if let early {
            work.cancel()
            timer.cancel()
            continuation.resume(with: early)
        }
    }

    func finish(_ result: Swift.Result<Result, any Error>) {
        let (continuation, tasks) = self.state.withLockedValue {
            state -> (CheckedContinuation<Result, any Error>?, [Task<Void, Never>]) in
            guard state.early == nil else { return (nil, []) }
            state.early = result
            defer {
                state.continuation = nil
                state.tasks = []
            }
            return (state.continuation, state.tasks)
        }
        for task in tasks { task.cancel() }
        continuation?.resume(with: result)
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
