import Agent
import ControlPlane
import Coordinator
import CoordinatorCore
import Foundation
import JobModel
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Synchronization
import Testing

/// A slow state store (etcd without a quorum answers after its 3 s timeout) holds up only the
/// requests that need it: joins, or an operator's command, waiting on it leave the coordinator
/// answering everyone else.
@Suite("A slow state store")
struct SlowStoreTests {
    /// SQLite in the state directory, whose calls of one kind (`gated`) block while the gate is
    /// closed, as a call to an etcd that does not answer would. The gate opens by itself after
    /// `limit`, so that nothing waits forever whatever the coordinator does.
    final class GatedStore: StateStore {
        /// The calls that wait at the gate.
        enum Calls { case tokenLookups, jobWrites }

        let inner: SQLiteStateStore
        let gated: Calls
        let limit: TimeInterval
        let condition = NSCondition()
        /// Under `condition`.
        nonisolated(unsafe) var closed = false
        /// Yields each time a gated call starts to wait.
        let waits: AsyncStream<Void>
        let waiting: AsyncStream<Void>.Continuation

        init(path: String, gating gated: Calls = .tokenLookups, limit: TimeInterval) throws {
            self.inner = try SQLiteStateStore(path: path)
            self.gated = gated
            self.limit = limit
            (self.waits, self.waiting) = AsyncStream.makeStream(of: Void.self)
        }

        /// Returns at once for calls not gated; else once the gate is open (or after `limit`).
        func pass(_ call: Calls) {
            guard call == self.gated else { return }
            self.condition.lock()
            if self.closed {
                self.waiting.yield()
                let until = Date().addingTimeInterval(self.limit)
                while self.closed && self.condition.wait(until: until) {}
                self.closed = false
            }
            self.condition.unlock()
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
            self.pass(.tokenLookups)
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
            self.pass(.jobWrites)
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

    /// An operator's submit whose records wait on the store holds up nothing else: the machine
    /// (behind the engine lock) answers a node list, and an agent comes online, while the write
    /// waits; once the store answers, the submit is acknowledged and carried out on the machine as
    /// it is then, so the job that found no node when it was submitted runs on the one that came.
    @Test(.timeLimit(.minutes(1)))
    func aCommandWaitingOnTheStore_leavesTheMachineServingOthers_andIsCarriedOutOnItAsItIsThen()
        async throws
    {
        let gate = Mutex<GatedStore?>(nil)
        let coordinator = try await TestCoordinator(store: { directory in
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let store = try GatedStore(path: "\(directory)/state.sqlite", gating: .jobWrites, limit: 20)
            gate.withLock { $0 = store }
            return store
        })
        let store = try #require(gate.withLock { $0 })
        defer { store.open() }
        let (token, pin) = try await coordinator.createToken()
        let admin = ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
        func request(_ body: (inout Ringmaster_V1_AdminRequest) -> Void) async throws -> Envelope {
            var envelope = Envelope()
            body(&envelope.adminRequest)
            let sent = envelope
            return try await admin.withConnection { try await $0.request(sent, within: 40) }
        }

        store.close()
        let submitted = Task {
            try await request {
                $0.jobSubmit = .with {
                    $0.specYaml = """
                        name: late
                        workload: {kind: mlp, hidden: [16]}
                        dataset: {path: builtin:digits, samples: 1437}
                        batch_size: 64
                        steps: 30
                        seed: 3
                        nodes: {min: 1, max: 1}
                        """
                }
            }
        }
        try await withDeadline(seconds: 20, waitingFor: "the submit's records to wait on the store") {
            var waits = store.waits.makeAsyncIterator()
            _ = await waits.next()
        }
        let nodes = try await request { $0.nodeList = .init() }
        #expect(store.isClosed, "the node list was answered only once the submit's write returned")
        #expect(nodes.error.message.isEmpty, "\(nodes.error.message)")

        // An agent joins and comes online while the write still waits: its hello is answered under
        // the engine lock, in the same hold as the machine hears of the node.
        let agentLog = LineLog(name: "agent log")
        var configuration = AgentConfiguration(
            coordinator: coordinator.address, dataDirectory: "\(coordinator.directory.path)/node-a",
            nodeName: "node-a")
        configuration.joinToken = token
        configuration.caPin = pin
        let agent = AgentService(configuration: configuration, logger: agentLog.logger(label: "node-a"))
        let running = Task { try await agent.run() }
        defer { running.cancel() }
        try await agentLog.waitForLine(within: 20, "the agent connected") {
            $0.contains("connected to the coordinator")
        }
        #expect(store.isClosed, "the agent came online only once the submit's write returned")

        store.open()
        let reply = try await withDeadline(seconds: 30, waitingFor: "the submit's reply") { try await submitted.value }
        #expect(reply.error.message.isEmpty, "\(reply.error.message)")
        try await agentLog.waitForLine(within: 30, "the agent to hold the job's assignment") {
            $0.contains("holding an assignment")
        }
        let status = try await request { $0.jobStatus = .with { $0.jobID = "late" } }
        let job = try #require(status.adminReply.jobStatus.jobs.first, "no status for the submitted job")
        #expect(job.members.map(\.nodeID) == ["node-a"])
        running.cancel()
        _ = try? await running.value
        await coordinator.stop()
    }
}
