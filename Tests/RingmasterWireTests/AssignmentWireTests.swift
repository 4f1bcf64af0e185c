import Foundation
import JobModel
import NIOCore
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

    /// Every member's frame decodes, through the frame decoder, to what the whole assignment with
    /// that member's rank serializes to: ranks 0 (left out by the serializer), 1, 127 and 128 (a
    /// varint of one byte and of two), in a world of 300 members.
    @Test func eachMembersFrame_decodesToTheAssignmentWithItsRank() throws {
        var plan = Self.assignment(.tcp, devices: Array(repeating: nil, count: 300))
        let frames = try AssignmentFrames(Ringmaster_V1_Assignment(plan))
        for rank in [0, 1, 127, 128, 299] {
            plan.rank = rank
            var expected = Envelope()
            expected.assignment = Ringmaster_V1_Assignment(plan)
            var buffer = frames.frame(rank: UInt32(rank))
            var decoder = FrameDecoder()
            let decoded = try #require(try decoder.decode(buffer: &buffer), "rank \(rank): no whole frame")
            #expect(buffer.readableBytes == 0, "rank \(rank): \(buffer.readableBytes) bytes past the frame")
            #expect(decoded == expected, "rank \(rank)")
            guard case .assignment(let wire) = decoded.body else { continue }
            #expect(try Assignment(wire: wire) == plan)
        }
    }

    @Test func framesOverTheLimit_areRefused_namingTheLimit() throws {
        #expect {
            _ = try AssignmentFrames(
                Ringmaster_V1_Assignment(Self.assignment(.tcp, devices: Array(repeating: nil, count: 300))),
                maximumPayloadBytes: 1000)
        } throws: { error in
            (error as? WireError)?.description.contains("exceeds the frame limit of 1000 bytes") == true
        }
    }
}
