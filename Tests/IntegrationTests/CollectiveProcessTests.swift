import Foundation
import LocalCluster
import Testing

/// All-reduce between separate processes over loopback TCP, and a peer killed mid-operation.
@Suite("Collectives between processes", .timeLimit(.minutes(2)))
struct CollectiveProcessTests {
    @Test func killingAPeerProcessMidAllReduce_failsTheSurvivorAtOnce_namingThePeer() async throws {
        let executable = try ringmasterExecutable()
        let secret = String(repeating: "ab", count: 32)
        // Sizes large enough that rank 0 is inside an all-reduce when rank 1 dies.
        let sizes = "1048576," + Array(repeating: "67108864", count: 50).joined(separator: ",")
        let workers = try (0..<2).map { rank in
            try ChildProcess(
                name: "rank \(rank)",
                executable: executable,
                arguments: ["bench", "allreduce-worker", "--rank", "\(rank)", "--world", "2", "--sizes", sizes],
                environment: ["RINGMASTER_BENCH_SECRET": secret],
                standardInput: true
            )
        }
        defer { for worker in workers { worker.signal(SIGKILL) } }
        var ports: [String] = []
        for worker in workers {
            let line = try await worker.standardOutput.waitForLine(within: 30, "its data port") {
                $0.hasPrefix("port ")
            }
            ports.append("127.0.0.1:" + line.dropFirst(5))
        }
        for worker in workers { worker.send(line: ports.joined(separator: ",")) }
        // The first size finished: both are now in the 64 MiB all-reduces.
        try await workers[0].standardOutput.waitForLine(within: 60, "its first result") { $0.hasPrefix("{") }

        let killed = ContinuousClock.now
        workers[1].signal(SIGKILL)
        let status = try await workers[0].waitForExit(within: 10)
        let elapsed = ContinuousClock.now - killed
        #expect(status != 0, "the survivor reports the failure")
        #expect(elapsed < .seconds(3), "failed at once (\(elapsed)), not at the 30 s deadline")
        let message = workers[0].output.lines.joined(separator: "\n")
        #expect(message.contains("rank 1"), "the error names the dead peer: \(workers[0].output.lines.suffix(3))")
        #expect(message.contains("bytes"), "the error says how far it got")
    }
}
