import ArgumentParser
import ControlPlane
import Foundation
import RingmasterWire

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Inspect the coordinator's nodes.",
        subcommands: [List.self, Drain.self]
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
                    [
                        "node": $0.nodeID, "state": $0.state, "connected": $0.connected, "job": $0.jobID,
                        "rank": $0.jobID.isEmpty ? -1 : Int($0.rank),
                        "certificate_not_after": $0.certificateNotAfterUnix,
                    ]
                }
                try printJSON(["nodes": nodes])
                return
            }
            NodeCommand.printTable(list)
        }
    }

    static func printTable(_ list: Ringmaster_V1_NodeListReply) {
        func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
        print(pad("NODE", 24) + pad("STATE", 10) + pad("JOB", 24) + "CERTIFICATE EXPIRES")
        for node in list.nodes {
            let expires = Date(timeIntervalSince1970: TimeInterval(node.certificateNotAfterUnix))
            let job = node.jobID.isEmpty ? "-" : "\(node.jobID) (rank \(node.rank))"
            print(pad(node.nodeID, 24) + pad(node.state, 10) + pad(job, 24) + "\(expires)")
        }
    }

    struct Drain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "drain",
            abstract:
                "Take a node out of service: it leaves its job gracefully and gets no new work until it reconnects."
        )

        @Argument(help: "The node id.")
        var node: String

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            let node = self.node
            let reply = try await self.operatorOptions.withSession { session in
                var envelope = Envelope()
                envelope.adminRequest = .with { $0.nodeDrain = .with { $0.nodeID = node } }
                return try await session.request(envelope)
            }
            NodeCommand.printTable(reply.adminReply.nodeList)
        }
    }
}
