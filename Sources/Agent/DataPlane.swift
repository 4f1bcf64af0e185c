import Collectives
import ControlPlane
import Foundation
import JobModel

/// The agent's data plane: one listener for the agent's life, and a connection per generation.
///
/// For each assignment the trainer connects this rank to the generation's members (dialling
/// lower ranks, accepting higher ones, every connection proved with the generation's secret).
/// Connecting blocks, so it runs on the trainer's thread, never on the cooperative pool that
/// serves the control session.
final class DataPlane: Sendable {
    let listener: DataPlaneListener
    let advertisedHost: String

    init(host: String, port: Int, advertisedHost: String? = nil) throws {
        self.listener = try DataPlaneListener(host: host, port: port)
        self.advertisedHost = advertisedHost ?? host
    }

    /// The address peers dial.
    var address: String { ControlAddress(host: self.advertisedHost, port: self.listener.port).description }

    /// Connects this rank of `assignment`'s generation to every other member, giving up when
    /// `timeout` passes or `isCancelled` turns true (a newer generation, an abort).
    func connect(
        _ assignment: Assignment,
        timeout: Duration,
        isCancelled: @escaping @Sendable () -> Bool
    ) throws -> Communicator {
        let addresses = assignment.members.map { $0.dataPlaneAddresses.first ?? "" }
        guard !addresses.contains("") else {
            throw AgentError(
                .protocolViolation, "a member of generation \(assignment.generation) announced no data-plane address")
        }
        let transport = try TCPTransport.establish(
            rank: assignment.rank,
            addresses: addresses,
            generation: assignment.generation,
            secret: assignment.dataPlaneSecret,
            listener: self.listener,
            timeout: timeout,
            isCancelled: isCancelled
        )
        return Communicator(transport: transport)
    }

    func close() {
        self.listener.close()
    }
}
