import ControlPlane
import Foundation
import LocalCluster
import RingmasterSecurity
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
        /// Where each coordinator listens, and the network namespace it runs in (nil: this one).
        let places: [(host: String, namespace: String?)]
        let coordinators = NIOLockedBox<[ChildProcess]>([])
        let agents = NIOLockedBox<[ChildProcess]>([])

        /// More arguments for every coordinator.
        let arguments: [String]

        init(
            etcd: EtcdCluster, places: [(host: String, namespace: String?)] = [("127.0.0.1", nil), ("127.0.0.1", nil)],
            arguments: [String] = []
        ) throws {
            self.executable = try ringmasterExecutable()
            self.etcd = etcd
            self.places = places
            self.arguments = arguments
            self.ports = try places.map { _ in try Cluster.freePort() }
        }

        var addresses: String {
            zip(self.places, self.ports).map { "\($0.host):\($1)" }.joined(separator: ",")
        }
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
                let command =
                    [
                        self.executable, "coordinator", "--state-dir", state, "--listen",
                        "\(self.places[index].host):\(port)",
                        "--settle-window", "200ms",
                    ] + self.etcd.storeArguments + self.arguments
                let inside = self.places[index].namespace.map { ["netns", "exec", $0] }
                let coordinator = try ChildProcess(
                    name: "coordinator-\(index)", executable: inside == nil ? self.executable : "/usr/bin/ip",
                    arguments: inside.map { $0 + command } ?? Array(command.dropFirst()))
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

        /// Waits for any coordinator's log line `condition` accepts (the first to print one), and
        /// returns it; an event, with a deadline.
        func waitForLine(within seconds: Double, _ what: String, _ condition: @escaping @Sendable (String) -> Bool)
            async throws -> String
        {
            let coordinators = self.coordinators.value
            return try await withThrowingTaskGroup(of: String.self) { group in
                for coordinator in coordinators {
                    group.addTask { try await coordinator.waitForLine(within: seconds, what, where: condition) }
                }
                defer { group.cancelAll() }
                var failure: (any Error)?
                while let result = await group.nextResult() {
                    switch result {
                    case .success(let line): return line
                    case .failure(let error): failure = failure ?? error
                    }
                }
                throw failure ?? CommandError("no coordinator to wait for \(what)")
            }
        }

        /// A coordinator's log line saying it committed a checkpoint of `generation` or later at
        /// `step` or later.
        static func checkpoint(generation: Int, step: Int) -> @Sendable (String) -> Bool {
            { line in
                line.contains("checkpoint committed")
                    && Int(ReplicatedCoordinatorTests.value("generation", in: line) ?? "") ?? 0 >= generation
                    && Int(ReplicatedCoordinatorTests.value("step", in: line) ?? "") ?? 0 >= step
            }
        }

        func killAll() {
            for process in self.agents.value + self.coordinators.value { process.signal(SIGKILL) }
        }
    }

    /// The job of `JobProcessTests`, on `nodes`, with a checkpoint every 100 steps under
    /// `directory`: the coordinator's "checkpoint committed" lines mark the job's progress.
    static func spec(directory: String, nodes: String = "{min: 2, max: 2}") -> String {
        JobProcessTests.spec.replacingOccurrences(of: "nodes: {min: 2, max: 3}", with: "nodes: \(nodes)")
            + "\ncheckpoint: {directory: \(directory)/checkpoints, interval_steps: 100, keep: 2}\n"
    }

    /// The (job, generation) pairs a coordinator's log says it started: it logs a generation once
    /// its record is saved, just before it tells the members.
    static func generationsStarted(_ coordinator: ChildProcess) -> Swift.Set<String> {
        Swift.Set(
            coordinator.output.lines.filter { $0.contains("generation started") }.compactMap { line in
                guard let job = Self.value("job", in: line), let generation = Self.value("generation", in: line)
                else { return nil }
                return "\(job)/\(generation)"
            })
    }

    static func value(_ key: String, in line: String) -> String? {
        guard let range = line.range(of: " \(key)=") ?? line.range(of: "\(key)=") else { return nil }
        return line[range.upperBound...].split(separator: " ").first.map(String.init)
    }

    /// A coordinator refuses to start, naming what to give instead, when its etcd store would
    /// carry the state's secrets in plain HTTP over a network, or when its TLS files are wrong;
    /// nothing is written to the state directory's store, and no etcd is needed to find out.
    @Test func aStoreThatWouldSendSecretsInTheClear_orWrongTLSFiles_areRefusedAtStart() async throws {
        let directory = try TestDirectory()
        let state = "\(directory.path)/state"
        let key = "\(directory.path)/client.key"
        let certificate = "\(directory.path)/client.crt"
        // A certificate and its key in PEM: a CA made by the coordinator's own code.
        _ = try CertificateAuthority.loadOrCreate(directory: "\(directory.path)/ca", now: Date())
        try FileManager.default.copyItem(atPath: "\(directory.path)/ca/ca.crt", toPath: certificate)
        try FileManager.default.copyItem(atPath: "\(directory.path)/ca/ca.key", toPath: key)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: key)
        let cases: [([String], String)] = [
            (["--store", "etcd://10.0.0.5:2379"], "add --etcd-plaintext"),
            (["--store", "etcd://10.0.0.5:2379"], "give --store etcds://10.0.0.5:2379 with --etcd-ca"),
            (
                ["--store", "etcd://127.0.0.1:2379", "--etcd-ca", certificate],
                "give the store as etcds://127.0.0.1:2379"
            ),
            (["--store", "etcds://10.0.0.5:2379", "--etcd-plaintext"], "--etcd-plaintext goes with --store etcd://"),
            (["--store", "sqlite", "--etcd-ca", certificate], "go with --store etcds:// or etcd://"),
            (
                ["--store", "etcds://10.0.0.5:2379", "--etcd-cert", certificate, "--etcd-key", key],
                "chmod 600 \(key)"
            ),
            (
                ["--store", "etcds://10.0.0.5:2379", "--etcd-cert", certificate],
                "--etcd-cert and --etcd-key go together"
            ),
        ]
        for (arguments, expected) in cases {
            let coordinator = try ChildProcess(
                name: "coordinator \(arguments.joined(separator: " "))", executable: try ringmasterExecutable(),
                arguments: ["coordinator", "--state-dir", state, "--listen", "127.0.0.1:0"] + arguments)
            let status = try await coordinator.waitForExit(within: 30)
            let output = coordinator.output.lines.joined(separator: "\n")
            #expect(status != 0, "\(arguments) started: \(output)")
            #expect(output.contains(expected), "\(arguments): expected \(expected) in \(output)")
            #expect(!output.contains("PRIVATE KEY"))
        }
        #expect(!FileManager.default.fileExists(atPath: "\(state)/state.sqlite"))
    }

    /// The leader runs in a network namespace whose traffic to etcd (TLS with client certificates,
    /// as over a real network) is cut while its agents still reach it, and one agent is killed just after: the leader, which still believes it leads,
    /// sees the member go (agents' leases are 600 ms here) and would start the next generation,
    /// but cannot save it, so assigns nothing; it stops leading within its own 2 s lease; the other
    /// coordinator leads and starts that generation; no generation of the job is assigned by both
    /// (from their logs), and the job trains on with the agent left.
    @Test func aLeaderCutOffFromEtcd_butNotFromItsAgents_stopsLeadingWithinItsLease_andNoGenerationIsAssignedTwice()
        async throws
    {
        let namespace = try NetworkNamespace()
        let etcd = try await EtcdCluster(host: namespace.hostAddress, tls: true)
        let set = try CoordinatorSet(
            etcd: etcd, places: [(namespace.address, namespace.name), (namespace.hostAddress, nil)],
            arguments: ["--lease", "600ms", "--heartbeat-interval", "200ms"])
        defer { set.killAll() }
        try await set.startCoordinators(first: true)
        try await set.startAgent("node-a")
        try await set.startAgent("node-b")
        let path = "\(set.directory.path)/trial.yaml"
        try Self.spec(directory: set.directory.path, nodes: "{min: 1, max: 2}")
            .write(toFile: path, atomically: true, encoding: .utf8)
        try await set.run(["job", "submit", path] + set.operatorOptions)
        _ = try await set.waitForLine(
            within: 60, "a first checkpoint", CoordinatorSet.checkpoint(generation: 1, step: 100))
        let before = try await set.job()
        let (partitioned, other) = (set.coordinators.value[0], set.coordinators.value[1])

        let cut = try TrafficCut(ports: etcd.ports, device: namespace.device, namespace: namespace.name)
        defer { try? cut.restore() }
        let cutAt = ContinuousClock.now
        set.agents.value[1].signal(SIGKILL)
        try await partitioned.waitForLine(within: 5, "the partitioned leader to stop leading") {
            $0.contains("this coordinator no longer leads")
        }
        let stopped = ContinuousClock.now - cutAt
        try await other.waitForLine(within: 10, "the other coordinator to lead") {
            $0.contains("this coordinator leads")
        }
        let generation = before["generation"] as? Int ?? 0
        // Training under the new leader: a checkpoint of a later generation, past the cursor before.
        _ = try await other.waitForLine(
            within: 60, "a checkpoint under the new leader",
            where: CoordinatorSet.checkpoint(generation: generation + 1, step: CoordinatorSet.cursor(before) + 1))
        let after = try await set.job()
        // Within its 2 s lease (the measurement waits on a log line, so allow it 0.3 s).
        #expect(stopped < .milliseconds(2300), "the partitioned leader stopped leading \(stopped) after the cut")
        let first = Self.generationsStarted(partitioned)
        let second = Self.generationsStarted(other)
        print(
            "partitioned leader: stopped leading \(stopped) after the cut; generations started: \(first.sorted()) by it, \(second.sorted()) by the other"
        )
        #expect(!first.isEmpty && !second.isEmpty, "generations started: \(first) and \(second)")
        #expect(first.isDisjoint(with: second), "generations started by both: \(first.intersection(second))")
        let samples = after["samples"] as? [String: Any] ?? [:]
        #expect(samples["repeated"] as? Int == 0 && samples["skipped"] as? Int == 0, "\(samples)")
        set.killAll()
        await etcd.stop()
    }

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
        try Self.spec(directory: set.directory.path).write(toFile: path, atomically: true, encoding: .utf8)
        try await set.run(["job", "submit", path] + set.operatorOptions)
        _ = try await set.waitForLine(
            within: 60, "a first checkpoint", CoordinatorSet.checkpoint(generation: 1, step: 100))
        let before = try await set.job()
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
        _ = try await set.waitForLine(within: 30, "the job restored by the new leader") {
            $0.contains("restored a job") && $0.contains("trial")
        }
        let restored = try await set.job()
        let cursor = CoordinatorSet.cursor(restored)
        #expect(cursor >= CoordinatorSet.cursor(before))
        #expect(restored["phase"] as? String == "running", "\(restored)")
        let generation = before["generation"] as? Int ?? 0
        // Training again: a checkpoint of a new generation past the restored cursor.
        _ = try await set.waitForLine(
            within: 60, "a checkpoint of a new generation past step \(cursor)",
            CoordinatorSet.checkpoint(generation: generation + 1, step: cursor + 1))
        let after = try await set.job()
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
