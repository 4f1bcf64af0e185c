import JobModel
import Testing

@testable import CoordinatorCore

/// Drives a `CoordinatorMachine` with a manual clock, and keeps what each node was last told,
/// so tests read like "b fails; a and c continue in generation 2".
struct Simulation {
    var machine: CoordinatorMachine
    var now: Duration = .zero
    /// The last assignment each node received, by node.
    var assignments: [String: CoordinatorMachine.Assignment] = [:]
    /// Every action, in order.
    var log: [CoordinatorMachine.Action] = []

    init(settings: CoordinatorMachine.Settings = .init()) {
        self.machine = CoordinatorMachine(settings: settings)
    }

    static func spec(
        _ name: String = "job",
        min: Int,
        max: Int,
        batch: Int = 12,
        samples: Int = 100,
        steps: UInt64 = 1000
    ) -> JobSpec {
        JobSpec(
            name: name,
            datasetPath: "/data/set",
            datasetSamples: samples,
            globalBatchSize: batch,
            steps: steps,
            seed: 7,
            minNodes: min,
            maxNodes: max
        )
    }

    @discardableResult
    mutating func send(_ event: CoordinatorMachine.Event) -> [CoordinatorMachine.Action] {
        self.record(self.machine.on(event, now: self.now))
    }

    @discardableResult
    mutating func command(_ command: CoordinatorMachine.Command) throws -> [CoordinatorMachine.Action] {
        self.record(try self.machine.apply(command, now: self.now))
    }

    mutating func record(_ actions: [CoordinatorMachine.Action]) -> [CoordinatorMachine.Action] {
        for action in actions {
            if case .assign(let node, let assignment) = action { self.assignments[node] = assignment }
        }
        self.log += actions
        return actions
    }

    mutating func online(_ nodes: String...) {
        for node in nodes {
            self.send(.nodeOnline(node: node, .init(dataPlaneAddresses: ["\(node):7700"])))
        }
    }

    /// Moves time forward; the nodes in `alive` heartbeat every 500 ms on the way, then a tick.
    mutating func advance(by duration: Duration, heartbeating alive: [String] = []) {
        let end = self.now + duration
        while self.now < end {
            self.now = min(self.now + .milliseconds(500), end)
            for node in alive {
                let held = self.assignments[node]
                self.send(.heartbeat(node: node, job: held?.job, generation: held?.generation ?? 0))
            }
            self.send(.tick)
        }
    }

    /// Every member of the job's current generation completes its next step, reporting the sample
    /// ids its rank takes (as an agent does).
    mutating func completeStep(_ job: String = "job") {
        guard let record = self.machine.record(job: job), record.phase == .running else { return }
        let order = record.spec.order
        let permutation = order.permutation(epoch: order.epoch(ofStep: record.cursor))
        for (rank, member) in record.members.enumerated() {
            let ids = order.samples(
                step: record.cursor, rank: rank, worldSize: record.members.count, permutation: permutation)
            self.send(
                .stepCompleted(
                    node: member, job: job, generation: record.generation, step: record.cursor, samples: Array(ids)))
        }
    }

    func record(_ job: String = "job") -> CoordinatorMachine.JobRecord {
        self.machine.record(job: job)!
    }

    /// The members of the job's current generation, by rank.
    func members(_ job: String = "job") -> [String] {
        self.record(job).members
    }

    func causes(_ job: String = "job") -> [CoordinatorMachine.Cause] {
        self.log.compactMap {
            if case .generationStarted(job, _, let cause, _, _, _) = $0 { return cause }
            return nil
        }
    }
}
