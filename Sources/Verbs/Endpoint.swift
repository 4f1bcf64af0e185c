import CVerbs
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a peer needs to connect a reliable-connected queue pair to this one, and to write into
/// this side's registered memory: exchanged over an authenticated channel, never in the clear.
public struct QueuePairAddress: Sendable, Hashable {
    public var queuePairNumber: UInt32
    public var packetSequenceNumber: UInt32
    public var gid: [UInt8]
    /// InfiniBand's local identifier (0 on RoCE).
    public var localIdentifier: UInt16

    public init(queuePairNumber: UInt32, packetSequenceNumber: UInt32, gid: [UInt8], localIdentifier: UInt16) {
        self.queuePairNumber = queuePairNumber
        self.packetSequenceNumber = packetSequenceNumber
        self.gid = gid
        self.localIdentifier = localIdentifier
    }
}

/// A work completion, as the verbs layer reports it.
public struct Completion: Sendable, Hashable {
    /// The work request's id, as posted.
    public var id: UInt64
    /// What completed: `send`, `write`, `receive`, `receive with immediate`...
    public var operation: String
    /// Bytes received (for receives).
    public var bytes: Int
    /// The immediate value, for a receive of a write or send with immediate.
    public var immediate: UInt32?
}

/// One device opened for one user: its context, a protection domain, and one completion queue
/// whose completions are waited for through a completion channel (a file descriptor: no busy
/// poll, so ranks sharing cores do not starve each other or rxe's kernel work). `abort` from any
/// thread fails every wait at once. `close` releases everything, queue pairs and memory regions
/// made from it included (each also closes on its own).
public final class Endpoint: @unchecked Sendable {
    // Safe: the verbs objects are used by one thread at a time (the caller's); `abort` only
    // writes the event descriptor, and `aborted` is a Mutex.
    public let device: RDMADevice
    let context: UnsafeMutablePointer<ibv_context>
    let protectionDomain: UnsafeMutablePointer<ibv_pd>
    let channel: UnsafeMutablePointer<ibv_comp_channel>
    let completionQueue: UnsafeMutablePointer<ibv_cq>
    /// A pipe whose write end `abort` writes to wake a wait.
    let wake: (read: Int32, write: Int32)
    let aborted = Mutex<String?>(nil)
    var closed = false
    /// Completion events taken and not yet acknowledged (acknowledged before the queue is destroyed).
    var unacknowledged: UInt32 = 0
    let mtu: ibv_mtu
    /// The largest number of completions the queue holds.
    public let capacity: Int32

