import ArgumentParser
import ControlPlane
import Foundation
import RingmasterWire

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Inspect the coordinator's nodes.",
        subcommands: [List.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List admitted nodes.")

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            let reply = try await self.operatorOptions.withSession { session in
                var envelope = Envelope()
                envelope.adminRequest = .with { $0.nodeList = .init() }
                return try await session.request(envelope)
            }
            guard case .nodeList(let list) = reply.adminReply.reply else {
                throw CommandFailure(description: "the coordinator answered node list with \(reply.kind)")
            }
            if self.json {
                let nodes: [[String: Any]] = list.nodes.map {
                    ["node": $0.nodeID, "state": $0.state, "connected": $0.connected,
                     "certificate_not_after": $0.certificateNotAfterUnix]
                }
                let data = try JSONSerialization.data(withJSONObject: ["nodes": nodes], options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            print("NODE".padding(toLength: 24, withPad: " ", startingAt: 0) + "STATE".padding(toLength: 14, withPad: " ", startingAt: 0) + "CERTIFICATE EXPIRES")
            for node in list.nodes {
                let expires = Date(timeIntervalSince1970: TimeInterval(node.certificateNotAfterUnix))
                print(node.nodeID.padding(toLength: 24, withPad: " ", startingAt: 0) + node.state.padding(toLength: 14, withPad: " ", startingAt: 0) + "\(expires)")
            }
        }
    }
}
