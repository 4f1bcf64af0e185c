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
    /// A member's shard is durable, or its save failed.
    func shardReported(_ shard: Ringmaster_V1_CheckpointShardReady, node: String, logger: Logger) {
        var commit: (CheckpointManifest, String, Int)?
        self.engine.withLock { engine in
            // A finished job's last checkpoint commits too: its shards come after the last step.
            guard let record = engine.machine.record(job: shard.jobID),
                record.phase == .running || record.phase == .finished,
                shard.generation == record.generation, record.members.contains(node)
            else {
                logger.notice(
                    "refused a checkpoint shard from another generation",
                    metadata: [
                        LogKey.job: "\(shard.jobID)", LogKey.generation: "\(shard.generation)", "step": "\(shard.step)",
                        LogKey.node: "\(node)",
                    ]
                )
                return
            }
            var progress = engine.progress[shard.jobID, default: JobProgress()]
            defer { engine.progress[shard.jobID] = progress }
            if !shard.error.isEmpty {
                progress.checkpointFailures += 1
                progress.lastCheckpointError = "step \(shard.step), \(node): \(shard.error)"
                progress.shards[shard.step] = nil
                self.metrics.checkpointFailures.increment()
                logger.error(
                    "a checkpoint shard could not be saved; the previous checkpoint stays the latest",
                    metadata: [
                        LogKey.job: "\(shard.jobID)", "step": "\(shard.step)", LogKey.node: "\(node)",
                        LogKey.reason: "\(shard.error)",
                    ]
                )
                return
            }
            if progress.shards[shard.step]?.generation != shard.generation {
                progress.shards[shard.step] = (shard.generation, [:])
            }
            progress.shards[shard.step]!.byRank[Int(shard.rank)] = shard
            commit = self.readyCheckpoint(
                record, &progress, step: shard.step,
                samples: engine.machine.samples(job: shard.jobID, atCheckpoint: shard.step))
        }
        if let (manifest, root, keep) = commit {
            self.commitCheckpoint(manifest, root: root, keep: keep, logger: logger)
        }
    }

    /// The manifest of the checkpoint at `step`, when every member's shard is in and the step is
    /// committed (a checkpoint of a step that may still be redone would be wrong); nil otherwise.
    func readyCheckpoint(
        _ record: CoordinatorMachine.JobRecord,
        _ progress: inout JobProgress,
        step: UInt64,
        samples: SampleAccounting?
    ) -> (CheckpointManifest, String, Int)? {
        guard let root = record.spec.checkpointDirectory, let pending = progress.shards[step],
            pending.generation == record.generation, pending.byRank.count == record.members.count, record.cursor >= step
        else { return nil }
        progress.shards[step] = nil
        let shards = pending.byRank.values.sorted { $0.rank < $1.rank }
        let first = shards[0]
        let manifest = CheckpointManifest(
            job: record.spec.name,
            generation: record.generation,
            step: step,
            cursorEpoch: record.spec.order.epoch(ofStep: step),
            permutationSeed: record.spec.seed,
            worldSize: shards.count,
            stateCount: Int(first.stateCount),
            parameterCount: Int(first.parameterCount),
            workloadKind: record.spec.workloadKind,
            workloadSpec: record.spec.workloadParameters,
            shards: shards.map {
                ShardRecord(
                    rank: Int($0.rank),
                    file: $0.path,
                    firstElement: Int($0.firstElement),
                    elements: Int($0.elements),
                    bytes: Int($0.sizeBytes),
                    sha256: $0.sha256.map { String(format: "%02x", $0) }.joined()
                )
            },
            samples: samples,
            committedUnixMilliseconds: Int64((self.now().timeIntervalSince1970 * 1000).rounded())
        )
        return (manifest, root, record.spec.checkpointKeep)
    }

    /// Checkpoints whose shards were all in before their step was committed, now committed.
    func checkpointsReady(job: String, engine: inout Engine) -> [(CheckpointManifest, String, Int)] {
        guard let record = engine.machine.record(job: job), var progress = engine.progress[job] else { return [] }
        let steps = progress.shards.keys.filter { $0 <= record.cursor }.sorted()
        let ready = steps.compactMap {
            self.readyCheckpoint(
                record, &progress, step: $0, samples: engine.machine.samples(job: job, atCheckpoint: $0))
        }
        engine.progress[job] = progress
        return ready
    }

    /// Writes the manifest (temporary name, fsync, rename, directory fsync) off the engine lock,
    /// on a queue of its own, then prunes old checkpoints.
    func commitCheckpoint(_ manifest: CheckpointManifest, root: String, keep: Int, logger: Logger) {
        self.checkpointQueue.async {
            do {
                try CheckpointWriter.commit(manifest, root: root)
                var pruned: [String] = []
                do {
                    pruned = try CheckpointRetention.prune(root: root, keep: keep)
                } catch {
                    logger.warning(
                        "could not delete old checkpoints",
                        metadata: [LogKey.job: "\(manifest.job)", "directory": "\(root)", LogKey.reason: "\(error)"]
                    )
                }
                self.engine.withLock { engine in
                    if var progress = engine.progress[manifest.job] {
                        progress.lastCheckpointStep = max(progress.lastCheckpointStep, manifest.step)
                        engine.progress[manifest.job] = progress
                    }
                    // The last checkpoint may commit after the job's last step.
                    self.saveProgress(of: [manifest.job], engine: &engine, logger: logger)
                }
                self.metrics.checkpointsCommitted.increment()
                logger.info(
                    "checkpoint committed",
                    metadata: [
                        LogKey.job: "\(manifest.job)", LogKey.generation: "\(manifest.generation)",
                        "step": "\(manifest.step)",
                        "world_size": "\(manifest.worldSize)",
                        "directory": "\(CheckpointLayout.stepDirectory(root: root, step: manifest.step))",
                        "pruned": "\(pruned.count)",
                    ]
                )
            } catch {
                self.engine.withLock { engine in
                    engine.progress[manifest.job, default: JobProgress()].checkpointFailures += 1
                    engine.progress[manifest.job, default: JobProgress()].lastCheckpointError =
                        "step \(manifest.step), manifest: \(error)"
                    self.saveProgress(of: [manifest.job], engine: &engine, logger: logger)
                }
                self.metrics.checkpointFailures.increment()
                logger.error(
                    "could not commit a checkpoint; the previous checkpoint stays the latest",
                    metadata: [LogKey.job: "\(manifest.job)", "step": "\(manifest.step)", LogKey.reason: "\(error)"]
                )
            }
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
