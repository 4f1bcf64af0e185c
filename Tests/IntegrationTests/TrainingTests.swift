import Foundation
import LocalCluster
import Testing

/// The main job end to end: `ringmaster demo` starts a coordinator and agents as real processes
/// (mutual TLS, TCP data plane) and trains the reference perceptron on the digits data set.
///
/// Tolerance: replicas of one run are bit-identical (they apply the same all-reduced sums). Runs
/// with different world sizes sum the same gradients in different orders, so their parameters
/// differ by Float32 rounding carried through training. After `steps` steps of SGD with momentum
/// they must agree within `tolerance` in every parameter (absolute; the parameters are of order 0.1
/// to 1).
@Suite("Training on real processes", .serialized, .timeLimit(.minutes(10)))
struct TrainingTests {
    static let steps = 600
    static let tolerance: Float = 2e-3

    struct Run {
        let json: [String: Any]
        let parameters: [Float]
        /// Each process's log (`agent-0`, `coordinator-1`, ...), read before the run's directory is
        /// removed, for failure messages.
        var logs: [String: [String]] = [:]

        /// The lines of every agent's log that contain one of `needles`, each prefixed with its agent.
        func agentLines(containing needles: [String]) -> String {
            self.logs.keys.filter { $0.hasPrefix("agent-") }.sorted().flatMap { name in
                self.logs[name, default: []].filter { line in needles.contains { line.contains($0) } }
                    .map { "\(name): \($0)" }
            }.joined(separator: "\n")
        }

        var accuracy: Double { self.json["test_accuracy"] as? Double ?? -1 }
        func count(_ key: String) -> Int { (self.json[key] as? NSNumber)?.intValue ?? -1 }
    }

