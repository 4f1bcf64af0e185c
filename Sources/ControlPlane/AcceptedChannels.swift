import NIOConcurrencyHelpers
import NIOCore

/// The connections a listener has accepted and not yet seen closed, so that stopping it closes
/// every one of them.
///
/// A server `NIOAsyncChannel` hands accepted connections to its accept loop through a buffer;
/// when the loop's task is cancelled (a standby elected, a leader deposed, SIGTERM), connections
/// still in that buffer are dropped but stay open (apple/swift-nio#2813): their clients would
/// wait out their own handshake deadline (10 s for an agent) instead of moving on to the next
/// coordinator at once. A listener registers each channel in its child initializer and calls
/// `closeAll()` when its loop ends; a channel registered after that is closed at once.
public final class AcceptedChannels: Sendable {
    struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        var closed = false
    }
    let state = NIOLockedValueBox(State())

    public init() {}

    /// Tracks `channel` until it closes (closes it now if `closeAll()` has been called).
    public func register(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        let tracked = self.state.withLockedValue { state in
            guard !state.closed else { return false }
            state.open[key] = channel
            return true
        }
        guard tracked else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { _ in
            self.state.withLockedValue { _ = $0.open.removeValue(forKey: key) }
        }
    }

    /// Closes every registered channel still open, and any registered from now on.
    public func closeAll() {
        let channels = self.state.withLockedValue { state in
            state.closed = true
            return Array(state.open.values)
        }
        for channel in channels { channel.close(promise: nil) }
    }
}
