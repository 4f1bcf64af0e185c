/// How many control connections the coordinator holds, and which new ones it refuses at accept
/// time. A value with no I/O; the service keeps one behind a lock.
///
/// A connection is *unauthenticated* from its accept until its TLS handshake shows a client
/// certificate: the join path lets anyone who reaches the port get that far, so such connections
/// are capped, and each is closed when it has not authenticated (or finished its join) within the
/// join deadline.
///
/// - From one source address, a new unauthenticated connection over its share is refused.
/// - In all, a new one that finds every unauthenticated slot taken (a flood from many addresses)
///   takes the slot of the oldest connection that finished its TLS handshake without a certificate
///   and has not begun a join (what a flood holds, idle), which is closed. When none is idle, the
///   newcomer is refused instead: a handshake or a join under way is never cut short (in TLS 1.3
///   a client may already count its handshake done while the server does not, so cutting it
///   would break a request, not a connect that can be tried again), and a refusal at accept is one
///   a client can retry.
/// - Every connection, authenticated or not, counts against `maximumConnections`, which stays
///   below the process's descriptor limit so that the process always has descriptors left for its
///   own files (and for libdispatch, which traps when it cannot open one). Over it, a new
///   connection is refused.
public struct ConnectionBudget: Sendable {
    /// Limits.
    public struct Limits: Sendable, Hashable {
        /// Connections of any kind.
        public var maximumConnections: Int
        /// Connections that have not authenticated, in all.
        public var maximumUnauthenticated: Int
        /// Connections that have not authenticated, from one source address.
        public var maximumUnauthenticatedPerAddress: Int

        /// Makes limits.
        public init(maximumConnections: Int, maximumUnauthenticated: Int, maximumUnauthenticatedPerAddress: Int) {
            self.maximumConnections = maximumConnections
            self.maximumUnauthenticated = maximumUnauthenticated
            self.maximumUnauthenticatedPerAddress = maximumUnauthenticatedPerAddress
        }

        /// Limits for a process allowed `descriptors` open files: a reserve of an eighth (at least
        /// 64) is kept for the process itself; unauthenticated connections get at most 1,024 of
        /// the rest, or half of it, and 64 of those per source address.
        public static func forDescriptorLimit(_ descriptors: Int) -> Limits {
            let connections = max(16, descriptors - max(64, descriptors / 8))
            let unauthenticated = max(8, min(1024, connections / 2))
            return Limits(
                maximumConnections: connections,
                maximumUnauthenticated: unauthenticated,
                maximumUnauthenticatedPerAddress: max(4, min(64, unauthenticated / 4))
            )
        }
    }

    /// Why a connection was refused.
    public enum Refusal: String, Error, Sendable, Hashable {
        /// Every connection slot is taken.
        case tooManyConnections = "too_many_connections"
        /// The source address holds its share of unauthenticated slots.
        case tooManyFromAddress = "too_many_from_address"
        /// Every unauthenticated slot is taken by a handshake or a join under way.
        case tooManyUnauthenticated = "too_many_unauthenticated"
        /// The connection was the oldest idle unauthenticated one when a new one needed its slot.
        case displaced
    }

    /// A connection let in, and the older one it displaced, if any (the caller closes that one).
    public struct Admission: Sendable, Hashable {
        /// The new connection's slot.
        public var ticket: Ticket
        /// The oldest unauthenticated connection, whose slot the new one took.
        public var displaced: Ticket?
    }

    /// An admitted connection.
    public struct Ticket: Sendable, Hashable {
        let id: UInt64
        /// Its source address.
        public let address: String
    }

    /// Where an admitted connection is, for the order in which unauthenticated ones are displaced.
    enum Stage: Int, Sendable, Hashable {
        /// Finished its TLS handshake without a certificate and has not begun a join: the only
        /// stage that is displaced.
        case idle
        /// In its TLS handshake.
        case handshaking
        /// Began a join.
        case joining
        /// Showed a client certificate: no longer unauthenticated, never displaced.
        case authenticated
    }

