import CoordinatorCore
import Etcd
import Foundation
import JobModel
import RingmasterSecurity

/// The coordinator's durable state in an etcd cluster (`--store etcd://HOST:PORT,...`), which
/// several coordinators share so that losing one machine loses no job. Under `prefix`:
///
///     tokens/ID     a join token (JSON: its secret, created, expires, redeemed, redeemed by)
///     nodes/ID      an admitted node (JSON)
///     jobs/NAME     a job's durable record (the JSON SQLite keeps)
///     progress/NAME what members reported of the job's training (JSON)
///     secrets/NAME  a 32-byte secret
///
/// Every change is one etcd transaction. Each one also compares `fence`'s conditions (the
/// leader key, while leading), so a coordinator that lost the leadership and has not noticed yet
/// changes nothing: its write throws `notLeading`. A read-modify-write (a token's redemption, a
/// node's renewal) compares the revision it read and tries again when another change came between.
public final class EtcdStateStore: StateStore {
    public let client: EtcdClient
    /// Where the keys live, ending in "/".
    public let prefix: String
    /// Conditions every write must also meet (none by default).
    let fence: @Sendable () -> [EtcdCondition]
    /// Shared by a set: a write that failed (etcd out of reach, say) may mean another leads, so
    /// nothing it was for is carried out.
    public var actsOnFailedWrites: Bool { false }

    /// A store in the cluster `client` reaches, under `prefix` (default "/ringmaster/").
    public init(
        client: EtcdClient, prefix: String = "/ringmaster/", fence: @escaping @Sendable () -> [EtcdCondition] = { [] }
    ) {
        self.client = client
        self.prefix = prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.fence = fence
    }

    /// A token as stored: its secret is in etcd as it is in SQLite; who may read the cluster may
    /// read the tokens (docs/operating.md says how to restrict it).
    struct StoredToken: Codable {
        var secret: Data
        var created: Double
        var expires: Double
        var redeemed: Double?
        var redeemedBy: String?
    }

    // MARK: - Tokens

    public func add(token: JoinToken, expires: Date, now: Date) throws {
        let stored = StoredToken(
            secret: Data(token.secret), created: now.timeIntervalSince1970, expires: expires.timeIntervalSince1970)
        let key = self.key("tokens", token.id)
        let result = try self.write(
            if: [.createRevision(key: key, equals: 0)], then: [.put(key: key, value: try Self.encode(stored))],
            doing: "saving join token \(token.id)")
        guard result.succeeded else {
            throw CoordinatorError(.stateStore, "a join token with id \(token.id) exists already; create another")
        }
    }

    public func usableToken(id: String, now: Date) throws -> JoinToken {
        guard let (stored, _) = try self.token(id) else {
            throw SecurityError(.invalidToken, "no join token has id \(id); create one with `ringmaster token create`")
        }
        if let redeemed = stored.redeemed {
            throw SecurityError(
                .tokenAlreadyUsed,
                "join token \(id) was already used at \(Date(timeIntervalSince1970: redeemed)); tokens are single-use, create a new one"
            )
        }
        let expires = Date(timeIntervalSince1970: stored.expires)
        guard now < expires else {
            throw SecurityError(.tokenExpired, "join token \(id) expired at \(expires); create a new one")
        }
        return JoinToken(id: id, secret: Array(stored.secret))
    }

