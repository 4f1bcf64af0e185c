import JobModel
import Testing

@testable import CoordinatorCore

/// A member that cannot run its job's workload (its data set is missing, say): the node goes back
/// to idle at once, the job is never offered to it again, and a job no node can run fails with
/// the nodes' reasons after `unrunnableTimeout` instead of waiting forever.
@Suite("Nodes that cannot run a job")
struct CannotRunTests {
    static let settings = CoordinatorMachine.Settings(unrunnableTimeout: .seconds(10))

    @Test func aNodeThatCannotRun_isIdleAtOnce_andTheJobGoesOnWithoutIt() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a", "b", "c")
        try sim.command(.submit(Simulation.spec(min: 2, max: 3)))
        #expect(sim.members() == ["a", "b", "c"])
        sim.send(.cannotRun(node: "b", job: "job", generation: 1, reason: "no data set at /data/set"))
        #expect(sim.record().generation == 2)
        #expect(sim.members() == ["a", "c"])
        #expect(sim.causes().last == .cannotRun)
        #expect(sim.record().refusals == ["b": "no data set at /data/set"])
        #expect(sim.machine.nodeStatuses.first { $0.node == "b" }?.state == .idle, "not draining: free for other jobs")
        // Another job gets b at once.
        try sim.command(.submit(Simulation.spec("other", min: 1, max: 1)))
        #expect(sim.members("other") == ["b"])
    }

    @Test func theJob_isNeverOfferedAgainToANodeThatRefusedIt() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        sim.send(.cannotRun(node: "b", job: "job", generation: 1, reason: "missing"))
        #expect(sim.members() == ["a"])
        // b is idle and the job is below its target: it still does not take b back.
        sim.advance(by: .seconds(30), heartbeating: ["a", "b"])
        #expect(sim.members() == ["a"])
        #expect(sim.record().generation == 2)
        // Nor after b reconnects.
        sim.send(.nodeOffline(node: "b"))
        sim.online("b")
        #expect(sim.members() == ["a"])
    }

    @Test func aJobNoNodeCanRun_failsWithTheReasons_afterTheTimeout() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        sim.send(.cannotRun(node: "a", job: "job", generation: 1, reason: "no file /data/set"))
        sim.send(.cannotRun(node: "b", job: "job", generation: 2, reason: "no file /data/set either"))
        #expect(sim.record().phase == .waiting)
        sim.advance(by: .seconds(9), heartbeating: ["a", "b"])
        #expect(sim.record().phase == .waiting, "before the timeout")
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        let record = sim.record()
        #expect(record.phase == .failed)
        let failure = try #require(record.failure)
        #expect(
            failure.contains("a: no file /data/set") && failure.contains("b: no file /data/set either"), "\(failure)")
        #expect(sim.log.contains { if case .jobFailed("job", _) = $0 { return true } else { return false } })
        #expect(sim.log.last == .persist(job: "job") || sim.log.contains(.persist(job: "job")))
        // Both nodes are free for the next job.
        try sim.command(.submit(Simulation.spec("next", min: 2, max: 2)))
        #expect(sim.members("next") == ["a", "b"])
        #expect(throws: CoordinatorMachine.CommandError.self) { try sim.command(.resize(job: "job", nodes: 1)) }
    }

    @Test func anotherNodeComingOnline_beforeTheTimeout_keepsTheJobWaitingForIt() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a")
        try sim.command(.submit(Simulation.spec(min: 1, max: 1)))
        sim.send(.cannotRun(node: "a", job: "job", generation: 1, reason: "missing"))
        sim.advance(by: .seconds(5), heartbeating: ["a"])
        sim.online("b")
        #expect(sim.record().phase == .running)
        #expect(sim.members() == ["b"])
        sim.advance(by: .seconds(20), heartbeating: ["a", "b"])
        #expect(sim.record().phase == .running)
    }

    @Test func aStaleCannotRun_isRefused_andChangesNothing() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        sim.send(.nodeOffline(node: "b"))
        sim.online("b")
        let generation = sim.record().generation
        let actions = sim.send(.cannotRun(node: "a", job: "job", generation: 1, reason: "late"))
        #expect(actions.contains(.staleRefused(node: "a", job: "job", generation: 1, current: generation)))
        #expect(sim.record().refusals.isEmpty)
        #expect(sim.record().generation == generation)
    }

    @Test func aFinishedJob_keepsItsLastMembers_andALateLeaveDrainsNoOne() throws {
        var sim = Simulation(settings: Self.settings)
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2, steps: 3)))
        for _ in 0..<3 { sim.completeStep() }
        #expect(sim.record().phase == .finished)
        #expect(sim.members() == ["a", "b"], "the last generation's members, whose last shards may still arrive")
        sim.send(.left(node: "a", job: "job", generation: 1))
        #expect(sim.machine.nodeStatuses.map(\.state) == [.idle, .idle])
        #expect(sim.machine.nodeStatuses.allSatisfy { $0.rank == nil && $0.job == nil })
    }
}
