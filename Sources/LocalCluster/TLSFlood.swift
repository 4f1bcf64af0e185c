import ControlPlane
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// A flood of TLS connections without a client certificate, as anyone who can reach the
/// coordinator's port can open: each completes its TLS handshake (as a joining agent's does) and
/// then says nothing. Every connection the other side closes, or that fails, is opened again after
/// `reopenAfter`, so the flood keeps trying to hold `connections` until `stop`. For tests and
/// benchmarks against the project's own coordinator on loopback.
public final class TLSFlood: Sendable {
    let context: NIOSSLContext
    let host: String
    let port: Int
    let sources: [String]
    let reopenAfter: TimeAmount
    let state = NIOLockedValueBox(State())

    struct State {
        var stopped = false
        var channels: [ObjectIdentifier: any Channel] = [:]
        var attempts = 0
        var handshakes = 0
        var closedByPeer = 0
        var handshook: Set<ObjectIdentifier> = []
        var mostHeld = 0
    }

    /// What the flood achieved so far.
    public struct Statistics: Sendable {
        /// Connections tried, TLS handshakes completed, connections the other side closed.
        public var attempts: Int
        public var handshakes: Int
        public var closedByPeer: Int
        /// Connections open now with their handshake done, and the most at any time.
        public var held: Int
        public var mostHeld: Int
    }

    /// Starts `connections` connections to `host:port` from `sources` in turn (loopback addresses
    /// of their own, such as 127.0.0.2, so that the flood comes from other addresses than the
    /// agents').
    public init(host: String, port: Int, sources: [String], connections: Int, reopenAfter: Duration = .seconds(1))
        throws
    {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        // An attacker checks nothing.
        configuration.certificateVerification = .none
        self.context = try NIOSSLContext(configuration: configuration)
        self.host = host
        self.port = port
        self.sources = sources
        self.reopenAfter = .nanoseconds(
            Int64(reopenAfter.components.seconds) * 1_000_000_000 + reopenAfter.components.attoseconds / 1_000_000_000)
        for slot in 0..<connections { self.open(from: sources[slot % sources.count]) }
    }

    public var statistics: Statistics {
        self.state.withLockedValue {
            Statistics(
                attempts: $0.attempts, handshakes: $0.handshakes, closedByPeer: $0.closedByPeer,
                held: $0.handshook.count, mostHeld: $0.mostHeld)
        }
    }

    /// Closes every connection and opens no more.
    public func stop() {
        let channels = self.state.withLockedValue { state -> [any Channel] in
            state.stopped = true
            return Array(state.channels.values)
        }
        for channel in channels { channel.close(promise: nil) }
    }

    func open(from source: String) {
        guard
            !self.state.withLockedValue({ state in
                if !state.stopped { state.attempts += 1 }
                return state.stopped
            })
        else { return }
        let context = self.context
        let bootstrap: ClientBootstrap
        do {
            bootstrap = try ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(to: SocketAddress(ipAddress: source, port: 0))
        } catch {
            self.reopenLater(from: source)
            return
        }
        bootstrap
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let tls = try NIOSSLClientHandler(context: context, serverHostname: nil)
                    let watcher = HandshakeWatcher(promise: channel.eventLoop.makePromise())
                    try channel.pipeline.syncOperations.addHandlers([tls, watcher])
                    let id = ObjectIdentifier(channel)
                    watcher.promise.futureResult.whenSuccess { _ in
                        self.state.withLockedValue {
                            $0.handshakes += 1
                            $0.handshook.insert(id)
                            $0.mostHeld = max($0.mostHeld, $0.handshook.count)
                        }
                    }
                    channel.closeFuture.whenComplete { _ in
                        self.state.withLockedValue {
                            $0.channels[id] = nil
                            $0.handshook.remove(id)
                            $0.closedByPeer += $0.stopped ? 0 : 1
                        }
                        self.reopenLater(from: source)
                    }
                }
            }
            .connect(host: self.host, port: self.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    let stopped = self.state.withLockedValue { state -> Bool in
                        if !state.stopped { state.channels[ObjectIdentifier(channel)] = channel }
                        return state.stopped
                    }
                    if stopped { channel.close(promise: nil) }
                case .failure:
                    self.reopenLater(from: source)
                }
            }
    }

    func reopenLater(from source: String) {
        guard !self.state.withLockedValue({ $0.stopped }) else { return }
        MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: self.reopenAfter) { self.open(from: source) }
    }
}
