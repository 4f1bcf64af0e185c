import Synchronization
import Verbs

#if canImport(Glibc)
    import Glibc
#endif

/// The data plane over RDMA verbs: one reliable-connected queue pair per peer, set up through a
/// connected, authenticated `TCPTransport` (the generation's HMAC handshake), so an RDMA peer is
/// exactly as authenticated as a TCP one and belongs to the same generation. Queue-pair numbers
/// and GIDs go over that connection; no memory key leaves the process (the data moves by SEND
/// and RECV into registered rings, not by one-sided writes).
///
/// Each direction of each pair has a ring of `slots` registered slots of `slotBytes`: a sender
/// copies a chunk into a free send slot and posts a SEND (the slot is free again when the send
/// completes); the receiver keeps a receive posted on each of its slots, copies a slot out when
/// its completion comes, and posts the receive again. Chunks of a peer arrive in order (RC), so
/// data a peer sent ahead, for a later exchange, waits in its slots. A sender sends only into
/// receives it knows are posted: credits (`SendCredits`), paid back in each SEND's immediate value
/// or, when there is no data to carry them, on a second queue pair per peer kept for credit
/// messages, so the pieces keep flowing and no SEND ever meets a receiver that is not ready.
/// Completions are waited for on the endpoint's completion
/// channel, never by busy polling, with the TCP connections watched as well: a peer that dies
/// closes them at once, which fails the operation naming it sooner than RDMA's retries would.
public final class RDMATransport: Transport, @unchecked Sendable {
    // Safe: operations run on one thread at a time (the communicator's); `abort` goes to the
    // endpoint and the TCP transport, both safe from any thread.
    public let rank: Int
    public let worldSize: Int
    /// The authenticated TCP connections: set-up, and liveness.
    let control: TCPTransport
    let endpoint: Verbs.Endpoint
    /// By peer rank (nil for this rank).
    var peers: [Peer?]
    var closed = false
    /// An operation failed or was aborted: a peer may be gone, so `close` does not wait for sends.
    let failed = Atomic<Bool>(false)

    /// One peer's queue pairs (data, and credit messages) and rings.
    final class Peer {
        let queuePair: QueuePair
        let creditPair: QueuePair
        var credits: SendCredits
        let sendRing: UnsafeMutableRawBufferPointer
        let receiveRing: UnsafeMutableRawBufferPointer
        let sendRegion: MemoryRegion
        let receiveRegion: MemoryRegion
        var freeSendSlots: [Int]
        /// Sends posted and not yet completed.
        var sendsInFlight = 0
        /// Slots received and not yet copied out, in arrival order: slot, bytes, bytes copied out.
        var arrived: [(slot: Int, bytes: Int, taken: Int)] = []

        init(_ endpoint: Verbs.Endpoint, slots: Int, slotBytes: Int) throws {
            self.queuePair = try QueuePair(endpoint, depth: UInt32(2 * slots))
            do {
                self.creditPair = try QueuePair(endpoint, depth: UInt32(2 * slots))
            } catch {
                self.queuePair.close()
                throw error
            }
            self.credits = SendCredits(receives: slots)
            self.sendRing = .allocate(byteCount: slots * slotBytes, alignment: 4096)
            self.receiveRing = .allocate(byteCount: slots * slotBytes, alignment: 4096)
            do {
                self.sendRegion = try MemoryRegion(
                    endpoint, address: self.sendRing.baseAddress!, bytes: slots * slotBytes)
                self.receiveRegion = try MemoryRegion(
                    endpoint, address: self.receiveRing.baseAddress!, bytes: slots * slotBytes)
            } catch {
                self.queuePair.close()
                self.creditPair.close()
                self.sendRing.deallocate()
                self.receiveRing.deallocate()
                throw error
            }
            self.freeSendSlots = Array((0..<slots).reversed())
        }

        func close() {
            self.queuePair.close()
            self.creditPair.close()
            self.sendRegion.close()
            self.receiveRegion.close()
            self.sendRing.deallocate()
            self.receiveRing.deallocate()
        }
    }

    /// Slots per direction and peer, and their size.
    public let slots: Int
    public let slotBytes: Int

