import Foundation
import LocalCluster
import Testing

/// All-reduce between separate processes over loopback TCP, and a peer killed mid-operation.
@Suite("Collectives between processes", .timeLimit(.minutes(2)))
struct CollectiveProcessTests {
    /// Whether this machine has an RDMA device (scripts/test.sh runs the RDMA test in a Soft-RoCE guest).
    static let hasRDMA = !((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? [])
        .isEmpty

    @Test func killingAPeerProcessMidAllReduce_failsTheSurvivorAtOnce_namingThePeer() async throws {
        // Sizes large enough that rank 0 is inside an all-reduce when rank 1 dies.
        let sizes = "1048576," + Array(repeating: "67108864", count: 50).joined(separator: ",")
        let (elapsed, message) = try await self.killMidAllReduce(sizes: sizes, transport: "tcp")
        #expect(elapsed < .seconds(3), "failed at once (\(elapsed)), not at the 30 s deadline")
        #expect(message.contains("rank 1"), "the error names the dead peer: \(message.suffix(300))")
        #expect(message.contains("bytes"), "the error says how far it got")
    }

    @Test(
        .enabled(
            if: Self.hasRDMA,
            "no RDMA device on this machine: scripts/rdma-guest.sh runs this test against Soft-RoCE (rxe0) in a qemu guest"
        ))
    func killingAPeerProcessMidAllReduceOverRDMA_failsTheSurvivorNamingThePeer_andReleasesEveryVerbsResource()
        async throws
    {
        // Smaller than over TCP: the guest's emulated CPUs move 16 MiB in seconds.
        let sizes = "1048576," + Array(repeating: "16777216", count: 50).joined(separator: ",")
        let (elapsed, message) = try await self.killMidAllReduce(sizes: sizes, transport: "rdma")
        #expect(elapsed < .seconds(5), "failed within seconds (\(elapsed)), not at the 30 s deadline")
        #expect(message.contains("rank 1"), "the error names the dead peer: \(message.suffix(300))")
        #expect(message.contains("bytes"), "the error says how far it got")
        #expect(
            message.contains("verbs resources open after closing: none"),
            "no queue pair, memory region, queue or context left open: \(message.suffix(300))")
    }

    /// Two `allreduce-worker` ranks over `transport`; rank 1 is killed once rank 0 reported its
    /// first size; returns how long rank 0 took to exit (non-zero) after the kill, and its output.
    func killMidAllReduce(sizes: String, transport: String) async throws -> (Duration, String) {
        let executable = try ringmasterExecutable()
        let secret = String(repeating: "ab", count: 32)
        let workers = try (0..<2).map { rank in
            try ChildProcess(
                name: "rank \(rank)",
                executable: executable,
                arguments: [
                    "bench", "allreduce-worker", "--rank", "\(rank)", "--world", "2", "--sizes", sizes, "--transport",
                    transport,
                ],
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
        let status = try await workers[0].waitForExit(within: 20)
        let elapsed = ContinuousClock.now - killed
        #expect(status != 0, "the survivor reports the failure")
        return (elapsed, workers[0].output.lines.joined(separator: "\n"))
    }
}
