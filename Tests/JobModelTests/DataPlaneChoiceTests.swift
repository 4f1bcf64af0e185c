import JobModel
import Testing

@Suite("Choosing a generation's data plane")
struct DataPlaneChoiceTests {
    static let gid = [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 192, 0, 2, 1]

    static func port(_ device: String, _ linkLayer: String = "Ethernet", active: Bool = true, gid: Bool = true)
        -> RDMAPort
    {
        RDMAPort(device: device, port: 1, linkLayer: linkLayer, active: active, gid: gid ? Self.gid : nil)
    }

    @Test func auto_choosesRDMA_whenEveryMemberHasAUsablePort_withEachMembersDevice() {
        let choice = DataPlaneChoice.choose(
            .auto,
            members: [("a", [Self.port("mlx5_0")]), ("b", [Self.port("rxe0", active: false), Self.port("rxe1")])])
        #expect(choice.transport == .rdma)
        #expect(choice.devices == ["mlx5_0", "rxe1"])
        #expect(choice.reason.contains("every member"))
    }

    @Test func auto_fallsBackToTCP_namingTheMembersWithoutAUsablePort() {
        let choice = DataPlaneChoice.choose(
            .auto,
            members: [
                ("a", [Self.port("mlx5_0")]), ("b", []), ("c", [Self.port("rxe0", active: false)]),
                ("d", [Self.port("rxe0", gid: false)]),
            ])
        #expect(choice.transport == .tcp && choice.devices.isEmpty)
        #expect(choice.reason.contains("b, c, d have no usable RDMA port"), "\(choice.reason)")
        #expect(!choice.reason.contains("a,"))
    }

    @Test func membersOnDifferentLinkLayers_useOneTheyAllShare_orTCP() {
        let shared = DataPlaneChoice.choose(
            .auto,
            members: [
                ("a", [Self.port("mlx5_0", "InfiniBand"), Self.port("mlx5_1")]), ("b", [Self.port("rxe0")]),
            ])
        #expect(shared.transport == .rdma && shared.devices == ["mlx5_1", "rxe0"])
        let none = DataPlaneChoice.choose(
            .rdma, members: [("a", [Self.port("mlx5_0", "InfiniBand")]), ("b", [Self.port("rxe0")])])
        #expect(none.transport == .tcp && none.reason.contains("link layer"))
        let infiniBand = DataPlaneChoice.choose(
            .auto,
            members: [
                ("a", [Self.port("mlx5_1"), Self.port("mlx5_0", "InfiniBand")]),
                ("b", [Self.port("mlx5_0", "InfiniBand")]),
            ])
        #expect(infiniBand.devices == ["mlx5_0", "mlx5_0"], "InfiniBand is preferred where every member has it")
    }

    @Test func tcp_isTCP_evenWithDevices() {
        let choice = DataPlaneChoice.choose(.tcp, members: [("a", [Self.port("mlx5_0")]), ("b", [Self.port("x")])])
        #expect(choice.transport == .tcp && choice.reason.contains("asks for tcp"))
    }

    @Test func manyMembersWithoutPorts_areCountedNotAllNamed() {
        let members = (0..<6).map { ("node-\($0)", [RDMAPort]()) }
        let choice = DataPlaneChoice.choose(.auto, members: members)
        #expect(choice.reason.contains("node-0, node-1, node-2 and 3 more"), "\(choice.reason)")
    }
}
