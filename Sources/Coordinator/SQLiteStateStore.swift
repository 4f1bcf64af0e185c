import CoordinatorCore
import Foundation
import GRDB
import JobModel
import RingmasterSecurity

/// The coordinator's durable state in SQLite (`state.sqlite` in the state directory, 0600), the
/// default store: one coordinator, nothing else to run. Every change is one transaction, so a
/// crash leaves either the old or the new state.
public final class SQLiteStateStore: StateStore {
    let database: DatabaseQueue
    /// The directory the database lives in, for error messages.
    let directory: String
    /// One coordinator writes it: a failed write's pushes still go out (see `StateStore`).
    public var actsOnFailedWrites: Bool { true }

    /// Opens (creating if needed) the store at `path`.
    public init(path: String) throws {
        self.directory = (path as NSString).deletingLastPathComponent
        var configuration = Configuration()
        configuration.journalMode = .wal
        configuration.busyMode = .timeout(5)
        do {
            self.database = try DatabaseQueue(path: path, configuration: configuration)
            try Self.migrator.migrate(self.database)
        } catch {
            throw CoordinatorError(.stateStore, "could not open the state database at \(path)", underlying: error)
        }
        for file in [path, "\(path)-wal", "\(path)-shm"] where FileManager.default.fileExists(atPath: file) {
            _ = chmod(file, 0o600)
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "token") { table in
                table.primaryKey("id", .text)
                table.column("secret", .blob).notNull()
                table.column("created", .double).notNull()
                table.column("expires", .double).notNull()
                table.column("redeemed", .double)
                table.column("redeemed_by", .text)
            }
            try db.create(table: "node") { table in
                table.primaryKey("id", .text)
                table.column("joined", .double).notNull()
                table.column("certificate_not_after", .double).notNull()
            }
        }
        migrator.registerMigration("v2-jobs") { db in
            try db.create(table: "job") { table in
                table.primaryKey("name", .text)
                table.column("record", .blob).notNull()
            }
            try db.create(table: "secret") { table in
                table.primaryKey("name", .text)
                table.column("value", .blob).notNull()
            }
        }
        migrator.registerMigration("v3-job-progress") { db in
            try db.create(table: "job_progress") { table in
                table.primaryKey("name", .text)
                table.column("progress", .blob).notNull()
            }
        }
        return migrator
    }

    // MARK: - Tokens

    /// Stores a new token valid until `expires`.
    public func add(token: JoinToken, expires: Date, now: Date) throws {
        try self.write { db in
            try db.execute(
                sql: "INSERT INTO token (id, secret, created, expires) VALUES (?, ?, ?, ?)",
                arguments: [token.id, Data(token.secret), now.timeIntervalSince1970, expires.timeIntervalSince1970]
            )
        }
    }

    /// Looks a token up for a join without redeeming it. Throws when it is unknown, used or expired.
    public func usableToken(id: String, now: Date) throws -> JoinToken {
        let row = try self.read { db in
            try Row.fetchOne(db, sql: "SELECT secret, expires, redeemed FROM token WHERE id = ?", arguments: [id])
        }
        guard let row else {
            throw SecurityError(.invalidToken, "no join token has id \(id); create one with `ringmaster token create`")
        }
        if let redeemed = row["redeemed"] as Double? {
            throw SecurityError(
                .tokenAlreadyUsed,
                "join token \(id) was already used at \(Date(timeIntervalSince1970: redeemed)); tokens are single-use, create a new one"
            )
        }
        let expires = Date(timeIntervalSince1970: row["expires"])
        guard now < expires else {
            throw SecurityError(.tokenExpired, "join token \(id) expired at \(expires); create a new one")
        }
        let secret: Data = row["secret"]
        return JoinToken(id: id, secret: Array(secret))
    }

    /// Marks a token used by `node` and records the node, in one transaction. Throws (changing
    /// nothing) if another join redeemed the token first.
    public func redeem(tokenID: String, node: String, certificateNotAfter: Date, now: Date) throws {
        try self.write { db in
            try db.execute(
                sql: "UPDATE token SET redeemed = ?, redeemed_by = ? WHERE id = ? AND redeemed IS NULL",
                arguments: [now.timeIntervalSince1970, node, tokenID]
            )
            guard db.changesCount == 1 else {
                throw SecurityError(.tokenAlreadyUsed, "join token \(tokenID) was already used; create a new one")
            }
            try Self.upsertNode(db, id: node, certificateNotAfter: certificateNotAfter, now: now)
        }
    }

    /// Every token, oldest first, without secrets.
    public func tokens() throws -> [TokenRecord] {
        try self.read { db in
            try Row.fetchAll(db, sql: "SELECT id, expires, redeemed_by FROM token ORDER BY created, id").map { row in
                TokenRecord(
                    id: row["id"], expires: Date(timeIntervalSince1970: row["expires"]), redeemedBy: row["redeemed_by"])
            }
        }
    }

    // MARK: - Nodes

    /// Records a renewed certificate for a known node.
    public func renewed(node: String, certificateNotAfter: Date, now: Date) throws {
        try self.write { db in
            try Self.upsertNode(db, id: node, certificateNotAfter: certificateNotAfter, now: now)
        }
    }

    /// Every admitted node, by id.
    public func nodes() throws -> [NodeRecord] {
        try self.read { db in
            try Row.fetchAll(db, sql: "SELECT id, joined, certificate_not_after FROM node ORDER BY id").map { row in
                NodeRecord(
                    id: row["id"],
                    joined: Date(timeIntervalSince1970: row["joined"]),
                    certificateNotAfter: Date(timeIntervalSince1970: row["certificate_not_after"])
                )
            }
        }
    }

    static func upsertNode(_ db: Database, id: String, certificateNotAfter: Date, now: Date) throws {
        try db.execute(
            sql: """
                INSERT INTO node (id, joined, certificate_not_after) VALUES (?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET certificate_not_after = excluded.certificate_not_after
                """,
            arguments: [id, now.timeIntervalSince1970, certificateNotAfter.timeIntervalSince1970]
        )
    }

    // MARK: - Jobs

    /// One transaction; `durable: false` skips its fsync (see `write`).
    public func save(jobs records: [CoordinatorMachine.JobRecord], durable: Bool) throws {
        guard !records.isEmpty else { return }
        var encoded: [(String, Data)] = []
        for record in records {
            do {
                encoded.append((record.spec.name, try JSONEncoder().encode(record)))
            } catch {
                throw CoordinatorError(.stateStore, "could not encode job \(record.spec.name)", underlying: error)
            }
        }
        try self.write(durable: durable) { db in
            for (name, data) in encoded {
                try db.execute(
                    sql:
                        "INSERT INTO job (name, record) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET record = excluded.record",
                    arguments: [name, data]
                )
            }
        }
    }

    /// Saves what members reported of jobs' training (loss, generations, checkpoints), by job,
    /// in one transaction without an fsync: it is what `job status` shows, and losing the last
    /// moments of it in a power cut loses nothing a job needs.
    public func save(progress: [String: Data]) throws {
        guard !progress.isEmpty else { return }
        try self.write(durable: false) { db in
            for (name, data) in progress {
                try db.execute(
                    sql:
                        "INSERT INTO job_progress (name, progress) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET progress = excluded.progress",
                    arguments: [name, data]
                )
            }
        }
    }

    /// Every job's saved progress, by job.
    public func progress() throws -> [String: Data] {
        let rows = try self.read { db in try Row.fetchAll(db, sql: "SELECT name, progress FROM job_progress") }
        return Dictionary(rows.map { ($0["name"] as String, $0["progress"] as Data) }, uniquingKeysWith: { $1 })
    }

    /// Every job's durable record.
    public func jobs() throws -> [CoordinatorMachine.JobRecord] {
        let rows = try self.read { db in try Row.fetchAll(db, sql: "SELECT name, record FROM job") }
        return try rows.map { row in
            let data: Data = row["record"]
            do {
                return try JSONDecoder().decode(CoordinatorMachine.JobRecord.self, from: data)
            } catch {
                let name: String = row["name"]
                throw CoordinatorError(
                    .stateStore, "the stored record of job \(name) does not decode", underlying: error)
            }
        }
    }

    // MARK: - Secrets

    /// A named 32-byte random secret, created on first use and kept.
    public func secret(named name: String) throws -> [UInt8] {
        try self.write { db in
            if let existing = try Data.fetchOne(db, sql: "SELECT value FROM secret WHERE name = ?", arguments: [name]) {
                return Array(existing)
            }
            var generator = SystemRandomNumberGenerator()
            let value = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            try db.execute(sql: "INSERT INTO secret (name, value) VALUES (?, ?)", arguments: [name, Data(value)])
            return value
        }
    }

    // MARK: - Transactions

    /// One transaction. A `durable` one is on disk when this returns (the WAL is fsynced, and with
    /// it every earlier commit); a non-durable one survives a crash of this process but may be
    /// lost to a power cut, which costs a redone step, never a reissued generation or token.
    func write<T>(durable: Bool = true, _ body: (Database) throws -> T) throws -> T {
        do {
            return try self.database.writeWithoutTransaction { db in
                try db.execute(sql: durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL")
                var result: T?
                try db.inTransaction {
                    result = try body(db)
                    return .commit
                }
                return result!
            }
        } catch let error as SecurityError {
            throw error
        } catch {
            throw self.writeFailure(error)
        }
    }

    /// A failed write as the operator needs to read it: a full disk named as such, with the
    /// directory to free space in. Nothing was changed on disk (the transaction rolled back).
    func writeFailure(_ error: any Error) -> CoordinatorError {
        var full = (error as? DatabaseError)?.resultCode == .SQLITE_FULL
        if !full, (error as? DatabaseError)?.resultCode == .SQLITE_IOERR {
            // A failed fsync or extension may come back as an I/O error: a disk with (almost) no
            // room left is the likely cause.
            var stats = statvfs()
            full = statvfs(self.directory, &stats) == 0 && UInt64(stats.f_bavail) * UInt64(stats.f_frsize) < 1 << 20
        }
        if full {
            return CoordinatorError(
                .stateFull,
                "no space left on device under \(self.directory): the change was not saved; free space there and try again",
                underlying: error
            )
        }
        return CoordinatorError(
            .stateStore, "a state database write under \(self.directory) failed: the change was not saved",
            underlying: error)
    }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try self.database.read(body)
        } catch {
            throw CoordinatorError(.stateStore, "a state database read failed", underlying: error)
        }
    }
}
