import CoordinatorCore
import Testing

/// The leadership of coordinators that share an etcd store, decided without I/O: a lease kept
/// alive, a leader key created only when absent, and a leader that stops on its own before its
/// lease could end at etcd.
@Suite("Leader election")
struct LeaderElectionTests {
    static let settings = LeaderElection.Settings(lease: .seconds(2))
    static let me = Array("coordinator-a".utf8)
    static let other = Array("coordinator-b".utf8)

    /// An election that has taken lease 7 at time zero and won.
    static func leader() -> LeaderElection {
        var election = LeaderElection(id: Self.me, settings: Self.settings)
        #expect(election.tick(now: .zero) == [.grantLease])
        #expect(
            election.leaseGranted(id: 7, ttl: .seconds(2), sentAt: .zero, now: .milliseconds(5)) == [
                .campaign(lease: 7)
            ])
        #expect(
            election.campaigned(lease: 7, won: true, leader: Self.me, leaderLease: 7, now: .milliseconds(10))
                == [.startLeading])
        return election
    }

    @Test func test_aCandidate_takesALease_campaigns_andLeadsWhenItCreatedTheKey() {
        let election = Self.leader()
        #expect(election.role == .leading)
        #expect(election.leads(at: .milliseconds(10)))
    }

    @Test func test_aLeader_renewsItsLease_andLeadsOnWhileRenewalsAreAnswered() {
        var election = Self.leader()
        var now = Duration.milliseconds(10)
        for _ in 0..<20 {
            now += .milliseconds(500)
            #expect(election.tick(now: now) == [.renew(lease: 7)])
            #expect(election.renewed(lease: 7, ttl: .seconds(2), sentAt: now, now: now + .milliseconds(3)).isEmpty)
            #expect(election.leads(at: now + .milliseconds(3)))
        }
        #expect(election.role == .leading)
    }

    @Test func test_aLeaderCutOffFromEtcd_stopsLeadingByItself_beforeItsLeaseCouldEnd() {
        var election = Self.leader()
        // The renewals go out and nothing comes back. The lease was granted on a request sent at 0,
        // so etcd cannot end it before 2 s; the leader stops at 2 s minus the 0.5 s margin.
        var now = Duration.milliseconds(10)
        var stopped: Duration?
        while now < .seconds(3), stopped == nil {
            now += .milliseconds(100)
            for action in election.tick(now: now) {
                if case .stopLeading = action { stopped = now }
            }
        }
        #expect(stopped == .milliseconds(1510))
        #expect(election.role == .candidate)
    }

    @Test func test_aLeaderWhoseLeaseEtcdSaysIsGone_stopsLeading_andTakesANewLease() {
        var election = Self.leader()
        _ = election.tick(now: .milliseconds(600))
        let actions = election.renewed(lease: 7, ttl: .zero, sentAt: .milliseconds(600), now: .milliseconds(610))
        #expect(actions.first.map { if case .stopLeading = $0 { true } else { false } } == true)
        #expect(actions.contains(.grantLease))
        #expect(!election.leads(at: .milliseconds(610)))
    }

    @Test func test_aCandidateThatLost_follows_retries_andLeadsOnceTheKeyIsFree() {
        var election = LeaderElection(id: Self.me, settings: Self.settings)
        _ = election.tick(now: .zero)
        _ = election.leaseGranted(id: 3, ttl: .seconds(2), sentAt: .zero, now: .zero)
        #expect(election.campaigned(lease: 3, won: false, leader: Self.other, leaderLease: 9, now: .zero).isEmpty)
        #expect(election.role == .following(leader: Self.other))
        // No campaign before the retry interval; then one, lost again; then one that wins.
        #expect(!election.tick(now: .milliseconds(100)).contains(.campaign(lease: 3)))
        #expect(election.tick(now: .milliseconds(250)).contains(.campaign(lease: 3)))
        _ = election.campaigned(lease: 3, won: false, leader: Self.other, leaderLease: 9, now: .milliseconds(260))
        #expect(election.tick(now: .milliseconds(510)).contains(.campaign(lease: 3)))
        #expect(
            election.campaigned(lease: 3, won: true, leader: Self.me, leaderLease: 3, now: .milliseconds(520))
                == [.startLeading])
    }

    @Test func test_theKeyUnderAnOlderLeaseOfItsOwn_isNotTakenAsLeadership() {
        var election = LeaderElection(id: Self.me, settings: Self.settings)
        _ = election.tick(now: .zero)
        _ = election.leaseGranted(id: 12, ttl: .seconds(2), sentAt: .zero, now: .zero)
        #expect(election.campaigned(lease: 12, won: false, leader: Self.me, leaderLease: 11, now: .zero).isEmpty)
        #expect(election.role == .following(leader: Self.me))
        #expect(!election.leads(at: .zero))
    }

    @Test func test_aStoppingLeader_stepsDown_andRevokesItsLeaseSoAnotherLeadsAtOnce() {
        var election = Self.leader()
        #expect(election.stop(now: .seconds(1)) == [.stopLeading(reason: "it is stopping"), .revoke(lease: 7)])
        #expect(election.role == .stopped && election.tick(now: .seconds(2)).isEmpty)
    }

    @Test func test_aFailedCall_isRetried_withoutLosingTheLeadershipBeforeItsTime() {
        var election = Self.leader()
        #expect(election.tick(now: .milliseconds(510)) == [.renew(lease: 7)])
        #expect(election.callFailed(.renew(lease: 7), now: .milliseconds(520)).isEmpty)
        #expect(election.leads(at: .milliseconds(520)))
        #expect(election.tick(now: .milliseconds(770)) == [.renew(lease: 7)])
    }

    // MARK: - Against a model of etcd

    /// Three coordinators and a model of etcd's leases and leader key, with calls delayed, lost
    /// before etcd or lost on the way back, and coordinators paused, at random: at no instant do
    /// two coordinators lead, whoever leads holds the key at etcd, and someone leads most of the time.
    @Test(arguments: 0..<100)
    func test_randomDelaysLossesAndPauses_neverGiveTwoLeadersAtOnce(seed: UInt64) {
        var random = SplitMix(seed: seed)
        var etcd = EtcdModel()
        let ids = (0..<3).map { Array("coordinator-\($0)".utf8) }
        var elections = ids.map { LeaderElection(id: $0, settings: Self.settings) }
        var calls: [Call] = []
        var pausedUntil = [Duration](repeating: .zero, count: 3)
        var ledTicks = 0
        var ticks = 0
        var now = Duration.zero
        while now < .seconds(60) {
            now += .milliseconds(5)
            ticks += 1
            etcd.expire(now: now)
            for index in calls.indices where calls[index].answer == nil {
                if let arrives = calls[index].arrives, arrives <= now {
                    calls[index].answer = etcd.process(calls[index].action, from: ids[calls[index].node], now: now)
                }
            }
            var kept: [Call] = []
            var sent: [Call] = []
            for call in calls {
                guard pausedUntil[call.node] <= now else {
                    kept.append(call)
                    continue
                }
                if let answer = call.answer, let returns = call.returns, returns <= now {
                    for action in Self.feed(answer, of: call, to: &elections[call.node], now: now) {
                        sent += Self.send(action, node: call.node, now: now, random: &random)
                    }
                } else if now >= call.failsAt {
                    _ = elections[call.node].callFailed(call.action, now: now)
                } else {
                    kept.append(call)
                }
            }
            calls = kept + sent
            for node in 0..<3 where pausedUntil[node] <= now {
                if random.next() % 1000 == 0 { pausedUntil[node] = now + .milliseconds(Int64(random.next() % 3000)) }
                for action in elections[node].tick(now: now) {
                    calls += Self.send(action, node: node, now: now, random: &random)
                }
            }
            let leaders = (0..<3).filter { elections[$0].leads(at: now) }
            guard leaders.count <= 1 else {
                Issue.record("seed \(seed): coordinators \(leaders) lead at once at \(now)")
                return
            }
            for leader in leaders where etcd.leader?.value != ids[leader] {
                Issue.record("seed \(seed): coordinator \(leader) leads at \(now) without the key")
                return
            }
            if !leaders.isEmpty { ledTicks += 1 }
        }
        #expect(ledTicks * 2 > ticks, "seed \(seed): someone led only \(ledTicks) of \(ticks) ticks")
    }

    /// A call in flight: when it reaches etcd (nil: lost on the way), when its answer is back
    /// (nil: lost on the way back), etcd's answer once it has one, and when the caller gives up.
    struct Call {
        var node: Int
        var action: LeaderElection.Action
        var sentAt: Duration
        var arrives: Duration?
        var returns: Duration?
        var failsAt: Duration
        var answer: EtcdModel.Answer?
    }

    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { self.state = seed &+ 0x9E37_79B9_7F4A_7C15 }
        mutating func next() -> UInt64 {
            self.state &+= 0x9E37_79B9_7F4A_7C15
            var z = self.state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// The call `action` makes: to etcd after 1 to 40 ms and back after as long again, one in 20
    /// lost before etcd and one in 20 after; the caller gives up after 100 ms. Leading and
    /// stepping down are the coordinator's own, no call.
    static func send(_ action: LeaderElection.Action, node: Int, now: Duration, random: inout SplitMix) -> [Call] {
        switch action {
        case .startLeading, .stopLeading: return []
        case .grantLease, .campaign, .renew, .revoke: break
        }
        let arrives = random.next() % 20 == 0 ? nil : now + .milliseconds(Int64(1 + random.next() % 40))
        let returns = arrives.flatMap {
            random.next() % 20 == 0 ? nil : $0 + .milliseconds(Int64(1 + random.next() % 40))
        }
        return [
            Call(
                node: node, action: action, sentAt: now, arrives: arrives, returns: returns,
                failsAt: now + .milliseconds(100))
        ]
    }

    /// The answer as the shell reports it.
    static func feed(_ answer: EtcdModel.Answer, of call: Call, to election: inout LeaderElection, now: Duration)
        -> [LeaderElection.Action]
    {
        switch (call.action, answer) {
        case (.grantLease, .granted(let id)):
            return election.leaseGranted(id: id, ttl: .seconds(2), sentAt: call.sentAt, now: now)
        case (.campaign(let lease), .campaigned(let won, let leader, let leaderLease)):
            return election.campaigned(lease: lease, won: won, leader: leader, leaderLease: leaderLease, now: now)
        case (.renew(let lease), .renewed(let ttl)):
            return election.renewed(lease: lease, ttl: ttl, sentAt: call.sentAt, now: now)
        default:
            return []
        }
    }
}

