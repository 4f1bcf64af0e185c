import CoordinatorCore
import CoreMetrics
import Prometheus

/// The coordinator's metrics, exported in Prometheus text format at `/metrics`.
///
/// The instruments are made from this service's own registry (not a process-wide bootstrap), so
/// two coordinators in one test process do not share counters.
public struct CoordinatorMetrics: Sendable {
    /// The registry the instruments report into.
    public let registry: PrometheusCollectorRegistry
    /// Generations started, any job, any cause.
    let generationsStarted: CoreMetrics.Counter
    /// Nodes whose lease ran out.
    let leaseExpiries: CoreMetrics.Counter
    /// Messages naming an older generation, refused.
    let staleRefused: CoreMetrics.Counter
    /// From a job's waiting for nodes to its generation starting.
    let rendezvousSeconds: CoreMetrics.Recorder
    /// Nodes by state.
    let nodes: [CoordinatorMachine.NodeState: CoreMetrics.Gauge]
    /// Steps committed (completed by every member).
    let stepsCommitted: CoreMetrics.Counter
    /// Steps at which members reported different parameter hashes.
    let divergences: CoreMetrics.Counter
    /// Checkpoints committed (manifest written).
    let checkpointsCommitted: CoreMetrics.Counter
    /// Checkpoint saves that failed (a shard or the manifest).
    let checkpointFailures: CoreMetrics.Counter
    /// Connections refused at accept, by reason.
    let connectionsRefused: [ConnectionBudget.Refusal: CoreMetrics.Counter]
    /// Connections held, and those of them not yet authenticated.
    let connections: CoreMetrics.Gauge
    let unauthenticatedConnections: CoreMetrics.Gauge

    /// Makes the instruments in a fresh registry.
    public init() {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Rendezvous takes milliseconds to seconds: buckets for that range, in seconds.
        factory.defaultValueHistogramBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
        self.registry = registry
        self.generationsStarted = Counter(label: "ringmaster_generations_started_total", factory: factory)
        self.leaseExpiries = Counter(label: "ringmaster_lease_expiries_total", factory: factory)
        self.staleRefused = Counter(label: "ringmaster_stale_messages_refused_total", factory: factory)
        self.stepsCommitted = Counter(label: "ringmaster_steps_committed_total", factory: factory)
        self.divergences = Counter(label: "ringmaster_replica_divergences_total", factory: factory)
        self.checkpointsCommitted = Counter(label: "ringmaster_checkpoints_committed_total", factory: factory)
        self.checkpointFailures = Counter(label: "ringmaster_checkpoint_failures_total", factory: factory)
        self.rendezvousSeconds = Recorder(label: "ringmaster_rendezvous_duration_seconds", factory: factory)
        var nodes: [CoordinatorMachine.NodeState: CoreMetrics.Gauge] = [:]
        for state in CoordinatorMachine.NodeState.allCases {
            nodes[state] = Gauge(label: "ringmaster_nodes", dimensions: [("state", state.rawValue)], factory: factory)
        }
        self.nodes = nodes
        var refused: [ConnectionBudget.Refusal: CoreMetrics.Counter] = [:]
        for reason in [
            ConnectionBudget.Refusal.tooManyConnections, .tooManyFromAddress, .tooManyUnauthenticated, .displaced,
        ] {
            refused[reason] = Counter(
                label: "ringmaster_connections_refused_total", dimensions: [("reason", reason.rawValue)],
                factory: factory)
        }
        self.connectionsRefused = refused
        self.connections = Gauge(label: "ringmaster_connections", factory: factory)
        self.unauthenticatedConnections = Gauge(label: "ringmaster_unauthenticated_connections", factory: factory)
    }

    /// Sets the node gauges from counts by state.
    func record(nodeCounts: [CoordinatorMachine.NodeState: Int]) {
        for (state, gauge) in self.nodes {
            gauge.record(nodeCounts[state] ?? 0)
        }
    }

    /// The registry's text exposition.
    public func exposition() -> String {
        self.registry.emitToString()
    }
}