    /// Opens `name` (the first usable device when nil), with a completion queue of `capacity`.
    public init(device name: String? = nil, capacity: Int32 = 1024) throws {
        var count: Int32 = 0
        guard let list = rm_ibv_get_device_list(&count) else { throw VerbsError.failed("ibv_get_device_list") }
        defer { ibv_free_device_list(list) }
        var opened: (UnsafeMutablePointer<ibv_context>, RDMADevice)?
        var seen: [String] = []
        for index in 0..<Int(count) {
            guard let candidate = list[index] else { continue }
            let candidateName = String(cString: ibv_get_device_name(candidate))
            seen.append(candidateName)
            guard name == nil || name == candidateName, let context = ibv_open_device(candidate) else { continue }
            let described = RDMADevice.describe(name: candidateName, context: context, port: 1)
            if described.usable || name != nil {
                opened = (context, described)
                break
            }
            ibv_close_device(context)
        }
        guard let (context, device) = opened else {
            throw VerbsError(
                seen.isEmpty
                    ? "no RDMA device on this machine"
                    : "no usable RDMA device\(name.map { " named \($0)" } ?? "") (devices: \(seen.joined(separator: ", ")))"
            )
        }
        guard device.usable else {
            ibv_close_device(context)
            throw VerbsError("RDMA device \(device.name) port \(device.port) is not active or has no GID")
        }
        VerbsResources.opened("context")
        var attributes = ibv_port_attr()
        _ = rm_ibv_query_port(context, device.port, &attributes)
        self.mtu = attributes.active_mtu
        self.device = device
        self.context = context
        self.capacity = capacity
        var made: [() -> Void] = [
            {
                ibv_close_device(context)
                VerbsResources.closed("context")
            }
        ]
        func unwind() { for undo in made.reversed() { undo() } }
        guard let domain = ibv_alloc_pd(context) else {
            let error = VerbsError.failed("ibv_alloc_pd on \(device.name)")
            unwind()
            throw error
        }
        VerbsResources.opened("protection domain")
        made.append({
            ibv_dealloc_pd(domain)
            VerbsResources.closed("protection domain")
        })
        guard let channel = ibv_create_comp_channel(context) else {
            let error = VerbsError.failed("ibv_create_comp_channel on \(device.name)")
            unwind()
            throw error
        }
        VerbsResources.opened("completion channel")
        made.append({
            ibv_destroy_comp_channel(channel)
            VerbsResources.closed("completion channel")
        })
        guard let queue = ibv_create_cq(context, capacity, nil, channel, 0) else {
            let error = VerbsError.failed("ibv_create_cq of \(capacity) on \(device.name)")
            unwind()
            throw error
        }
        VerbsResources.opened("completion queue")
        made.append({
            ibv_destroy_cq(queue)
            VerbsResources.closed("completion queue")
        })
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else {
            let error = VerbsError.failed("pipe")
            unwind()
            throw error
        }
        for end in pipeEnds {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        let flags = fcntl(channel.pointee.fd, F_GETFL)
        _ = fcntl(channel.pointee.fd, F_SETFL, flags | O_NONBLOCK)
        self.protectionDomain = domain
        self.channel = channel
        self.completionQueue = queue
        self.wake = (pipeEnds[0], pipeEnds[1])
    }

    deinit { self.close() }

    /// Fails every wait, now and later, with `reason`. From any thread.
    public func abort(reason: String) {
        let first = self.aborted.withLock { aborted -> Bool in
            guard aborted == nil else { return false }
            aborted = reason
            return true
        }
        if first {
            var one: UInt8 = 1
            _ = write(self.wake.write, &one, 1)
        }
    }

    /// Releases the completion queue, channel, protection domain and context (queue pairs and
    /// memory regions must be closed first: they are, by their owners).
    public func close() {
        guard !self.closed else { return }
        self.closed = true
        if self.unacknowledged > 0 { ibv_ack_cq_events(self.completionQueue, self.unacknowledged) }
        ibv_destroy_cq(self.completionQueue)
        VerbsResources.closed("completion queue")
        ibv_destroy_comp_channel(self.channel)
        VerbsResources.closed("completion channel")
        ibv_dealloc_pd(self.protectionDomain)
        VerbsResources.closed("protection domain")
        ibv_close_device(self.context)
        VerbsResources.closed("context")
        Glibc.close(self.wake.read)
        Glibc.close(self.wake.write)
    }

    /// Waits until at least one completion is there, or `deadline`, or an abort; returns up to
    /// `limit` completions. A completion with an error status fails the wait, naming it; `doing`
    /// says what the caller waited for (for the error).
    ///
    /// `watch` are descriptors whose closing ends the wait too (a peer's connection, whose end
    /// says the peer is gone sooner than the queue pair's retries would): one that reads end of
    /// file or fails throws `watchedClosed`.
    ///
    /// A watched descriptor that closes is given `closeGrace` to let completions still on their
    /// way arrive (a peer that sent its last bytes and then closed has delivered them, but their
    /// completion may trail the close); the wait fails only if none comes in that time.
    public func completions(
        limit: Int = 16, deadline: ContinuousClock.Instant, watch: [Int32] = [],
        closeGrace: Duration = .milliseconds(500), doing: @autoclosure () -> String
    ) throws -> [Completion] {
        var entries = [ibv_wc](repeating: ibv_wc(), count: max(1, limit))
        var watch = watch
        var closedAt: (descriptor: Int32, time: ContinuousClock.Instant)?
        while true {
            if let closedAt, ContinuousClock.now - closedAt.time >= closeGrace {
                throw VerbsError(
                    "the connection watched while waiting for \(doing()) closed",
                    kind: .watchedClosed(descriptor: closedAt.descriptor))
            }
            if let reason = self.aborted.withLock({ $0 }) {
                throw VerbsError("aborted while waiting for \(doing()): \(reason)", kind: .aborted)
            }
            let found = try self.poll(&entries)
            if !found.isEmpty { return found }
            // Ask to be told of the next completion, then look once more (one may have come in
            // between), then sleep on the channel.
            guard rm_ibv_req_notify_cq(self.completionQueue, 0) == 0 else {
                throw VerbsError("ibv_req_notify_cq while waiting for \(doing())", code: errno)
            }
            let again = try self.poll(&entries)
            if !again.isEmpty { return again }
            var remaining = deadline - ContinuousClock.now
            guard remaining > .zero else {
                if let closedAt {
                    throw VerbsError(
                        "the connection watched while waiting for \(doing()) closed",
                        kind: .watchedClosed(descriptor: closedAt.descriptor))
                }
                throw VerbsError("no completion before the deadline while waiting for \(doing())", kind: .deadline)
            }
            if let closedAt { remaining = min(remaining, closeGrace - (ContinuousClock.now - closedAt.time)) }
            let milliseconds = Int32(
                max(
                    0,
                    min(
                        1000,
                        remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000
                            + 1)))
            var descriptors = [
                pollfd(fd: self.channel.pointee.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: self.wake.read, events: Int16(POLLIN), revents: 0),
            ]
            for descriptor in watch { descriptors.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)) }
            _ = Glibc.poll(&descriptors, nfds_t(descriptors.count), milliseconds)
            if descriptors[0].revents & Int16(POLLIN) != 0 {
                var queue: UnsafeMutablePointer<ibv_cq>?
                var context: UnsafeMutableRawPointer?
                if ibv_get_cq_event(self.channel, &queue, &context) == 0 {
                    self.unacknowledged += 1
                    if self.unacknowledged >= 64 {
                        ibv_ack_cq_events(self.completionQueue, self.unacknowledged)
                        self.unacknowledged = 0
                    }
                }
            }
            // Completions first: a peer that sent its last bytes and then closed its connection
            // has delivered them.
            let arrived = try self.poll(&entries)
            if !arrived.isEmpty { return arrived }
            for watched in descriptors.dropFirst(2) where watched.revents != 0 {
                // Nothing is sent on a watched connection while verbs carry the data: readable
                // means closed (or reset), unless bytes really are there.
                var byte: UInt8 = 0
                let peeked = recv(watched.fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                if peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EINTR)
                    || watched.revents & Int16(POLLHUP | POLLERR) != 0
                {
                    closedAt = closedAt ?? (watched.fd, ContinuousClock.now)
                    watch.removeAll { $0 == watched.fd }
                }
            }
        }
    }

    func poll(_ entries: inout [ibv_wc]) throws -> [Completion] {
        let count = entries.withUnsafeMutableBufferPointer {
            rm_ibv_poll_cq(self.completionQueue, Int32($0.count), $0.baseAddress)
        }
        guard count >= 0 else { throw VerbsError("ibv_poll_cq failed on \(self.device.name)") }
        var completions: [Completion] = []
        for entry in entries.prefix(Int(count)) {
            guard entry.status == IBV_WC_SUCCESS else {
                // An error completion's opcode is undefined: only the request's id says what it was.
                throw VerbsError(
                    "work request \(entry.wr_id) completed with \(String(cString: ibv_wc_status_str(entry.status))) (vendor error \(entry.vendor_err))",
                    kind: .completion(request: entry.wr_id))
            }
            let withImmediate = entry.wc_flags & UInt32(IBV_WC_WITH_IMM.rawValue) != 0
            completions.append(
                Completion(
                    id: entry.wr_id, operation: Self.name(entry.opcode), bytes: Int(entry.byte_len),
                    immediate: withImmediate ? UInt32(bigEndian: entry.imm_data) : nil))
        }
        return completions
    }

    static func name(_ opcode: ibv_wc_opcode) -> String {
        switch opcode {
        case IBV_WC_SEND: return "send"
        case IBV_WC_RDMA_WRITE: return "write"
        case IBV_WC_RDMA_READ: return "read"
        case IBV_WC_RECV: return "receive"
        case IBV_WC_RECV_RDMA_WITH_IMM: return "receive of a write with immediate"
        default: return "opcode \(opcode.rawValue)"
        }
    }
}

