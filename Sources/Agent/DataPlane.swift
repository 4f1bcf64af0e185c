import Collectives
import ControlPlane
import Foundation
import Logging
import RingmasterWire
import Synchronization

/// The agent's data plane: one listener for the agent's life, and a communicator per generation.
///
/// On each assignment it connects to the generation's members (dialling lower ranks, accepting
/// higher ones, every connection proved with the generation's secret) and meets them at a
/// barrier; an abort or a newer assignment aborts the communicator in flight, so a collective
/// blocked on a dead peer fails at once. Connecting blocks, so it runs on a thread of its own,
/// never on the cooperative pool that serves the control session.
final class DataPlane: Sendable {
    let listener: DataPlaneListener
    let advertisedHost: String
    let logger: Logger
    /// The communicator of the current generation, once connected.
    let current = Mutex<(generation: UInt64, job: String, communicator: Communicator?)>((0, "", nil))

    init(host: String, port: Int, advertisedHost: String? = nil, logger: Logger) throws {
        self.listener = try DataPlaneListener(host: host, port: port)
        self.advertisedHost = advertisedHost ?? host
        self.logger = logger
    }

    /// The address peers dial.
    var address: String { "\(self.advertisedHost):\(self.listener.port)" }

    /// Connects this rank of a new generation, replacing (and aborting) the previous one.
    func join(_ assignment: Ringmaster_V1_Assignment) {
        let previous = self.current.withLock { state -> Communicator? in
            defer { state = (assignment.generation, assignment.jobID, nil) }
            return state.communicator
        }
        previous?.abort(reason: "generation \(assignment.generation) replaces it")
        previous?.transport.close()
        let addresses = assignment.members.sorted { $0.rank < $1.rank }.map { $0.dataPlaneAddresses.first ?? "" }
        guard !addresses.contains(""), addresses.count == Int(assignment.worldSize) else {
            self.logger.warning(
                "a member has no data-plane address; not connecting",
                metadata: [LogKey.job: "\(assignment.jobID)", LogKey.generation: "\(assignment.generation)"]
            )
            return
        }
        let thread = Thread { [self] in
            let started = ContinuousClock.now
            do {
                let transport = try TCPTransport.establish(
                    rank: Int(assignment.rank),
                    addresses: addresses,
                    generation: assignment.generation,
                    secret: Array(assignment.dataPlaneSecret),
                    listener: self.listener,
                    timeout: .seconds(30)
                )
                let communicator = Communicator(transport: transport)
                let stillCurrent = self.current.withLock { state -> Bool in
                    guard state.generation == assignment.generation else { return false }
                    state.communicator = communicator
                    return true
                }
                guard stillCurrent else {
                    transport.close()
                    return
                }
                try communicator.barrier(timeout: .seconds(30))
                let elapsed = ContinuousClock.now - started
                self.logger.info(
                    "data plane ready",
                    metadata: [
                        LogKey.job: "\(assignment.jobID)", LogKey.generation: "\(assignment.generation)",
                        LogKey.rank: "\(assignment.rank)", "world_size": "\(assignment.worldSize)",
                        "milliseconds": "\(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)",
                    ]
                )
            } catch {
                self.logger.warning(
                    "data plane not connected",
                    metadata: [LogKey.job: "\(assignment.jobID)", LogKey.generation: "\(assignment.generation)", LogKey.reason: "\(error)"]
                )
            }
        }
        thread.name = "ringmaster-dataplane-g\(assignment.generation)"
        thread.start()
    }

    /// The coordinator ended `generation`: abort its collectives.
    func abort(job: String, generation: UInt64, reason: String) {
        let communicator = self.current.withLock { state -> Communicator? in
            guard state.job == job, state.generation == generation else { return nil }
            return state.communicator
        }
        communicator?.abort(reason: reason)
    }

    func close() {
        let communicator = self.current.withLock { $0.communicator }
        communicator?.abort(reason: "the agent is stopping")
        communicator?.transport.close()
        self.listener.close()
    }
}
