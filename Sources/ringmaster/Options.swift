import ArgumentParser
import ControlPlane
import Foundation
import Logging
import RingmasterSecurity
import ServiceLifecycle

// MARK: - Shared options

/// Logging options shared by the long-running subcommands.
struct LoggingOptions: ParsableArguments {
    @Option(
        help: "Log level: trace, debug, info, notice, warning, error, critical.",
        transform: { text in
            guard let level = Logger.Level(rawValue: text) else {
                throw ValidationError(
                    "--log-level must be one of trace, debug, info, notice, warning, error, critical, not \(text)")
            }
            return level
        }
    )
    var logLevel: Logger.Level = .info

    /// Sends logs to standard error (standard output stays for results) and returns a logger.
    func bootstrap(label: String) -> Logger {
        let level = self.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: label)
    }
}

/// Where the CLI finds the coordinator and its operator identity.
struct OperatorOptions: ParsableArguments {
    @Option(
        help:
            "The coordinator's control address; for a set sharing an etcd store, every coordinator's, comma-separated (the leader is found among them)."
    )
    var coordinator: String = "127.0.0.1:7600"

    @Option(help: "Directory of the operator identity made by `ringmaster cert issue --role operator`.")
    var identity: String = OperatorOptions.defaultIdentityDirectory

    static var defaultIdentityDirectory: String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "."
        return "\(home)/.config/ringmaster/operator"
    }

    /// Connects with the operator identity and runs `body` on the session.
    func withSession<Result: Sendable>(
        _ body: @escaping @Sendable (ControlSession) async throws -> Result
    ) async throws -> Result {
        let addresses = try CoordinatorAddresses(parsing: self.coordinator)
        guard let credentials = try Credentials.load(directory: self.identity) else {
            throw ValidationError(
                "no operator identity in \(self.identity): on the coordinator host run `ringmaster cert issue --role operator --name NAME --state-dir DIR --out \(self.identity)`"
            )
        }
        return try await ControlClient(addresses: addresses, credentials: credentials).withConnection(body)
    }
}

// MARK: - Services

/// Runs a long-lived service until SIGTERM or SIGINT asks it to shut down gracefully.
func runUntilSignalled(_ service: some Service, logger: Logger) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: [.init(service: service)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
    )
    try await group.run()
}

// MARK: - Durations

/// A duration given as a number and a unit: `500ms`, `90s`, `30m`, `1h`, `7d`.
struct DurationArgument: ExpressibleByArgument, Sendable {
    var seconds: Double

    init(seconds: Double) {
        self.seconds = seconds
    }

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        guard let (unit, scale) = units.first(where: { argument.hasSuffix($0.0) }),
            let value = Double(argument.dropLast(unit.count)), value > 0
        else { return nil }
        self.seconds = value * scale
    }

    var milliseconds: UInt32 { UInt32(clamping: Int((self.seconds * 1000).rounded())) }

    static var defaultCompletionKind: CompletionKind { .default }
}

// MARK: - Errors

/// Prints a one-line error for a failure the user can act on, and exits non-zero.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
}
