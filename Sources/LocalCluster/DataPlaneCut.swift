import Foundation

/// Stops every packet sent to one TCP port on loopback, with the kernel's traffic control (`tc`),
/// until `restore()`: a data-plane path that stops carrying while the agent behind it, and its
/// control session, stay up. The packets are classified by a `u32` filter into an HTB class of
/// 8 bit/s (with no burst), where they wait until `restore()` removes the queue and them with it:
/// this needs no traffic-control action module (kernels without `act_gact` cannot drop in a
/// filter). Established connections stall at once; the first packet of a new one may still pass.
/// Needs root and `tc` (iproute2).
public final class DataPlaneCut: Sendable {
    /// The port cut off.
    public let port: Int

    /// Cuts `port` off at once.
    public init(port: Int) throws {
        self.port = port
        try Self.tc(["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20", "r2q", "1"])
        do {
            try Self.tc([
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "8bit", "ceil", "8bit",
                "burst", "1b", "cburst", "1b",
            ])
            try Self.tc([
                "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "10gbit", "ceil",
                "10gbit",
            ])
            try Self.tc([
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                "dport", "\(port)", "0xffff", "flowid", "1:10",
            ])
        } catch {
            try? Self.tc(["qdisc", "del", "dev", "lo", "root"])
            throw error
        }
    }

    /// Lets packets to the port through again.
    public func restore() throws {
        try Self.tc(["qdisc", "del", "dev", "lo", "root"])
    }

    static func tc(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["tc"] + arguments
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
