import AgentCore
import CoordinatorCore
import JobModel
import Testing

/// Random interleavings of the failure events, seeded and reproducible: whatever the order, a job
/// runs to its end with no committed step lost, no sample repeated or skipped, and every
/// replica's parameters bit-equal after each generation change and at every step.
@Suite struct PropertyTests {
    /// What happened over all the sequences, so that the test shows it exercised what it claims.
    struct Tally {
        var generations = 0
        var rolledForward = 0
        var caughtUp = 0
        var kills = 0
        var stops = 0
    }

    /// Runs sequence `seed`; returns what broke.
    static func run(seed: UInt64, tally: inout Tally) throws -> [String] {
        var random = SplitMix64(seed: seed)
        func pick<T>(_ items: [T]) -> T? {
            items.isEmpty ? nil : items[Int(random.next() % UInt64(items.count))]
        }
        let cluster = InProcessCluster()
        var count = 0
        func fresh() -> String {
            count += 1
            return "n\(count)"
        }
        var drained: Set<String> = []
        var holding: Set<String> = []
        for _ in 0..<3 { cluster.join(fresh()) }
        try cluster.submit(InProcessCluster.spec(min: 1, max: 4, steps: 30))
        for _ in 0..<10 {
            for _ in 0..<(random.next() % 6) { try cluster.round() }
            if cluster.record()?.phase == .finished { break }
            let members = (cluster.record()?.members ?? []).filter { cluster.nodes[$0] != nil }
            // A member may go only while another member that stays holds a state at or past the
            // cursor: with every such state lost, a job resumes only as a new job from a checkpoint.
            let cursor = cluster.record()?.cursor ?? 0
            let holders = members.filter {
                guard let node = cluster.nodes[$0] else { return false }
                return node.machine.prepared != nil && node.machine.boundary >= cursor && !node.dying
                    && !node.terminating && !drained.contains($0)
            }
            let removable = members.filter { member in holders.contains { $0 != member } }
            switch random.next() % 9 {
            case 0:
                if let victim = pick(removable) {
                    cluster.kill(victim, midCollective: true)
                    tally.kills += 1
                }
            case 1:
                if let victim = pick(removable) {
                    cluster.kill(victim)
                    tally.kills += 1
                }
            case 2:
                cluster.join(fresh())
            case 3:
                if let node = pick(removable) {
                    try cluster.drain(node)
                    drained.insert(node)
                    tally.stops += 1
                }
            case 4:
                if let node = pick(removable) {
                    cluster.terminate(node)
                    tally.stops += 1
                }
            case 5:
                if let node = pick(members) {
                    cluster.holdReports(node)
                    holding.insert(node)
                }
            case 6:
                if let node = pick(holding.sorted()) {
                    cluster.releaseReports(node)
                    holding.remove(node)
                }
            case 7:
                cluster.restartCoordinator()
            default:
                let size = Int(random.next() % 4) + 1
                _ = try? cluster.command(.resize(job: "job", nodes: size))
            }
        }
        for node in holding.sorted() { cluster.releaseReports(node) }
        while cluster.nodes.keys.filter({ !drained.contains($0) }).count < 2 { cluster.join(fresh()) }
        try cluster.run(until: "the job to finish (seed \(seed))", limit: 5_000) { $0.record()?.phase == .finished }
        tally.generations += cluster.generations.count
        tally.rolledForward += cluster.rolledForward
        tally.caughtUp += cluster.caughtUp
        var broken = cluster.violations()
        if cluster.record()?.cursor != 30 { broken.append("the job finished at step \(cluster.record()?.cursor ?? 0)") }
        return broken
    }

    @Test func twoHundredRandomInterleavings_loseNoStep_repeatOrSkipNoSample_andKeepReplicasEqual() throws {
        var tally = Tally()
        for seed in UInt64(1)...200 {
            let started = ContinuousClock.now
            let broken = try Self.run(seed: seed, tally: &tally)
            let took = ContinuousClock.now - started
            if took > .seconds(1) { print("sequence \(seed) took \(took)") }
            #expect(broken == [], "sequence \(seed) (rerun it with PropertyTests.run(seed: \(seed)))")
        }
        // The sequences did what they are for: many generation changes, resumes past the cursor
        // and members catching up by broadcast among them.
        #expect(tally.generations > 400, "\(tally)")
        #expect(tally.rolledForward > 20 && tally.caughtUp > 20, "\(tally)")
        #expect(tally.kills > 100 && tally.stops > 50, "\(tally)")
        print("property test: \(tally)")
    }
}
