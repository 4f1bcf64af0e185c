/// Moves bytes between the ranks of one communicator. The algorithms need one primitive: a
/// duplex `exchange` that sends a buffer to one peer while it receives a buffer from another (or
/// the same) peer, reporting received bytes as they land so reduction can overlap the transfer.
///
/// Implementations: `TCPTransport` (sockets, for real jobs), `InProcessTransport` (queues, so a
/// test runs eight ranks in one process), and RDMA later. Every wait honours a deadline and wakes
/// at once when `abort` is called from any thread.
public protocol Transport: AnyObject, Sendable {
    /// This rank.
    var rank: Int { get }
    /// Ranks in the communicator.
    var worldSize: Int { get }

    /// Sends `send` (if any) and receives into `receive` (if any), concurrently, until both are
    /// complete. `received` is called with the total bytes received so far whenever it grows.
    /// Throws `CollectiveError` on abort, deadline, or a peer closing or failing.
    func exchange(
        send: (peer: Int, bytes: UnsafeRawBufferPointer)?,
        receive: (peer: Int, bytes: UnsafeMutableRawBufferPointer)?,
        deadline: ContinuousClock.Instant,
        operation: String,
        received: (Int) throws -> Void
    ) throws

    /// Sends `pieces` buffers, in order, to `sendPeer` while it receives `pieces` buffers, in
    /// order, from `receivePeer` (the same peer or another), as one stream each way. Piece `i` is
    /// `sendPiece(i)` out and `receivePiece(i)` in. Of send piece `i`, only the first
    /// `sendable(i)` bytes may go out so far (a piece that depends on data still arriving);
    /// `received(i, bytes)` reports that receive piece `i` holds `bytes` bytes. This lets a ring
    /// start sending a step's data while the previous step's still arrives. The pieces are given
    /// by closures, not arrays, so a call allocates nothing.
    func stream(
        pieces: Int,
        sendPeer: Int,
        receivePeer: Int,
        deadline: ContinuousClock.Instant,
        operation: String,
        sendPiece: (Int) -> UnsafeRawBufferPointer,
        receivePiece: (Int) -> UnsafeMutableRawBufferPointer,
        sendable: (Int) -> Int,
        received: (Int, Int) throws -> Void
    ) throws

    /// Fails every current and future operation with `reason`, from any thread.
    func abort(reason: String)

    /// Releases connections and buffers.
    func close()
}

/// A failed collective: what failed, with which peer, after how many bytes.
public struct CollectiveError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure.
    public enum Code: String, Sendable, Hashable {
        /// `abort` was called.
        case aborted
        /// A peer closed or reset its connection.
        case peerClosed
        /// The operation's deadline passed.
        case deadlineExceeded
        /// A data-plane connection failed its handshake.
        case handshakeRefused
        /// A socket call failed.
        case io
        /// The call's arguments are not usable (buffer sizes, root rank).
        case invalidArgument
    }

    /// The kind.
    public var code: Code
    /// The operation (`allReduce`, `broadcast`, ...).
    public var operation: String
    /// The peer rank involved, if one is.
    public var peer: Int?
    /// Bytes this rank had sent and received in the failing exchange.
    public var bytesDone: Int
    /// What happened.
    public var message: String

    /// Makes an error.
    public init(_ code: Code, operation: String, peer: Int? = nil, bytesDone: Int = 0, _ message: String) {
        self.code = code
        self.operation = operation
        self.peer = peer
        self.bytesDone = bytesDone
        self.message = message
    }

    public var description: String {
        let peer = self.peer.map { " with rank \($0)" } ?? ""
        return "\(self.operation) failed\(peer) after \(self.bytesDone) bytes (\(self.code.rawValue)): \(self.message)"
    }
}

extension Transport {
    /// The stream as a sequence of exchanges, one pair of pieces at a time: correct for any
    /// transport, without the overlap between pieces.
    public func stream(
        pieces: Int,
        sendPeer: Int,
        receivePeer: Int,
        deadline: ContinuousClock.Instant,
        operation: String,
        sendPiece: (Int) -> UnsafeRawBufferPointer,
        receivePiece: (Int) -> UnsafeMutableRawBufferPointer,
        sendable: (Int) -> Int,
        received: (Int, Int) throws -> Void
    ) throws {
        for index in 0..<pieces {
            let outgoing = sendPiece(index)
            let incoming = receivePiece(index)
            // Earlier pieces are complete here, so each piece may be sent whole.
            precondition(sendable(index) >= outgoing.count, "a stream piece waits on a later one")
            try self.exchange(
                send: (sendPeer, outgoing),
                receive: (receivePeer, incoming),
                deadline: deadline,
                operation: operation,
                received: { try received(index, $0) }
            )
            if incoming.count == 0 { try received(index, 0) }
        }
    }
}
