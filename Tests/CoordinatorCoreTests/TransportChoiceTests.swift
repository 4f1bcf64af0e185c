import JobModel
import Testing

@testable import CoordinatorCore

@Suite("The coordinator's choice of data plane")
struct TransportChoiceTests {
    static let gid = [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 192, 0, 2, 1]

    static func online(_ sim: inout Simulation, _ node: String, rdma device: String?) {
        let ports = device.map {
            [RDMAPort(device: $0, port: 1, linkLayer: "Ethernet", active: true, gid: Self.gid)]
        }
        sim.send(.nodeOnline(node: node, .init(dataPlaneAddresses: ["\(node):7700"], rdmaPorts: ports ?? [])))
    }

    static func spec(_ transport: TransportRequest, min: Int = 1, max: Int = 3) -> JobSpec {
        var spec = Simulation.spec(min: min, max: max)
        spec.transport = transport
        return spec
    }

    /// Each generation's choice, in order.
    static func choices(_ sim: Simulation) -> [DataPlaneChoice] {
        sim.log.compactMap {
            if case .generationStarted(_, _, _, _, let choice, _) = $0 { return choice }
            return nil
        }
    }

    @Test func auto_runsOverRDMA_whenEveryMemberHasADevice_andTellsEachMemberItsOwn() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "mlx5_0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.auto, max: 2)))
        let assignment = try #require(sim.assignments["b"])
        #expect(assignment.transport == .rdma)
        #expect(assignment.members.map(\.rdmaDevice) == ["mlx5_0", "rxe0"])
        let told = try #require(assignment.assignment(for: "b", dataPlaneSecret: [1]))
        #expect(told.transport == .rdma && told.members[told.rank].rdmaDevice == "rxe0")
    }

    @Test func auto_fallsBackToTCP_whenAJoinerHasNoDevice_andBackToRDMA_whenItLeaves() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.auto)))
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        #expect(sim.assignments["a"]?.transport == .rdma)
        Self.online(&sim, "c", rdma: nil)
        sim.advance(by: .seconds(1), heartbeating: ["a", "b", "c"])
        #expect(sim.members() == ["a", "b", "c"])
        #expect(sim.assignments["a"]?.transport == .tcp)
        #expect(sim.assignments["a"]?.members.allSatisfy { $0.rdmaDevice == nil } == true)
        let fallback = try #require(Self.choices(sim).last)
        #expect(fallback.transport == .tcp && fallback.reason.contains("c has no usable RDMA port"))
        sim.advance(by: .seconds(20), heartbeating: ["a", "b"])  // c's lease runs out
        #expect(sim.members() == ["a", "b"])
        #expect(sim.assignments["a"]?.transport == .rdma)
        #expect(Self.choices(sim).map(\.transport) == [.rdma, .tcp, .rdma])
    }

    @Test func rdma_givesTheJobOnlyToNodesWithADevice_andWaitsForThem() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: nil)
        try sim.command(.submit(Self.spec(.rdma, min: 2, max: 3)))
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        #expect(sim.record().phase == .waiting, "b has no device, so one node is below min")
        Self.online(&sim, "c", rdma: "rxe0")
        sim.advance(by: .seconds(2), heartbeating: ["a", "b", "c"])
        #expect(sim.record().phase == .running)
        #expect(sim.members() == ["a", "c"])
        #expect(sim.assignments["c"]?.transport == .rdma)
        #expect(sim.machine.nodeStatuses.first { $0.node == "b" }?.state == .idle)
    }

    @Test func tcp_runsOverTCP_withDevicesEverywhere() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.tcp, max: 2)))
        #expect(sim.assignments["a"]?.transport == .tcp)
        #expect(Self.choices(sim).first?.reason == "the job spec asks for tcp")
    }

    @Test func aFailedRDMASetUp_underAuto_startsTheNextGenerationOnTCP_andKeepsItThere() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.auto)))
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        let failed = sim.record().generation
        #expect(sim.assignments["a"]?.transport == .rdma)
        sim.send(
            .generationFailed(
                node: "b", job: "job", generation: failed, reason: "queue pair to RTR: EINVAL", rdmaSetUp: true))
        #expect(sim.record().generation == failed + 1 && sim.members() == ["a", "b"], "the same members, over TCP")
        #expect(sim.causes().last == .rdmaSetUpFailed)
        #expect(sim.assignments["a"]?.transport == .tcp && sim.assignments["b"]?.transport == .tcp)
        let reason = try #require(Self.choices(sim).last?.reason)
        #expect(reason.contains("RDMA failed earlier") && reason.contains("b: queue pair to RTR"), "\(reason)")
        // The other member's report of the same failure is stale: nothing moves.
        sim.send(.generationFailed(node: "a", job: "job", generation: failed, reason: "peer closed", rdmaSetUp: true))
        #expect(sim.record().generation == failed + 1)
        // A node joining later does not bring RDMA back.
        Self.online(&sim, "c", rdma: "rxe0")
        sim.advance(by: .seconds(1), heartbeating: ["a", "b", "c"])
        #expect(sim.members() == ["a", "b", "c"] && sim.assignments["c"]?.transport == .tcp)
    }

    @Test func aFailedRDMASetUp_underRdmaOnly_failsTheJob_sayingWhatToDo_andFreesItsNodes() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.rdma, max: 2)))
        let generation = sim.record().generation
        let actions = sim.send(
            .generationFailed(
                node: "a", job: "job", generation: generation, reason: "no GID reaches 10.0.0.2", rdmaSetUp: true))
        #expect(sim.record().phase == .failed)
        #expect(sim.record().failure?.contains("transport: auto") == true, "\(sim.record().failure ?? "")")
        let aborted = actions.compactMap { action -> String? in
            if case .abort(let node, _, _, _) = action { return node }
            return nil
        }
        #expect(Set(aborted) == ["a", "b"])
        #expect(sim.machine.nodeStatuses.allSatisfy { $0.state == .idle })
    }

    @Test func aGenerationFailedWithEveryMemberThere_isFollowedByTheNext_afterALease_overTCPIfItRanOverRDMA() throws {
        var sim = Simulation()
        Self.online(&sim, "a", rdma: "rxe0")
        Self.online(&sim, "b", rdma: "rxe0")
        try sim.command(.submit(Self.spec(.auto)))
        sim.advance(by: .seconds(2), heartbeating: ["a", "b"])
        let failed = sim.record().generation
        sim.send(
            .generationFailed(
                node: "a", job: "job", generation: failed, reason: "all-reduce: deadline exceeded", rdmaSetUp: false))
        sim.send(.generationFailed(node: "b", job: "job", generation: failed, reason: "aborted", rdmaSetUp: false))
        sim.advance(by: .milliseconds(2500), heartbeating: ["a", "b"])
        #expect(sim.record().generation == failed, "within the grace a lost member may still explain it")
        sim.advance(by: .seconds(1), heartbeating: ["a", "b"])
        #expect(sim.record().generation == failed + 1 && sim.members() == ["a", "b"])
        #expect(sim.causes().last == .generationFailed)
        #expect(sim.assignments["a"]?.transport == .tcp, "the RDMA path is suspect: the job goes on over TCP")
    }

    @Test func aMemberLostDuringTheGrace_startsTheNextGenerationAsALoss_andTheFailureStartsNoOther() throws {
        var sim = Simulation()
        sim.online("a", "b", "c")
        try sim.command(.submit(Simulation.spec(min: 1, max: 3)))
        let failed = sim.record().generation
        sim.send(
            .generationFailed(node: "a", job: "job", generation: failed, reason: "rank 2 closed", rdmaSetUp: false))
        sim.advance(by: .seconds(3), heartbeating: ["a", "b"])  // c is dead: its lease runs out
        #expect(sim.causes() == [.start, .leaseExpired], "\(sim.causes())")
        sim.advance(by: .seconds(10), heartbeating: ["a", "b"])
        #expect(sim.causes() == [.start, .leaseExpired], "no generation for the failure the loss explained")
    }

    @Test func failuresInARow_waitTwiceAsLongEachTime_untilAStepIsCommitted() throws {
        var sim = Simulation()
        sim.online("a", "b")
        try sim.command(.submit(Simulation.spec(min: 1, max: 2)))
        var waits: [Duration] = []
        for _ in 0..<3 {
            let generation = sim.record().generation
            sim.send(.generationFailed(node: "a", job: "job", generation: generation, reason: "x", rdmaSetUp: false))
            let start = sim.now
            while sim.record().generation == generation, sim.now - start < .seconds(60) {
                sim.advance(by: .milliseconds(500), heartbeating: ["a", "b"])
            }
            waits.append(sim.now - start)
        }
        #expect(waits == [.seconds(3), .seconds(6), .seconds(12)], "1.5 leases, then twice as long: \(waits)")
        sim.completeStep()
        let generation = sim.record().generation
        sim.send(.generationFailed(node: "b", job: "job", generation: generation, reason: "y", rdmaSetUp: false))
        sim.advance(by: .seconds(3), heartbeating: ["a", "b"])
        #expect(sim.record().generation == generation + 1, "a committed step resets the wait")
    }
}
