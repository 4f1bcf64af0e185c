/// The collectives of one generation: all-reduce, broadcast, barrier and all-gather over a
/// `Transport`, on buffers the caller owns.
///
/// ## Algorithms
///
/// - **Ring** (large messages): the buffer is cut into one segment per rank. In `n - 1`
///   reduce-scatter steps each rank sends a segment to its right neighbour while it receives the
///   next from its left and adds it in as the bytes land (reduction overlaps the transfer); then
///   `n - 1` all-gather steps pass the finished segments around. Each rank sends and receives
///   `2(n-1)/n` of the buffer, the bandwidth optimum. The steps are not separated: the ring is one
///   stream each way (`Transport.stream`), and a step's segment goes out as fast as the previous
///   step sums (or receives) it, so the steps overlap. Segments move in pieces of at most
///   `ringChunkBytes`, each summed from a small scratch area that is still in cache.
/// - **Recursive doubling** (small messages): `log2(p)` steps in which each rank swaps its whole
///   buffer with the rank whose number differs in one bit and adds it in; latency-optimal. With a
///   world size that is not a power of two, the `n - p` extra ranks first fold their buffers into
///   partners and receive the result at the end. Two ranks is the case of a single direct swap.
///
/// Every rank computes each element from the same operands in the same order (IEEE addition is
/// commutative), so all ranks end with identical bits. The choice between the algorithms is by
/// message size (`smallMessageBytes`), measured on the 2-core machine and overridable.
/// Messages with fewer elements than ranks always use recursive doubling.
///
/// Scratch space is kept between calls and only grows, so steady-state calls do not allocate.
/// A communicator serves one operation at a time; `abort` may be called from any thread.
public final class Communicator: @unchecked Sendable {
    // Safe because `scratch` is touched only by the one thread running an operation (the API is
    // documented as one operation at a time), and `transport` is itself thread-safe for `abort`.

    /// Which all-reduce algorithm to use.
    public enum Algorithm: String, Sendable, Hashable, CaseIterable {
        /// By message size.
        case automatic
        /// Always the ring.
        case ring
        /// Always recursive doubling.
        case recursiveDoubling = "recursive-doubling"
    }

    /// The transport.
    public let transport: any Transport
    /// All-reduces of at most this many bytes use recursive doubling; larger ones the ring.
    public var smallMessageBytes: Int
    /// The algorithm override.
    public var algorithm: Algorithm = .automatic
    /// The ring moves each step's segment in pieces of at most this many bytes, and a received
    /// piece is summed from a scratch area of this size, reused piece after piece, so it is still
    /// in cache when it is added. 1 MiB was best of 256 KiB to 4 MiB and unbounded on the 2-core
    /// machine (bench/README.md): 2 ranks 1.42 to 2.09 GB/s busbw at 16 MiB, 1.35 to 1.83 at 64.
    public var ringChunkBytes = 1 << 20
    var scratch: UnsafeMutableRawBufferPointer = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    /// This rank.
    public var rank: Int { self.transport.rank }
    /// Ranks in the communicator.
    public var worldSize: Int { self.transport.worldSize }

    /// Makes a communicator over `transport`. `smallMessageBytes` defaults to the crossover
    /// measured over loopback TCP on the 2-core machine (bench/README.md): recursive doubling (a
    /// direct swap) beats the ring up to 512 KiB with 2 ranks, and up to 256 KiB with 4.
    public init(transport: any Transport, smallMessageBytes: Int? = nil) {
        self.transport = transport
        self.smallMessageBytes = smallMessageBytes ?? (transport.worldSize == 2 ? 512 << 10 : 256 << 10)
    }

    deinit {
        self.scratch.deallocate()
    }

    /// Fails the operation in flight (and later ones) on this rank, from any thread.
    public func abort(reason: String) {
        self.transport.abort(reason: reason)
    }

    // MARK: - All-reduce

