/// Which of the coordinators sharing one etcd store leads, as one of them sees it: the decisions,
/// without I/O. The shell (`LeaderElector`) carries out the actions against etcd and feeds the
/// answers back, with the send time of each call on the monotonic clock.
///
/// The algorithm. Each coordinator holds an etcd lease of `settings.lease` and keeps it alive. The
/// leader key exists while its writer's lease lives; a candidate campaigns by a transaction that
/// creates the key with its own id only if no key exists. Whoever created it leads until the key
/// is gone (its lease expired or was revoked), and every write it makes compares the key with its
/// id (the store's fence), so a leader that lost the key cannot change the state even before it
/// notices. A candidate that lost campaigns again every `settings.retry`, so it leads at most
/// one retry after the old leader's lease ran out.
///
/// A leader must stop acting before etcd could let another lead. etcd counts a lease's time from
/// when it received the grant or the last keep-alive, which is after this process sent it; so the
/// lease cannot end before the send time plus its TTL. The leader stops leading at the send time of
/// the last keep-alive etcd answered, plus the TTL, minus `settings.margin` (for the difference in
/// clock rates, and the time to stop). Without answers (a partition from etcd) that moment comes
/// and it steps down, by itself.
public struct LeaderElection: Sendable {
    /// Timings, on the monotonic clock.
    public struct Settings: Sendable, Hashable {
        /// The lease's time to live. etcd counts in whole seconds and grants at least its own
        /// minimum (1.5 election timeouts, rounded up); the TTL it grants is the one used.
        public var lease: Duration
        /// How often the lease is renewed.
        public var renewal: Duration
        /// How often a candidate that lost campaigns again.
        public var retry: Duration
        /// How long before its lease could end a leader stops leading.
        public var margin: Duration

        /// A 2 s lease renewed every 500 ms; a lost candidate retries every 250 ms; a leader without
        /// a renewal for 1.5 s steps down.
        public init(
            lease: Duration = .seconds(2), renewal: Duration? = nil, retry: Duration? = nil, margin: Duration? = nil
        ) {
            self.lease = lease
            self.renewal = renewal ?? lease / 4
            self.retry = retry ?? lease / 8
            self.margin = margin ?? lease / 4
        }
    }

    /// What this coordinator is.
    public enum Role: Sendable, Hashable {
        /// Without a lease yet (starting, or after its lease was lost).
        case candidate
        /// It leads; its writes carry its id in the fence.
        case leading
        /// Another leads (the leader key's value, as written by that coordinator), or nobody yet.
        case following(leader: [UInt8]?)
        /// Stopped: it leads no more and asks nothing of etcd.
        case stopped
    }

    /// What the shell does next.
    public enum Action: Sendable, Hashable {
        /// Grants a lease of `settings.lease` seconds; answer with `leaseGranted` or `callFailed`.
        case grantLease
        /// Creates the leader key holding `id`, attached to `lease`, if it does not exist; answer
        /// with `campaigned` (whether it created it, and the key's value now) or `callFailed`.
        case campaign(lease: Int64)
        /// Renews the lease; answer with `renewed` (the TTL left, 0 when the lease is gone) or
        /// `callFailed`.
        case renew(lease: Int64)
        /// Revokes the lease, so that another may lead at once (a stop); no answer needed.
        case revoke(lease: Int64)
        /// This coordinator now leads: load the state and serve.
        case startLeading
        /// This coordinator no longer leads: stop serving at once, and say why.
        case stopLeading(reason: String)
    }

    public let settings: Settings
    /// This coordinator's id, the leader key's value while it leads.
    public let id: [UInt8]
    public private(set) var role: Role = .candidate

    /// The lease held, its TTL as granted, and until when it surely lives.
    var lease: (id: Int64, ttl: Duration, livesUntil: Duration)?
    /// When the next renewal and the next campaign are due.
    var renewalDue: Duration = .zero
    var campaignDue: Duration = .zero
    /// Whether a call is out: one at a time of each kind.
    var granting = false
    var campaigning = false
    var renewing = false

    public init(id: [UInt8], settings: Settings = Settings()) {
        self.id = id
        self.settings = settings
    }

    /// Whether this coordinator may act as the leader at `now` (the moment it would stop has not come).
    public func leads(at now: Duration) -> Bool {
        guard case .leading = self.role, let lease = self.lease else { return false }
        return now < lease.livesUntil - self.settings.margin
    }

    // MARK: - Events

