import CVerbs
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A verbs call that failed: what was done, and why (errno, or a completion's status).
public struct VerbsError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure, for callers that map it to their own errors.
    public enum Kind: Sendable, Hashable {
        /// A verbs or system call failed.
        case call
        /// A work request completed with an error status (`request` is its id).
        case completion(request: UInt64)
        /// The wait's deadline passed.
        case deadline
        /// `abort` was called.
        case aborted
        /// A watched descriptor (a peer's liveness connection) closed.
        case watchedClosed(descriptor: Int32)
    }

    public let kind: Kind
    public let description: String

    init(_ what: String, code: Int32) {
        self.kind = .call
        self.description = "\(what): \(String(cString: strerror(code))) (errno \(code))"
    }

    init(_ message: String, kind: Kind = .call) {
        self.kind = kind
        self.description = message
    }

    /// The call's errno (verbs calls that return a pointer set it).
    static func failed(_ what: String) -> VerbsError {
        VerbsError(what, code: errno == 0 ? EIO : errno)
    }
}

/// Live verbs resources by kind (contexts, protection domains, completion channels and queues,
/// queue pairs, memory regions), so that tests can check that every path releases all of them.
public enum VerbsResources {
    static let counts = Mutex<[String: Int]>([:])

    static func opened(_ kind: String) { Self.counts.withLock { $0[kind, default: 0] += 1 } }
    static func closed(_ kind: String) { Self.counts.withLock { $0[kind, default: 0] -= 1 } }

    /// The kinds with resources still open, and how many.
    public static var live: [String: Int] { Self.counts.withLock { $0.filter { $0.value != 0 } } }
}

/// An RDMA device's first port, as an agent announces it.
public struct RDMADevice: Sendable, Hashable {
    /// The device's name (`rxe0`, `mlx5_0`).
    public var name: String
    /// The port used (1: verbs numbers ports from 1).
    public var port: UInt8
    /// Whether the port is active.
    public var active: Bool
    /// `Ethernet` (RoCE) or `InfiniBand`.
    public var linkLayer: String
    /// The GID used to reach this port (RoCE v2 on Ethernet, the port GID on InfiniBand) and its
    /// index in the port's table; nil when the port has none.
    public var gid: [UInt8]?
    public var gidIndex: Int

    /// Whether a job can use the device.
    public var usable: Bool { self.active && self.gid != nil }

    /// Every RDMA device this machine has, with its first port; empty when it has none (or
    /// libibverbs has no provider for it).
    public static func all() -> [RDMADevice] {
        var count: Int32 = 0
        guard let list = rm_ibv_get_device_list(&count) else { return [] }
        defer { ibv_free_device_list(list) }
        var devices: [RDMADevice] = []
        for index in 0..<Int(count) {
            guard let device = list[index], let context = ibv_open_device(device) else { continue }
            defer { ibv_close_device(context) }
            devices.append(Self.describe(name: String(cString: ibv_get_device_name(device)), context: context, port: 1))
        }
        return devices
    }

    static func describe(name: String, context: UnsafeMutablePointer<ibv_context>, port: UInt8) -> RDMADevice {
        var attributes = ibv_port_attr()
        guard rm_ibv_query_port(context, port, &attributes) == 0 else {
            return RDMADevice(name: name, port: port, active: false, linkLayer: "unknown", gid: nil, gidIndex: 0)
        }
        let ethernet = attributes.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET)
        var gid: [UInt8]?
        var gidIndex = 0
        for index in 0..<max(0, Int(attributes.gid_tbl_len)) {
            var entry = ibv_gid_entry()
            guard rm_ibv_query_gid_ex(context, UInt32(port), UInt32(index), &entry) == 0 else { continue }
            let bytes = withUnsafeBytes(of: entry.gid.raw) { Array($0) }
            guard bytes.contains(where: { $0 != 0 }) else { continue }
            if !ethernet || entry.gid_type == IBV_GID_TYPE_ROCE_V2.rawValue {
                gid = bytes
                gidIndex = index
                break
            }
        }
        return RDMADevice(
            name: name, port: port, active: attributes.state == IBV_PORT_ACTIVE,
            linkLayer: ethernet ? "Ethernet" : "InfiniBand", gid: gid, gidIndex: gidIndex)
    }
}