/// Memory registered with an endpoint's protection domain, for local access and remote writes.
public final class MemoryRegion: @unchecked Sendable {
    // Safe: immutable after init, but for `close`, which its owner calls once.
    /// Held so that the protection domain outlives the region.
    let endpoint: Endpoint
    let region: UnsafeMutablePointer<ibv_mr>
    public let address: UInt64
    public let bytes: Int
    var closed = false

    /// Registers `bytes` at `address` (which must stay valid until `close`).
    public init(_ endpoint: Endpoint, address: UnsafeMutableRawPointer, bytes: Int) throws {
        let access = Int32(
            IBV_ACCESS_LOCAL_WRITE.rawValue | IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_REMOTE_READ.rawValue)
        guard let region = rm_ibv_reg_mr(endpoint.protectionDomain, address, max(1, bytes), access) else {
            throw VerbsError.failed("ibv_reg_mr of \(bytes) bytes on \(endpoint.device.name)")
        }
        VerbsResources.opened("memory region")
        self.endpoint = endpoint
        self.region = region
        self.address = UInt64(UInt(bitPattern: address))
        self.bytes = bytes
    }

    deinit { self.close() }

    /// The key for local access.
    public var localKey: UInt32 { self.region.pointee.lkey }
    /// The key a peer writes with: sent only over an authenticated channel.
    public var remoteKey: UInt32 { self.region.pointee.rkey }

