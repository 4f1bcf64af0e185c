import ArgumentParser
import ControlPlane
import Foundation
import RingmasterWire

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job",
        abstract: "Submit, inspect, resize and cancel training jobs.",
        subcommands: [Submit.self, Status.self, Resize.self, Cancel.self]
    )

    /// Sends one admin request and prints the job status reply.
    static func run(_ request: Ringmaster_V1_AdminRequest, options: OperatorOptions, json: Bool) async throws {
        let reply = try await options.withSession { session in
            var envelope = Envelope()
            envelope.adminRequest = request
            return try await session.request(envelope)
        }
        guard case .jobStatus(let status) = reply.adminReply.reply else {
            throw CommandFailure(description: "the coordinator answered with \(reply.kind)")
        }
        if json {
            print(try Self.json(status))
        } else {
            Self.printTable(status)
        }
    }

    static func json(_ status: Ringmaster_V1_JobStatusReply) throws -> String {
        let jobs: [[String: Any]] = status.jobs.map { job in
            [
                "job": job.jobID, "phase": job.phase, "generation": job.generation,
                "world_size": job.members.count, "target_nodes": job.targetNodes,
                "nodes_min": job.minNodes, "nodes_max": job.maxNodes,
                "members": job.members.map { ["node": $0.nodeID, "rank": $0.rank] as [String: Any] },
                "cursor": ["epoch": job.cursorEpoch, "step": job.cursorStep] as [String: Any],
                "total_steps": job.totalSteps, "generations_started": job.generationsStarted,
                "last_cause": job.lastCause,
                "loss": job.loss,
                "test_accuracy": job.hasTestAccuracy ? job.testAccuracy as Any : NSNull(),
                "parameter_hash": job.parameterHash.map { String(format: "%02x", $0) }.joined(),
                "parameter_hash_step": job.parameterHashStep,
                "replica_divergences": job.divergences,
                "last_checkpoint_step": job.lastCheckpointStep,
                "checkpoint_failures": job.checkpointFailures,
                "last_checkpoint_error": job.lastCheckpointError,
                "resumed_from_step": job.hasResumedFromStep ? job.resumedFromStep as Any : NSNull(),
                "not_saved": job.notSaved,
                "refusals": job.refusals.map { ["node": $0.nodeID, "reason": $0.reason] },
                "failure": job.failure,
                "transport": [
                    "requested": job.transport, "current": job.history.last?.transport ?? "",
                    "reason": job.history.last?.transportReason ?? "",
                ],
                "samples": [
                    "seen": job.samples.seen, "repeated": job.samples.repeated, "skipped": job.samples.skipped,
                ],
                "history": job.history.map {
                    [
                        "generation": $0.generation, "cause": $0.cause, "world_size": $0.worldSize,
                        "resume_step": $0.resumeStep,
                        "started_unix_ms": $0.startedUnixMs, "first_step_unix_ms": $0.firstStepUnixMs,
                        "transport": $0.transport, "transport_reason": $0.transportReason,
                    ] as [String: Any]
                },
            ]
        }
        return try jsonText(["jobs": jobs])
    }

    static func printTable(_ status: Ringmaster_V1_JobStatusReply) {
        func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
        print(
            pad("JOB", 20) + pad("PHASE", 10) + pad("GEN", 6) + pad("NODES", 10) + pad("STEP", 16) + pad("LOSS", 10)
                + "MEMBERS")
        for job in status.jobs {
            let nodes = "\(job.members.count)/\(job.targetNodes)"
            let step = "\(job.cursorStep)/\(job.totalSteps)"
            let loss = job.cursorStep == 0 ? "-" : String(format: "%.4f", job.loss)
            let members = job.members.map { "\($0.rank):\($0.nodeID)" }.joined(separator: " ")
            print(
                pad(job.jobID, 20) + pad(job.phase, 10) + pad("\(job.generation)", 6) + pad(nodes, 10) + pad(step, 16)
                    + pad(loss, 10) + members)
        }
        for job in status.jobs where job.samples.seen > 0 {
            var line =
                "\(job.jobID): samples \(job.samples.seen) seen, \(job.samples.repeated) repeated, \(job.samples.skipped) skipped"
            if job.hasTestAccuracy { line += String(format: "; test accuracy %.2f%%", job.testAccuracy * 100) }
            if job.divergences > 0 { line += "; REPLICAS DIVERGED at \(job.divergences) check(s)" }
            print(line)
        }
        for job in status.jobs {
            if let generation = job.history.last, !generation.transport.isEmpty, job.phase == "running" {
                print(
                    "\(job.jobID): data plane \(generation.transport) (transport: \(job.transport)): \(generation.transportReason)"
                )
            }
            if !job.failure.isEmpty { print("\(job.jobID): FAILED: \(job.failure)") }
            for refusal in job.refusals {
                print("\(job.jobID): node \(refusal.nodeID) cannot run it: \(refusal.reason)")
            }
            if !job.notSaved.isEmpty {
                print(
                    "\(job.jobID): ITS STATE IS NOT BEING SAVED (progress is lost if the coordinator restarts) \(job.notSaved)"
                )
            }
        }
        for job in status.jobs where job.lastCheckpointStep > 0 || job.checkpointFailures > 0 || job.hasResumedFromStep
        {
            var line = "\(job.jobID): "
            if job.hasResumedFromStep { line += "resumed from the checkpoint at step \(job.resumedFromStep); " }
            line +=
                job.lastCheckpointStep > 0
                ? "latest checkpoint at step \(job.lastCheckpointStep)" : "no checkpoint committed yet"
            if job.checkpointFailures > 0 {
                line += "; \(job.checkpointFailures) save(s) failed, the last: \(job.lastCheckpointError)"
            }
            print(line)
        }
    }

    struct Submit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "submit", abstract: "Submit a job spec (YAML).")

        @Argument(help: "Path of the job spec.")
        var spec: String

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            guard let data = FileManager.default.contents(atPath: self.spec) else {
                throw ValidationError("cannot read the job spec \(self.spec)")
            }
            var request = Ringmaster_V1_AdminRequest()
            request.jobSubmit = .with { $0.specYaml = String(decoding: data, as: UTF8.self) }
            try await JobCommand.run(request, options: self.operatorOptions, json: self.json)
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Show one job, or all.")

        @Argument(help: "The job (default: every job).")
        var job: String?

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            var request = Ringmaster_V1_AdminRequest()
            request.jobStatus = .with { $0.jobID = self.job ?? "" }
            try await JobCommand.run(request, options: self.operatorOptions, json: self.json)
        }
    }

    struct Resize: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "resize", abstract: "Change a running job's node count in place.")

        @Argument(help: "The job.")
        var job: String

        @Option(help: "Node count, within the spec's nodes.min..nodes.max.")
        var nodes: UInt32

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            var request = Ringmaster_V1_AdminRequest()
            request.jobResize = .with {
                $0.jobID = self.job
                $0.nodes = self.nodes
            }
            try await JobCommand.run(request, options: self.operatorOptions, json: self.json)
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Stop a job for good.")

        @Argument(help: "The job.")
        var job: String

        @Flag(help: "Print JSON.")
        var json = false

        @OptionGroup var operatorOptions: OperatorOptions

        func run() async throws {
            var request = Ringmaster_V1_AdminRequest()
            request.jobCancel = .with { $0.jobID = self.job }
            try await JobCommand.run(request, options: self.operatorOptions, json: self.json)
        }
    }
}