    /// Replaces `buffer` (`count` elements of `type`) on every rank with the elementwise sum (or
    /// average) over all ranks. Throws `CollectiveError` if it cannot finish within `timeout`.
    public func allReduce(
        _ buffer: UnsafeMutableRawBufferPointer,
        count: Int,
        type: DataType,
        operation: ReduceOperation = .sum,
        timeout: Duration = .seconds(30)
    ) throws {
        guard buffer.count >= count * type.size else {
            throw CollectiveError(
                .invalidArgument, operation: "allReduce",
                "the buffer holds \(buffer.count) bytes, fewer than \(count) \(type.rawValue) elements")
        }
        let deadline = ContinuousClock.now + timeout
        let n = self.worldSize
        if n > 1 && count > 0 {
            let useRing: Bool
            switch self.algorithm {
            case .automatic: useRing = count * type.size > self.smallMessageBytes && count >= n
            case .ring: useRing = count >= n
            case .recursiveDoubling: useRing = false
            }
            if useRing {
                try self.ringAllReduce(buffer.baseAddress!, count: count, type: type, deadline: deadline)
            } else {
                try self.recursiveDoublingAllReduce(buffer.baseAddress!, count: count, type: type, deadline: deadline)
            }
        }
        if operation == .average && n > 1 && count > 0 {
            Reduction.scale(buffer.baseAddress!, count: count, type: type, by: 1 / Float(n))
        }
    }

    /// The element range of segment `index` when `count` elements are cut into `parts` segments
    /// whose sizes differ by at most one.
    static func segment(_ index: Int, of parts: Int, count: Int) -> Range<Int> {
        let base = count / parts
        let extra = count % parts
        let start = index * base + min(index, extra)
        return start..<(start + base + (index < extra ? 1 : 0))
    }

    /// The ring as one stream each way: 2(n-1) steps, each cut into `chunks` pieces of at most
    /// `ringChunkBytes`, so piece `p` is chunk `p % chunks` of step `p / chunks`. A send piece of
    /// step s > 0 carries what the receive piece one step earlier fills (reduce-scatter: the chunk
    /// just summed; all-gather: the one just received), so it goes out as fast as those bytes are
    /// ready and consecutive steps overlap instead of waiting for each other. A reduce-scatter
    /// chunk lands in one small scratch area, reused chunk after chunk, which stays in cache
    /// between the receive and the addition.
    func ringAllReduce(_ base: UnsafeMutableRawPointer, count: Int, type: DataType, deadline: ContinuousClock.Instant)
        throws
    {
        let n = self.worldSize
        let rank = self.rank
        let size = type.size
        let largest = Self.segment(0, of: n, count: count).count
        let chunkBytes = max(self.ringChunkBytes, size)
        let chunks = max(1, (largest * size + chunkBytes - 1) / chunkBytes)
        let scratch = self.scratch(bytes: (largest + chunks - 1) / chunks * size)
        // Chunk `chunk` of segment `segment` (taken modulo n).
        func bytes(_ segment: Int, _ chunk: Int) -> UnsafeMutableRawBufferPointer {
            let whole = Self.segment((segment % n + n) % n, of: n, count: count)
            let part = Self.segment(chunk, of: chunks, count: whole.count)
            return UnsafeMutableRawBufferPointer(
                start: base + (whole.lowerBound + part.lowerBound) * size, count: part.count * size)
        }
        // Steps 0..<n-1 are the reduce-scatter: after step s, segment (rank - s - 1) holds s + 2
        // ranks' contributions. Steps n-1..<2(n-1) are the all-gather: the finished segments
        // pass around and land in place.
        func outgoing(_ piece: Int) -> UnsafeRawBufferPointer {
            let step = piece / chunks
            return UnsafeRawBufferPointer(
                step < n - 1 ? bytes(rank - step, piece % chunks) : bytes(rank + 1 - (step - n + 1), piece % chunks))
        }
        func target(_ piece: Int) -> UnsafeMutableRawBufferPointer {
            let step = piece / chunks
            return step < n - 1 ? bytes(rank - step - 1, piece % chunks) : bytes(rank - (step - n + 1), piece % chunks)
        }
        // The receive side fills its pieces in order: those before `current` are final, and of
        // `current` the first `ready` bytes are (summed, in the reduce-scatter).
        var current = 0
        var ready = 0
        var adder: (piece: Int, adder: ArrivalAdder)?
        try self.transport.stream(
            pieces: 2 * (n - 1) * chunks,
            sendPeer: (rank + 1) % n,
            receivePeer: (rank - 1 + n) % n,
            deadline: deadline,
            operation: "allReduce",
            sendPiece: outgoing,
            receivePiece: { piece in
                piece < (n - 1) * chunks
                    ? UnsafeMutableRawBufferPointer(start: scratch, count: target(piece).count) : target(piece)
            },
            sendable: { piece in
                let source = piece - chunks  // the receive piece this one forwards
                if source < current { return Int.max }
                return source == current ? ready : 0
            },
            received: { piece, got in
                current = piece
                if piece < (n - 1) * chunks {
                    if adder?.piece != piece {
                        adder = (
                            piece,
                            ArrivalAdder(
                                scratch: scratch, destination: target(piece).baseAddress ?? scratch, type: type)
                        )
                    }
                    adder!.adder.received(got)
                    ready = adder!.adder.added * size
                } else {
                    ready = got
                }
            }
        )
    }

