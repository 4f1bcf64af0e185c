import Foundation
import JobModel

// The wire forms of the domain messages, converted here once: past the session layer only the
// domain types travel.

extension Ringmaster_V1_Assignment {
    /// The wire form of `assignment`.
    public init(_ assignment: Assignment) {
        self.init()
        self.jobID = assignment.job
        self.generation = assignment.generation
        self.rank = UInt32(assignment.rank)
        self.worldSize = UInt32(assignment.worldSize)
        self.members = assignment.members.map { member in
            .with {
                $0.nodeID = member.node
                $0.rank = UInt32(member.rank)
                $0.dataPlaneAddresses = member.dataPlaneAddresses
                $0.rdmaDevice = member.rdmaDevice ?? ""
            }
        }
        switch assignment.transport {
        case .tcp: self.transport = .tcp
        case .rdma: self.transport = .rdma
        }
        self.dataPlaneSecret = Data(assignment.dataPlaneSecret)
        self.resumeStep = assignment.resumeStep
        let plan = assignment.training
        self.permutationSeed = plan.seed
        self.globalBatchSize = UInt32(plan.globalBatchSize)
        self.workloadKind = plan.workloadKind
        self.workloadSpec = plan.workloadParameters
        self.datasetPath = plan.datasetPath
        self.datasetSamples = UInt32(plan.datasetSamples)
        self.totalSteps = plan.steps
        self.checkpointDirectory = plan.checkpointDirectory ?? ""
        self.checkpointIntervalSteps = plan.checkpointIntervalSteps
    }
}

extension Assignment {
    /// The assignment an agent received, checked: its members are ranked `0..<world_size` and it
    /// holds one of those ranks.
    public init(wire: Ringmaster_V1_Assignment) throws(WireError) {
        let members = wire.members.sorted { $0.rank < $1.rank }
        guard wire.worldSize > 0, members.count == Int(wire.worldSize),
            members.enumerated().allSatisfy({ $0.offset == Int($0.element.rank) }), wire.rank < wire.worldSize
        else {
            throw WireError(
                .invalidMessage,
                "assignment for generation \(wire.generation) of \(wire.jobID) lists \(members.count) members for a world of \(wire.worldSize) with rank \(wire.rank); the coordinator and this agent disagree on the protocol"
            )
        }
        self.init(
            job: wire.jobID,
            generation: wire.generation,
            rank: Int(wire.rank),
            members: members.map {
                Member(
                    node: $0.nodeID, rank: Int($0.rank), dataPlaneAddresses: $0.dataPlaneAddresses,
                    rdmaDevice: $0.rdmaDevice.isEmpty ? nil : $0.rdmaDevice)
            },
            resumeStep: wire.resumeStep,
            training: TrainingPlan(
                workloadKind: wire.workloadKind,
                workloadParameters: wire.workloadSpec,
                datasetPath: wire.datasetPath,
                datasetSamples: Int(wire.datasetSamples),
                globalBatchSize: Int(wire.globalBatchSize),
                steps: wire.totalSteps,
                seed: wire.permutationSeed,
                checkpointDirectory: wire.checkpointDirectory.isEmpty ? nil : wire.checkpointDirectory,
                checkpointIntervalSteps: wire.checkpointIntervalSteps
            ),
            dataPlaneSecret: Array(wire.dataPlaneSecret),
            transport: try Self.transport(wire)
        )
    }

    /// The assignment's data plane; RDMA needs every member's device.
    static func transport(_ wire: Ringmaster_V1_Assignment) throws(WireError) -> DataPlaneTransport {
        switch wire.transport {
        case .tcp: return .tcp
        case .rdma:
            guard wire.members.allSatisfy({ !$0.rdmaDevice.isEmpty }) else {
                throw WireError(
                    .invalidMessage,
                    "assignment for generation \(wire.generation) of \(wire.jobID) is over RDMA but names no RDMA device for some member"
                )
            }
            return .rdma
        case .UNRECOGNIZED(let value):
            throw WireError(
                .invalidMessage,
                "assignment for generation \(wire.generation) of \(wire.jobID) asks for data-plane transport \(value), which this agent does not know; upgrade the agent"
            )
        }
    }
}

