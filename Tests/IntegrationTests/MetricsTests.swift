import Agent
import ControlPlane
import Coordinator
import Foundation
import LocalCluster
import NIOCore
import NIOPosix
import RingmasterSecurity
import RingmasterWire
import Testing

@Suite("Coordinator metrics", .timeLimit(.minutes(1)))
struct MetricsTests {
    /// Fetches a URL path from 127.0.0.1:port with a raw HTTP/1.1 request over a real socket.
    func get(port: Int, path: String) async throws -> String {
        try await withDeadline(seconds: 10, waitingFor: "GET \(path)") {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            return try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n"))
                var response = ""
                for try await chunk in inbound { response += String(buffer: chunk) }
                return response
            }
        }
    }

    @Test func metricsEndpoint_reportsNodesGenerationsAndLeaseExpiries() async throws {
        let coordinator = try await TestCoordinator {
            $0.metricsHost = "127.0.0.1"
            $0.metricsPort = 0
        }
        defer { Task { await coordinator.stop() } }
        let line = try await coordinator.log.waitForLine(within: 10, "the metrics address") {
            $0.contains("serving metrics")
        }
        let port = try #require(line.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) })

        let (token, pin) = try await coordinator.createToken()
        let log = LineLog(name: "agent log")
        var configuration = AgentConfiguration(
            coordinator: coordinator.address, dataDirectory: "\(coordinator.directory.path)/a", nodeName: "node-a")
        configuration.joinToken = token
        configuration.caPin = pin
        let agent = Task { try await AgentService(configuration: configuration, logger: log.logger(label: "a")).run() }
        defer { agent.cancel() }
        try await log.waitForLine(within: 10, "a session") { $0.contains("connected to the coordinator") }
        _ = try await ControlClient(address: coordinator.address, credentials: coordinator.operatorCredentials)
            .withConnection { session in
                var envelope = Envelope()
                envelope.adminRequest = .with {
                    $0.jobSubmit = .with {
                        $0.specYaml =
                            "name: m\nworkload: {kind: mlp}\ndataset: {path: /d, samples: 10}\nbatch_size: 2\nsteps: 5\nnodes: {min: 1, max: 1}\n"
                    }
                }
                return try await session.request(envelope)
            }
        try await log.waitForLine(within: 10, "an assignment") { $0.contains("holding an assignment") }

        let response = try await self.get(port: port, path: "/metrics")
        #expect(response.hasPrefix("HTTP/1.1 200"))
        #expect(response.contains("ringmaster_generations_started_total 1"))
        #expect(response.contains(#"ringmaster_nodes{state="busy"} 1"#))
        #expect(response.contains("ringmaster_lease_expiries_total 0"))
        #expect(response.contains("ringmaster_rendezvous_duration_seconds"))
        #expect(response.contains("ringmaster_stale_messages_refused_total"))
        let missing = try await self.get(port: port, path: "/other")
        #expect(missing.hasPrefix("HTTP/1.1 404"))
    }
}
