import ControlPlane
import CoordinatorCore
import Etcd
import Foundation
import Logging
import Synchronization

/// The shell of `LeaderElection` for a coordinator sharing an etcd store: carries its actions out
/// against etcd on a thread of its own (etcd calls block), feeds the answers back with their send
/// times on the monotonic clock, and tells the coordinator when it starts and stops leading.
///
/// The leader key (`PREFIX/leader`) holds the leader's `Identity` as JSON, so that a standby can
/// name the leader to agents and operators, and the store's fence compares it byte for byte.
public final class LeaderElector: Sendable {
    /// Who leads: a coordinator's id, unique to its process, and the control address it serves at.
    public struct Identity: Sendable, Codable, Hashable {
        public var id: String
        public var address: String

        public init(id: String, address: String) {
            self.id = id
            self.address = address
        }
    }

    /// A change of this coordinator's role.
    public enum Change: Sendable, Hashable {
        /// It leads from now: load the state and serve.
        case elected
        /// It no longer leads: stop serving at once.
        case deposed(reason: String)
        /// A campaign found another coordinator leading (one other than the last seen).
        case sawLeader(Identity)
        /// What the coordinator served ended by itself (it is shutting down): told through
        /// `interrupt`, so that one stream carries every reason to move on.
        case interrupted
    }

    public let client: EtcdClient
    /// The leader key.
    public let key: String
    public let identity: Identity
    /// The identity as the key holds it.
    let value: [UInt8]
    let election: Mutex<LeaderElection>
    let origin = ContinuousClock.now
    let logger: Logger
    /// Role changes, in order, for the coordinator to act on.
    public let changes: AsyncStream<Change>
    let continuation: AsyncStream<Change>.Continuation
    /// Set by `stop`, with the condition the loop waits on between ticks.
    let stopping = Mutex(false)
    let wake = NSCondition()
    /// How often the loop looks at the time when nothing else wakes it.
    static let tick = Duration.milliseconds(20)

    /// An elector for `identity` with the leader key under `prefix`. `client`'s timeout should be
    /// shorter than the renewal interval (the election's calls are made one at a time).
    public init(
        client: EtcdClient, prefix: String = "/ringmaster/", identity: Identity,
        settings: LeaderElection.Settings = LeaderElection.Settings(), logger: Logger
    ) throws {
        self.client = client
        self.key = (prefix.hasSuffix("/") ? prefix : prefix + "/") + "leader"
        self.identity = identity
        self.value = Array(try JSONEncoder().encode(identity))
        self.election = Mutex(LeaderElection(id: self.value, settings: settings))
        self.logger = logger
        (self.changes, self.continuation) = AsyncStream.makeStream(of: Change.self)
    }

    /// What every write of the leader must also meet: the leader key still holds this identity.
    public var fence: [EtcdCondition] { [.valueEquals(key: self.key, self.value)] }

    /// Whether this coordinator may act as the leader now.
    public func leads() -> Bool {
        let now = self.now
        return self.election.withLock { $0.leads(at: now) }
    }

    /// The leader as last seen by a campaign (nil: none seen, or this coordinator).
    public var leader: Identity? {
        let role = self.election.withLock { $0.role }
        guard case .following(let bytes?) = role else { return nil }
        return try? JSONDecoder().decode(Identity.self, from: Data(bytes))
    }

    var now: Duration { ContinuousClock.now - self.origin }

    // MARK: - Running

    /// Starts the election's thread.
    public func start() {
        let thread = Thread { [self] in self.loop() }
        thread.name = "ringmaster-election"
        thread.start()
    }

    /// Puts `.interrupted` in the changes.
    public func interrupt() {
        self.continuation.yield(.interrupted)
    }

    /// Steps down (revoking the lease, so a standby leads at once) and ends the thread.
    public func stop() {
        let actions = self.election.withLock { $0.stop(now: self.now) }
        self.stopping.withLock { $0 = true }
        self.wake.lock()
        self.wake.signal()
        self.wake.unlock()
        self.perform(actions)
        self.continuation.finish()
    }

    func loop() {
        while !self.stopping.withLock({ $0 }) {
            let now = self.now
            self.perform(self.election.withLock { $0.tick(now: now) })
            self.wake.lock()
            if !self.stopping.withLock({ $0 }) {
                _ = self.wake.wait(until: Date().addingTimeInterval(Double(Self.tick.components.attoseconds) * 1e-18))
            }
            self.wake.unlock()
        }
    }

    /// Carries the actions out in order, and those their answers ask for.
    func perform(_ actions: [LeaderElection.Action]) {
        var queue = actions[...]
        while let action = queue.popFirst() {
            queue += self.carryOut(action)
        }
    }

    func carryOut(_ action: LeaderElection.Action) -> [LeaderElection.Action] {
        let sentAt = self.now
        do {
            switch action {
            case .grantLease:
                let ttl = self.election.withLock { $0.settings.lease }
                let seconds = max(
                    1, Int64((Double(ttl.components.seconds) + Double(ttl.components.attoseconds) * 1e-18).rounded(.up))
                )
                let (id, granted) = try self.client.grantLease(seconds: seconds)
                return self.answer { $0.leaseGranted(id: id, ttl: .seconds(granted), sentAt: sentAt, now: self.now) }
            case .campaign(let lease):
                let result = try self.client.transaction(
                    if: [.createRevision(key: self.key, equals: 0)],
                    then: [.put(key: self.key, value: self.value, lease: lease)], else: [.get(key: self.key)],
                    doing: "campaigning for the leadership")
                let holder = result.succeeded ? nil : result.reads.first?.first
                let seen = self.leader
                let actions = self.answer {
                    $0.campaigned(
                        lease: lease, won: result.succeeded, leader: result.succeeded ? self.value : holder?.value,
                        leaderLease: result.succeeded ? lease : (holder?.lease ?? 0), now: self.now)
                }
                if let leader = self.leader, leader != seen { self.continuation.yield(.sawLeader(leader)) }
                return actions
            case .renew(let lease):
                let left = try self.client.keepAlive(lease: lease)
                return self.answer { $0.renewed(lease: lease, ttl: .seconds(left), sentAt: sentAt, now: self.now) }
            case .revoke(let lease):
                try self.client.revoke(lease: lease)
                return []
            case .startLeading:
                self.logger.notice(
                    "this coordinator leads",
                    metadata: ["id": "\(self.identity.id)", "address": "\(self.identity.address)"])
                self.continuation.yield(.elected)
                return []
            case .stopLeading(let reason):
                self.logger.warning("this coordinator no longer leads", metadata: [LogKey.reason: "\(reason)"])
                self.continuation.yield(.deposed(reason: reason))
                return []
            }
        } catch {
            if case .revoke = action {
                // The lease ends by itself within its TTL.
                self.logger.info("could not revoke the lease", metadata: [LogKey.error: "\(error)"])
                return []
            }
            self.logger.debug("an election call failed", metadata: [LogKey.error: "\(error)"])
            return self.answer { $0.callFailed(action, now: self.now) }
        }
    }

    func answer(_ body: (inout LeaderElection) -> [LeaderElection.Action]) -> [LeaderElection.Action] {
        self.election.withLock { body(&$0) }
    }
}