    func recursiveDoublingAllReduce(
        _ base: UnsafeMutableRawPointer, count: Int, type: DataType, deadline: ContinuousClock.Instant
    ) throws {
        let n = self.worldSize
        let rank = self.rank
        let bytes = count * type.size
        var powerOfTwo = 1
        while powerOfTwo * 2 <= n { powerOfTwo *= 2 }
        let extra = n - powerOfTwo
        let whole = UnsafeMutableRawBufferPointer(start: base, count: bytes)
        let scratch = self.scratch(bytes: bytes)

        if rank >= powerOfTwo {
            // An extra rank: fold into its partner, then take the result back.
            let partner = rank - powerOfTwo
            try self.transport.exchange(
                send: (partner, UnsafeRawBufferPointer(whole)), receive: nil, deadline: deadline, operation: "allReduce"
            ) { _ in }
            try self.transport.exchange(
                send: nil, receive: (partner, whole), deadline: deadline, operation: "allReduce"
            ) { _ in }
            return
        }
        if rank < extra {
            try self.receiveAndAdd(
                from: rank + powerOfTwo, into: base, scratch: scratch, count: count, type: type, deadline: deadline)
        }
        var mask = 1
        while mask < powerOfTwo {
            let partner = rank ^ mask
            var adder = ArrivalAdder(scratch: scratch, destination: base, type: type)
            try self.transport.exchange(
                send: (partner, UnsafeRawBufferPointer(whole)),
                receive: (partner, UnsafeMutableRawBufferPointer(start: scratch, count: bytes)),
                deadline: deadline,
                operation: "allReduce",
                received: { adder.received($0) }
            )
            mask *= 2
        }
        if rank < extra {
            try self.transport.exchange(
                send: (rank + powerOfTwo, UnsafeRawBufferPointer(whole)), receive: nil, deadline: deadline,
                operation: "allReduce"
            ) { _ in }
        }
    }

    func receiveAndAdd(
        from peer: Int,
        into base: UnsafeMutableRawPointer,
        scratch: UnsafeMutableRawPointer,
        count: Int,
        type: DataType,
        deadline: ContinuousClock.Instant
    ) throws {
        var adder = ArrivalAdder(scratch: scratch, destination: base, type: type)
        try self.transport.exchange(
            send: nil,
            receive: (peer, UnsafeMutableRawBufferPointer(start: scratch, count: count * type.size)),
            deadline: deadline,
            operation: "allReduce",
            received: { adder.received($0) }
        )
    }

