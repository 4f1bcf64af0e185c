import JobModel
import Testing

@testable import CoordinatorCore

/// Random sequences of joins, failures, leaves, drains, resizes, step completions and coordinator
/// restarts. After every event: no two members of a job share a rank, ranks are 0..<w, and no node
/// is in two jobs. At the end: counted from sample ids, every sample of every completed epoch was
/// trained exactly once (by the ranks of the generation that completed each step), none twice.
@Suite("Coordinator machine properties")
struct PropertyTests {
    @Test(arguments: 0..<60)
    func randomEventSequences_keepRanksUnique_andConsumeEverySampleOnce(seed: Int) throws {
        var random = SplitMix64(seed: UInt64(seed) &* 7919 &+ 1)
        let nodes = ["n0", "n1", "n2", "n3", "n4", "n5"]
        var sim = Simulation()
        let spec = Simulation.spec(min: 2, max: 5, batch: 13, samples: 97, steps: 60)
        let order = spec.order
        try sim.command(.submit(spec))
        var online: Set<String> = []
        var consumed: [UInt64: [Int]] = [:]  // epoch -> sample ids, with repeats

        for _ in 0..<400 {
            let node = nodes[Int(random.next() % UInt64(nodes.count))]
            let before = sim.log.count
            switch random.next() % 100 {
            case 0..<15:
                sim.online(node)
                online.insert(node)
            case 15..<20:
                sim.send(.nodeOffline(node: node))
                online.remove(node)
            case 20..<25:
                // Stops heartbeating: its lease runs out while the others keep theirs.
                online.remove(node)
                sim.advance(by: .seconds(3), heartbeating: Array(online).sorted())
            case 25..<28:
                if let held = sim.assignments[node] {
                    sim.send(.left(node: node, job: held.job, generation: held.generation))
                }
            case 28..<30:
                _ = try? sim.command(.drain(node: node))
            case 30..<33:
                _ = try? sim.command(.resize(job: "job", nodes: 2 + Int(random.next() % 4)))
            case 33..<35:
                let records = sim.machine.records
                sim.machine = CoordinatorMachine(settings: sim.machine.settings, restoring: records, now: sim.now)
                for node in online.sorted() { sim.online(node) }
            case 35..<40:
                // A stale or early report (with the ids an agent would send): must never move the
                // cursor wrongly, and the report repeated when the step completes counts once.
                if let held = sim.assignments[node], let rank = held.members.first(where: { $0.node == node })?.rank {
                    let step = sim.record().cursor
                    let ids = order.samples(
                        step: step, rank: rank, worldSize: held.members.count,
                        permutation: order.permutation(epoch: order.epoch(ofStep: step)))
                    sim.send(
                        .stepCompleted(
                            node: node, job: held.job, generation: held.generation, step: step, samples: Array(ids)))
                }
            case 40..<55:
                sim.advance(by: .milliseconds(700), heartbeating: Array(online).sorted())
            default:
                sim.completeStep()
            }
            // Count the samples of every step committed by this event, from the ranks of its generation.
            for action in sim.log[before...] {
                guard case .stepCommitted(_, let generation, let step) = action else { continue }
                let members = sim.assignments.values.first { $0.generation == generation }!.members
                let permutation = order.permutation(epoch: order.epoch(ofStep: step))
                for member in members {
                    consumed[order.epoch(ofStep: step), default: []] += order.samples(
                        step: step,
                        rank: member.rank,
                        worldSize: members.count,
                        permutation: permutation
                    )
                }
            }
            try self.checkInvariants(sim)
        }

        let cursor = sim.record().cursor
        let completeEpochs = cursor / UInt64(order.stepsPerEpoch)
        for epoch in consumed.keys.sorted() {
            let ids = consumed[epoch]!
            #expect(Set(ids).count == ids.count, "epoch \(epoch): a sample was trained twice (seed \(seed))")
            if epoch < completeEpochs {
                #expect(ids.sorted() == Array(0..<97), "epoch \(epoch) skipped samples (seed \(seed))")
            }
        }
        #expect(
            sim.log.contains { if case .stepCommitted = $0 { return true } else { return false } },
            "the sequence made progress")
        // The machine's own account, from the ids in reports, agrees with the count above.
        let account = sim.record().samples ?? SampleAccounting()
        #expect(account.seen == UInt64(consumed.values.reduce(0) { $0 + $1.count }), "seed \(seed)")
        #expect(account.repeated == 0, "seed \(seed)")
        #expect(account.skipped(order: order, cursor: cursor) == 0, "seed \(seed)")
    }

    func checkInvariants(_ sim: Simulation) throws {
        var owner: [String: String] = [:]
        for record in sim.machine.records where record.phase == .running {
            #expect(Set(record.members).count == record.members.count, "two ranks for one node in \(record.members)")
            #expect(record.members.count >= record.spec.minNodes && record.members.count <= record.targetNodes)
            for member in record.members {
                #expect(owner[member] == nil, "\(member) is in two jobs")
                owner[member] = record.spec.name
                let status = sim.machine.nodeStatuses.first { $0.node == member }
                #expect(status?.job == record.spec.name || status == nil)
            }
        }
    }
}