    /// The limits in force.
    public let limits: Limits
    /// Admitted connections still open: their source address and stage.
    var open: [UInt64: (address: String, stage: Stage)] = [:]
    /// Unauthenticated connections held, by source address.
    var unauthenticatedByAddress: [String: Int] = [:]
    /// The unauthenticated connections' ids, oldest first (ids only grow, so appending keeps the
    /// order; at most `maximumUnauthenticated` of them).
    var unauthenticatedIDs: [UInt64] = []
    var nextID: UInt64 = 0

    /// Unauthenticated connections held, in all.
    public var unauthenticated: Int { self.unauthenticatedIDs.count }

    /// Connections held.
    public var connections: Int { self.open.count }

    /// An empty budget.
    public init(limits: Limits) {
        self.limits = limits
    }

    /// A connection from `address` was accepted: an unauthenticated slot for it (perhaps the
    /// oldest one's), or why not (the caller closes it at once).
    public mutating func admit(from address: String) -> Result<Admission, Refusal> {
        if self.unauthenticatedByAddress[address, default: 0] >= self.limits.maximumUnauthenticatedPerAddress {
            return .failure(.tooManyFromAddress)
        }
        var displaced: Ticket?
        if self.unauthenticated >= self.limits.maximumUnauthenticated {
            guard let victim = self.unauthenticatedIDs.first(where: { self.open[$0]?.stage == .idle }) else {
                return .failure(.tooManyUnauthenticated)
            }
            let ticket = Ticket(id: victim, address: self.open[victim]!.address)
            self.closed(ticket)
            displaced = ticket
        }
        if self.open.count >= self.limits.maximumConnections { return .failure(.tooManyConnections) }
        self.nextID += 1
        self.open[self.nextID] = (address, .handshaking)
        self.unauthenticatedIDs.append(self.nextID)
        self.unauthenticatedByAddress[address, default: 0] += 1
        return .success(Admission(ticket: Ticket(id: self.nextID, address: address), displaced: displaced))
    }

    /// The connection finished its TLS handshake without a client certificate.
    public mutating func handshakeCompletedWithoutCertificate(_ ticket: Ticket) {
        guard self.open[ticket.id]?.stage == .handshaking else { return }
        self.open[ticket.id]?.stage = .idle
    }

    /// The connection began a join.
    public mutating func joining(_ ticket: Ticket) {
        guard self.open[ticket.id]?.stage == .idle else { return }
        self.open[ticket.id]?.stage = .joining
    }

    /// The connection presented a client certificate: it leaves the unauthenticated slots and
    /// keeps its place among all connections. Nothing happens for one already closed.
    public mutating func authenticated(_ ticket: Ticket) {
        guard let entry = self.open[ticket.id], entry.stage != .authenticated else { return }
        self.open[ticket.id]?.stage = .authenticated
        self.releaseUnauthenticated(ticket.id, entry.address)
    }

    /// The connection closed: its slots are free.
    public mutating func closed(_ ticket: Ticket) {
        guard let entry = self.open.removeValue(forKey: ticket.id) else { return }
        if entry.stage != .authenticated { self.releaseUnauthenticated(ticket.id, entry.address) }
    }

    mutating func releaseUnauthenticated(_ id: UInt64, _ address: String) {
        // Binary search: the ids are in ascending order.
        var low = 0
        var high = self.unauthenticatedIDs.count
        while low < high {
            let middle = (low + high) / 2
            if self.unauthenticatedIDs[middle] < id { low = middle + 1 } else { high = middle }
        }
        if low < self.unauthenticatedIDs.count, self.unauthenticatedIDs[low] == id {
            self.unauthenticatedIDs.remove(at: low)
        }
        let left = self.unauthenticatedByAddress[address, default: 1] - 1
        self.unauthenticatedByAddress[address] = left > 0 ? left : nil
    }
}
