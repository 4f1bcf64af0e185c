/// The data plane a job spec asks for (`transport:`).
public enum TransportRequest: String, Sendable, Hashable, Codable, CaseIterable {
    /// RDMA when every member of a generation has a usable RDMA port (sharing a link layer),
    /// TCP otherwise, with the reason in the job's log and status. The default.
    case auto
    /// TCP, even where RDMA devices exist.
    case tcp
    /// RDMA only: nodes without a usable RDMA port are not given the job.
    case rdma
}

/// How one generation's members move data between them.
public enum DataPlaneTransport: String, Sendable, Hashable, Codable {
    /// TCP connections, proved with the generation's secret.
    case tcp
    /// Reliable-connected RDMA queue pairs, set up through those TCP connections.
    case rdma
}

/// One port of an RDMA device, as an agent announces it.
public struct RDMAPort: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The device, e.g. `mlx5_0` or `rxe0`.
    public var device: String
    /// The port number (from 1).
    public var port: Int
    /// `InfiniBand` or `Ethernet` (RoCE): queue pairs connect only within one link layer.
    public var linkLayer: String
    /// Whether the port is up.
    public var active: Bool
    /// The GID queue pairs address (RoCE v2 or InfiniBand), if the port has one.
    public var gid: [UInt8]?

    /// Makes a port.
    public init(device: String, port: Int, linkLayer: String, active: Bool, gid: [UInt8]?) {
        self.device = device
        self.port = port
        self.linkLayer = linkLayer
        self.active = active
        self.gid = gid
    }

    /// Whether a queue pair can run over it: the port is up and has a GID.
    public var usable: Bool { self.active && self.gid != nil }

    public var description: String {
        "\(self.device) port \(self.port) (\(self.linkLayer)\(self.usable ? "" : self.active ? ", no GID" : ", down"))"
    }
}

/// The data plane a generation runs on, and why: the coordinator's choice from the job spec's
/// `transport` and the RDMA ports its members announced.
///
/// RDMA is chosen when the spec allows it and every member has a usable port of one common link
/// layer (InfiniBand preferred to Ethernet); each member then uses its first such port. Otherwise
/// the generation runs on TCP and `reason` names the members that lack a port, so that an
/// operator sees why a job that could run over RDMA did not.
public struct DataPlaneChoice: Sendable, Hashable {
    /// The transport.
    public var transport: DataPlaneTransport
    /// With RDMA, the device each member uses, by rank; empty with TCP.
    public var devices: [String]
    /// Why this transport, for the job's log and status.
    public var reason: String

    /// Makes a choice.
    public init(transport: DataPlaneTransport, devices: [String], reason: String) {
        self.transport = transport
        self.devices = devices
        self.reason = reason
    }

    /// The choice for members (by rank) with the ports they announced.
    public static func choose(
        _ request: TransportRequest, members: [(node: String, ports: [RDMAPort])]
    ) -> DataPlaneChoice {
        switch request {
        case .tcp:
            return DataPlaneChoice(transport: .tcp, devices: [], reason: "the job spec asks for tcp")
        case .auto, .rdma:
            break
        }
        let lacking = members.filter { !$0.ports.contains(where: \.usable) }.map(\.node)
        guard lacking.isEmpty else {
            let named =
                lacking.prefix(3).joined(separator: ", ") + (lacking.count > 3 ? " and \(lacking.count - 3) more" : "")
            return DataPlaneChoice(
                transport: .tcp, devices: [],
                reason:
                    "\(named) \(lacking.count == 1 ? "has" : "have") no usable RDMA port, so the generation runs on TCP"
            )
        }
        for linkLayer in ["InfiniBand", "Ethernet"] {
            let ports = members.map { $0.ports.first { $0.usable && $0.linkLayer == linkLayer } }
            if ports.allSatisfy({ $0 != nil }) {
                let devices = ports.map { $0!.device }
                let requested = request == .rdma ? "the job spec asks for rdma" : "auto"
                return DataPlaneChoice(
                    transport: .rdma, devices: devices,
                    reason:
                        "\(requested): every member has a usable \(linkLayer) RDMA port (\(Array(Set(devices)).sorted().joined(separator: ", ")))"
                )
            }
        }
        return DataPlaneChoice(
            transport: .tcp, devices: [],
            reason:
                "the members' RDMA ports share no link layer (InfiniBand or Ethernet), so the generation runs on TCP")
    }
}
