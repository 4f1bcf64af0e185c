import ArgumentParser
import Foundation
import RingmasterBench

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (figures recorded in bench/README.md).",
        subcommands: [Machine.self, Rendezvous.self]
    )

    struct Machine: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "machine",
            abstract: "The coordinator state machine alone: time per generation change with N simulated nodes."
        )

        @Option(help: "Simulated nodes.")
        var nodes: Int = 10_000

        @Option(help: "Failures (and returns) to time.")
        var changes: Int = 50

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            let result = try MachineBenchmark.run(nodes: self.nodes, changes: self.changes)
            if self.json {
                let object: [String: Any] = [
                    "nodes": result.nodes, "changes": result.changes, "median_ms": result.medianMilliseconds,
                    "p99_ms": result.p99Milliseconds, "max_ms": result.maxMilliseconds, "actions_per_change": result.actionsPerChange,
                ]
                print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
                return
            }
            print(String(format: "state machine, %d nodes, %d generation changes (setup %.1f s):", result.nodes, result.changes, result.setupSeconds))
            print(String(format: "  median %.2f ms, p99 %.2f ms, max %.2f ms per change (%d actions each)",
                         result.medianMilliseconds, result.p99Milliseconds, result.maxMilliseconds, result.actionsPerChange))
        }
    }

    struct Rendezvous: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rendezvous",
            abstract: "Rendezvous over real mutual TLS: last join to every agent holding its assignment."
        )

        @Option(help: "Agents.")
        var agents: Int = 64

        @Option(help: "Rounds.")
        var rounds: Int = 5

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            let json = self.json
            let result = try await RendezvousBenchmark.run(agents: self.agents, rounds: self.rounds, executable: executable) { line in
                if !json { print(line) }
            }
            if json {
                let object: [String: Any] = [
                    "agents": result.agents, "rounds_ms": result.roundsMilliseconds, "median_ms": result.medianMilliseconds,
                    "start_to_assigned_ms": result.totalMilliseconds,
                ]
                print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
                return
            }
            print(String(format: "median over %d rounds: %.1f ms from the last join to all %d agents holding their assignment",
                         result.roundsMilliseconds.count, result.medianMilliseconds, result.agents))
        }
    }
}