extension Envelope {
    /// An envelope carrying `report`.
    public init(_ report: StepReport) {
        self.init()
        self.stepReport = .with {
            $0.jobID = report.job
            $0.generation = report.generation
            $0.step = report.step
            $0.loss = report.loss
            $0.samples = UInt64(report.sampleIDs.count)
            $0.sampleIds = report.sampleIDs.map { UInt32(truncatingIfNeeded: $0) }
            if let hash = report.parameterHash { $0.parameterHash = withUnsafeBytes(of: hash.bigEndian) { Data($0) } }
            if let accuracy = report.testAccuracy { $0.testAccuracy = accuracy }
            if let resumedAt = report.resumedAt { $0.resumedAt = resumedAt }
        }
    }

    /// An envelope carrying `leave`.
    public init(_ leave: Leave) {
        self.init()
        self.leave = .with {
            $0.jobID = leave.job
            $0.generation = leave.generation
            $0.reason = leave.reason
            $0.cannotRun = leave.cannotRun
        }
    }

    /// An envelope carrying `failure`.
    public init(_ failure: GenerationFailure) {
        self.init()
        self.generationFailed = .with {
            $0.jobID = failure.job
            $0.generation = failure.generation
            $0.reason = failure.reason
            $0.rdmaSetUp = failure.rdmaSetUp
        }
    }
}

extension Envelope {
    /// An envelope carrying `shard`, of `job`'s `generation`.
    public init(_ shard: ShardReport, job: String, generation: UInt64) {
        self.init()
        self.shardReady = .with {
            $0.jobID = job
            $0.generation = generation
            $0.step = shard.step
            $0.rank = UInt32(shard.rank)
            $0.worldSize = UInt32(shard.worldSize)
            $0.stateCount = UInt64(shard.stateCount)
            $0.parameterCount = UInt64(shard.parameterCount)
            $0.firstElement = UInt64(shard.firstElement)
            $0.elements = UInt64(shard.elements)
            $0.path = shard.path
            $0.sizeBytes = UInt64(shard.bytes)
            $0.sha256 = Data(hex: shard.sha256)
            $0.error = shard.error ?? ""
            $0.tensors = shard.tensors.map { tensor in
                .with {
                    $0.name = tensor.name
                    $0.dtype = tensor.dtype
                    $0.shape = tensor.shape.map { UInt64($0) }
                    $0.offsetBytes = UInt64(tensor.offsetBytes)
                    $0.bytes = UInt64(tensor.bytes)
                }
            }
        }
    }
}

extension ShardReport {
    /// The shard report a member sent.
    public init(wire shard: Ringmaster_V1_CheckpointShardReady) {
        self.init(
            step: shard.step,
            rank: Int(shard.rank),
            worldSize: Int(shard.worldSize),
            stateCount: Int(shard.stateCount),
            parameterCount: Int(shard.parameterCount),
            firstElement: Int(shard.firstElement),
            elements: Int(shard.elements),
            path: shard.path,
            bytes: Int(shard.sizeBytes),
            sha256: shard.sha256.map { String(format: "%02x", $0) }.joined(),
            error: shard.error.isEmpty ? nil : shard.error,
            tensors: shard.tensors.map {
                StateTensor(
                    name: $0.name, dtype: $0.dtype, shape: $0.shape.map { Int(clamping: $0) },
                    offsetBytes: Int(clamping: $0.offsetBytes), bytes: Int(clamping: $0.bytes))
            }
        )
    }
}

extension Data {
    /// Bytes from lowercase or uppercase hex text (pairs of digits; anything else is skipped).
    init(hex: String) {
        var bytes: [UInt8] = []
        var high: UInt8?
        for character in hex.utf8 {
            let value: UInt8
            switch character {
            case 48...57: value = character - 48
            case 97...102: value = character - 87
            case 65...70: value = character - 55
            default: continue
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        self.init(bytes)
    }
}

extension Ringmaster_V1_RdmaPort {
    /// The wire form of `port`.
    public init(_ port: RDMAPort) {
        self.init()
        self.device = port.device
        self.port = UInt32(port.port)
        self.linkLayer = port.linkLayer
        self.active = port.active
        self.gid = Data(port.gid ?? [])
    }
}

extension RDMAPort {
    /// The port an agent announced; a GID that is not 16 bytes counts as none (the port is then
    /// not usable).
    public init(wire: Ringmaster_V1_RdmaPort) {
        self.init(
            device: wire.device, port: Int(wire.port), linkLayer: wire.linkLayer, active: wire.active,
            gid: wire.gid.count == 16 ? Array(wire.gid) : nil)
    }
}