/// etcd as the election uses it: leases that end `ttl` after the grant or the last renewal
/// reached etcd, and one leader key that goes with its lease.
struct EtcdModel {
    var leases: [Int64: Duration] = [:]
    var leader: (value: [UInt8], lease: Int64)?
    var nextLease: Int64 = 1

    enum Answer {
        case granted(Int64)
        case campaigned(won: Bool, leader: [UInt8]?, leaderLease: Int64)
        case renewed(ttl: Duration)
        case none
    }

    mutating func expire(now: Duration) {
        for (id, end) in self.leases where end <= now { self.leases[id] = nil }
        if let leader = self.leader, self.leases[leader.lease] == nil { self.leader = nil }
    }

    mutating func process(_ action: LeaderElection.Action, from id: [UInt8], now: Duration) -> Answer {
        switch action {
        case .grantLease:
            let lease = self.nextLease
            self.nextLease += 1
            self.leases[lease] = now + .seconds(2)
            return .granted(lease)
        case .campaign(let lease):
            if self.leader == nil, self.leases[lease] != nil {
                self.leader = (id, lease)
                return .campaigned(won: true, leader: id, leaderLease: lease)
            }
            return .campaigned(won: false, leader: self.leader?.value, leaderLease: self.leader?.lease ?? 0)
        case .renew(let lease):
            guard self.leases[lease] != nil else { return .renewed(ttl: .zero) }
            self.leases[lease] = now + .seconds(2)
            return .renewed(ttl: .seconds(2))
        case .revoke(let lease):
            self.leases[lease] = nil
            if self.leader?.lease == lease { self.leader = nil }
            return .none
        case .startLeading, .stopLeading:
            return .none
        }
    }
}