    /// Sets RDMA up over `control`, an established TCP transport of the generation, on `device`
    /// (the first usable one when nil). Takes ownership of `control`.
    public static func establish(
        over control: TCPTransport, device: String? = nil, slots: Int = 16, slotBytes: Int = 256 << 10,
        timeout: Duration = .seconds(30)
    ) throws -> RDMATransport {
        let endpoint: Verbs.Endpoint
        do {
            endpoint = try Verbs.Endpoint(device: device, capacity: Int32(max(64, 8 * slots * control.worldSize)))
        } catch {
            control.close()
            throw CollectiveError(.io, operation: "connect over RDMA", "\(error)")
        }
        let transport = RDMATransport(
            control: control, endpoint: endpoint, slots: slots, slotBytes: slotBytes)
        do {
            try transport.connect(deadline: .now + timeout)
        } catch {
            transport.close()
            throw error
        }
        return transport
    }

    init(control: TCPTransport, endpoint: Verbs.Endpoint, slots: Int, slotBytes: Int) {
        self.rank = control.rank
        self.worldSize = control.worldSize
        self.control = control
        self.endpoint = endpoint
        self.slots = slots
        self.slotBytes = slotBytes
        self.peers = Array(repeating: nil, count: control.worldSize)
    }

    deinit { self.close() }

    /// Queue pairs for every peer, their addresses swapped over TCP, connected, every receive
    /// posted, then a barrier so that no SEND reaches a queue pair that is not ready.
    func connect(deadline: ContinuousClock.Instant) throws {
        let operation = "connect over RDMA"
        do {
            for peer in 0..<self.worldSize where peer != self.rank {
                let made = try Peer(self.endpoint, slots: self.slots, slotBytes: self.slotBytes)
                self.peers[peer] = made
                for slot in 0..<self.slots {
                    try made.queuePair.receive(
                        into: made.receiveRegion, offset: slot * self.slotBytes, bytes: self.slotBytes,
                        id: Self.requestID(peer: peer, receive: true, slot: slot))
                    try made.creditPair.receive(id: Self.requestID(peer: peer, receive: true, credit: true, slot: slot))
                }
            }
        } catch let error as VerbsError {
            throw CollectiveError(.io, operation: operation, "\(error)")
        }
        // Distance d: send to rank + d our queue pair's address for it, receive from rank - d its
        // address for us; after every distance, each pair has swapped both ways.
        for distance in 1..<max(1, self.worldSize) {
            let to = (self.rank + distance) % self.worldSize
            let from = (self.rank - distance + self.worldSize) % self.worldSize
            let mine = Self.encode(self.peers[to]!.queuePair.address) + Self.encode(self.peers[to]!.creditPair.address)
            var theirs = [UInt8](repeating: 0, count: 2 * Self.addressBytes)
            try mine.withUnsafeBytes { outgoing in
                try theirs.withUnsafeMutableBytes { incoming in
                    try self.control.exchange(
                        send: (to, outgoing), receive: (from, incoming), deadline: deadline, operation: operation,
                        received: { _ in })
                }
            }
            do {
                try self.peers[from]!.queuePair.connect(to: Self.decode(Array(theirs[0..<Self.addressBytes])))
                try self.peers[from]!.creditPair.connect(to: Self.decode(Array(theirs[Self.addressBytes...])))
            } catch {
                throw CollectiveError(.io, operation: operation, peer: from, "\(error)")
            }
        }
        try Communicator(transport: self.control).barrier(timeout: deadline - .now)
    }

    static let addressBytes = 26

    static func encode(_ address: QueuePairAddress) -> [UInt8] {
        var bytes = withUnsafeBytes(of: address.queuePairNumber.littleEndian) { Array($0) }
        bytes += withUnsafeBytes(of: address.packetSequenceNumber.littleEndian) { Array($0) }
        bytes += address.gid.count == 16 ? address.gid : [UInt8](repeating: 0, count: 16)
        bytes += withUnsafeBytes(of: address.localIdentifier.littleEndian) { Array($0) }
        return bytes
    }

