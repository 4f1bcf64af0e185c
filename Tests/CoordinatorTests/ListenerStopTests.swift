import ControlPlane
import Foundation
import Logging
import NIOCore
import NIOPosix
import RingmasterSecurity
import Testing

@testable import Coordinator

/// A listener that stops (a standby elected, a leader deposed, SIGTERM) closes every connection it
/// has accepted, those its accept loop had not taken yet among them, so that agents move on to the
/// next coordinator at once instead of waiting out their handshake deadline.
@Suite("Listeners closing what they accepted")
struct ListenerStopTests {
    /// Connections opened just before the listener stops: enough that some sit, accepted, in the
    /// listener's buffer (under the per-address budget, so that none is refused for that).
    static let connections = 24
    /// Far longer than the wait below: no connection is closed by its own deadline.
    static let handshakeSeconds = 120.0

    static func configuration() -> CoordinatorConfiguration {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-listener-stop-\(UUID().uuidString.prefix(8))"
        ).path
        var configuration = CoordinatorConfiguration(stateDirectory: directory)
        configuration.listenPort = 0
        configuration.handshakeTimeoutSeconds = Self.handshakeSeconds
        return configuration
    }

    /// Starts `serve` (which reports its port), opens `connections` plain TCP connections that
    /// send nothing, cancels `serve` at once, and expects every connection closed by the listener
    /// within 5 s.
    func expectEveryConnectionClosedOnStop(
        _ serve: @escaping @Sendable (@escaping @Sendable (Int) -> Void) async throws -> Void
    ) async throws {
        let (ports, announce) = AsyncStream.makeStream(of: Int.self)
        let server = Task { try await serve { announce.yield($0) } }
        defer { server.cancel() }
        let port = try await withDeadline(seconds: 30, waitingFor: "the listener to report its port") {
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next() else { throw CancellationError() }
            return port
        }
        let clients = try await withDeadline(seconds: 30, waitingFor: "\(Self.connections) connections") {
            try await withThrowingTaskGroup(of: (any Channel).self) { group in
                for _ in 0..<Self.connections {
                    group.addTask {
                        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                            .connect(host: "127.0.0.1", port: port).get()
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        server.cancel()
        _ = try await withDeadline(seconds: 30, waitingFor: "the cancelled listener to return") {
            try? await server.value
        }
        for (index, client) in clients.enumerated() {
            try await withDeadline(seconds: 5, waitingFor: "the listener to close connection \(index)") {
                try? await client.closeFuture.get()
            }
        }
    }

    @Test func aStandbyThatStops_closesEveryConnectionItAccepted() async throws {
        let configuration = Self.configuration()
        defer { try? FileManager.default.removeItem(atPath: configuration.stateDirectory) }
        let authority = try CertificateAuthority.loadOrCreate(directory: configuration.stateDirectory, now: Date())
        let context = try CoordinatorService.serverContext(
            authority: authority, configuration: configuration, now: Date())
        try await self.expectEveryConnectionClosedOnStop { onListening in
            let standby = StandbyListener(
                configuration: configuration, context: context, caCertificate: authority.certificate,
                leader: { nil }, logger: Logger(label: "standby"), onListening: onListening)
            try await standby.run()
        }
    }

    @Test func aCoordinatorThatStops_closesEveryConnectionItAccepted() async throws {
        let configuration = Self.configuration()
        defer { try? FileManager.default.removeItem(atPath: configuration.stateDirectory) }
        try FileManager.default.createDirectory(atPath: configuration.stateDirectory, withIntermediateDirectories: true)
        try await self.expectEveryConnectionClosedOnStop { onListening in
            let service = try CoordinatorService(
                configuration: configuration, logger: Logger(label: "coordinator"), onListening: onListening)
            try await service.run()
        }
    }
}
