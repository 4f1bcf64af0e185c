import CoordinatorCore
import Foundation
import JobModel

/// The coordinator's state machine alone: a job on `nodes` simulated nodes, then generation
/// changes (a member fails, or one joins back), each timed from the event to the machine's
/// returning every abort and assignment.
public enum MachineBenchmark {
    /// Timings of the generation changes.
    public struct Result: Sendable {
        /// Simulated nodes.
        public var nodes: Int
        /// Generation changes timed.
        public var changes: Int
        /// Median milliseconds per change.
        public var medianMilliseconds: Double
        /// 99th percentile.
        public var p99Milliseconds: Double
        /// Slowest.
        public var maxMilliseconds: Double
        /// Actions a change returned (aborts + assignments + bookkeeping).
        public var actionsPerChange: Int
        /// Seconds to bring every node online and start the job (not part of the figure).
        public var setupSeconds: Double
    }

    /// Runs the benchmark.
    public static func run(nodes: Int, changes: Int) throws -> Result {
        let clock = ContinuousClock()
        let setupStart = clock.now
        var machine = CoordinatorMachine(settings: .init(settleWindow: .zero))
        let spec = JobSpec(
            name: "bench",
            datasetPath: "/data",
            datasetSamples: nodes * 4,
            globalBatchSize: nodes,
            steps: 1_000_000,
            minNodes: 1,
            maxNodes: nodes
        )
        // Nodes first, then the job: the job starts once with all of them.
        for index in 0..<nodes {
            _ = machine.on(
                .nodeOnline(
                    node: "node-\(index)", .init(dataPlaneAddresses: ["10.0.\(index / 256).\(index % 256):7700"])),
                now: .zero)
        }
        _ = try machine.apply(.submit(spec), now: .zero)
        guard machine.record(job: "bench")?.members.count == nodes else {
            throw BenchmarkError("the job did not start with all \(nodes) nodes")
        }
        let setupSeconds = Self.seconds(clock.now - setupStart)

        var samples: [Double] = []
        var actions = 0
        var now = Duration.zero
        for change in 0..<changes {
            let victim = "node-\((change * 7919) % nodes)"
            now += .milliseconds(10)
            let start = clock.now
            // A member's connection drops: the next generation is built without it...
            let lost = machine.on(.nodeOffline(node: victim), now: now)
            samples.append(Self.seconds(clock.now - start) * 1000)
            actions = lost.count
            // ...and it comes back, which grows the job again (timed as a change too).
            now += .milliseconds(10)
            let start2 = clock.now
            _ = machine.on(.nodeOnline(node: victim, .init()), now: now)
            samples.append(Self.seconds(clock.now - start2) * 1000)
        }
        samples.sort()
        return Result(
            nodes: nodes,
            changes: samples.count,
            medianMilliseconds: samples[samples.count / 2],
            p99Milliseconds: samples[min(samples.count - 1, Int(Double(samples.count) * 0.99))],
            maxMilliseconds: samples.last!,
            actionsPerChange: actions,
            setupSeconds: setupSeconds
        )
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// A benchmark that could not run.
public struct BenchmarkError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
