/// Credit-based flow control between this rank and one peer: a data message goes only where a
/// receive is posted for it, so no SEND ever meets a receiver that is not ready (and no queue pair
/// ever falls back on receiver-not-ready retries).
///
/// Each side keeps `receives` receives posted for the other's data. A credit is one of them:
/// `available` counts those the peer has posted for this side and this side has not used yet (as
/// far as it knows), and every data message uses one. When this side copies a message out of a
/// receive and posts that receive again, it owes the peer a credit. It pays what it owes with the
/// next data message it sends the peer (the count rides in the message's immediate value), or in a
/// message of credits alone on a second queue pair kept for them: when half the receives' worth is
/// owed, or, when this side is about to wait, once the peer may have no credit left and nothing on
/// its way (every receive is owed or holds data not yet copied out: anything on its way would wake
/// this side, which then looks again). Credit messages use no credit (their
/// queue pair's receives take no buffer and are posted again as each arrives; every such message
/// carries at least one of the `receives` credits, so no more than `receives` are ever on their way
/// or waiting), which is why neither side can end up waiting for credits that the other cannot send.
struct SendCredits: Sendable, Hashable {
    /// Receives the peer has posted for this side's data, not yet used.
    private(set) var available: Int
    /// Receives this side posted again after the peer's data, not yet told to the peer.
    private(set) var owed = 0
    /// Receives holding the peer's data that this side has not copied out yet.
    private(set) var held = 0
    /// Receives each side keeps posted for the other.
    let receives: Int
    /// Credits owed that are worth a message of their own.
    let threshold: Int

    /// The ledger at the start: the peer posted `receives` receives for this side.
    init(receives: Int) {
        precondition(receives >= 1, "credit flow control needs a receive per peer")
        self.available = receives
        self.receives = receives
        self.threshold = max(1, receives / 2)
    }

    /// Whether a data message may go now.
    var maySendData: Bool { self.available >= 1 }

    /// Uses a credit for a data message; returns the credits it pays back (all that are owed).
    mutating func sendData() -> UInt32 {
        precondition(self.maySendData, "a data message without a credit")
        self.available -= 1
        return self.payAll()
    }

    /// Whether to send a message of credits alone now; `waiting`: this side is about to wait for
    /// a completion.
    func shouldSendCredits(waiting: Bool) -> Bool {
        self.owed > 0 && (self.owed >= self.threshold || (waiting && self.owed + self.held >= self.receives))
    }

    /// The credits a message of credits alone pays back (all that are owed).
    mutating func sendCredits() -> UInt32 {
        precondition(self.owed > 0, "a message of credits with none owed")
        return self.payAll()
    }

    mutating func payAll() -> UInt32 {
        defer { self.owed = 0 }
        return UInt32(self.owed)
    }

    /// A message of credits alone from the peer paid back `credits`.
    mutating func received(credits: UInt32) {
        self.available += Int(credits)
    }

    /// A data message from the peer took a receive and paid back `credits`.
    mutating func receivedData(credits: UInt32) {
        self.available += Int(credits)
        self.held += 1
    }

    /// This side copied a data message out and posted its receive again.
    mutating func reposted() {
        precondition(self.held > 0, "a receive posted again that held no data")
        self.held -= 1
        self.owed += 1
    }
}