    /// Runs the demo and reads the model an agent wrote.
    func demo(
        _ label: String, _ arguments: [String], steps: Int = Self.steps, environment: [String: String] = [:],
        expectFailure: Bool = false
    ) async throws -> Run {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-training-\(label)-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let demo = try ChildProcess(
            name: "demo \(label)",
            executable: try ringmasterExecutable(),
            arguments: ["demo", "--json", "--steps", "\(steps)", "--directory", directory, "--timeout", "240"]
                + arguments,
            environment: environment
        )
        let status = try await demo.waitForExit(within: 300)
        if expectFailure {
            #expect(status != 0, "demo \(label) was to fail")
            return Run(json: [:], parameters: [])
        }
        try #require(status == 0, "demo \(label) failed: \(demo.output.lines.suffix(30).joined(separator: "\n"))")
        let text = demo.standardOutput.lines.last { $0.hasPrefix("{") } ?? ""
        let json = try #require(
            try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            "demo \(label) printed no JSON: \(text)")
        guard json["preempted"] as? Bool != true else { return Run(json: json, parameters: []) }
        let path = try #require(json["model_path"] as? String, "demo \(label) names no model file")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let parameters = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return Run(json: json, parameters: parameters, logs: Self.logs(in: directory))
    }

    /// The `NAME.log` files of a demo's directory, by name, as lines.
    static func logs(in directory: String) -> [String: [String]] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var logs: [String: [String]] = [:]
        for name in names where name.hasSuffix(".log") {
            guard let text = try? String(contentsOfFile: "\(directory)/\(name)", encoding: .utf8) else { continue }
            logs[String(name.dropLast(4))] = text.split(separator: "\n").map(String.init)
        }
        return logs
    }

    /// What `ringmaster checkpoint list DIR --json` reports, one row per step directory.
    func checkpointList(_ root: String) async throws -> [[String: Any]] {
        let list = try ChildProcess(
            name: "checkpoint list", executable: try ringmasterExecutable(),
            arguments: ["checkpoint", "list", root, "--json"])
        #expect(try await list.waitForExit(within: 30) == 0)
        return try #require(
            try JSONSerialization.jsonObject(with: Data(list.standardOutput.lines.joined().utf8)) as? [[String: Any]],
            "checkpoint list printed no JSON: \(list.output.lines)"
        )
    }

    func maximumDifference(_ a: [Float], _ b: [Float]) -> Float {
        guard a.count == b.count else { return .infinity }
        return zip(a, b).map { abs($0 - $1) }.max() ?? 0
    }

    /// Every sample of every step trained exactly once, counted by the coordinator from the ids
    /// the agents reported: `steps` steps of 64 from 1,437 samples (600 unless told).
    func expectExactAccounting(_ run: Run, _ label: String, steps: Int = Self.steps) {
        let epochs = steps / 23
        let expected: Int = steps * 64 - epochs * (23 * 64 - 1437)
        #expect(run.count("samples_seen") == expected, "\(label): \(run.json)")
        #expect(run.count("samples_repeated") == 0, "\(label)")
        #expect(run.count("samples_skipped") == 0, "\(label)")
        #expect(run.count("replica_divergences") == 0, "\(label): replicas diverged")
        #expect(run.count("steps") == steps, "\(label)")
    }

    /// The uninterrupted 1-agent run every other run is compared with, trained once.
    actor Reference {
        var parameters: [Float]?
        func set(_ parameters: [Float]) { self.parameters = parameters }
    }
    static let reference = Reference()

    func referenceParameters() async throws -> [Float] {
        if let parameters = await Self.reference.parameters { return parameters }
        let one = try await self.demo("reference", ["--agents", "1"])
        await Self.reference.set(one.parameters)
        return one.parameters
    }

    @Test func aWholeClusterLost_resumesFromItsCheckpointWithThreeAgents_andEndsWithTheSameModel() async throws {
        let checkpoints = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-checkpoints-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: checkpoints) }
        let reference = try await self.referenceParameters()
        // 4 agents checkpoint every 100 steps; once step 300's is committed, every process is killed.
        let lost = try await self.demo(
            "preempted",
            [
                "--agents", "4", "--checkpoint-dir", checkpoints, "--checkpoint-interval", "100", "--preempt-at-step",
                "300",
            ]
        )
        #expect(lost.json["preempted"] as? Bool == true)
        let saved = lost.count("last_checkpoint_step")
        #expect(saved >= 300 && saved < Self.steps, "last checkpoint \(saved)")
        #expect(lost.count("checkpoint_failures") == 0)
        // The newest checkpoint is damaged (one flipped byte in one shard): verification catches it
        // before anything is loaded, and the job falls back to the one before.
        let shard = "\(checkpoints)/step-\(String(format: "%012d", saved))/shard-00002-of-00004.bin"
        let handle = try #require(FileHandle(forUpdatingAtPath: shard), "no shard at \(shard)")
        try handle.seek(toOffset: 100)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data([byte ^ 0x01]))
        try handle.close()
        // A new coordinator and 3 new agents resume from the older checkpoint and finish.
        let resumed = try await self.demo(
            "resumed", ["--agents", "3", "--checkpoint-dir", checkpoints, "--resume", "latest"])
        #expect(resumed.count("resumed_from_step") == saved - 100, "the damaged checkpoint at \(saved) must be skipped")
        self.expectExactAccounting(resumed, "resumed")
        #expect(resumed.accuracy >= 0.95)
        let difference = self.maximumDifference(resumed.parameters, reference)
        #expect(
            difference <= Self.tolerance,
            "resumed at \(saved) with 3 agents: parameters differ from the uninterrupted run's by up to \(difference)")
    }

    /// The checkpoint of a job's last step commits like any other, although its shards arrive
    /// after the job has finished: 600 steps with a checkpoint every 100 end with step 600's
    /// checkpoint committed and verified (it used to be refused as "from another generation",
    /// leaving step 500 the newest).
    @Test func aJobWhoseLastStepIsACheckpointStep_endsWithThatCheckpointCommittedAndVerified() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-last-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let run = try await self.demo(
            "last-checkpoint", ["--agents", "3", "--checkpoint-dir", root, "--checkpoint-interval", "100"])
        self.expectExactAccounting(run, "last checkpoint")
        #expect(run.count("last_checkpoint_step") == Self.steps, "\(run.json)")
        #expect(run.count("checkpoint_failures") == 0)
        let rows = try await self.checkpointList(root)
        let newest = try #require(rows.first, "no checkpoint under \(root)")
        #expect(newest["step"] as? Int == Self.steps, "\(rows)")
        #expect(newest["committed"] as? Bool == true && newest["verified"] as? Bool == true, "\(newest)")
        #expect(newest["world_size"] as? Int == 3)
    }

    /// A real kill -9 at each point of the commit protocol, in the process that is there: the agents
    /// (after a shard's data, after its rename) or the coordinator (before the manifest, after its
    /// temporary write), at the save of step 200. The checkpoint at step 100 stays the latest
    /// committed one, step 200 is never taken as committed, and a resume from it ends with the
    /// same model and exact sample accounting.
    @Test(arguments: ["after-shard-data", "after-shard-rename", "before-manifest", "after-manifest-temp"])
    func aCrashDuringASave_leavesThePreviousCheckpointTheLatest(point: String) async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringmaster-crash-\(point)-\(UUID().uuidString.prefix(8))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: root) }
        _ = try await self.demo(
            "crash-\(point)",
            ["--agents", "2", "--checkpoint-dir", root, "--checkpoint-interval", "100", "--timeout", "60"],
            environment: ["RINGMASTER_CRASH_AT": "\(point)@200"],
            expectFailure: true
        )
        let rows = try await self.checkpointList(root)
        let committed = rows.filter { $0["committed"] as? Bool == true }.compactMap { $0["step"] as? Int }
        #expect(committed == [100], "\(point): committed steps \(committed) in \(rows)")
        #expect(rows.filter { $0["committed"] as? Bool == true }.allSatisfy { $0["verified"] as? Bool == true })
        let resumed = try await self.demo(
            "after-crash-\(point)", ["--agents", "2", "--checkpoint-dir", root, "--resume", "latest"])
        #expect(resumed.count("resumed_from_step") == 100, "\(point)")
        self.expectExactAccounting(resumed, "resumed after a crash at \(point)")
        #expect(
            self.maximumDifference(resumed.parameters, try await self.referenceParameters()) <= Self.tolerance,
            "\(point)")
    }

    /// Checkpoints to a file system that fills up: the saves that do not fit fail cleanly, training
    /// goes on to the end, and the last checkpoint that fitted still resumes.
    @Test func checkpointsOnAFullDisk_failCleanly_andTrainingGoesOn() async throws {
        // Room for about three checkpoints of the perceptron (4 shards of 19 KB and a manifest each).
        let tmpfs = try await Tmpfs(label: "full", size: "256k")
        defer { tmpfs.unmount() }
        let mount = tmpfs.path
        let full = try await self.demo(
            "disk-full", ["--agents", "4", "--checkpoint-dir", mount, "--checkpoint-interval", "50"])
        self.expectExactAccounting(full, "disk full")
        #expect(full.count("checkpoint_failures") > 0, "the small file system never filled up: \(full.json)")
        let last = full.count("last_checkpoint_step")
        #expect(last >= 50, "no checkpoint fitted at all")
        #expect(self.maximumDifference(full.parameters, try await self.referenceParameters()) <= Self.tolerance)
        // What remains is whole: a resume from it verifies and finishes the job again.
        let resumed = try await self.demo(
            "after-full",
            ["--agents", "2", "--checkpoint-dir", mount, "--checkpoint-interval", "100000", "--resume", "latest"])
        #expect(resumed.count("resumed_from_step") > 0)
        self.expectExactAccounting(resumed, "resumed after disk full")
    }

    @Test func oneTwoAndFourAgents_endWithTheSameModel_andKillsJoinsAndLeavesChangeNothing() async throws {
        let one = try await self.demo("1-agent", ["--agents", "1"])
        await Self.reference.set(one.parameters)
        #expect(one.accuracy >= 0.95, "1 agent: test accuracy \(one.accuracy)")
        self.expectExactAccounting(one, "1 agent")
        let expectedParameters = 64 * 128 + 128 + 128 * 10 + 10
        #expect(one.parameters.count == expectedParameters)

        for agents in [2, 4] {
            let run = try await self.demo("\(agents)-agents", ["--agents", "\(agents)"])
            #expect(run.accuracy >= 0.95, "\(agents) agents: test accuracy \(run.accuracy)")
            self.expectExactAccounting(run, "\(agents) agents")
            let difference = self.maximumDifference(run.parameters, one.parameters)
            #expect(
                difference <= Self.tolerance,
                "\(agents) agents: parameters differ from 1 agent's by up to \(difference)")
        }

        // kill -9 of one agent at a random step: the survivors roll back in memory and go on.
        let killStep = Int.random(in: 100...450)
        let killed = try await self.demo("kill", ["--agents", "3", "--kill-agent-at-step", "\(killStep)"])
        self.expectExactAccounting(killed, "kill at \(killStep)")
        let recoveries = killed.json["recoveries"] as? [[String: Any]] ?? []
        #expect(
            recoveries.contains { $0["cause"] as? String == "disconnected" },
            "kill at \(killStep): no recovery from the kill in \(recoveries)")
        #expect(self.maximumDifference(killed.parameters, one.parameters) <= Self.tolerance, "kill at \(killStep)")

        // A join mid-run: the newcomer gets the state by broadcast and starts at a step boundary.
        let joined = try await self.demo("join", ["--agents", "2", "--add-agent-at-step", "100"])
        self.expectExactAccounting(joined, "join")
        let joins = joined.json["recoveries"] as? [[String: Any]] ?? []
        #expect(
            joins.contains { $0["cause"] as? String == "joined" && $0["world_size"] as? Int == 3 },
            "no growth to 3 in \(joins)")
        #expect(self.maximumDifference(joined.parameters, one.parameters) <= Self.tolerance, "join")

        // SIGTERM: the agent finishes its step, leaves, exits 0; the job goes on with the rest.
        let left = try await self.demo("sigterm", ["--agents", "3", "--terminate-agent-at-step", "300"])
        self.expectExactAccounting(left, "sigterm")
        let exits = left.json["terminated_exit_status"] as? [String: Int] ?? [:]
        #expect(exits == ["agent-2": 0], "SIGTERM exit statuses \(exits)")
        let leaves = left.json["recoveries"] as? [[String: Any]] ?? []
        #expect(
            leaves.contains { $0["cause"] as? String == "left" && $0["world_size"] as? Int == 2 },
            "no generation of 2 after the leave in \(leaves)")
        #expect(self.maximumDifference(left.parameters, one.parameters) <= Self.tolerance, "sigterm")
    }

    /// A data-plane path that stops carrying while every process lives (every packet to rank 0's
    /// data-plane port dropped by tc): nobody's control session ends, so only the members' reports
    /// of their failed all-reduce (a 3 s collective deadline) tell the coordinator, which starts
    /// the next generation after its grace; the job then finishes as if nothing happened.
    /// Three coordinators share a real three-member etcd cluster; kill -9 of the leader while three
    /// agents train: a standby leads within the 2 s lease plus 1 s, the agents follow it, the job
    /// goes on from its committed state and ends with exact accounting and the model of an
    /// uninterrupted run.
    @Test func theLeadingCoordinatorKilled_aStandbyLeadsWithinTheLeasePlusOneSecond_andTheJobEndsAsIfUninterrupted()
        async throws
    {
        let cluster = try await EtcdCluster()
        let run = try await self.demo(
            "leader-killed",
            [
                "--agents", "3", "--coordinators", "3", "--etcd", cluster.address, "--kill-leader-at-step", "150",
                "--leader-lease", "2",
            ])
        await cluster.stop()
        self.expectExactAccounting(run, "leader killed")
        let failover = try #require(run.json["leader_failover"] as? [String: Any], "no failover in \(run.json)")
        let elected = failover["elected_seconds"] as? Double ?? .infinity
        let connected = failover["agents_connected_seconds"] as? Double ?? .infinity
        let firstStep = failover["first_step_seconds"] as? Double ?? .infinity
        #expect(failover["killed"] as? String != failover["new_leader"] as? String)
        #expect(elected <= 3, "a standby led \(elected) s after the kill (lease 2 s)")
        let sessions = run.agentLines(containing: [
            "connected to the coordinator", "control session ended", "could not reach",
        ])
        #expect(
            connected >= elected && connected < 5,
            "every agent was connected to the new leader after \(connected) s (elected after \(elected) s); the agents' sessions:\n\(sessions)"
        )
        #expect(firstStep > 0 && firstStep < 10, "the first step after the kill came \(firstStep) s after it")
        #expect(run.accuracy >= 0.95)
        let difference = self.maximumDifference(run.parameters, try await self.referenceParameters())
        #expect(difference <= Self.tolerance, "the model differs from an uninterrupted run's by up to \(difference)")
    }

    @Test func aDataPlanePathThatStopsCarrying_withEveryProcessAlive_isFollowedByANewGeneration_andChangesNothing()
        async throws
    {
        // Should the demo be killed before it restores loopback's queue, remove it here.
        defer { Self.removeLoopbackQueueLeftByACut() }
        let run = try await self.demo(
            "cut", ["--agents", "3", "--cut-data-plane-at-step", "200", "--collective-timeout", "3"])
        self.expectExactAccounting(run, "data plane cut")
        let recoveries = run.json["recoveries"] as? [[String: Any]] ?? []
        #expect(
            recoveries.contains { $0["cause"] as? String == "generation_failed" && $0["world_size"] as? Int == 3 },
            "no generation after the failure, with all 3 members: \(recoveries)")
        #expect(self.maximumDifference(run.parameters, try await self.referenceParameters()) <= Self.tolerance)
    }

    /// Deletes the HTB root queue `TrafficCut` puts on `lo`, if one is still there.
    static func removeLoopbackQueueLeftByACut() {
        let show = Process()
        show.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        show.arguments = ["tc", "qdisc", "show", "dev", "lo"]
        let output = Pipe()
        show.standardOutput = output
        guard (try? show.run()) != nil else { return }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        show.waitUntilExit()
        guard text.contains("htb 1:") else { return }
        let delete = Process()
        delete.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        delete.arguments = ["tc", "qdisc", "del", "dev", "lo", "root"]
        try? delete.run()
        delete.waitUntilExit()
    }

    /// Each generation's data plane in a run, and why.
    func transports(_ run: Run) -> [(transport: String, reason: String)] {
        (run.json["transports"] as? [[String: Any]] ?? []).map {
            ($0["transport"] as? String ?? "", $0["reason"] as? String ?? "")
        }
    }

    @Test(.enabled(if: !CollectiveProcessTests.hasRDMA, "this host has RDMA: the test over RDMA covers it"))
    func onAHostWithoutRDMA_autoRunsOnTCP_sayingWhy() async throws {
        let run = try await self.demo("auto-tcp", ["--agents", "2"], steps: 40)
        let transports = self.transports(run)
        #expect(transports.map(\.transport) == ["tcp"], "\(transports)")
        #expect(
            transports.first?.reason.contains("agent-0, agent-1 have no usable RDMA port") == true, "\(transports)")
    }

    /// The reference workload over RDMA (Soft-RoCE, in the guest scripts/test.sh boots): every
    /// generation runs on queue pairs, an agent killed with SIGKILL and one joining mid-run change
    /// no sample's count; then `auto` with one agent that announces no device runs on TCP and
    /// names it.
    @Test(
        .enabled(
            if: CollectiveProcessTests.hasRDMA,
            "no RDMA device on this machine: scripts/rdma-guest.sh runs this test against Soft-RoCE (rxe0) in a qemu guest"
        ))
    func aJobOverRDMA_withAKillAndAJoin_countsEverySampleOnce_andAutoFallsBackToTCP_sayingWhy() async throws {
        // A longer lease, and an early join: the guest's CPUs are emulated, and while the job trains
        // they are busy enough that a 2 s lease expires and a new process takes some 30 s to connect.
        let run = try await self.demo(
            "rdma-kill-join",
            [
                "--agents", "3", "--transport", "rdma", "--kill-agent-at-step", "40", "--add-agent-at-step", "60",
                "--lease", "15",
            ])
        self.expectExactAccounting(run, "over RDMA")
        #expect(run.accuracy >= 0.95, "over RDMA: test accuracy \(run.accuracy)")
        let causes = (run.json["recoveries"] as? [[String: Any]] ?? []).compactMap { $0["cause"] as? String }
        #expect(causes == ["disconnected", "joined"], "recoveries: \(causes)")
        let transports = self.transports(run)
        #expect(transports.count >= 3 && transports.allSatisfy { $0.transport == "rdma" }, "\(transports)")

        let fallback = try await self.demo(
            "rdma-fallback", ["--agents", "2", "--agents-without-rdma", "1", "--lease", "15"], steps: 60)
        #expect(fallback.count("samples_repeated") == 0 && fallback.count("samples_skipped") == 0)
        let chosen = self.transports(fallback)
        #expect(chosen.map(\.transport) == ["tcp"], "\(chosen)")
        #expect(chosen.first?.reason.contains("agent-1 has no usable RDMA port") == true, "\(chosen)")
    }
}