    public func close() {
        guard !self.closed else { return }
        self.closed = true
        ibv_dereg_mr(self.region)
        VerbsResources.closed("memory region")
    }
}

/// A reliable-connected queue pair on an endpoint (its completions go to the endpoint's queue).
public final class QueuePair: @unchecked Sendable {
    // Safe: used by one thread at a time.
    let endpoint: Endpoint
    let pair: UnsafeMutablePointer<ibv_qp>
    /// This side's starting packet sequence number.
    public let packetSequenceNumber: UInt32
    var closed = false

    /// Makes a queue pair that holds up to `depth` outstanding sends and receives, and moves it to
    /// INIT on the endpoint's port.
    public init(_ endpoint: Endpoint, depth: UInt32 = 256) throws {
        var attributes = ibv_qp_init_attr()
        attributes.send_cq = endpoint.completionQueue
        attributes.recv_cq = endpoint.completionQueue
        attributes.qp_type = IBV_QPT_RC
        attributes.cap.max_send_wr = depth
        attributes.cap.max_recv_wr = depth
        attributes.cap.max_send_sge = 1
        attributes.cap.max_recv_sge = 1
        guard let pair = ibv_create_qp(endpoint.protectionDomain, &attributes) else {
            throw VerbsError.failed("ibv_create_qp (depth \(depth)) on \(endpoint.device.name)")
        }
        VerbsResources.opened("queue pair")
        self.endpoint = endpoint
        self.pair = pair
        self.packetSequenceNumber = UInt32.random(in: 0..<(1 << 24))
        var state = ibv_qp_attr()
        state.qp_state = IBV_QPS_INIT
        state.pkey_index = 0
        state.port_num = endpoint.device.port
        state.qp_access_flags = UInt32(IBV_ACCESS_REMOTE_WRITE.rawValue | IBV_ACCESS_REMOTE_READ.rawValue)
        let mask =
            IBV_QP_STATE.rawValue | IBV_QP_PKEY_INDEX.rawValue | IBV_QP_PORT.rawValue
            | IBV_QP_ACCESS_FLAGS.rawValue
        let status = ibv_modify_qp(pair, &state, Int32(mask))
        guard status == 0 else {
            self.close()
            throw VerbsError("moving queue pair to INIT on \(endpoint.device.name)", code: status)
        }
    }

