import ControlPlane
import Coordinator
import CoordinatorCore
import Etcd
import Foundation
import Logging
import Synchronization
import Testing

/// Leader election against a real three-member etcd cluster: one leader at a time, a stopping
/// leader hands over at once, and a leader cut off from etcd steps down before another can lead.
@Suite("Leader elector", .serialized)
struct LeaderElectorTests {
    /// When each elector's changes came, on one clock; `wait` wakes at each (one waiter at a time).
    final class Timeline: Sendable {
        let changes = Mutex<[(name: String, change: LeaderElector.Change, at: ContinuousClock.Instant)]>([])
        let updates: AsyncStream<Void>
        let update: AsyncStream<Void>.Continuation

        init() {
            (self.updates, self.update) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        }

        func watch(_ elector: LeaderElector, as name: String) {
            Task {
                for await change in elector.changes {
                    self.changes.withLock { $0.append((name, change, ContinuousClock.now)) }
                    self.update.yield()
                }
            }
        }

        func first(_ name: String, _ match: (LeaderElector.Change) -> Bool) -> ContinuousClock.Instant? {
            self.changes.withLock { $0.first { $0.name == name && match($0.change) }?.at }
        }

        /// Waits, within `seconds`, for `name`'s first change that `match` accepts.
        func wait(
            for name: String, _ what: String, within seconds: Double,
            _ match: @escaping @Sendable (LeaderElector.Change) -> Bool
        ) async throws -> ContinuousClock.Instant {
            try await withDeadline(seconds: seconds, waitingFor: "\(name) \(what)") {
                var updates = self.updates.makeAsyncIterator()
                while true {
                    if let at = self.first(name, match) { return at }
                    guard await updates.next() != nil else { throw CancellationError() }
                }
            }
        }

        func elected(_ name: String, within seconds: Double) async throws -> ContinuousClock.Instant {
            try await self.wait(for: name, "to be elected", within: seconds) {
                if case .elected = $0 { true } else { false }
            }
        }

        func deposed(_ name: String, within seconds: Double) async throws -> ContinuousClock.Instant {
            try await self.wait(for: name, "to be deposed", within: seconds) {
                if case .deposed = $0 { true } else { false }
            }
        }
    }

    static func elector(_ name: String, endpoints: [String]) throws -> LeaderElector {
        try LeaderElector(
            client: EtcdClient(endpoints: endpoints, timeout: .milliseconds(400)),
            identity: .init(id: "\(name)-\(UUID().uuidString.prefix(8))", address: "\(name):7600"),
            settings: LeaderElection.Settings(lease: .seconds(2)), logger: Logger(label: "test.\(name)"))
    }

    @Test(.timeLimit(.minutes(1)))
    func test_oneOfTwoLeads_andAStoppingLeaderHandsOverWithinASecond() async throws {
        let cluster = try await EtcdCluster()
        let timeline = Timeline()
        let a = try Self.elector("a", endpoints: cluster.endpoints)
        timeline.watch(a, as: "a")
        a.start()
        _ = try await timeline.elected("a", within: 5)
        let b = try Self.elector("b", endpoints: cluster.endpoints)
        timeline.watch(b, as: "b")
        b.start()
        // b follows, naming a.
        let identity = a.identity
        _ = try await timeline.wait(for: "b", "to see a lead", within: 5) { $0 == .sawLeader(identity) }
        #expect(b.leader == a.identity)
        #expect(a.leads() && !b.leads())

        let stopped = ContinuousClock.now
        a.stop()
        let elected = try await timeline.elected("b", within: 5)
        #expect(elected - stopped < .seconds(1), "b led \(elected - stopped) after a stopped")
        #expect(b.leads() && !a.leads())
        b.stop()
        await cluster.stop()
    }

    /// a reaches etcd only through member 0; b through members 1 and 2. Killing member 0 cuts a
    /// off: it steps down by itself, and b leads only after that.
    @Test(.timeLimit(.minutes(1)))
    func test_aLeaderCutOffFromEtcd_stepsDownWithinItsLease_beforeAnotherLeads() async throws {
        let cluster = try await EtcdCluster()
        let timeline = Timeline()
        let a = try Self.elector("a", endpoints: [cluster.endpoints[0]])
        timeline.watch(a, as: "a")
        a.start()
        _ = try await timeline.elected("a", within: 5)
        let b = try Self.elector("b", endpoints: Array(cluster.endpoints[1...]))
        timeline.watch(b, as: "b")
        b.start()

        let cut = ContinuousClock.now
        try await cluster.kill(0)
        // The script returns once member 0 is gone; under load that takes a while of its own.
        let killed = ContinuousClock.now
        let deposed = try await timeline.deposed("a", within: 5)
        let elected = try await timeline.elected("b", within: 8)
        #expect(deposed - cut <= .seconds(2), "a stepped down \(deposed - cut) after the cut (its lease is 2 s)")
        #expect(deposed < elected, "b led at \(elected - cut), before a stepped down at \(deposed - cut)")
        // When member 0 was etcd's own leader, the new one extends every lease by a full TTL on
        // taking over (after its 1 s election timeout): up to 1 + 2 s, then b's next campaign.
        #expect(
            elected - killed < .seconds(5),
            "b led \(elected - killed) after member 0 was gone (\(killed - cut) after the kill began)")
        #expect(!a.leads() && b.leads())
        a.stop()
        b.stop()
        await cluster.stop()
    }
}
