import Checkpointing
import Testing

@Suite("Checkpoint layout")
struct CheckpointLayoutTests {
    @Test(
        "slices are contiguous, cover every element once, and differ in size by at most one",
        arguments: [(0, 1), (1, 1), (7, 3), (10_007, 4), (10_007, 1), (3, 8), (1_000_000, 64), (12, 4)])
    func test_slice_coversTheStateExactlyOnce_withBalancedSizes(elements: Int, world: Int) {
        var next = 0
        var sizes: [Int] = []
        for rank in 0..<world {
            let slice = CheckpointLayout.slice(elements: elements, rank: rank, worldSize: world)
            #expect(slice.lowerBound == next)
            next = slice.upperBound
            sizes.append(slice.count)
        }
        #expect(next == elements)
        #expect(sizes.max()! - sizes.min()! <= 1)
        #expect(sizes == sizes.sorted(by: >), "larger slices come first")
    }

    @Test func test_names_followTheDocumentedLayout() {
        #expect(CheckpointLayout.stepDirectory(root: "/mnt/ckpt", step: 300) == "/mnt/ckpt/step-000000000300")
        #expect(CheckpointLayout.stepDirectory(root: "/mnt/ckpt/", step: 300) == "/mnt/ckpt/step-000000000300")
        #expect(CheckpointLayout.stepDirectory(root: "r", step: UInt64.max) == "r/step-18446744073709551615")
        #expect(CheckpointLayout.shardFileName(rank: 1, worldSize: 4) == "shard-00001-of-00004.bin")
        #expect(CheckpointLayout.manifestFileName == "manifest.json")
        #expect(CheckpointLayout.step(fromDirectoryName: "step-000000000300") == 300)
        #expect(CheckpointLayout.step(fromDirectoryName: "step-18446744073709551615") == UInt64.max)
        #expect(CheckpointLayout.step(fromDirectoryName: "step-") == nil)
        #expect(CheckpointLayout.step(fromDirectoryName: "step-12a") == nil)
        #expect(CheckpointLayout.step(fromDirectoryName: "other") == nil)
        #expect(CheckpointLayout.worldSize(fromShardFileName: "shard-00001-of-00004.bin") == 4)
    }
}
