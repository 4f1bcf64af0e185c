import ControlPlane
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Testing

/// The coordinator compares the parameter hashes members report for the same step, so replicas
/// that drift apart are caught (and counted), not trained on silently.
@Suite("Replica divergence", .timeLimit(.minutes(1)))
struct DivergenceTests {
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

    @Test func membersReportingDifferentParameterHashes_areCountedAndLogged() async throws {
        let coordinator = try await TestCoordinator()
        defer { Task { await coordinator.stop() } }
        _ = try await self.admin(coordinator) {
            $0.jobSubmit = .with {
                $0.specYaml =
                    "name: job\nworkload: {kind: mlp}\ndataset: {path: builtin:digits, samples: 1437}\nbatch_size: 64\nsteps: 10\nnodes: {min: 2, max: 2}\n"
            }
        }
        // Two agents: both report step 0 with the same hash, then step 1 with different ones.
        let hashes: [(name: String, step1: UInt8)] = [("node-a", 1), ("node-b", 2)]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (name, step1) in hashes {
                let credentials = try TestCoordinator.credentials(
                    from: coordinator.authority, role: .agent, name: name, clock: coordinator.clock)
                group.addTask {
                    try await ControlClient(address: coordinator.address, credentials: credentials).withConnection {
                        session in
                        var hello = Envelope()
                        hello.agentHello = .with { $0.dataPlaneAddresses = ["127.0.0.1:1"] }
                        _ = try await session.request(hello)
                        var assignment: Ringmaster_V1_Assignment?
                        while assignment == nil {
                            if case .assignment(let held) = try await session.receive(
                                within: 10, waitingFor: "an assignment"
                            ).body {
                                assignment = held
                            }
                        }
                        for (step, hash) in [(UInt64(0), UInt8(7)), (UInt64(1), step1)] {
                            var report = Envelope()
                            report.stepReport = .with {
                                $0.jobID = "job"
                                $0.generation = assignment!.generation
                                $0.step = step
                                $0.parameterHash = Data([hash])
                            }
                            try await session.send(report)
                        }
                        try await coordinator.log.waitForLine(within: 10, "the divergence at step 1") {
                            $0.contains("replicas diverged") && ($0.contains("step=1 ") || $0.hasSuffix("step=1"))
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let status = try await self.admin(coordinator) { $0.jobStatus = .with { $0.jobID = "job" } }.adminReply
            .jobStatus.jobs.first
        #expect(status?.divergences == 1, "step 0 agreed and step 1 did not: \(String(describing: status))")
        #expect(status?.cursorStep == 2)
        #expect(coordinator.log.count { $0.contains("replicas diverged") } == 1)
    }
}
