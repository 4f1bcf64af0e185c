import ControlPlane
import Foundation
import LocalCluster
import Testing

/// Coordinators sharing a real etcd cluster, as processes, driven through the CLI.
@Suite("Coordinators sharing etcd", .serialized, .timeLimit(.minutes(3)))
struct ReplicatedCoordinatorTests {
    /// Two coordinators of a set on fixed loopback ports, with the CA of the first copied to the
    /// second as an operator would, and an operator identity.
    final class CoordinatorSet: Sendable {
        let directory = try! TestDirectory()
        let executable: String
        let etcd: EtcdCluster
        let ports: [Int]
        let coordinators = NIOLockedBox<[ChildProcess]>([])
        let agents = NIOLockedBox<[ChildProcess]>([])

        init(etcd: EtcdCluster, count: Int = 2) throws {
            self.executable = try ringmasterExecutable()
            self.etcd = etcd
            self.ports = try (0..<count).map { _ in try Cluster.freePort() }
        }

        var addresses: String { self.ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") }
        var operatorOptions: [String] {
            ["--coordinator", self.addresses, "--identity", "\(self.directory.path)/operator"]
        }

        /// Starts every coordinator (the first creates the CA; the others get a copy).
        func startCoordinators(first: Bool) async throws {
            var started: [ChildProcess] = []
            for (index, port) in self.ports.enumerated() {
                let state = "\(self.directory.path)/coordinator-\(index)"
                if first && index > 0 {
                    try FileManager.default.createDirectory(
                        atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                    for file in ["ca.key", "ca.crt"] {
                        try FileManager.default.copyItem(
                            atPath: "\(self.directory.path)/coordinator-0/\(file)", toPath: "\(state)/\(file)")
                    }
                }
                let coordinator = try ChildProcess(
                    name: "coordinator-\(index)", executable: self.executable,
                    arguments: [
                        "coordinator", "--state-dir", state, "--listen", "127.0.0.1:\(port)", "--store",
                        self.etcd.address, "--settle-window", "200ms",
                    ])
                _ = try await coordinator.standardOutput.waitForLine(within: 30, "coordinator-\(index) listening") {
                    $0.hasPrefix("listening ")
                }
                if first && index == 0 {
                    _ = try await coordinator.waitForLine(within: 30, "coordinator-0 to lead") {
                        $0.contains("this coordinator leads")
                    }
                    try await self.run([
                        "cert", "issue", "--role", "operator", "--name", "tester", "--state-dir", state, "--out",
                        "\(self.directory.path)/operator",
                    ])
                }
                started.append(coordinator)
            }
            self.coordinators.value = started
        }

        @discardableResult
        func run(_ arguments: [String], within seconds: Double = 60) async throws -> [String] {
            let process = try ChildProcess(
                name: "ringmaster \(arguments.prefix(2).joined(separator: " "))", executable: self.executable,
                arguments: arguments)
            let status = try await process.waitForExit(within: seconds)
            guard status == 0 else {
                throw CommandError(
                    "`ringmaster \(arguments.joined(separator: " "))` exited \(status): \(process.output.lines.suffix(5))"
                )
            }
            return process.standardOutput.lines
        }

        func json(_ arguments: [String]) async throws -> [String: Any] {
            let output = try await self.run(arguments + ["--json"] + self.operatorOptions)
            return try JSONSerialization.jsonObject(with: Data(output.joined().utf8)) as? [String: Any] ?? [:]
        }

        /// Starts an agent that joins with a fresh token; returns the token and the CA pin.
        @discardableResult
        func startAgent(_ name: String) async throws -> (token: String, pin: String) {
            let token = try await self.json(["token", "create", "--ttl", "10m"])
            let agent = try ChildProcess(
                name: name, executable: self.executable,
                arguments: [
                    "agent", "--coordinator", self.addresses, "--data-dir", "\(self.directory.path)/\(name)", "--name",
                    name, "--data-plane-listen", "127.0.0.1:0", "--ca-pin", token["ca_pin"] as? String ?? "",
                ],
                environment: ["RINGMASTER_TOKEN": token["token"] as? String ?? ""])
            self.agents.value = self.agents.value + [agent]
            return (token["token"] as? String ?? "", token["ca_pin"] as? String ?? "")
        }

        static func cursor(_ job: [String: Any]) -> Int { (job["cursor"] as? [String: Any])?["step"] as? Int ?? 0 }

        func job() async throws -> [String: Any] {
            (try await self.json(["job", "status", "trial"])["jobs"] as? [[String: Any]])?.first ?? [:]
        }

        /// Polls `job status` until `condition` holds, for up to `seconds`.
        func waitForJob(within seconds: Double, _ what: String, _ condition: ([String: Any]) -> Bool) async throws
            -> [String: Any]
        {
            let deadline = ContinuousClock.now + .seconds(seconds)
            var last: [String: Any] = [:]
            while ContinuousClock.now < deadline {
                if let job = try? await self.job() {
                    last = job
                    if condition(job) { return job }
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw CommandError("the job was not \(what) within \(seconds) s; last status: \(last)")
        }

        func killAll() {
            for process in self.agents.value + self.coordinators.value { process.signal(SIGKILL) }
        }
    }

    static let spec = """
        name: trial
        workload: {kind: mlp, hidden: [16]}
        dataset: {path: builtin:digits, samples: 1437}
        batch_size: 64
        steps: 100000000
        seed: 1
        nodes: {min: 2, max: 2}
        """

    /// Everything stops at once, etcd and coordinators alike (agents live on): after a restart of
    /// every etcd member and every coordinator, the tokens, the nodes and the job are as
    /// committed, and the job trains on from its cursor.
    @Test func restartingEveryEtcdMemberAndEveryCoordinator_losesNothingCommitted() async throws {
        let etcd = try await EtcdCluster()
        let set = try CoordinatorSet(etcd: etcd)
        defer { set.killAll() }
        try await set.startCoordinators(first: true)
        let used = try await set.startAgent("node-a")
        try await set.startAgent("node-b")
        let path = "\(set.directory.path)/trial.yaml"
        try Self.spec.write(toFile: path, atomically: true, encoding: .utf8)
        try await set.run(["job", "submit", path] + set.operatorOptions)
        let before = try await set.waitForJob(within: 60, "past step 50") { CoordinatorSet.cursor($0) >= 50 }
        let nodeList = { (json: [String: Any]) in
            (json["nodes"] as? [[String: Any]] ?? []).map { node in
                [node["node"] as? String ?? "", node["certificate_not_after"].map { "\($0)" } ?? ""]
            }
        }
        let listedBefore = nodeList(try await set.json(["node", "list"]))
        let nodesBefore = Set<String>(
            (try await set.json(["node", "list"])["nodes"] as? [[String: Any]] ?? []).compactMap {
                $0["node"] as? String
            })
        #expect(nodesBefore == ["node-a", "node-b"])

        for coordinator in set.coordinators.value { coordinator.signal(SIGKILL) }
        for coordinator in set.coordinators.value { _ = try await coordinator.waitForExit(within: 10) }
        await etcd.stop()
        _ = try await EtcdCluster.script(["restart", etcd.directory.path, "all"], within: 40)
        try await set.startCoordinators(first: false)

        // As restored: at or past the cursor seen before (the job went on between that and the kill).
        let restored = try await set.waitForJob(within: 30, "restored") { $0["phase"] as? String == "running" }
        let cursor = CoordinatorSet.cursor(restored)
        #expect(cursor >= CoordinatorSet.cursor(before))
        let generation = before["generation"] as? Int ?? 0
        let after = try await set.waitForJob(within: 60, "training again in a new generation past step \(cursor + 20)")
        {
            CoordinatorSet.cursor($0) >= cursor + 20 && ($0["generation"] as? Int ?? 0) > generation
        }
        let generations = (after["history"] as? [[String: Any]] ?? []).compactMap { $0["generation"] as? Int }
        #expect(generations.contains(before["generation"] as? Int ?? -1), "history after the restart: \(generations)")
        #expect(after["last_cause"] as? String == "coordinator_restarted", "\(after)")
        let samples = after["samples"] as? [String: Any] ?? [:]
        #expect(samples["repeated"] as? Int == 0 && samples["skipped"] as? Int == 0, "\(samples)")
        #expect(nodeList(try await set.json(["node", "list"])) == listedBefore)
        // The token node-a joined with is still spent.
        let again = try ChildProcess(
            name: "agent join", executable: set.executable,
            arguments: [
                "agent", "join", "--coordinator", set.addresses, "--data-dir", "\(set.directory.path)/node-c",
                "--name", "node-c", "--ca-pin", used.pin,
            ],
            environment: ["RINGMASTER_TOKEN": used.token])
        #expect(try await again.waitForExit(within: 30) != 0)
        #expect(again.output.lines.contains { $0.contains("already used") }, "\(again.output.lines.suffix(5))")
        let nodesAfter = Set<String>(
            (try await set.json(["node", "list"])["nodes"] as? [[String: Any]] ?? []).compactMap {
                $0["node"] as? String
            })
        #expect(nodesAfter == nodesBefore)
        set.killAll()
        await etcd.stop()
    }
}
