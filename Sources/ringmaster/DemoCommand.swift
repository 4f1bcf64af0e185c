import ArgumentParser
import ControlPlane
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire

/// The main job in one command. For now a smoke run: a coordinator and agents as separate
/// processes on loopback, each agent joining with its own single-use token over TLS and then
/// holding a mutual-TLS session; training comes with later work.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start a local coordinator and agents on loopback and show them join over mutual TLS."
    )

    @Option(help: "Number of agents.")
    var agents: Int = 2

    @Option(help: "Seconds to wait for every agent to connect.")
    var timeout: Double = 60

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Flag(help: "Keep the temporary directory (certificates, logs) after the run.")
    var keep = false

    func validate() throws {
        guard (1...64).contains(self.agents) else { throw ValidationError("--agents must be between 1 and 64") }
    }

    func run() async throws {
        let started = ContinuousClock.now
        let directory = try Self.makeTemporaryDirectory()
        let executable = try Self.selfExecutable()
        var children: [ChildProcess] = []
        func say(_ text: String) { if !self.json { print(text) } }
        defer {
            if !self.keep { try? FileManager.default.removeItem(atPath: directory) }
        }

        say("ringmaster demo: \(self.agents) agent(s) on loopback, state in \(directory)")
        let coordinator = try ChildProcess(
            name: "coordinator",
            executable: executable,
            arguments: ["coordinator", "--state-dir", "\(directory)/coordinator", "--listen", "127.0.0.1:0"]
        )
        children.append(coordinator)
        do {
            let line = try await coordinator.waitForLine(within: 30, "its listening address") { $0.hasPrefix("listening ") }
            let address = try ControlAddress(parsing: String(line.dropFirst("listening ".count)))
            say("coordinator listening on \(address) (CA created, ECDSA P-256)")

            // An operator identity, as `ringmaster cert issue --role operator` makes on the coordinator host.
            guard let authority = try CertificateAuthority.load(directory: "\(directory)/coordinator") else {
                throw CommandFailure(description: "the coordinator did not create its CA")
            }
            let operatorKey = KeyAndRequest.makeKey()
            let now = Date()
            let operatorCredentials = try Credentials(
                privateKey: operatorKey,
                certificate: try authority.issue(
                    publicKey: operatorKey.publicKey,
                    identity: try PeerIdentity(role: .operator, name: "demo"),
                    notBefore: now.addingTimeInterval(-60),
                    notAfter: now.addingTimeInterval(3600)
                ),
                caCertificate: authority.certificate
            )
            let admin = ControlClient(address: address, credentials: operatorCredentials)

            for index in 0..<self.agents {
                let created = try await admin.withConnection { session in
                    var envelope = Envelope()
                    envelope.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = 600 } }
                    return try await session.request(envelope).adminReply.tokenCreate
                }
                let name = "agent-\(index)"
                children.append(
                    try ChildProcess(
                        name: name,
                        executable: executable,
                        arguments: [
                            "agent", "--coordinator", "\(address)", "--data-dir", "\(directory)/\(name)",
                            "--name", name, "--ca-pin", created.caPin,
                        ],
                        environment: ["RINGMASTER_TOKEN": created.token]
                    )
                )
                say("started \(name) with a single-use token (CA pin \(created.caPin.prefix(19))...)")
            }

            let nodes = try await Self.waitForConnectedNodes(admin: admin, count: self.agents, within: self.timeout)
            let seconds = Double((ContinuousClock.now - started).components.attoseconds) / 1e18
                + Double((ContinuousClock.now - started).components.seconds)
            if self.json {
                let object: [String: Any] = [
                    "agents": self.agents,
                    "connected": nodes.filter(\.connected).count,
                    "nodes": nodes.map(\.nodeID),
                    "seconds": (seconds * 1000).rounded() / 1000,
                    "transport": "mutual TLS 1.3 on loopback",
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                say("")
                say("all \(self.agents) agent(s) joined and hold mutual-TLS sessions after \(String(format: "%.2f", seconds)) s:")
                for node in nodes {
                    let expires = Date(timeIntervalSince1970: TimeInterval(node.certificateNotAfterUnix))
                    say("  \(node.nodeID)  \(node.state)  certificate valid until \(expires)")
                }
            }
        } catch {
            for child in children.reversed() { await child.stop(grace: 5) }
            for child in children {
                FileHandle.standardError.write(Data("--- \(child.name) output ---\n\(child.output.lines.suffix(20).joined(separator: "\n"))\n".utf8))
            }
            throw CommandFailure(description: "demo failed: \(error)")
        }
        for child in children.reversed() {
            await child.stop(grace: 10)
        }
        say("stopped; \(self.keep ? "kept \(directory)" : "removed the temporary directory")")
    }

    static func waitForConnectedNodes(admin: ControlClient, count: Int, within seconds: Double) async throws -> [Ringmaster_V1_NodeInfo] {
        try await withDeadline(seconds: seconds, waitingFor: "\(count) agent(s) to connect") {
            while true {
                let nodes = try await admin.withConnection { session in
                    var envelope = Envelope()
                    envelope.adminRequest = .with { $0.nodeList = .init() }
                    return try await session.request(envelope).adminReply.nodeList.nodes
                }
                if nodes.filter(\.connected).count >= count { return nodes }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    static func makeTemporaryDirectory() throws -> String {
        var template = Array("\(NSTemporaryDirectory())/ringmaster-demo-XXXXXX".utf8CString)
        guard let result = mkdtemp(&template) else {
            throw CommandFailure(description: "could not create a temporary directory: \(String(cString: strerror(errno)))")
        }
        return String(cString: result)
    }

    static func selfExecutable() throws -> String {
        let path = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        return path
    }
}