    deinit { self.close() }

    /// What the peer needs to connect to this queue pair.
    public var address: QueuePairAddress {
        var attributes = ibv_port_attr()
        _ = rm_ibv_query_port(self.endpoint.context, self.endpoint.device.port, &attributes)
        return QueuePairAddress(
            queuePairNumber: self.pair.pointee.qp_num, packetSequenceNumber: self.packetSequenceNumber,
            gid: self.endpoint.device.gid ?? [], localIdentifier: attributes.lid)
    }

    /// Connects to the peer at `remote`: INIT to RTR to RTS.
    public func connect(to remote: QueuePairAddress) throws {
        guard remote.gid.count == 16 else {
            throw VerbsError("the peer's GID has \(remote.gid.count) bytes, not 16")
        }
        var state = ibv_qp_attr()
        state.qp_state = IBV_QPS_RTR
        state.path_mtu = self.endpoint.mtu
        state.dest_qp_num = remote.queuePairNumber
        state.rq_psn = remote.packetSequenceNumber
        state.max_dest_rd_atomic = 1
        state.min_rnr_timer = 12
        state.ah_attr.is_global = 1
        state.ah_attr.dlid = remote.localIdentifier
        state.ah_attr.port_num = self.endpoint.device.port
        state.ah_attr.grh.hop_limit = 1
        state.ah_attr.grh.sgid_index = UInt8(self.endpoint.device.gidIndex)
        withUnsafeMutableBytes(of: &state.ah_attr.grh.dgid.raw) { $0.copyBytes(from: remote.gid) }
        var mask =
            IBV_QP_STATE.rawValue | IBV_QP_AV.rawValue | IBV_QP_PATH_MTU.rawValue | IBV_QP_DEST_QPN.rawValue
            | IBV_QP_RQ_PSN.rawValue | IBV_QP_MAX_DEST_RD_ATOMIC.rawValue | IBV_QP_MIN_RNR_TIMER.rawValue
        var status = ibv_modify_qp(self.pair, &state, Int32(mask))
        guard status == 0 else { throw VerbsError("moving queue pair to RTR", code: status) }
        state = ibv_qp_attr()
        state.qp_state = IBV_QPS_RTS
        state.timeout = 14
        state.retry_cnt = 7
        state.rnr_retry = 7
        state.sq_psn = self.packetSequenceNumber
        state.max_rd_atomic = 1
        mask =
            IBV_QP_STATE.rawValue | IBV_QP_TIMEOUT.rawValue | IBV_QP_RETRY_CNT.rawValue
            | IBV_QP_RNR_RETRY.rawValue | IBV_QP_SQ_PSN.rawValue | IBV_QP_MAX_QP_RD_ATOMIC.rawValue
        status = ibv_modify_qp(self.pair, &state, Int32(mask))
        guard status == 0 else { throw VerbsError("moving queue pair to RTS", code: status) }
    }

