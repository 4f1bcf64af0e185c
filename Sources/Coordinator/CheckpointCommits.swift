import Checkpointing
import ControlPlane
import CoordinatorCore
import Foundation
import JobModel
import Logging
import RingmasterWire

/// The coordinator's part in checkpoints: it writes a checkpoint's manifest (the commit) once
/// every member's shard of that step is durable and the step itself is committed, prunes old
/// checkpoints, and finds the checkpoint a resubmitted job resumes from.
extension CoordinatorService {
    /// A member's shard is durable, or its save failed: to the machine, which decides when the
    /// checkpoint is due.
    func shardReported(_ shard: Ringmaster_V1_CheckpointShardReady, node: String, logger: Logger) {
        let report = ShardReport(wire: shard)
        self.feed(.shardReported(node: node, job: shard.jobID, generation: shard.generation, report), logger: logger)
    }

    /// The manifest that commits `commit`.
    func manifest(_ commit: CoordinatorMachine.CheckpointCommit) -> CheckpointManifest {
        let spec = commit.spec
        let first = commit.shards[0]
        return CheckpointManifest(
            job: spec.name,
            generation: commit.generation,
            step: commit.step,
            cursorEpoch: spec.order.epoch(ofStep: commit.step),
            permutationSeed: spec.seed,
            worldSize: commit.shards.count,
            stateCount: first.stateCount,
            parameterCount: first.parameterCount,
            workloadKind: spec.workloadKind,
            workloadSpec: spec.workloadParameters,
            shards: commit.shards.map {
                ShardRecord(
                    rank: $0.rank, file: $0.path, firstElement: $0.firstElement, elements: $0.elements,
                    bytes: $0.bytes, sha256: $0.sha256)
            },
            samples: commit.samples,
            committedUnixMilliseconds: Int64((self.now().timeIntervalSince1970 * 1000).rounded()),
            tensors: first.tensors.isEmpty ? nil : first.tensors
        )
    }

    /// How a checkpoint's manifest write ended (the writer wrote it, off the engine lock): into
    /// the job's progress, which is saved at once, and then to the log.
    func checkpointCommitted(_ outcome: StateWriter.ManifestOutcome, logger: Logger) {
        self.engine.withLock { engine in
            var batch = StateWriter.Batch()
            switch outcome {
            case .committed(let manifest, let root, let pruned):
                if var progress = engine.progress[manifest.job] {
                    progress.lastCheckpointStep = max(progress.lastCheckpointStep, manifest.step)
                    engine.progress[manifest.job] = progress
                }
                // The last checkpoint may commit after the job's last step.
                batch.progress = self.progressDue(of: [manifest.job], engine: &engine)
                batch.then {
                    self.metrics.checkpointsCommitted.increment()
                    logger.info(
                        "checkpoint committed",
                        metadata: [
                            LogKey.job: "\(manifest.job)", LogKey.generation: "\(manifest.generation)",
                            "step": "\(manifest.step)", "world_size": "\(manifest.worldSize)",
                            "directory": "\(CheckpointLayout.stepDirectory(root: root, step: manifest.step))",
                            "pruned": "\(pruned)",
                        ]
                    )
                }
            case .failed(let manifest, let reason):
                engine.progress[manifest.job, default: JobProgress()].checkpointFailures += 1
                engine.progress[manifest.job, default: JobProgress()].lastCheckpointError =
                    "step \(manifest.step), manifest: \(reason)"
                batch.progress = self.progressDue(of: [manifest.job], engine: &engine)
                batch.then {
                    self.metrics.checkpointFailures.increment()
                    logger.error(
                        "could not commit a checkpoint; the previous checkpoint stays the latest",
                        metadata: [
                            LogKey.job: "\(manifest.job)", "step": "\(manifest.step)", LogKey.reason: "\(reason)",
                        ]
                    )
                }
            }
            self.writer.submit(batch)
        }
    }

    /// `resumePoint` on a thread of its own (`onOwnThread`): verifying reads every shard of the
    /// checkpoint (gigabytes, for a large model), which must not hold up the threads that serve
    /// every connection.
    func resumePointAwaitingVerification(for spec: JobSpec, logger: Logger) async throws -> CoordinatorMachine.JobStart?
    {
        guard spec.resume != nil else { return nil }
        return try await onOwnThread(named: "ringmaster-resume-verification") {
            try self.resumePoint(for: spec, logger: logger)
        }
    }

    /// Where a submitted job with `resume` starts: the newest committed checkpoint (at or before
    /// the step asked for) whose every shard verifies, streamed through a small buffer rather
    /// than loaded. Newer ones that fail are logged loudly and skipped; with none valid, or one
    /// that does not fit the spec, the submit is refused.
    func resumePoint(for spec: JobSpec, logger: Logger) throws -> CoordinatorMachine.JobStart? {
        guard let resume = spec.resume, let root = spec.checkpointDirectory else { return nil }
        if self.engine.withLock({ $0.machine.record(job: spec.name) }) != nil {
            // Refused by the machine anyway; do not read a whole checkpoint first.
            return nil
        }
        let limit: UInt64?
        switch resume {
        case .latest: limit = nil
        case .atOrBefore(let step): limit = step
        }
        let found = try CheckpointReader.verifyLatest(root: root, atOrBefore: limit)
        for skipped in found.skipped {
            logger.error(
                "a committed checkpoint failed verification; falling back to an older one",
                metadata: [LogKey.job: "\(spec.name)", "step": "\(skipped.step)", LogKey.reason: "\(skipped.error)"]
            )
        }
        let manifest = found.manifest
        guard manifest.workloadKind == spec.workloadKind, manifest.workloadSpec == spec.workloadParameters else {
            throw CoordinatorError(
                .invalidRequest,
                "the checkpoint at step \(manifest.step) in \(root) is of workload \(manifest.workloadKind) with other settings; resume with the same workload settings it was saved with"
            )
        }
        guard manifest.permutationSeed == spec.seed, spec.order.epoch(ofStep: manifest.step) == manifest.cursorEpoch
        else {
            throw CoordinatorError(
                .invalidRequest,
                "the checkpoint at step \(manifest.step) was saved with another data order (seed \(manifest.permutationSeed), epoch \(manifest.cursorEpoch)); resume with the same seed, data set and batch size"
            )
        }
        logger.notice(
            "resuming from a checkpoint",
            metadata: [
                LogKey.job: "\(spec.name)", "step": "\(manifest.step)", "saved_world_size": "\(manifest.worldSize)",
                "skipped_newer": "\(found.skipped.count)",
            ]
        )
        return CoordinatorMachine.JobStart(step: manifest.step, samples: manifest.samples)
    }
}
