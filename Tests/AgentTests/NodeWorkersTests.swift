import Testing

@testable import Agent

/// The agent's side of several workers per node: how a node's share of a batch is sliced over its
/// workers, how their gradients are summed, and which GPUs they get.
@Suite struct NodeWorkersTests {
    @Test(arguments: [0, 1, 2, 3, 7, 64, 65])
    func test_slices_coverTheShareOnce_inOrder_differingByAtMostOne(samples: Int) {
        let share = Array(100..<(100 + samples))[...]
        for count in [1, 2, 3, 4] {
            let slices = (0..<count).map { TorchWorkload.slice(share, worker: $0, of: count) }
            #expect(Array(slices.joined()) == Array(share), "\(count) workers take the share in order, once")
            let sizes = slices.map(\.count)
            #expect((sizes.max() ?? 0) - (sizes.min() ?? 0) <= 1, "\(samples) samples over \(count): \(sizes)")
        }
    }

    @Test func test_slicesOfASliceKeepItsIndices() {
        // The core hands the executor a slice of the epoch's permutation, not an array from 0.
        let permutation = [9, 4, 7, 1, 8, 2, 6]
        let share = permutation[2..<7]
        #expect(Array(TorchWorkload.slice(share, worker: 0, of: 2)) == [7, 1, 8])
        #expect(Array(TorchWorkload.slice(share, worker: 1, of: 2)) == [2, 6])
    }

    @Test(arguments: [1, 2, 3, 4])
    func test_nodeSum_isTheElementwiseSum_inWorkerOrder(workers: Int) {
        // Longer than a few blocks of the kernels and not a multiple of them, and a range that
        // starts inside.
        let count = 8192 * 2 + 37
        let sources = (0..<workers).map { worker in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            for index in 0..<count { buffer[index] = Float((index * 31 + worker * 17) % 101) * 0.25 - 7 }
            return buffer
        }
        defer { for source in sources { source.deallocate() } }
        var destination = [Float](repeating: -1, count: count + 1)
        let range = 5..<count
        destination.withUnsafeMutableBufferPointer {
            NodeSum.sum(sources.map { UnsafeBufferPointer($0) }, range: range, into: $0)
        }
        for index in range {
            let expected = sources.dropFirst().reduce(sources[0][index]) { $0 + $1[index] }
            #expect(destination[index] == expected, "slot \(index)")
            if destination[index] != expected { break }
        }
        #expect(destination[0..<5].allSatisfy { $0 == -1 }, "nothing outside the range is written")
        #expect(destination[count] == -1)
    }

    @Test func test_visibleGPUs_followCUDAVisibleDevices_thenTheDevices() {
        let devices = { ["nvidia1", "nvidiactl", "nvidia0", "nvidia-uvm", "null", "nvidia10"] }
        #expect(
            TorchWorkload.visibleGPUs(jobEnvironment: [:], agentEnvironment: [:], devices: devices) == ["0", "1", "10"])
        #expect(TorchWorkload.visibleGPUs(jobEnvironment: [:], agentEnvironment: [:], devices: { ["null"] }).isEmpty)
        #expect(
            TorchWorkload.visibleGPUs(
                jobEnvironment: [:], agentEnvironment: ["CUDA_VISIBLE_DEVICES": "2,3"], devices: devices) == ["2", "3"])
        // The job's own setting wins over the agent's.
        #expect(
            TorchWorkload.visibleGPUs(
                jobEnvironment: ["CUDA_VISIBLE_DEVICES": "1"], agentEnvironment: ["CUDA_VISIBLE_DEVICES": "2,3"],
                devices: devices) == ["1"])
        // CUDA stops at the first entry it cannot use; "" and "-1" hide every GPU.
        for hidden in ["", "-1", "-1,0"] {
            #expect(
                TorchWorkload.visibleGPUs(
                    jobEnvironment: ["CUDA_VISIBLE_DEVICES": hidden], agentEnvironment: [:], devices: devices
                ).isEmpty,
                "CUDA_VISIBLE_DEVICES=\(hidden)")
        }
        #expect(
            TorchWorkload.visibleGPUs(
                jobEnvironment: ["CUDA_VISIBLE_DEVICES": "0, 2,,3"], agentEnvironment: [:], devices: devices) == [
                    "0", "2",
                ])
    }
}
