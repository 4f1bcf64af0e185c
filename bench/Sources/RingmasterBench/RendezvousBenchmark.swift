import Agent
import ControlPlane
import Foundation
import LocalCluster
import Logging
import NIOConcurrencyHelpers
import RingmasterSecurity
import RingmasterWire

/// Rendezvous over real mutual-TLS connections: a coordinator process and `agents` agents (in this
/// process, each with its own TLS connection and session). A job waits for exactly `agents` nodes;
/// the agents connect at once; the figure is the time from the last agent's session being
/// established (its hello answered) to the last agent holding its assignment.
public enum RendezvousBenchmark {
    /// Timings over the rounds.
    public struct Result: Sendable {
        /// Agents per round.
        public var agents: Int
        /// Milliseconds from the last join to every agent holding its assignment, per round.
        public var roundsMilliseconds: [Double]
        /// Milliseconds from starting the agents to every agent holding its assignment, per round.
        public var totalMilliseconds: [Double]

        /// The median of `roundsMilliseconds`.
        public var medianMilliseconds: Double { self.roundsMilliseconds.sorted()[self.roundsMilliseconds.count / 2] }
    }

    /// When each agent last connected and last got an assignment.
    final class Timeline: Sendable {
        let connected = NIOLockedValueBox<[String: ContinuousClock.Instant]>([:])
        let assigned = NIOLockedValueBox<[String: ContinuousClock.Instant]>([:])
        let allAssigned: NIOLockedValueBox<(count: Int, job: String, continuation: CheckedContinuation<Void, Never>?)>

        init() {
            self.allAssigned = NIOLockedValueBox((0, "", nil))
        }
    }

    /// A log handler that timestamps the two lines the benchmark measures.
    struct TimingLogHandler: LogHandler {
        let node: String
        let timeline: Timeline
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(
            level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
            function: String, line: UInt
        ) {
            let now = ContinuousClock.now
            switch message.description {
            case "connected to the coordinator":
                self.timeline.connected.withLockedValue { $0[self.node] = now }
            case "holding an assignment":
                let job = metadata?[LogKey.job].map { "\($0)" } ?? ""
                self.timeline.assigned.withLockedValue { $0[self.node] = now }
                let resume = self.timeline.allAssigned.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                    guard job == state.job else { return nil }
                    state.count -= 1
                    guard state.count == 0 else { return nil }
                    defer { state.continuation = nil }
                    return state.continuation
                }
                resume?.resume()
            default:
                break
            }
        }
    }

    /// Runs `rounds` rounds with `agents` agents against the `ringmaster` at `executable`.
    public static func run(agents: Int, rounds: Int, executable: String, progress: (String) -> Void) async throws
        -> Result
    {
        let directory = NSTemporaryDirectory() + "/ringmaster-bench-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cluster = Cluster(directory: directory, executable: executable)
        defer { for child in cluster.children.withLock({ $0 }) { child.signal(SIGKILL) } }
        let admin = try await cluster.startCoordinator()
        guard let address = cluster.address else { throw BenchmarkError("the coordinator is not running") }

        // Every agent joins once (tokens, CSRs, certificates); not part of the figure.
        let timeline = Timeline()
        var services: [AgentService] = []
        for index in 0..<agents {
            let token = try await admin.withConnection { session in
                var envelope = Envelope()
                envelope.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = 600 } }
                return try await session.request(envelope).adminReply.tokenCreate
            }
            let name = "agent-\(index)"
            var configuration = AgentConfiguration(
                coordinator: address, dataDirectory: "\(directory)/\(name)", nodeName: name)
            configuration.joinToken = try JoinToken(parsing: token.token)
            configuration.caPin = try CAPin(parsing: token.caPin)
            configuration.dataPlaneAddresses = ["127.0.0.1:\(20000 + index)"]
            let service = AgentService(
                configuration: configuration,
                logger: Logger(label: name) { _ in TimingLogHandler(node: name, timeline: timeline) }
            )
            _ = try await service.credentials()
            services.append(service)
        }
        progress("\(agents) agents joined (certificates issued); measuring \(rounds) round(s)")

        var result = Result(agents: agents, roundsMilliseconds: [], totalMilliseconds: [])
        for round in 0..<rounds {
            let job = "rendezvous-\(round)"
            let spec = """
                name: \(job)
                workload: {kind: mlp}
                dataset: {path: /data, samples: \(agents * 100)}
                batch_size: \(agents * 4)
                steps: 1000
                nodes: {min: \(agents), max: \(agents)}
                """
            try await Self.admin(admin) { $0.jobSubmit = .with { $0.specYaml = spec } }
            timeline.connected.withLockedValue { $0 = [:] }
            timeline.assigned.withLockedValue { $0 = [:] }
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    timeline.allAssigned.withLockedValue { $0 = (agents, job, continuation) }
                    for service in services {
                        group.addTask { try await service.run() }
                    }
                }
                group.cancelAll()
            }
            let lastJoin = timeline.connected.withLockedValue { $0.values.max()! }
            let lastAssigned = timeline.assigned.withLockedValue { $0.values.max()! }
            let figure = MachineBenchmark.seconds(lastAssigned - lastJoin) * 1000
            result.roundsMilliseconds.append(figure)
            result.totalMilliseconds.append(MachineBenchmark.seconds(lastAssigned - started) * 1000)
            progress(
                String(
                    format: "round %d: last join -> all %d assigned %.1f ms (start -> all assigned %.1f ms)", round + 1,
                    agents, figure, result.totalMilliseconds.last!))
            try await Self.admin(admin) { $0.jobCancel = .with { $0.jobID = job } }
        }
        return result
    }

    static func admin(_ client: ControlClient, _ build: @escaping @Sendable (inout Ringmaster_V1_AdminRequest) -> Void)
        async throws
    {
        _ = try await client.withConnection { session in
            var envelope = Envelope()
            build(&envelope.adminRequest)
            return try await session.request(envelope)
        }
    }
}
