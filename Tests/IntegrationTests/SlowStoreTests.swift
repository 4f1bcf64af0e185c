import ControlPlane
import Coordinator
import CoordinatorCore
import Foundation
import JobModel
import RingmasterSecurity
import RingmasterWire
import Synchronization
import Testing

/// A slow state store (etcd without a quorum answers after its 3 s timeout) holds up only the
/// requests that need it: joins waiting on it leave the coordinator answering everyone else.
@Suite("A slow state store")
struct SlowStoreTests {
    /// SQLite in the state directory, whose token look-ups block while the gate is closed, as a
    /// call to an etcd that does not answer would. The gate opens by itself after `limit`, so
    /// that nothing waits forever whatever the coordinator does.
    final class GatedStore: StateStore {
        let inner: SQLiteStateStore
        let limit: TimeInterval
        let condition = NSCondition()
        /// Under `condition`.
        nonisolated(unsafe) var closed = false
        /// Yields each time a look-up starts to wait.
        let waits: AsyncStream<Void>
        let waiting: AsyncStream<Void>.Continuation

        init(path: String, limit: TimeInterval) throws {
            self.inner = try SQLiteStateStore(path: path)
            self.limit = limit
            (self.waits, self.waiting) = AsyncStream.makeStream(of: Void.self)
        }

        func close() { self.condition.withLock { self.closed = true } }

        func open() {
            self.condition.withLock {
                self.closed = false
                self.condition.broadcast()
            }
        }

        var isClosed: Bool { self.condition.withLock { self.closed } }

        func usableToken(id: String, now: Date) throws -> JoinToken {
            self.condition.lock()
            if self.closed {
                self.waiting.yield()
                let until = Date().addingTimeInterval(self.limit)
                while self.closed && self.condition.wait(until: until) {}
                self.closed = false
            }
            self.condition.unlock()
            return try self.inner.usableToken(id: id, now: now)
        }

        func add(token: JoinToken, expires: Date, now: Date) throws {
            try self.inner.add(token: token, expires: expires, now: now)
        }
        func redeem(tokenID: String, node: String, certificateNotAfter: Date, now: Date) throws {
            try self.inner.redeem(tokenID: tokenID, node: node, certificateNotAfter: certificateNotAfter, now: now)
        }
        func tokens() throws -> [TokenRecord] { try self.inner.tokens() }
        func renewed(node: String, certificateNotAfter: Date, now: Date) throws {
            try self.inner.renewed(node: node, certificateNotAfter: certificateNotAfter, now: now)
        }
        func nodes() throws -> [NodeRecord] { try self.inner.nodes() }
        func save(jobs records: [CoordinatorMachine.JobRecord], durable: Bool) throws {
            try self.inner.save(jobs: records, durable: durable)
        }
        func jobs() throws -> [CoordinatorMachine.JobRecord] { try self.inner.jobs() }
        func save(progress: [String: Data]) throws { try self.inner.save(progress: progress) }
        func progress() throws -> [String: Data] { try self.inner.progress() }
        func secret(named name: String) throws -> [UInt8] { try self.inner.secret(named: name) }
        var actsOnFailedWrites: Bool { self.inner.actsOnFailedWrites }
    }

    /// More joins than the threads that serve connections (as many as cores) wait on the store;
    /// an operator's request is answered meanwhile, and every join goes on once the store answers.
    @Test(.timeLimit(.minutes(1)))
    func joinsWaitingOnTheStore_leaveTheCoordinatorAnsweringOthers() async throws {
        let gate = Mutex<GatedStore?>(nil)
        let coordinator = try await TestCoordinator(store: { directory in
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let store = try GatedStore(path: "\(directory)/state.sqlite", limit: 20)
            gate.withLock { $0 = store }
            return store
        })
        let store = try #require(gate.withLock { $0 })
        defer { store.open() }
        let (token, pin) = try await coordinator.createToken()
        let joins = ProcessInfo.processInfo.activeProcessorCount + 2
        store.close()
        let challenges = Task {
            try await withThrowingTaskGroup(of: Envelope.self) { group in
                for index in 0..<joins {
                    group.addTask {
                        let client = ControlClient(
                            host: "127.0.0.1", port: coordinator.port, credentials: nil, serverTrust: .pin(pin))
                        return try await client.withConnection { session in
                            var begin = Envelope()
                            begin.joinBegin = .with {
                                $0.tokenID = token.id
                                $0.nodeName = "node-\(index)"
                            }
                            return try await session.request(begin, within: 40)
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        try await withDeadline(seconds: 20, waitingFor: "a join to wait on the store") {
            var waits = store.waits.makeAsyncIterator()
            _ = await waits.next()
        }
        let status = try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
            .withConnection { session in
                var envelope = Envelope()
                envelope.adminRequest = .with { $0.jobStatus = .init() }
                return try await session.request(envelope, within: 30)
            }
        #expect(store.isClosed, "the operator's request was answered only once the store's look-ups returned")
        #expect(status.error.message.isEmpty, "\(status.error.message)")
        store.open()
        let replies = try await withDeadline(seconds: 30, waitingFor: "\(joins) join challenges") {
            try await challenges.value
        }
        #expect(replies.count == joins)
        for reply in replies {
            guard case .joinChallenge = reply.body else {
                Issue.record("a join got \(reply.kind), not its challenge")
                continue
            }
        }
        await coordinator.stop()
    }
}
