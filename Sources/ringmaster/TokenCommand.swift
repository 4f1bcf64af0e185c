import ArgumentParser
import ControlPlane
import Foundation
import RingmasterWire

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Manage join tokens.",
        subcommands: [Create.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a single-use join token and print it with the CA pin."
        )

        @Option(help: "How long the token stays valid, e.g. 30m, 1h.")
        var ttl: DurationArgument = DurationArgument(seconds: 3600)

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func validate() throws {
            guard self.ttl.seconds >= 1 && self.ttl.seconds <= 7 * 86400 else {
                throw ValidationError("--ttl must be between 1s and 7d")
            }
        }

        func run() async throws {
            let ttl = UInt32(self.ttl.seconds)
            let reply = try await self.operatorOptions.withSession { session in
                var envelope = Envelope()
                envelope.adminRequest = .with { $0.tokenCreate = .with { $0.ttlSeconds = ttl } }
                return try await session.request(envelope)
            }
            guard case .tokenCreate(let created) = reply.adminReply.reply else {
                throw CommandFailure(description: "the coordinator answered token create with \(reply.kind)")
            }
            let expires = Date(timeIntervalSince1970: TimeInterval(created.expiresUnix))
            if self.json {
                let object: [String: Any] = [
                    "token": created.token, "ca_pin": created.caPin,
                    "expires": ISO8601DateFormatter().string(from: expires),
                ]
                try printJSON(object)
                return
            }
            print("token:   \(created.token)")
            print("ca pin:  \(created.caPin)")
            print("expires: \(expires) (single use)")
            print("")
            print("On the node, run:")
            print(
                "  RINGMASTER_TOKEN=\(created.token) ringmaster agent --coordinator \(self.operatorOptions.coordinator) --ca-pin \(created.caPin) --data-dir /var/lib/ringmaster-agent"
            )
        }
    }
}
