import Collectives
import ControlPlane
import Foundation
import JobModel
import Verbs

/// Which RDMA ports an agent's data plane announces to the coordinator.
public enum RDMASelection: Sendable, Hashable, CustomStringConvertible {
    /// Every port of every device found (its first port).
    case all
    /// None: the agent's jobs run over TCP.
    case none
    /// Only this device's.
    case device(String)

    /// Parses `auto` (every device), `off` (none) or a device name.
    public init(parsing text: String) {
        switch text {
        case "auto": self = .all
        case "off": self = .none
        default: self = .device(text)
        }
    }

    public var description: String {
        switch self {
        case .all: "auto"
        case .none: "off"
        case .device(let name): name
        }
    }
}

/// The agent's data plane: one listener for the agent's life, and a connection per generation.
///
/// For each assignment the trainer connects this rank to the generation's members (dialling
/// lower ranks, accepting higher ones, every connection proved with the generation's secret);
/// when the coordinator chose RDMA for the generation, queue pairs are then set up through those
/// connections, over the RDMA device the assignment names for this member. Connecting blocks, so
/// it runs on the trainer's thread, never on the cooperative pool that serves the control session.
final class DataPlane: Sendable {
    let listener: DataPlaneListener
    let advertisedHost: String
    /// The RDMA ports announced to the coordinator (found once, at start).
    let rdmaPorts: [RDMAPort]

    init(host: String, port: Int, advertisedHost: String? = nil, rdma: RDMASelection = .all) throws {
        self.listener = try DataPlaneListener(host: host, port: port)
        self.advertisedHost = advertisedHost ?? host
        let found = RDMADevice.all().map {
            RDMAPort(device: $0.name, port: Int($0.port), linkLayer: $0.linkLayer, active: $0.active, gid: $0.gid)
        }
        switch rdma {
        case .all: self.rdmaPorts = found
        case .none: self.rdmaPorts = []
        case .device(let name):
            guard let port = found.first(where: { $0.device == name }) else {
                self.listener.close()
                let names = found.map(\.device)
                throw AgentError(
                    .configuration,
                    "no RDMA device named \(name) on this host (found: \(names.isEmpty ? "none" : names.joined(separator: ", "))); pass --rdma auto, off or one of those"
                )
            }
            self.rdmaPorts = [port]
        }
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
        let device: String?
        switch assignment.transport {
        case .tcp:
            device = nil
        case .rdma:
            guard let name = assignment.members[assignment.rank].rdmaDevice,
                self.rdmaPorts.contains(where: { $0.device == name && $0.usable })
            else {
                throw AgentError(
                    .protocolViolation,
                    "generation \(assignment.generation) runs over RDMA on device \(assignment.members[assignment.rank].rdmaDevice ?? "(none)"), which this agent did not announce as usable"
                )
            }
            device = name
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
        guard let device else { return Communicator(transport: transport) }
        do {
            return Communicator(
                transport: try RDMATransport.establish(over: transport, device: device, timeout: timeout))
        } catch {
            throw RDMASetUpFailure(device: device, underlying: error)
        }
    }

    func close() {
        self.listener.close()
    }
}

/// A generation's RDMA data plane could not be set up on `device` (here, or because of a peer).
struct RDMASetUpFailure: Error, CustomStringConvertible {
    let device: String
    let underlying: any Error

    var description: String { "setting up RDMA on \(self.device) failed: \(self.underlying)" }
}
