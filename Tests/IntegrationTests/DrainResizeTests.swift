import Agent
import ControlPlane
import Coordinator
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Testing

@Suite("Drain and resize over the admin API", .timeLimit(.minutes(1)))
struct DrainResizeTests {
    func admin(_ coordinator: TestCoordinator, _ build: @escaping @Sendable (inout Ringmaster_V1_AdminRequest) -> Void)
        async throws -> Envelope
    {
        try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
            .withConnection { session in
                var envelope = Envelope()
                build(&envelope.adminRequest)
                return try await session.request(envelope)
            }
    }

    func members(_ coordinator: TestCoordinator) async throws -> [String] {
        let reply = try await self.admin(coordinator) { $0.jobStatus = .with { $0.jobID = "job" } }
        return reply.adminReply.jobStatus.jobs.first?.members.map(\.nodeID) ?? []
    }

    @Test func aDrainedAgentLeaves_andAResizeShrinksAndGrowsTheJobInPlace() async throws {
        let coordinator = try await TestCoordinator { $0.settleWindowMilliseconds = 100 }
        defer { Task { await coordinator.stop() } }
        var logs: [String: LineLog] = [:]
        var tasks: [Task<Void, any Error>] = []
        defer { for task in tasks { task.cancel() } }
        for name in ["node-a", "node-b", "node-c"] {
            let (token, pin) = try await coordinator.createToken()
            var configuration = AgentConfiguration(
                coordinator: coordinator.address, dataDirectory: "\(coordinator.directory.path)/\(name)", nodeName: name
            )
            configuration.joinToken = token
            configuration.caPin = pin
            let log = LineLog(name: "\(name) log")
            logs[name] = log
            let service = AgentService(configuration: configuration, logger: log.logger(label: name))
            tasks.append(Task { try await service.run() })
            try await log.waitForLine(within: 10, "a session") { $0.contains("connected to the coordinator") }
        }
        _ = try await self.admin(coordinator) {
            $0.jobSubmit = .with {
                $0.specYaml =
                    "name: job\nworkload: {kind: mlp}\ndataset: {path: /d, samples: 100}\nbatch_size: 12\nsteps: 100\nnodes: {min: 1, max: 3}\n"
            }
        }
        try await coordinator.log.waitForLine(within: 10, "generation 1") {
            $0.contains("generation started") && $0.contains("world_size=3")
        }
        #expect(try await self.members(coordinator) == ["node-a", "node-b", "node-c"])

        // Drain node-b: it is told, leaves, and the job continues without it.
        _ = try await self.admin(coordinator) { $0.nodeDrain = .with { $0.nodeID = "node-b" } }
        try await logs["node-b"]!.waitForLine(within: 10, "the drain") { $0.contains("drained by the coordinator") }
        try await coordinator.log.waitForLine(within: 10, "generation 2 without node-b") {
            $0.contains("generation started") && $0.contains("cause=drained") && $0.contains("members=node-a,node-c")
        }

        // Shrink to 1 in place, then grow back to 2: node-b stays drained, so only node-c can return.
        _ = try await self.admin(coordinator) {
            $0.jobResize = .with {
                $0.jobID = "job"
                $0.nodes = 1
            }
        }
        try await coordinator.log.waitForLine(within: 10, "the shrink") {
            $0.contains("cause=resized") && $0.contains("members=node-a ")
        }
        _ = try await self.admin(coordinator) {
            $0.jobResize = .with {
                $0.jobID = "job"
                $0.nodes = 3
            }
        }
        try await coordinator.log.waitForLine(within: 10, "the growth") {
            $0.contains("cause=resized") && $0.contains("members=node-a,node-c ")
        }
        #expect(try await self.members(coordinator) == ["node-a", "node-c"])
        try await logs["node-c"]!.waitForLine(within: 10, "its newest assignment") {
            $0.contains("holding an assignment") && $0.contains("generation=4")
        }
    }
}