    /// Time passed: renew, campaign or step down as due.
    public mutating func tick(now: Duration) -> [Action] {
        var actions: [Action] = []
        if case .stopped = self.role { return actions }
        if case .leading = self.role, !self.leads(at: now) {
            actions += self.loseLeadership(
                reason:
                    "its lease was not renewed in time (the last answered renewal was sent more than \(self.settings.lease - self.settings.margin) ago)",
                now: now)
        }
        if let lease = self.lease, now >= lease.livesUntil {
            // Expired at etcd by now, or about to: a new one is needed.
            self.lease = nil
        }
        guard let lease = self.lease else {
            if !self.granting {
                self.granting = true
                actions.append(.grantLease)
            }
            return actions
        }
        if now >= self.renewalDue && !self.renewing {
            self.renewing = true
            actions.append(.renew(lease: lease.id))
        }
        if case .following = self.role, now >= self.campaignDue, !self.campaigning {
            self.campaigning = true
            actions.append(.campaign(lease: lease.id))
        }
        if case .candidate = self.role, !self.campaigning {
            self.campaigning = true
            actions.append(.campaign(lease: lease.id))
        }
        return actions
    }

    /// etcd granted lease `id` with `ttl`, asked at `sentAt`.
    public mutating func leaseGranted(id: Int64, ttl: Duration, sentAt: Duration, now: Duration) -> [Action] {
        self.granting = false
        if case .stopped = self.role { return [.revoke(lease: id)] }
        self.lease = (id, ttl, sentAt + ttl)
        self.renewalDue = sentAt + self.settings.renewal
        return self.tick(now: now)
    }

    /// A campaign with lease `lease` created the leader key (`won`), or found it holding
    /// `leader`, attached to lease `leaderLease`.
    public mutating func campaigned(lease: Int64, won: Bool, leader: [UInt8]?, leaderLease: Int64, now: Duration)
        -> [Action]
    {
        self.campaigning = false
        self.campaignDue = now + self.settings.retry
        switch self.role {
        case .stopped, .leading: return []
        case .candidate, .following: break
        }
        // An answer about a lease given up meanwhile says nothing about the one held now.
        guard let held = self.lease, held.id == lease else { return [] }
        // The key counts as this coordinator's only on the lease it holds: under an older lease of
        // its own (it stepped down, then took a new lease) it is left to expire like another's.
        if won || (leader == self.id && leaderLease == held.id) {
            self.role = .leading
            guard self.leads(at: now) else {
                return self.loseLeadership(reason: "it won with a lease too close to its end", now: now)
            }
            return [.startLeading]
        }
        self.role = .following(leader: leader)
        return []
    }

    /// A renewal of `lease` sent at `sentAt` was answered with `ttl` left (zero: the lease is gone).
    public mutating func renewed(lease: Int64, ttl: Duration, sentAt: Duration, now: Duration) -> [Action] {
        self.renewing = false
        self.renewalDue = sentAt + self.settings.renewal
        guard let held = self.lease, held.id == lease else { return [] }
        if ttl <= .zero {
            self.lease = nil
            var actions: [Action] = []
            if case .leading = self.role {
                actions += self.loseLeadership(reason: "etcd says its lease has expired", now: now)
            }
            return actions + self.tick(now: now)
        }
        self.lease = (held.id, held.ttl, max(held.livesUntil, sentAt + held.ttl))
        return []
    }

    /// A call failed (etcd unreachable, no quorum, or an answer that does not decode).
    public mutating func callFailed(_ action: Action, now: Duration) -> [Action] {
        switch action {
        case .grantLease: self.granting = false
        case .campaign: self.campaigning = false
        case .renew: self.renewing = false
        case .revoke, .startLeading, .stopLeading: break
        }
        self.campaignDue = now + self.settings.retry
        self.renewalDue = min(self.renewalDue, now + self.settings.retry)
        // Leadership ends only when the time comes (`tick`): one failed call is not a lost lease.
        return []
    }

    /// Stops: a leader steps down and frees the key for another at once.
    public mutating func stop(now: Duration) -> [Action] {
        var actions: [Action] = []
        if case .leading = self.role {
            actions.append(.stopLeading(reason: "it is stopping"))
        }
        if let lease = self.lease { actions.append(.revoke(lease: lease.id)) }
        self.lease = nil
        self.role = .stopped
        return actions
    }

    // MARK: - Helpers

    mutating func loseLeadership(reason: String, now: Duration) -> [Action] {
        self.role = .candidate
        // The key may still be ours at etcd; a campaign either finds it ours (and leads again) or
        // another's. Campaign at once only with a fresh lease: the old one may be past its time.
        self.campaignDue = now + self.settings.retry
        return [.stopLeading(reason: reason)]
    }
}