    /// Posts an RDMA WRITE with immediate of `bytes` from `source` (at `offset` in it) to the
    /// peer's `remoteAddress` under `remoteKey`, signalled: its completion carries `id`.
    public func write(
        _ source: MemoryRegion, offset: Int = 0, bytes: Int, remoteAddress: UInt64, remoteKey: UInt32,
        immediate: UInt32, id: UInt64
    ) throws {
        var request = ibv_send_wr()
        request.opcode = IBV_WR_RDMA_WRITE_WITH_IMM
        request.imm_data = immediate.bigEndian
        request.wr.rdma.remote_addr = remoteAddress
        request.wr.rdma.rkey = remoteKey
        try self.post(&request, from: source, offset: offset, bytes: bytes, id: id, what: "a write")
    }

    /// Posts a SEND of `bytes` from `source` at `offset`, with `immediate` if given, signalled: its
    /// completion carries `id`, and the peer's receive completion the immediate value. The peer
    /// must have a receive posted (or the queue pair retries until it has).
    public func send(_ source: MemoryRegion, offset: Int, bytes: Int, immediate: UInt32? = nil, id: UInt64) throws {
        var request = ibv_send_wr()
        request.opcode = immediate == nil ? IBV_WR_SEND : IBV_WR_SEND_WITH_IMM
        if let immediate { request.imm_data = immediate.bigEndian }
        try self.post(&request, from: source, offset: offset, bytes: bytes, id: id, what: "a send")
    }

    /// Posts `request` (its opcode and remote fields set), signalled, gathering `bytes` of
    /// `source` at `offset`.
    func post(
        _ request: inout ibv_send_wr, from source: MemoryRegion, offset: Int, bytes: Int, id: UInt64, what: String
    ) throws {
        precondition(offset >= 0 && bytes >= 0 && offset + bytes <= source.bytes, "\(what) lies outside its region")
        var element = ibv_sge(addr: source.address + UInt64(offset), length: UInt32(bytes), lkey: source.localKey)
        request.wr_id = id
        request.send_flags = UInt32(IBV_SEND_SIGNALED.rawValue)
        let status = withUnsafeMutablePointer(to: &element) { pointer -> Int32 in
            request.sg_list = pointer
            request.num_sge = bytes == 0 ? 0 : 1
            var bad: UnsafeMutablePointer<ibv_send_wr>?
            return rm_ibv_post_send(self.pair, &request, &bad)
        }
        guard status == 0 else { throw VerbsError("posting \(what) of \(bytes) bytes (request \(id))", code: status) }
    }

    /// Posts a receive of up to `bytes` into `target` at `offset`: a SEND from the peer lands
    /// there; its completion carries `id` and the bytes received.
    public func receive(into target: MemoryRegion, offset: Int, bytes: Int, id: UInt64) throws {
        precondition(offset >= 0 && bytes >= 0 && offset + bytes <= target.bytes, "the receive lies outside its region")
        var element = ibv_sge(addr: target.address + UInt64(offset), length: UInt32(bytes), lkey: target.localKey)
        var request = ibv_recv_wr()
        request.wr_id = id
        let status = withUnsafeMutablePointer(to: &element) { pointer -> Int32 in
            request.sg_list = pointer
            request.num_sge = 1
            var bad: UnsafeMutablePointer<ibv_recv_wr>?
            return rm_ibv_post_recv(self.pair, &request, &bad)
        }
        guard status == 0 else { throw VerbsError("posting a receive of \(bytes) bytes (request \(id))", code: status) }
    }

    /// Posts a receive for a write with immediate (it takes no buffer: the data lands where the
    /// peer wrote it); its completion carries `id` and the immediate value.
    public func receive(id: UInt64) throws {
        var request = ibv_recv_wr()
        request.wr_id = id
        request.num_sge = 0
        var bad: UnsafeMutablePointer<ibv_recv_wr>?
        let status = rm_ibv_post_recv(self.pair, &request, &bad)
        guard status == 0 else { throw VerbsError("posting a receive (request \(id))", code: status) }
    }

    public func close() {
        guard !self.closed else { return }
        self.closed = true
        ibv_destroy_qp(self.pair)
        VerbsResources.closed("queue pair")
    }
}
