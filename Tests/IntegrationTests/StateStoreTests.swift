import Coordinator
import CoordinatorCore
import Etcd
import Foundation
import JobModel
import RingmasterSecurity
import Testing

/// The state store's contract, held by both stores: SQLite in a file, and etcd in a real
/// three-member cluster on loopback (scripts/etcd-cluster.sh), over plain HTTP and over TLS with
/// a client certificate. Then what only etcd has: a fence
/// that keeps a deposed leader from writing, and service through the loss of one member.
@Suite("State stores", .serialized)
struct StateStoreTests {
    enum Kind: String, CaseIterable, CustomTestStringConvertible {
        /// `etcdTLS`: the cluster speaks TLS only and asks for a client certificate.
        case sqlite, etcd, etcdTLS
        var testDescription: String { self.rawValue }
    }

    /// A fresh store of `kind`, a second handle on the same state, and what keeps them alive.
    final class Stores: Sendable {
        let first: any StateStore
        let makeAnother: @Sendable () throws -> any StateStore
        let cluster: EtcdCluster?
        let directory: TestDirectory

        init(_ kind: Kind) async throws {
            self.directory = try TestDirectory()
            switch kind {
            case .sqlite:
                let path = "\(self.directory.path)/state.sqlite"
                self.first = try SQLiteStateStore(path: path)
                self.makeAnother = { try SQLiteStateStore(path: path) }
                self.cluster = nil
            case .etcd, .etcdTLS:
                let cluster = try await EtcdCluster(tls: kind == .etcdTLS)
                self.first = EtcdStateStore(client: try cluster.client())
                self.makeAnother = { EtcdStateStore(client: try cluster.client()) }
                self.cluster = cluster
            }
        }

        func stop() async { await self.cluster?.stop() }
    }

    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func record(_ name: String, cursor: UInt64) throws -> CoordinatorMachine.JobRecord {
        var machine = CoordinatorMachine()
        _ = try machine.apply(
            .submit(
                JobSpec(
                    name: name, datasetPath: "/data/set", datasetSamples: 100, globalBatchSize: 10, steps: 1000,
                    seed: 7, minNodes: 1, maxNodes: 2)),
            now: .zero)
        var record = try #require(machine.record(job: name))
        record.cursor = cursor
        return record
    }

    static func code(_ body: () throws -> Void) -> SecurityError.Code? {
        do {
            try body()
            return nil
        } catch let error as SecurityError {
            return error.code
        } catch {
            return nil
        }
    }