    static func decode(_ bytes: [UInt8]) -> QueuePairAddress {
        func integer<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
            bytes[offset..<(offset + MemoryLayout<T>.size)].withUnsafeBytes {
                T(littleEndian: $0.loadUnaligned(as: T.self))
            }
        }
        return QueuePairAddress(
            queuePairNumber: integer(UInt32.self, at: 0), packetSequenceNumber: integer(UInt32.self, at: 4),
            gid: Array(bytes[8..<24]), localIdentifier: integer(UInt16.self, at: 24))
    }

    /// A work request's id: the peer, whether it is a receive, whether it is on the credit queue
    /// pair, the slot.
    static func requestID(peer: Int, receive: Bool, credit: Bool = false, slot: Int) -> UInt64 {
        UInt64(peer) << 32 | (receive ? 1 << 31 : 0) | (credit ? 1 << 30 : 0) | UInt64(slot)
    }

    static func parse(_ id: UInt64) -> (peer: Int, receive: Bool, credit: Bool, slot: Int) {
        (Int(id >> 32), id & (1 << 31) != 0, id & (1 << 30) != 0, Int(id & 0x3FFF_FFFF))
    }

    /// Sends a message of credits alone to every peer that should get one (`waiting`: this rank is
    /// about to wait for a completion).
    func payCredits(waiting: Bool, operation: String, done: Int) throws {
        for (rank, peer) in self.peers.enumerated() {
            guard let peer, peer.credits.shouldSendCredits(waiting: waiting) else { continue }
            let credits = peer.credits.sendCredits()
            do {
                try peer.creditPair.send(
                    peer.sendRegion, offset: 0, bytes: 0, immediate: credits,
                    id: Self.requestID(peer: rank, receive: false, credit: true, slot: 0))
            } catch {
                throw CollectiveError(.io, operation: operation, peer: rank, bytesDone: done, "\(error)")
            }
            peer.sendsInFlight += 1
        }
    }

    public func exchange(
        send: (peer: Int, bytes: UnsafeRawBufferPointer)?,
        receive: (peer: Int, bytes: UnsafeMutableRawBufferPointer)?,
        deadline: ContinuousClock.Instant,
        operation: String,
        received: (Int) throws -> Void
    ) throws {
        let outgoing = send.map { (peer: $0.peer, bytes: $0.bytes, target: self.peers[$0.peer]) }
        let incoming = receive.map { (peer: $0.peer, bytes: $0.bytes, source: self.peers[$0.peer]) }
        if let outgoing, outgoing.target == nil, outgoing.bytes.count > 0 {
            throw CollectiveError(.invalidArgument, operation: operation, peer: outgoing.peer, "no such peer")
        }
        if let incoming, incoming.source == nil, incoming.bytes.count > 0 {
            throw CollectiveError(.invalidArgument, operation: operation, peer: incoming.peer, "no such peer")
        }
        let sendTotal = outgoing?.bytes.count ?? 0
        let receiveTotal = incoming?.bytes.count ?? 0
        var sent = 0
        var got = 0
        // The peers whose connections are watched: those this exchange waits on.
        let watch = [outgoing?.peer, incoming?.peer].compactMap { $0 }.filter { $0 != self.rank }.map {
            self.control.sockets[$0]
        }
        while true {
            if let outgoing, let target = outgoing.target {
                while sent < sendTotal, target.credits.maySendData, let slot = target.freeSendSlots.popLast() {
                    let count = min(self.slotBytes, sendTotal - sent)
                    let offset = slot * self.slotBytes
                    UnsafeMutableRawBufferPointer(rebasing: target.sendRing[offset..<(offset + count)]).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: outgoing.bytes[sent..<(sent + count)]))
                    do {
                        try target.queuePair.send(
                            target.sendRegion, offset: offset, bytes: count, immediate: target.credits.sendData(),
                            id: Self.requestID(peer: outgoing.peer, receive: false, slot: slot))
                    } catch {
                        target.freeSendSlots.append(slot)
                        throw CollectiveError(
                            .io, operation: operation, peer: outgoing.peer, bytesDone: sent + got, "\(error)")
                    }
                    target.sendsInFlight += 1
                    sent += count
                }
            }
            if let incoming, let source = incoming.source, got < receiveTotal {
                let before = got
                while got < receiveTotal, !source.arrived.isEmpty {
                    let (slot, bytes, taken) = source.arrived[0]
                    let count = min(bytes - taken, receiveTotal - got)
                    let offset = slot * self.slotBytes + taken
                    UnsafeMutableRawBufferPointer(rebasing: incoming.bytes[got..<(got + count)]).copyMemory(
                        from: UnsafeRawBufferPointer(rebasing: source.receiveRing[offset..<(offset + count)]))
                    got += count
                    if taken + count == bytes {
                        source.arrived.removeFirst()
                        do {
                            try source.queuePair.receive(
                                into: source.receiveRegion, offset: slot * self.slotBytes, bytes: self.slotBytes,
                                id: Self.requestID(peer: incoming.peer, receive: true, slot: slot))
                        } catch {
                            throw CollectiveError(
                                .io, operation: operation, peer: incoming.peer, bytesDone: sent + got, "\(error)")
                        }
                        source.credits.reposted()
                    } else {
                        source.arrived[0].taken = taken + count
                    }
                }
                if got > before { try received(got) }
            }
            // Done once every byte is posted and every byte received: the caller's buffers are
            // free (what is in flight is in the send ring, whose slots free as sends complete).
            if sent == sendTotal && got == receiveTotal {
                try self.payCredits(waiting: false, operation: operation, done: sent + got)
                return
            }
            try self.payCredits(waiting: true, operation: operation, done: sent + got)
            let completions: [Completion]
            do {
                completions = try self.endpoint.completions(
                    limit: 32, deadline: deadline, watch: watch,
                    doing: "\(operation) (sent \(sent) of \(sendTotal) bytes, received \(got) of \(receiveTotal))")
            } catch let error as VerbsError {
                self.failed.store(true, ordering: .relaxed)
                throw self.collectiveError(
                    error, operation: operation, done: sent + got, outgoing?.peer, incoming?.peer)
            }
            for completion in completions {
                let (peer, isReceive, isCredit, slot) = Self.parse(completion.id)
                guard let owner = self.peers[peer] else { continue }
                switch (isReceive, isCredit) {
                case (true, false):
                    owner.credits.receivedData(credits: completion.immediate ?? 0)
                    owner.arrived.append((slot, completion.bytes, 0))
                case (true, true):
                    owner.credits.received(credits: completion.immediate ?? 0)
                    do {
                        try owner.creditPair.receive(id: completion.id)
                    } catch {
                        throw CollectiveError(.io, operation: operation, peer: peer, bytesDone: sent + got, "\(error)")
                    }
                case (false, false):
                    owner.freeSendSlots.append(slot)
                    owner.sendsInFlight -= 1
                case (false, true):
                    owner.sendsInFlight -= 1
                }
            }
        }
    }

    /// The verbs failure as a collective one, naming the peer it concerns.
    func collectiveError(_ error: VerbsError, operation: String, done: Int, _ sendPeer: Int?, _ receivePeer: Int?)
        -> CollectiveError
    {
        switch error.kind {
        case .aborted:
            return CollectiveError(.aborted, operation: operation, bytesDone: done, "\(error)")
        case .deadline:
            return CollectiveError(
                .deadlineExceeded, operation: operation, peer: receivePeer ?? sendPeer, bytesDone: done, "\(error)")
        case .watchedClosed(let descriptor):
            let peer = self.control.sockets.firstIndex(of: descriptor)
            return CollectiveError(
                .peerClosed, operation: operation, peer: peer, bytesDone: done,
                "rank \(peer.map(String.init) ?? "?")'s connection closed (it stopped or died)")
        case .completion(let request):
            return CollectiveError(
                .peerClosed, operation: operation, peer: Self.parse(request).peer, bytesDone: done, "\(error)")
        case .call:
            return CollectiveError(
                .io, operation: operation, peer: sendPeer ?? receivePeer, bytesDone: done, "\(error)")
        }
    }

    public func abort(reason: String) {
        self.failed.store(true, ordering: .relaxed)
        self.endpoint.abort(reason: reason)
        self.control.abort(reason: reason)
    }

    public func close() {
        guard !self.closed else { return }
        self.closed = true
        // Sends still in flight are let finish (briefly) before their queue pairs go: a queue pair
        // destroyed with sends outstanding drops them, and the peer would miss its last bytes.
        let deadline = ContinuousClock.now + .seconds(5)
        while !self.failed.load(ordering: .relaxed), self.peers.contains(where: { ($0?.sendsInFlight ?? 0) > 0 }),
            ContinuousClock.now < deadline
        {
            guard let completions = try? self.endpoint.completions(limit: 32, deadline: deadline, doing: "closing")
            else { break }
            for completion in completions {
                let (peer, isReceive, _, _) = Self.parse(completion.id)
                if !isReceive { self.peers[peer]?.sendsInFlight -= 1 }
            }
        }
        for peer in self.peers.compactMap({ $0 }) { peer.close() }
        self.peers = Array(repeating: nil, count: self.worldSize)
        self.endpoint.close()
        self.control.close()
    }
}