    public func redeem(tokenID: String, node: String, certificateNotAfter: Date, now: Date) throws {
        let tokenKey = self.key("tokens", tokenID)
        let nodeKey = self.key("nodes", node)
        for _ in 0..<Self.attempts {
            guard var (stored, tokenRevision) = try self.token(tokenID), stored.redeemed == nil else {
                throw SecurityError(.tokenAlreadyUsed, "join token \(tokenID) was already used; create a new one")
            }
            let (record, nodeRevision) = try self.upserted(
                node: node, certificateNotAfter: certificateNotAfter, now: now)
            stored.redeemed = now.timeIntervalSince1970
            stored.redeemedBy = node
            let result = try self.write(
                if: [
                    .modRevision(key: tokenKey, equals: tokenRevision),
                    .modRevision(key: nodeKey, equals: nodeRevision),
                ],
                then: [
                    .put(key: tokenKey, value: try Self.encode(stored)),
                    .put(key: nodeKey, value: try Self.encode(record)),
                ],
                doing: "redeeming join token \(tokenID)")
            if result.succeeded { return }
        }
        throw CoordinatorError(
            .stateStore, "join token \(tokenID) could not be redeemed: it kept changing under this coordinator")
    }

    public func tokens() throws -> [TokenRecord] {
        let stored = try self.read("the join tokens") { try self.client.get(prefix: self.key("tokens", "")) }.map {
            item in
            (
                id: String(item.key.dropFirst(self.key("tokens", "").count)),
                token: try Self.decode(StoredToken.self, item)
            )
        }
        return
            stored
            .sorted { ($0.token.created, $0.id) < ($1.token.created, $1.id) }
            .map {
                TokenRecord(
                    id: $0.id, expires: Date(timeIntervalSince1970: $0.token.expires), redeemedBy: $0.token.redeemedBy)
            }
    }

    func token(_ id: String) throws -> (StoredToken, revision: Int64)? {
        guard let item = try self.read("join token \(id)", { try self.client.get(self.key("tokens", id)) }) else {
            return nil
        }
        return (try Self.decode(StoredToken.self, item), item.modRevision)
    }

    // MARK: - Nodes

    public func renewed(node: String, certificateNotAfter: Date, now: Date) throws {
        let key = self.key("nodes", node)
        for _ in 0..<Self.attempts {
            let (record, revision) = try self.upserted(node: node, certificateNotAfter: certificateNotAfter, now: now)
            let result = try self.write(
                if: [.modRevision(key: key, equals: revision)], then: [.put(key: key, value: try Self.encode(record))],
                doing: "saving node \(node)")
            if result.succeeded { return }
        }
        throw CoordinatorError(.stateStore, "node \(node) could not be saved: it kept changing under this coordinator")
    }

    public func nodes() throws -> [NodeRecord] {
        try self.read("the nodes") { try self.client.get(prefix: self.key("nodes", "")) }.map {
            try Self.decode(NodeRecord.self, $0)
        }
    }

    /// The node's record with the new certificate (joined now if it is new), and the revision it
    /// was read at (0: not there).
    func upserted(node: String, certificateNotAfter: Date, now: Date) throws -> (NodeRecord, Int64) {
        guard let item = try self.read("node \(node)", { try self.client.get(self.key("nodes", node)) }) else {
            return (NodeRecord(id: node, joined: now, certificateNotAfter: certificateNotAfter), 0)
        }
        var record = try Self.decode(NodeRecord.self, item)
        record.certificateNotAfter = certificateNotAfter
        return (record, item.modRevision)
    }

    // MARK: - Jobs

    /// One transaction per `batch` records (etcd caps a transaction's operations, 128 by
    /// default), each all or nothing; etcd makes every change durable, so `durable` changes
    /// nothing here.
    public func save(jobs records: [CoordinatorMachine.JobRecord], durable: Bool) throws {
        let puts = try records.map { record in
            do {
                return EtcdOperation.put(
                    key: self.key("jobs", record.spec.name), value: Array(try JSONEncoder().encode(record)))
            } catch {
                throw CoordinatorError(.stateStore, "could not encode job \(record.spec.name)", underlying: error)
            }
        }
        for start in stride(from: 0, to: puts.count, by: Self.batch) {
            let names = records[start..<min(records.count, start + Self.batch)].map(\.spec.name)
            let named =
                names.prefix(3).joined(separator: ", ") + (names.count > 3 ? " and \(names.count - 3) more" : "")
            _ = try self.write(
                if: [], then: Array(puts[start..<min(puts.count, start + Self.batch)]), doing: "saving job \(named)")
        }
    }

