import Testing

@testable import Collectives

/// The RDMA transport's flow control, on the host: a ledger's rules, and ranks exchanging
/// messages through modelled queue pairs (in-order delivery into posted receives) under random
/// schedules, so that no message ever meets a peer with no receive posted and no schedule deadlocks.
@Suite("Credit flow control")
struct SendCreditsTests {
    @Test func dataUsesACredit_andPaysEveryCreditOwed() {
        var credits = SendCredits(receives: 2)
        credits.receivedData(credits: 0)
        credits.reposted()
        #expect(credits.sendData() == 1 && credits.available == 1)
        #expect(credits.sendData() == 0 && credits.available == 0 && !credits.maySendData)
        credits.received(credits: 2)
        #expect(credits.maySendData && credits.available == 2)
        #expect(credits.held == 0 && credits.owed == 0)
    }

    @Test func creditsAlone_goForHalfTheReceives_orWhenWaitingOnceThePeerMayHaveNoneLeft_andUseNoCredit() {
        var credits = SendCredits(receives: 16)
        #expect(!credits.shouldSendCredits(waiting: true), "nothing owed")
        for _ in 0..<7 {
            credits.receivedData(credits: 0)
            credits.reposted()
        }
        #expect(!credits.shouldSendCredits(waiting: false), "7 of 16 owed: not worth a message yet")
        #expect(
            !credits.shouldSendCredits(waiting: true),
            "the peer has 9 credits or messages on their way (which would wake this side)")
        for _ in 0..<9 { credits.receivedData(credits: 0) }
        #expect(credits.shouldSendCredits(waiting: true), "every receive owed or held: the peer may be stuck")
        credits.reposted()
        #expect(credits.shouldSendCredits(waiting: false), "8 of 16 owed")
        #expect(credits.sendCredits() == 8 && credits.available == 16)
        #expect(!credits.shouldSendCredits(waiting: true))
    }

    /// `world` ranks; each sends `messages` data messages to each rank in `sendsTo(rank)` and
    /// consumes as many from each rank that sends to it, in a random order of events: deliveries
    /// of data and of credit messages (each on its own queue pair, in order), the receiver polling
    /// a credit message's completion, sends, consumptions, credit messages. Returns the credit
    /// messages sent, or records an issue for a message that met no posted receive, or for a
    /// schedule that stopped (or went on) before every message was consumed.
    static func simulate(
        world: Int, receives: Int, messages: Int, seed: UInt64, sendsTo: (Int) -> [Int]
    ) -> Int? {
        var random = SplitMix64(seed: seed)
        let targets = (0..<world).map(sendsTo)
        let sources = (0..<world).map { rank in (0..<world).filter { targets[$0].contains(rank) } }
        func grid<T>(_ value: T) -> [[T]] { [[T]](repeating: [T](repeating: value, count: world), count: world) }
        // By [from][to]: the sender's ledger; the receives the receiver posted for the sender's
        // data and for its credit messages; the data and credit messages on the wire; data
        // arrived and not consumed; credit messages arrived and not polled; counts.
        var ledgers = grid(SendCredits(receives: receives))
        var posted = grid(receives)
        var creditPosted = grid(receives)
        var data = grid([UInt32]())
        var creditWire = grid([UInt32]())
        var arrived = grid(0)
        var unpolled = grid([UInt32]())
        var sent = grid(0)
        var consumed = grid(0)
        var creditMessages = 0
        enum Event {
            case deliver(Int, Int)
            case deliverCredits(Int, Int)
            case poll(Int, Int)
            case send(Int, Int)
            case consume(Int, Int)
            case credits(Int, Int)
        }
        for _ in 0..<(world * world * messages * 30 + 1000) {
            var events: [Event] = []
            for from in 0..<world {
                for to in 0..<world {
                    if !data[from][to].isEmpty { events.append(.deliver(from, to)) }
                    if !creditWire[from][to].isEmpty { events.append(.deliverCredits(from, to)) }
                    if !unpolled[from][to].isEmpty { events.append(.poll(from, to)) }
                }
            }
            for rank in 0..<world {
                var progress: [Event] = []
                for to in targets[rank] where sent[rank][to] < messages && ledgers[rank][to].maySendData {
                    progress.append(.send(rank, to))
                }
                for from in sources[rank] where arrived[from][rank] > 0 { progress.append(.consume(from, rank)) }
                let waiting = progress.isEmpty
                events += progress
                for peer in 0..<world where peer != rank && ledgers[rank][peer].shouldSendCredits(waiting: waiting) {
                    events.append(.credits(rank, peer))
                }
            }
            if events.isEmpty {
                let done = (0..<world).allSatisfy { rank in
                    targets[rank].allSatisfy { consumed[rank][$0] == messages }
                }
                #expect(done, "no event is possible before every message was consumed (seed \(seed)): deadlock")
                return done ? creditMessages : nil
            }
            switch events[Int(random.next() % UInt64(events.count))] {
            case .deliver(let from, let to):
                let credits = data[from][to].removeFirst()
                guard posted[to][from] > 0 else {
                    Issue.record("data from \(from) met no receive posted at \(to) (seed \(seed))")
                    return nil
                }
                posted[to][from] -= 1
                ledgers[to][from].receivedData(credits: credits)
                arrived[from][to] += 1
            case .deliverCredits(let from, let to):
                let credits = creditWire[from][to].removeFirst()
                guard creditPosted[to][from] > 0 else {
                    Issue.record("a credit message from \(from) met no receive posted at \(to) (seed \(seed))")
                    return nil
                }
                creditPosted[to][from] -= 1
                unpolled[from][to].append(credits)
            case .poll(let from, let to):
                ledgers[to][from].received(credits: unpolled[from][to].removeFirst())
                creditPosted[to][from] += 1
            case .send(let from, let to):
                data[from][to].append(ledgers[from][to].sendData())
                sent[from][to] += 1
            case .consume(let from, let to):
                arrived[from][to] -= 1
                consumed[from][to] += 1
                posted[to][from] += 1
                ledgers[to][from].reposted()
            case .credits(let from, let to):
                creditWire[from][to].append(ledgers[from][to].sendCredits())
                creditMessages += 1
            }
        }
        Issue.record("the schedule did not end (seed \(seed))")
        return nil
    }

    @Test(arguments: [2, 3, 16])
    func twoRanksSendingEachOther_neverMeetAPeerWithoutAReceive_andNeverDeadlock(receives: Int) {
        for seed in 0..<100 {
            for messages in [1, 5, 60] {
                let creditOnly = Self.simulate(
                    world: 2, receives: receives, messages: messages, seed: UInt64(seed), sendsTo: { [1 - $0] })
                guard let creditOnly else { return }
                #expect(creditOnly <= 2 * messages, "at most one credit message per data message")
            }
        }
    }

    @Test(arguments: [(3, 2), (4, 3), (4, 16)])
    func aRingOfRanks_neverMeetsAPeerWithoutAReceive_andNeverDeadlocks(world: Int, receives: Int) {
        for seed in 0..<100 {
            let creditOnly = Self.simulate(
                world: world, receives: receives, messages: 60, seed: UInt64(seed), sendsTo: { [($0 + 1) % world] })
            guard let creditOnly else { return }
            #expect(creditOnly <= world * 60, "at most one credit message per data message")
        }
    }

    @Test func everyRankSendingToEveryOther_neverDeadlocks() {
        for seed in 0..<50 {
            let creditOnly = Self.simulate(
                world: 4, receives: 2, messages: 20, seed: UInt64(seed),
                sendsTo: { rank in (0..<4).filter { $0 != rank } })
            if creditOnly == nil { return }
        }
    }
}