    // MARK: - The contract

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_aToken_isUsableOnce_thenRefusedAsUsed_andTheNodeIsAdmitted(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let store = stores.first
        let token = JoinToken.generate()
        try store.add(token: token, expires: Self.now.addingTimeInterval(600), now: Self.now)
        #expect(try store.usableToken(id: token.id, now: Self.now).secret == token.secret)

        let notAfter = Self.now.addingTimeInterval(86_400)
        try store.redeem(tokenID: token.id, node: "node-a", certificateNotAfter: notAfter, now: Self.now)
        #expect(
            Self.code {
                try store.redeem(tokenID: token.id, node: "node-b", certificateNotAfter: notAfter, now: Self.now)
            }
                == .tokenAlreadyUsed)
        #expect(Self.code { _ = try store.usableToken(id: token.id, now: Self.now) } == .tokenAlreadyUsed)
        #expect(try store.nodes() == [NodeRecord(id: "node-a", joined: Self.now, certificateNotAfter: notAfter)])
        #expect(
            try store.tokens() == [
                TokenRecord(id: token.id, expires: Self.now.addingTimeInterval(600), redeemedBy: "node-a")
            ])
        await stores.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_unknownAndExpiredTokens_areRefused_andTokensListOldestFirst(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let store = stores.first
        #expect(Self.code { _ = try store.usableToken(id: "0123456789abcdef", now: Self.now) } == .invalidToken)
        let old = JoinToken.generate()
        let new = JoinToken.generate()
        try store.add(token: new, expires: Self.now.addingTimeInterval(60), now: Self.now.addingTimeInterval(10))
        try store.add(token: old, expires: Self.now.addingTimeInterval(5), now: Self.now)
        #expect(
            Self.code { _ = try store.usableToken(id: old.id, now: Self.now.addingTimeInterval(6)) } == .tokenExpired)
        #expect(try store.tokens().map(\.id) == [old.id, new.id])
        #expect(try store.tokens().allSatisfy { $0.redeemedBy == nil })
        await stores.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_twoJoinsRacingForOneToken_exactlyOneWins(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let token = JoinToken.generate()
        try stores.first.add(token: token, expires: Self.now.addingTimeInterval(600), now: Self.now)
        let other = try stores.makeAnother()
        let outcomes = await withTaskGroup(of: (String, Bool?).self) { group in
            for (node, store) in [("node-a", stores.first), ("node-b", other)] {
                group.addTask {
                    do {
                        try store.redeem(
                            tokenID: token.id, node: node, certificateNotAfter: Self.now.addingTimeInterval(60),
                            now: Self.now)
                        return (node, true)
                    } catch let error as SecurityError where error.code == .tokenAlreadyUsed {
                        return (node, false)
                    } catch {
                        Issue.record("redeem failed otherwise: \(error)")
                        return (node, nil)
                    }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let won = outcomes.filter { $0.1 == true }.map(\.0)
        #expect(won.count == 1 && outcomes.filter { $0.1 == false }.count == 1, "\(outcomes)")
        #expect(try stores.first.nodes().map(\.id) == won)
        await stores.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_aRenewal_keepsWhenTheNodeJoined(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let store = stores.first
        let token = JoinToken.generate()
        try store.add(token: token, expires: Self.now.addingTimeInterval(600), now: Self.now)
        try store.redeem(
            tokenID: token.id, node: "node-a", certificateNotAfter: Self.now.addingTimeInterval(100), now: Self.now)
        let later = Self.now.addingTimeInterval(50)
        try store.renewed(node: "node-a", certificateNotAfter: later.addingTimeInterval(1000), now: later)
        #expect(
            try store.nodes() == [
                NodeRecord(id: "node-a", joined: Self.now, certificateNotAfter: later.addingTimeInterval(1000))
            ])
        await stores.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_jobsAndProgress_readBackAsSaved_andALaterSaveReplaces(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let store = stores.first
        let a = try Self.record("job-a", cursor: 3)
        let b = try Self.record("job-b", cursor: 0)
        try store.save(jobs: [a, b], durable: true)
        var moved = a
        moved.cursor = 9
        try store.save(jobs: [moved], durable: false)
        try store.save(progress: ["job-a": Data("{\"loss\":1}".utf8)])
        try store.save(progress: ["job-a": Data("{\"loss\":0.5}".utf8), "job-b": Data("{}".utf8)])

        let again = try stores.makeAnother()
        #expect(Set(try again.jobs()) == [moved, b])
        #expect(try again.progress() == ["job-a": Data("{\"loss\":0.5}".utf8), "job-b": Data("{}".utf8)])
        await stores.stop()
    }

    /// More jobs at once than one etcd transaction may hold (128 operations by default).
    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_twoHundredJobsSavedAtOnce_allReadBack(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let records = try (0..<200).map { try Self.record("job-\($0)", cursor: UInt64($0)) }
        try stores.first.save(jobs: records, durable: false)
        try stores.first.save(
            progress: Dictionary(uniqueKeysWithValues: records.map { ($0.spec.name, Data("{}".utf8)) }))
        #expect(Set(try stores.makeAnother().jobs()) == Set(records))
        #expect(try stores.makeAnother().progress().count == 200)
        await stores.stop()
    }

    @Test(.timeLimit(.minutes(1)), arguments: Kind.allCases)
    func test_aSecret_isCreatedOnce_andEveryHandleReadsTheSame(kind: Kind) async throws {
        let stores = try await Stores(kind)
        let secret = try stores.first.secret(named: "data-plane")
        #expect(secret.count == 32 && secret != [UInt8](repeating: 0, count: 32))
        #expect(try stores.first.secret(named: "data-plane") == secret)
        #expect(try stores.makeAnother().secret(named: "data-plane") == secret)
        #expect(try stores.first.secret(named: "other") != secret)
        await stores.stop()
    }

    // MARK: - etcd only

    /// A store whose fence compares a leader key with its own id: once another coordinator holds
    /// the key, every write throws `notLeading` and changes nothing.
    @Test(.timeLimit(.minutes(1)))
    func test_etcd_aWriteUnderAFenceThatNoLongerHolds_isRefused_andChangesNothing() async throws {
        let cluster = try await EtcdCluster()
        let client = EtcdClient(endpoints: cluster.endpoints)
        let leaderKey = "/ringmaster/leader"
        try client.put(leaderKey, Array("coordinator-1".utf8))
        let store = EtcdStateStore(client: client) {
            [.valueEquals(key: leaderKey, Array("coordinator-1".utf8))]
        }
        let a = try Self.record("job-a", cursor: 1)
        try store.save(jobs: [a], durable: true)

        try client.put(leaderKey, Array("coordinator-2".utf8))
        var moved = a
        moved.cursor = 2
        #expect {
            try store.save(jobs: [moved], durable: true)
        } throws: { error in
            (error as? CoordinatorError)?.code == .notLeading
        }
        #expect(throws: CoordinatorError.self) {
            try store.add(token: JoinToken.generate(), expires: Self.now.addingTimeInterval(60), now: Self.now)
        }
        #expect(try store.jobs() == [a])
        #expect(try store.tokens().isEmpty)
        await cluster.stop()
    }

    /// With one member of three killed, the store still reads and writes (the client moves to a
    /// member that serves, once etcd has a leader again); with two killed it fails within its timeout, saying what to check,
    /// and serves again once a member is back.
    @Test(.timeLimit(.minutes(1)))
    func test_etcd_servesWithOneMemberDown_failsClearlyWithoutAQuorum_andRecovers() async throws {
        let cluster = try await EtcdCluster()
        let store = EtcdStateStore(client: EtcdClient(endpoints: cluster.endpoints, timeout: .seconds(3)))
        let a = try Self.record("job-a", cursor: 1)
        try store.save(jobs: [a], durable: true)
        try await cluster.kill(0)
        var moved = a
        moved.cursor = 2
        // When member 0 was etcd's own leader, a write in flight waits for the next one (its
        // election timeout is 1 s) and may run out of time, its outcome unknown; it serves again
        // within a few seconds.
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                try store.save(jobs: [moved], durable: true)
                break
            } catch let error as CoordinatorError where ContinuousClock.now < deadline {
                #expect(error.code == .stateStore)
            }
        }
        #expect(try store.jobs() == [moved])

        try await cluster.kill(1)
        let started = ContinuousClock.now
        var failure: CoordinatorError?
        do {
            try store.save(jobs: [a], durable: true)
        } catch let error as CoordinatorError {
            failure = error
        }
        let waited = ContinuousClock.now - started
        let error = try #require(failure, "a write without a quorum did not fail")
        #expect(error.code == .stateStore)
        #expect(waited < .seconds(5), "the write without a quorum took \(waited)")
        #expect("\(error)".contains(cluster.endpoints[2]), "\(error)")

        try await cluster.restart(1)
        try store.save(jobs: [moved], durable: true)
        #expect(try store.jobs() == [moved])
        await cluster.stop()
    }
    /// A cluster that speaks TLS and asks for a client certificate serves no client that lacks
    /// one, trusts another CA, or speaks plain HTTP: each call fails within its timeout as
    /// unavailable, saying what to check.
    @Test(.timeLimit(.minutes(1)))
    func test_etcdOverTLS_refusesClientsWithoutItsCertificates_withinTheTimeout_sayingWhatToCheck() async throws {
        let cluster = try await EtcdCluster(tls: true)
        try cluster.client().put("/ringmaster/probe", Array("served".utf8))
        // Each with what its refusal must say to check.
        let clients: [(String, EtcdClient, [String])] = [
            (
                "no client certificate",
                EtcdClient(
                    endpoints: cluster.endpoints,
                    tls: try EtcdTLS(caFile: cluster.caFile, certificateFile: nil, keyFile: nil),
                    timeout: .seconds(2)),
                ["give --etcd-cert and --etcd-key"]
            ),
            (
                "the system's trust roots",
                EtcdClient(
                    endpoints: cluster.endpoints,
                    tls: try EtcdTLS(
                        caFile: nil, certificateFile: cluster.certificateFile, keyFile: cluster.keyFile),
                    timeout: .seconds(2)),
                ["TLS handshake failed", "that --etcd-ca is the CA that signed its server certificates"]
            ),
            (
                "plain HTTP", EtcdClient(endpoints: cluster.endpoints, timeout: .seconds(2)),
                ["give the store as etcds://"]
            ),
        ]
        for (name, client, hints) in clients {
            let started = ContinuousClock.now
            var failure: EtcdError?
            do {
                _ = try client.get("/ringmaster/probe")
            } catch let error as EtcdError {
                failure = error
            }
            let waited = ContinuousClock.now - started
            let error = try #require(
                failure, "a client with \(name) read from a cluster that asks for TLS certificates")
            #expect(error.code == .unavailable, "\(name): \(error)")
            #expect(waited < .seconds(4), "\(name): the refusal took \(waited)")
            for hint in hints {
                #expect("\(error)".contains(hint), "\(name): \(error)")
            }
        }
        #expect(try cluster.client().get("/ringmaster/probe")?.value == Array("served".utf8))
        await cluster.stop()
    }

    /// A PKI rotates etcd's CA and every certificate under a running coordinator, renaming each
    /// new file over its old one. The client's next call goes over new connections with the new
    /// files, without a restart; while the rotation is half done (a new certificate beside the
    /// old key) the old files stay in use and a failing call says why. A client whose files were
    /// not rotated (the control) is refused by the rotated cluster, so the rotation mattered.
    @Test(.timeLimit(.minutes(1)))
    func test_etcdTLSFilesRotatedOnDisk_areTakenUpByTheNextCall_withoutARestart() async throws {
        let cluster = try await EtcdCluster(members: 1, tls: true)
        // The client's own copies, as in /etc/ringmaster, and a control whose copies stay old.
        let (rotated, control) = (try TestDirectory(), try TestDirectory())
        let names = ["ca.crt", "client.crt", "client.key"]
        for directory in [rotated, control] {
            for name in names {
                try FileManager.default.copyItem(
                    atPath: "\(cluster.directory.path)/tls/\(name)", toPath: "\(directory.path)/\(name)")
            }
        }
        func client(_ directory: TestDirectory) throws -> EtcdClient {
            EtcdClient(
                endpoints: cluster.endpoints,
                tls: try EtcdTLS(
                    caFile: "\(directory.path)/ca.crt", certificateFile: "\(directory.path)/client.crt",
                    keyFile: "\(directory.path)/client.key"),
                timeout: .seconds(2), reloadInterval: .zero)
        }
        let (client, old) = (try client(rotated), try client(control))
        try client.put("/ringmaster/rotation", Array("before".utf8))
        #expect(try old.get("/ringmaster/rotation")?.value == Array("before".utf8))

        _ = try await EtcdCluster.script(["rotate", cluster.directory.path], within: 20)
        await cluster.stop()
        _ = try await EtcdCluster.script(["restart", cluster.directory.path, "all"], within: 40)
        /// Puts the cluster's new file in place of the client's, by rename.
        func install(_ name: String) throws {
            let staging = "\(rotated.path)/.\(name).new"
            try FileManager.default.copyItem(atPath: "\(cluster.directory.path)/tls/\(name)", toPath: staging)
            #expect(rename(staging, "\(rotated.path)/\(name)") == 0, "rename onto \(name): errno \(errno)")
        }

        // Half done: the new certificate, the old key and CA.
        try install("client.crt")
        var halfway: EtcdError?
        do { _ = try client.get("/ringmaster/rotation") } catch let error as EtcdError { halfway = error }
        let refusal = try #require(halfway, "a client with a certificate that is not its key's reached etcd")
        #expect("\(refusal)".contains("the TLS files changed on disk but do not load"), "\(refusal)")
        #expect("\(refusal)".contains("is not the key of the certificate"), "\(refusal)")
        #expect(!"\(refusal)".contains("PRIVATE KEY"))

        try install("client.key")
        try install("ca.crt")
        #expect(try client.get("/ringmaster/rotation")?.value == Array("before".utf8))
        try client.put("/ringmaster/rotation", Array("after".utf8))
        #expect(client.tls?.certificateFile == "\(rotated.path)/client.crt")

        var stale: EtcdError?
        do { _ = try old.get("/ringmaster/rotation") } catch let error as EtcdError { stale = error }
        let staleRefusal = try #require(stale, "a client with the files from before the rotation still reached etcd")
        #expect("\(staleRefusal)".contains("TLS handshake failed"), "\(staleRefusal)")
        await cluster.stop()
    }
}