    /// Adds received elements into the destination as they arrive (the transport reports bytes
    /// received so far), so reduction overlaps the rest of the transfer.
    struct ArrivalAdder {
        let scratch: UnsafeMutableRawPointer
        let destination: UnsafeMutableRawPointer
        let type: DataType
        var added = 0

        mutating func received(_ bytes: Int) {
            let complete = bytes / self.type.size
            guard complete > self.added else { return }
            let offset = self.added * self.type.size
            Reduction.add(
                self.scratch + offset, into: self.destination + offset, count: complete - self.added, type: self.type)
            self.added = complete
        }
    }

    // MARK: - Broadcast, barrier, all-gather

    /// Copies `buffer` from `root` to every rank, along a binomial tree (`log2 n` rounds).
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int, timeout: Duration = .seconds(30)) throws {
        let n = self.worldSize
        guard (0..<n).contains(root) else {
            throw CollectiveError(
                .invalidArgument, operation: "broadcast", "root \(root) is not a rank of a world of \(n)")
        }
        guard n > 1, buffer.count > 0 else { return }
        let deadline = ContinuousClock.now + timeout
        let relative = (self.rank - root + n) % n
        var mask = 1
        // Receive from the parent (the rank that differs in this rank's lowest set bit).
        while mask < n {
            if relative & mask != 0 {
                let parent = (relative - mask + root) % n
                try self.transport.exchange(
                    send: nil, receive: (parent, buffer), deadline: deadline, operation: "broadcast"
                ) { _ in }
                break
            }
            mask <<= 1
        }
        // Send to the children below that bit.
        mask >>= 1
        while mask > 0 {
            if relative + mask < n {
                let child = (relative + mask + root) % n
                try self.transport.exchange(
                    send: (child, UnsafeRawBufferPointer(buffer)), receive: nil, deadline: deadline,
                    operation: "broadcast"
                ) { _ in }
            }
            mask >>= 1
        }
    }

    /// Returns when every rank has called it (or throws on deadline, abort or a lost peer).
    public func barrier(timeout: Duration = .seconds(30)) throws {
        var token: Float = 1
        try withUnsafeMutableBytes(of: &token) { bytes in
            let saved = self.algorithm
            self.algorithm = .recursiveDoubling
            defer { self.algorithm = saved }
            try self.allReduce(bytes, count: 1, type: .float32, operation: .sum, timeout: timeout)
        }
    }

    /// Concatenates every rank's `input` (all the same size) into `output`, in rank order, by a ring.
    public func allGather(
        _ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, timeout: Duration = .seconds(30)
    ) throws {
        let n = self.worldSize
        let block = input.count
        guard output.count >= block * n else {
            throw CollectiveError(
                .invalidArgument, operation: "allGather",
                "the output holds \(output.count) bytes, fewer than \(n) x \(block)")
        }
        let rank = self.rank
        if block > 0 {
            (output.baseAddress! + rank * block).copyMemory(from: input.baseAddress!, byteCount: block)
        }
        guard n > 1, block > 0 else { return }
        let deadline = ContinuousClock.now + timeout
        let right = (rank + 1) % n
        let left = (rank - 1 + n) % n
        for step in 0..<(n - 1) {
            let sending = (rank - step + n) % n
            let receiving = (rank - step - 1 + n) % n
            try self.transport.exchange(
                send: (right, UnsafeRawBufferPointer(start: output.baseAddress! + sending * block, count: block)),
                receive: (
                    left, UnsafeMutableRawBufferPointer(start: output.baseAddress! + receiving * block, count: block)
                ),
                deadline: deadline,
                operation: "allGather",
                received: { _ in }
            )
        }
    }

    // MARK: - Scratch

    /// At least `bytes` of scratch space, kept for later calls.
    func scratch(bytes: Int) -> UnsafeMutableRawPointer {
        if self.scratch.count < bytes {
            self.scratch.deallocate()
            self.scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
        }
        return self.scratch.baseAddress!
    }
}
