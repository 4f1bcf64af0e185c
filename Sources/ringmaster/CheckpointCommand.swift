import ArgumentParser
import Checkpointing
import Foundation

struct CheckpointCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Inspect the checkpoints under a checkpoint root.",
        subcommands: [List.self, WriteTest.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Every step directory under ROOT: committed or not, world size, size, and whether it verifies.",
            discussion: """
                Verifying reads every shard and checks its size and SHA-256 against the manifest, as a \
                restore would; on a large checkpoint this reads all of it.
                """
        )

        @Argument(help: "The job's checkpoint root directory.")
        var root: String

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            let listing: [CheckpointListing]
            do {
                listing = try CheckpointReader.listing(root: self.root)
            } catch let error as CheckpointError {
                throw CommandFailure(description: error.message)
            }
            var rows: [[String: Any]] = []
            for entry in listing {
                var row: [String: Any] = [
                    "step": entry.step, "path": entry.path, "committed": entry.committed, "bytes": entry.bytes,
                    "shard_files": entry.shardFiles.count, "temporary_files": entry.temporaryFiles,
                ]
                if entry.committed {
                    do {
                        let manifest = try CheckpointReader.verify(root: self.root, step: entry.step)
                        row["world_size"] = manifest.worldSize
                        row["verified"] = true
                        row["job"] = manifest.job
                        row["generation"] = manifest.generation
                    } catch let error as CheckpointError {
                        row["verified"] = false
                        row["problem"] = error.message
                        if let world = try? CheckpointReader.manifest(root: self.root, step: entry.step).worldSize {
                            row["world_size"] = world
                        }
                    }
                } else {
                    row["verified"] = false
                    row["problem"] =
                        "not committed (no manifest): a save in progress, or the leftover of one that failed"
                }
                if row["world_size"] == nil,
                    let world = entry.shardFiles.compactMap(CheckpointLayout.worldSize(fromShardFileName:)).first
                {
                    row["world_size"] = world
                }
                rows.append(row)
            }
            if self.json {
                try printJSON(rows)
                return
            }
            if rows.isEmpty {
                print("no step directories under \(self.root)")
                return
            }
            for row in rows {
                let step = row["step"] as! UInt64
                let world = (row["world_size"] as? Int).map(String.init) ?? "?"
                let size = Self.humanBytes(row["bytes"] as! Int)
                let status: String
                if row["verified"] as! Bool {
                    status = "committed, verified"
                } else if row["committed"] as! Bool {
                    status = "committed, DOES NOT VERIFY: \(row["problem"] as! String)"
                } else {
                    status = "uncommitted (\(row["shard_files"] as! Int) shard files)"
                }
                print("step \(step)  world \(world)  \(size)  \(status)")
            }
        }

        static func humanBytes(_ bytes: Int) -> String {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"]
            var value = Double(bytes)
            var unit = 0
            while value >= 1024 && unit < units.count - 1 {
                value /= 1024
                unit += 1
            }
            return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
        }
    }

    struct WriteTest: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "write-test",
            abstract: "Writes and commits a checkpoint of a deterministic state in this one process (for tests).",
            discussion: "Element i is Float(i % 1000) * 0.5 + Float(seed). Honours RINGMASTER_CRASH_AT.",
            shouldDisplay: false
        )

        @Option var root: String
        @Option var step: UInt64
        @Option var world: Int
        @Option var elements: Int
        @Option var seed: Int = 0

        func validate() throws {
            guard self.world >= 1 else { throw ValidationError("--world must be at least 1") }
            guard self.elements >= 0 else { throw ValidationError("--elements must not be negative") }
        }

        /// The deterministic state write-test saves.
        static func state(elements: Int, seed: Int) -> [Float] {
            (0..<elements).map { Float($0 % 1000) * 0.5 + Float(seed) }
        }

        func run() throws {
            let state = Self.state(elements: self.elements, seed: self.seed)
            do {
                let shards = try state.withUnsafeBufferPointer { all in
                    try (0..<self.world).map { rank in
                        let slice = CheckpointLayout.slice(elements: self.elements, rank: rank, worldSize: self.world)
                        return try CheckpointWriter.writeShard(
                            root: self.root, step: self.step, rank: rank, worldSize: self.world,
                            firstElement: slice.lowerBound, elements: UnsafeBufferPointer(rebasing: all[slice])
                        )
                    }
                }
                let manifest = CheckpointManifest(
                    job: "test", generation: 1, step: self.step, cursorEpoch: 0, permutationSeed: UInt64(self.seed),
                    worldSize: self.world, stateCount: self.elements, parameterCount: self.elements,
                    workloadKind: "test", workloadSpec: "", shards: shards,
                    committedUnixMilliseconds: Int64(Date().timeIntervalSince1970 * 1000)
                )
                try CheckpointWriter.commit(manifest, root: self.root)
            } catch let error as CheckpointError {
                throw CommandFailure(description: error.description)
            }
            print("committed step \(self.step)")
        }
    }
}
