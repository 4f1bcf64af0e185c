import Checkpointing
import Foundation

/// Checkpoint save throughput: `ranks` writers each saving their shard of one state at once (as
/// the agents of a job do), then the manifest, against one sequential write of the same bytes
/// to the same directory with `dd ... conv=fsync`.
public enum CheckpointBenchmark {
    public struct Result: Sendable {
        public var bytes: Int
        public var shardedSeconds: [Double]
        public var sequentialSeconds: [Double]

        public var shardedMedian: Double { Self.median(self.shardedSeconds) }
        public var sequentialMedian: Double { Self.median(self.sequentialSeconds) }

        static func median(_ values: [Double]) -> Double {
            let sorted = values.sorted()
            return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        }
    }

    public static func run(ranks: Int, megabytes: Int, directory: String, rounds: Int, progress: (String) -> Void)
        throws -> Result
    {
        let elements = megabytes * (1 << 20) / 4
        let state = (0..<elements).map { Float($0 % 4099) * 0.25 }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var result = Result(bytes: elements * 4, shardedSeconds: [], sequentialSeconds: [])
        for round in 0..<rounds {
            let root = "\(directory)/bench-checkpoints"
            try? FileManager.default.removeItem(atPath: root)
            let started = ContinuousClock.now
            let records = try Self.writeShards(state: state, ranks: ranks, root: root, step: UInt64(round + 1))
            let manifest = CheckpointManifest(
                job: "bench", generation: 1, step: UInt64(round + 1), cursorEpoch: 0, permutationSeed: 0,
                worldSize: ranks,
                stateCount: elements, parameterCount: elements, workloadKind: "bench", workloadSpec: "",
                shards: records,
                samples: nil, committedUnixMilliseconds: 0
            )
            try CheckpointWriter.commit(manifest, root: root)
            result.shardedSeconds.append(MachineBenchmark.seconds(ContinuousClock.now - started))
            try? FileManager.default.removeItem(atPath: root)

            let file = "\(directory)/bench-dd.bin"
            let dd = Process()
            dd.executableURL = URL(fileURLWithPath: "/usr/bin/dd")
            dd.arguments = ["if=/dev/zero", "of=\(file)", "bs=1M", "count=\(megabytes)", "conv=fsync"]
            dd.standardError = FileHandle.nullDevice
            let ddStarted = ContinuousClock.now
            try dd.run()
            dd.waitUntilExit()
            guard dd.terminationStatus == 0 else {
                throw BenchmarkError("dd failed with status \(dd.terminationStatus)")
            }
            result.sequentialSeconds.append(MachineBenchmark.seconds(ContinuousClock.now - ddStarted))
            try? FileManager.default.removeItem(atPath: file)
            progress(
                String(
                    format: "round %d: sharded %.3f s, dd %.3f s", round + 1, result.shardedSeconds.last!,
                    result.sequentialSeconds.last!))
        }
        return result
    }

    /// Every rank's shard written at once, each on a thread of its own.
    static func writeShards(state: [Float], ranks: Int, root: String, step: UInt64) throws -> [ShardRecord] {
        let outcomes = ShardOutcomes(count: ranks)
        let group = DispatchGroup()
        for rank in 0..<ranks {
            group.enter()
            let thread = Thread {
                defer { group.leave() }
                let slice = CheckpointLayout.slice(elements: state.count, rank: rank, worldSize: ranks)
                outcomes.set(rank) {
                    try state.withUnsafeBufferPointer { buffer in
                        try CheckpointWriter.writeShard(
                            root: root, step: step, rank: rank, worldSize: ranks, firstElement: slice.lowerBound,
                            elements: UnsafeBufferPointer(rebasing: buffer[slice])
                        )
                    }
                }
            }
            thread.start()
        }
        group.wait()
        return try outcomes.records()
    }
}

/// What each writer thread produced.
final class ShardOutcomes: @unchecked Sendable {
    // Safe because every access holds `lock`.
    let lock = NSLock()
    var results: [Result<ShardRecord, any Error>?]

    init(count: Int) {
        self.results = Array(repeating: nil, count: count)
    }

    func set(_ rank: Int, _ body: () throws -> ShardRecord) {
        let outcome = Result { try body() }
        self.lock.withLock { self.results[rank] = outcome }
    }

    func records() throws -> [ShardRecord] {
        try self.lock.withLock { try self.results.map { try $0!.get() } }
    }
}