    public func jobs() throws -> [CoordinatorMachine.JobRecord] {
        try self.read("the jobs") { try self.client.get(prefix: self.key("jobs", "")) }.map { item in
            do {
                return try JSONDecoder().decode(CoordinatorMachine.JobRecord.self, from: Data(item.value))
            } catch {
                throw CoordinatorError(
                    .stateStore, "the stored record of job \(item.key) does not decode", underlying: error)
            }
        }
    }

    public func save(progress: [String: Data]) throws {
        let puts = progress.sorted { $0.key < $1.key }.map {
            EtcdOperation.put(key: self.key("progress", $0.key), value: Array($0.value))
        }
        for start in stride(from: 0, to: puts.count, by: Self.batch) {
            _ = try self.write(
                if: [], then: Array(puts[start..<min(puts.count, start + Self.batch)]),
                doing: "saving the progress of \(progress.count) job(s)")
        }
    }

    public func progress() throws -> [String: Data] {
        let start = self.key("progress", "")
        return Dictionary(
            try self.read("the jobs' progress") { try self.client.get(prefix: start) }.map {
                (String($0.key.dropFirst(start.count)), Data($0.value))
            },
            uniquingKeysWith: { $1 })
    }

    // MARK: - Secrets

    public func secret(named name: String) throws -> [UInt8] {
        let key = self.key("secrets", name)
        if let existing = try self.read("the \(name) secret", { try self.client.get(key) }) { return existing.value }
        var generator = SystemRandomNumberGenerator()
        let value = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        // Whoever creates it first wins; the others read what it wrote.
        let result = try self.write(
            if: [.createRevision(key: key, equals: 0)], then: [.put(key: key, value: value)], else: [.get(key: key)],
            doing: "creating the \(name) secret")
        if result.succeeded { return value }
        guard let stored = result.reads.first?.first else {
            throw CoordinatorError(.stateStore, "the \(name) secret was neither created nor found in etcd")
        }
        return stored.value
    }

    // MARK: - Writes

    /// How often a read-modify-write is tried before giving up on a key that keeps changing.
    static let attempts = 8
    /// Puts per transaction: under etcd's default cap of 128 operations, with room to spare.
    static let batch = 64

    /// A transaction guarded by the fence. Throws `notLeading` when the fence failed; returns
    /// whether the caller's own conditions held.
    func write(
        if conditions: [EtcdCondition], then operations: [EtcdOperation], else otherwise: [EtcdOperation] = [],
        doing what: String
    ) throws -> EtcdTransactionResult {
        let result: EtcdTransactionResult
        do {
            result = try self.client.transaction(
                guard: self.fence(), if: conditions, then: operations, else: otherwise, doing: what)
        } catch let error as EtcdError {
            throw CoordinatorError(
                .stateStore, "the etcd store failed \(what): the change may not be saved", underlying: error)
        }
        guard result.guardHeld else {
            throw CoordinatorError(
                .notLeading, "this coordinator no longer leads: \(what) was not saved; the leader carries on")
        }
        return result
    }

    /// A read, its failure told as the store's.
    func read<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as EtcdError {
            throw CoordinatorError(.stateStore, "the etcd store could not read \(what)", underlying: error)
        }
    }

    func key(_ kind: String, _ name: String) -> String { "\(self.prefix)\(kind)/\(name)" }

    static func encode<Value: Encodable>(_ value: Value) throws -> [UInt8] {
        Array(try JSONEncoder().encode(value))
    }

    static func decode<Value: Decodable>(_ type: Value.Type, _ item: EtcdKeyValue) throws -> Value {
        do {
            return try JSONDecoder().decode(type, from: Data(item.value))
        } catch {
            throw CoordinatorError(.stateStore, "the stored value at \(item.key) does not decode", underlying: error)
        }
    }
}
