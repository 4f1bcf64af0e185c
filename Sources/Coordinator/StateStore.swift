import CoordinatorCore
import Foundation
import JobModel
import RingmasterSecurity

/// The coordinator's durable state: join tokens, admitted nodes, jobs (their durable records:
/// spec, phase, generation, members, data cursor), what members reported of their training, and
/// the key data-plane secrets derive from. `SQLiteStateStore` keeps it on one machine (the
/// default); `EtcdStateStore` in an etcd cluster that several coordinators share.
///
/// Every change is atomic: after a crash, or a write that throws, the store holds either the old
/// state or the new one. Calls block; the coordinator makes them from its writer's thread and
/// from request handlers, never from an event loop.
public protocol StateStore: AnyObject, Sendable {
    /// Stores a new token valid until `expires`.
    func add(token: JoinToken, expires: Date, now: Date) throws
    /// Looks a token up for a join without redeeming it. Throws when it is unknown, used or expired.
    func usableToken(id: String, now: Date) throws -> JoinToken
    /// Marks a token used by `node` and records the node, in one change. Throws (changing
    /// nothing) if another join redeemed the token first.
    func redeem(tokenID: String, node: String, certificateNotAfter: Date, now: Date) throws
    /// Every token, oldest first, without secrets.
    func tokens() throws -> [TokenRecord]

    /// Records a renewed certificate for a known node.
    func renewed(node: String, certificateNotAfter: Date, now: Date) throws
    /// Every admitted node, by id.
    func nodes() throws -> [NodeRecord]

    /// Saves jobs' durable records: each one all or nothing, and all of them in one change where
    /// the store allows (etcd: 64 to a change, its transactions being capped).
    /// `durable: false` for records whose cursors alone moved: such a change may be lost to a
    /// power cut (a redone step, never a reissued generation), where the store makes that cheaper.
    func save(jobs records: [CoordinatorMachine.JobRecord], durable: Bool) throws
    /// Every job's durable record.
    func jobs() throws -> [CoordinatorMachine.JobRecord]
    /// Saves what members reported of jobs' training (loss, generations, checkpoints), by job: what
    /// `job status` shows, so a store may trade its durability for speed.
    func save(progress: [String: Data]) throws
    /// Every job's saved progress, by job.
    func progress() throws -> [String: Data]

    /// A named 32-byte random secret, created on first use and kept; every coordinator sharing the
    /// store reads the same one.
    func secret(named name: String) throws -> [UInt8]

    /// Whether what a write that failed was for may still be carried out (pushed to agents): yes
    /// for a store only this coordinator writes (SQLite: a full disk must not stop training, and
    /// `job status` says what is not saved); no for a shared one, where a write that fails may mean
    /// that another coordinator leads by now.
    var actsOnFailedWrites: Bool { get }
}

extension StateStore {
    /// Saves one job's durable record.
    public func save(job record: CoordinatorMachine.JobRecord, durable: Bool = true) throws {
        try self.save(jobs: [record], durable: durable)
    }
}

/// A node the coordinator admitted.
public struct NodeRecord: Sendable, Hashable, Codable {
    /// The node id (its certificate's name).
    public var id: String
    /// When it first joined.
    public var joined: Date
    /// When its current certificate expires.
    public var certificateNotAfter: Date

    public init(id: String, joined: Date, certificateNotAfter: Date) {
        self.id = id
        self.joined = joined
        self.certificateNotAfter = certificateNotAfter
    }
}

/// A join token as listed for operators: never its secret.
public struct TokenRecord: Sendable, Hashable {
    /// The public id.
    public var id: String
    /// When it expires.
    public var expires: Date
    /// Which node redeemed it, if any.
    public var redeemedBy: String?

    public init(id: String, expires: Date, redeemedBy: String?) {
        self.id = id
        self.expires = expires
        self.redeemedBy = redeemedBy
    }
}
