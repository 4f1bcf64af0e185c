import Checkpointing
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("A full disk")
struct DiskFullTests {
    @Test func test_shardLargerThanTheFreeSpace_throwsNoSpace_leavesNoFile_andKeepsThePreviousCheckpoint() throws {
        let directory = try TestDirectory()
        let mountPoint = directory.path
        // A 1 MiB tmpfs: needs root (CAP_SYS_ADMIN). Without it this test fails loudly instead of passing.
        guard mount("tmpfs", mountPoint, "tmpfs", 0, "size=1m") == 0 else {
            let code = errno
            Issue.record(
                "could not mount a 1 MiB tmpfs on \(mountPoint) (\(String(cString: strerror(code)))): the disk-full test needs root; it did not run"
            )
            return
        }
        defer {
            if umount(mountPoint) != 0 { _ = umount2(mountPoint, Int32(MNT_DETACH)) }
        }
        let root = "\(mountPoint)/ckpt"
        let small = scrambledState(count: 10_000, seed: 1)
        try writeCheckpoint(root: root, step: 100, world: 2, state: small)

        let big = scrambledState(count: 512 * 1024, seed: 2)  // 2 MiB, twice the file system.
        let error = expectCheckpointError {
            _ = try big.withUnsafeBufferPointer {
                try CheckpointWriter.writeShard(
                    root: root, step: 200, rank: 0, worldSize: 1, firstElement: 0, elements: $0)
            }
        }
        #expect(error?.code == .noSpace, "\(error?.description ?? "no error")")
        #expect(error?.systemError == ENOSPC)
        let message = error?.message ?? ""
        #expect(
            message.contains("\(root)/step-000000000200/.shard-00000-of-00001.bin.tmp-"), "names the path: \(message)")
        #expect(message.contains("No space left on device"), "\(message)")
        #expect(message.contains("the disk is full"), "\(message)")

        #expect(
            names(in: CheckpointLayout.stepDirectory(root: root, step: 200)).isEmpty,
            "no temporary and no final file remain")
        let latest = try CheckpointReader.loadLatest(root: root)
        #expect(latest.manifest.step == 100)
        #expect(bits(latest.state) == bits(small))
    }
}
