import Foundation

/// Stops every packet sent to some TCP ports on one interface (loopback by default, or another in a
/// network namespace), with the kernel's traffic control (`tc`), until `restore()`: a path that
/// stops carrying while the processes at both ends stay up (a data-plane port; a coordinator's
/// route to etcd). The packets are classified by a `u32` filter into an HTB class of 8 bit/s (with
/// no burst), where they wait until `restore()` removes the queue and them with it: this needs no
/// traffic-control action module (kernels without `act_gact` cannot drop in a filter).
/// Established connections stall at once; the first packet of a new one may still pass. Needs root
/// and `tc` (iproute2).
public final class TrafficCut: Sendable {
    /// The ports cut off.
    public let ports: [Int]
    /// The interface, and the network namespace it is in (nil: this process's).
    public let device: String
    public let namespace: String?

    /// Cuts `port` off on loopback at once.
    public convenience init(port: Int) throws {
        try self.init(ports: [port])
    }

    /// Cuts `ports` off at once on `device`, in `namespace` when given.
    public init(ports: [Int], device: String = "lo", namespace: String? = nil) throws {
        self.ports = ports
        self.device = device
        self.namespace = namespace
        try self.tc(["qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "20", "r2q", "1"])
        do {
            try self.tc([
                "class", "add", "dev", device, "parent", "1:", "classid", "1:10", "htb", "rate", "8bit", "ceil",
                "8bit", "burst", "1b", "cburst", "1b",
            ])
            try self.tc([
                "class", "add", "dev", device, "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit", "ceil",
                "10gbit",
            ])
            for port in ports {
                try self.tc([
                    "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match",
                    "ip", "dport", "\(port)", "0xffff", "flowid", "1:10",
                ])
            }
        } catch {
            try? self.tc(["qdisc", "del", "dev", device, "root"])
            throw error
        }
    }

    /// Lets packets to the ports through again.
    public func restore() throws {
        try self.tc(["qdisc", "del", "dev", self.device, "root"])
    }

    func tc(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = (self.namespace.map { ["ip", "netns", "exec", $0] } ?? []) + ["tc"] + arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw LocalClusterError("could not run tc (install iproute2): \(error)")
        }
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw LocalClusterError(
                "tc \(arguments.joined(separator: " ")) failed (it needs root, and a kernel with the HTB queue and the u32 filter): \(String(decoding: message, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
    }
}
