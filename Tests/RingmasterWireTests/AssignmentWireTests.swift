import Foundation
import JobModel
import Testing

@testable import RingmasterWire

@Suite("Assignments on the wire")
struct AssignmentWireTests {
    static func assignment(_ transport: DataPlaneTransport, devices: [String?]) -> Assignment {
        Assignment(
            job: "job", generation: 3, rank: 1,
            members: devices.enumerated().map {
                Member(
                    node: "n\($0.offset)", rank: $0.offset, dataPlaneAddresses: ["h:\($0.offset)"],
                    rdmaDevice: $0.element)
            },
            resumeStep: 9,
            training: TrainingPlan(
                workloadKind: "mlp", workloadParameters: "", datasetPath: "builtin:digits", datasetSamples: 1437,
                globalBatchSize: 64, steps: 100, seed: 1, checkpointDirectory: nil, checkpointIntervalSteps: 0),
            dataPlaneSecret: [1, 2, 3],
            transport: transport
        )
    }

    @Test(arguments: [
        (DataPlaneTransport.tcp, [String?.none, .none]), (.rdma, ["mlx5_0", "rxe0"]),
    ])
    func anAssignment_comesBackEqual_withItsTransportAndDevices(transport: DataPlaneTransport, devices: [String?])
        throws
    {
        let sent = Self.assignment(transport, devices: devices)
        let bytes: [UInt8] = try Ringmaster_V1_Assignment(sent).serializedBytes()
        #expect(try Assignment(wire: Ringmaster_V1_Assignment(serializedBytes: bytes)) == sent)
    }

    @Test func anRDMAAssignmentWithoutAMembersDevice_orAnUnknownTransport_isRefused() throws {
        var wire = Ringmaster_V1_Assignment(Self.assignment(.rdma, devices: ["rxe0", "rxe0"]))
        wire.members[0].rdmaDevice = ""
        #expect(throws: WireError.self) { try Assignment(wire: wire) }
        wire = Ringmaster_V1_Assignment(Self.assignment(.tcp, devices: [nil, nil]))
        wire.transport = .UNRECOGNIZED(7)
        #expect {
            try Assignment(wire: wire)
        } throws: { "\($0)".contains("upgrade the agent") }
    }

    @Test func anRDMAPort_comesBack_andAGIDOfTheWrongLengthMakesItUnusable() {
        let port = RDMAPort(
            device: "rxe0", port: 1, linkLayer: "Ethernet", active: true, gid: Array(repeating: 7, count: 16))
        #expect(RDMAPort(wire: Ringmaster_V1_RdmaPort(port)) == port)
        var short = Ringmaster_V1_RdmaPort(port)
        short.gid = Data([1, 2, 3])
        #expect(!RDMAPort(wire: short).usable)
    }
}
