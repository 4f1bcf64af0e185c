import Collectives
import Foundation
import LocalCluster
import Synchronization
import Verbs

#if canImport(Glibc)
    import Glibc
#endif

/// All-reduce over real loopback TCP between separate processes (or, with the in-process
/// transport, between threads of one process), reported as nccl-tests does: per size, after a
/// warm-up, at least 20 iterations and 1 s; p50 and p99 latency (per iteration, the slowest
/// rank), algbw = bytes / time and busbw = algbw x 2(n-1)/n in 10^9 B/s, and CPU time per
/// operation summed over the ranks. The same run measures a ceiling (over TCP: one loopback
/// stream, 4 MiB writes; in process: one thread's memory copy) and prints each busbw as a
/// fraction of it.
public enum AllReduceBenchmark {
    /// One size's figures.
    public struct Row: Sendable, Codable {
        public var bytes: Int
        public var iterations: Int
        public var p50Microseconds: Double
        public var p99Microseconds: Double
        public var algorithmGBps: Double
        public var busGBps: Double
        public var cpuMicrosecondsPerOperation: Double
        public var algorithm: String
    }

    /// What every rank measures, the same on all of them.
    public struct Settings: Sendable {
        /// Message sizes in bytes.
        public var sizes: [Int]
        /// The element type (a size's element count is its bytes over the type's size).
        public var type: DataType = .float32
        /// The all-reduce algorithm.
        public var algorithm: Communicator.Algorithm = .automatic
        /// Overrides `Communicator.ringChunkBytes` when set.
        public var ringChunkBytes: Int?
        /// Over RDMA verbs (set up through the TCP connections) instead of TCP.
        public var rdma = false

        public init(
            sizes: [Int], type: DataType = .float32, algorithm: Communicator.Algorithm = .automatic,
            ringChunkBytes: Int? = nil, rdma: Bool = false
        ) {
            self.sizes = sizes
            self.type = type
            self.algorithm = algorithm
            self.ringChunkBytes = ringChunkBytes
            self.rdma = rdma
        }

        /// The worker's command-line arguments for these settings.
        var arguments: [String] {
            var arguments = [
                "--sizes", self.sizes.map(String.init).joined(separator: ","), "--algorithm", self.algorithm.rawValue,
                "--type", self.type.rawValue,
            ]
            if let chunk = self.ringChunkBytes { arguments += ["--ring-chunk", "\(chunk)"] }
            if self.rdma { arguments += ["--transport", "rdma"] }
            return arguments
        }
    }

    /// Parses `4K,64K,1M,16M,64M` (binary multiples).
    public static func parseSizes(_ text: String) throws -> [Int] {
        try text.split(separator: ",").map { part in
            let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
            let trimmed = part.trimmingCharacters(in: .whitespaces).uppercased()
            if let unit = trimmed.last, let scale = units[unit], let value = Int(trimmed.dropLast()) {
                return value * scale
            }
            if let value = Int(trimmed) { return value }
            throw BenchmarkError("\"\(part)\" is not a size: use bytes or K, M, G, e.g. 4K,64K,1M")
        }
    }

    // MARK: - Parent

    /// Starts `ranks` worker processes of `executable`, connected over loopback TCP, and collects
    /// rank 0's rows.
    public static func run(
        executable: String,
        ranks: Int,
        settings: Settings,
        progress: (String) -> Void
    ) async throws -> [Row] {
        let sizes = settings.sizes
        var workers: [ChildProcess] = []
        defer { for worker in workers { worker.signal(SIGKILL) } }
        let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        for rank in 0..<ranks {
            workers.append(
                try ChildProcess(
                    name: "rank \(rank)",
                    executable: executable,
                    arguments: ["bench", "allreduce-worker", "--rank", "\(rank)", "--world", "\(ranks)"]
                        + settings.arguments,
                    environment: ["RINGMASTER_BENCH_SECRET": secret],
                    standardInput: true
                )
            )
        }
        var ports: [String] = []
        for worker in workers {
            let line = try await worker.standardOutput.waitForLine(within: 30, "its data port") {
                $0.hasPrefix("port ")
            }
            ports.append("127.0.0.1:" + line.dropFirst(5))
        }
        for worker in workers { worker.send(line: ports.joined(separator: ",")) }
        var rows: [Row] = []
        for (index, size) in sizes.enumerated() {
            let line = try await workers[0].standardOutput.waitForLine(
                within: 600, "the result for \(size) bytes", occurrence: index + 1
            ) {
                $0.hasPrefix("{")
            }
            let row = try JSONDecoder().decode(Row.self, from: Data(line.utf8))
            rows.append(row)
            progress(Self.format(row, ceiling: nil))
        }
        for worker in workers {
            let status = try await worker.waitForExit(within: 30)
            guard status == 0 else {
                throw BenchmarkError("\(worker.name) exited \(status): \(worker.output.lines.suffix(3))")
            }
        }
        return rows
    }

    static func format(_ row: Row, ceiling: Double?) -> String {
        let fraction = ceiling.map { String(format: "  %5.1f%% of ceiling", 100 * row.busGBps / $0) } ?? ""
        return String(
            format: "%10d B  %6d it  p50 %9.1f us  p99 %9.1f us  algbw %6.3f  busbw %6.3f GB/s  cpu %8.1f us/op  %@%@",
            row.bytes, row.iterations, row.p50Microseconds, row.p99Microseconds, row.algorithmGBps, row.busGBps,
            row.cpuMicrosecondsPerOperation, row.algorithm, fraction
        )
    }

    /// Loopback TCP ceiling: one stream from a writer thread to this thread, 4 MiB writes, for
    /// about a second. Returns 10^9 B/s.
    public static func loopbackCeiling() throws -> Double {
        let listenFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(listenFD) }
        var bindAddress = sockaddr_in()
        bindAddress.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &bindAddress.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &bindAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listenFD, $0, length) == 0 && listen(listenFD, 1) == 0 && getsockname(listenFD, $0, &length) == 0
            }
        }
        guard bound else { throw BenchmarkError("could not listen on loopback for the ceiling test") }
        let listener = (fd: listenFD, port: Int(UInt16(bigEndian: bindAddress.sin_port)))
        let chunk = 4 << 20
        let total = 2 << 30
        let writer = Thread {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(listener.port).bigEndian)
            inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
            buffer.initializeMemory(as: UInt8.self, repeating: 1)
            var sent = 0
            while sent < total {
                let count = Glibc.send(fd, buffer.baseAddress!, chunk, Int32(MSG_NOSIGNAL))
                if count <= 0 { break }
                sent += count
            }
            buffer.deallocate()
            Glibc.close(fd)
        }
        writer.start()
        let fd = accept(listener.fd, nil, nil)
        defer { Glibc.close(fd) }
        var size: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        let start = ContinuousClock.now
        var received = 0
        while received < total {
            let count = recv(fd, buffer.baseAddress!, chunk, 0)
            if count <= 0 { break }
            received += count
        }
        let seconds =
            Double((ContinuousClock.now - start).components.attoseconds) / 1e18
            + Double((ContinuousClock.now - start).components.seconds)
        return Double(received) / seconds / 1e9
    }

    // MARK: - Worker

    /// Runs `ranks` ranks as threads of this process over the in-process transport (no
    /// sockets: the algorithms, the reduction and the copies alone) and returns rank 0's rows.
    /// CPU time is each rank thread's own.
    public static func runInProcess(ranks: Int, settings: Settings, progress: @escaping @Sendable (String) -> Void)
        throws -> [Row]
    {
        let fabric = InProcessFabric(worldSize: ranks)
        let results = Mutex<(rows: [Row], errors: [String], finished: Int)>(([], [], 0))
        let done = DispatchSemaphore(value: 0)
        for rank in 0..<ranks {
            let thread = Thread {
                let communicator = Communicator(transport: fabric.transport(rank: rank))
                do {
                    try Self.measure(communicator, settings: settings, cpuSeconds: { Self.cpuSeconds(thread: true) }) {
                        row in
                        results.withLock { $0.rows.append(row) }
                        progress(Self.format(row, ceiling: nil))
                    }
                } catch {
                    // One failed rank fails the others' waits at once instead of at their deadline.
                    fabric.abortAll(reason: "rank \(rank) failed: \(error)")
                    results.withLock { $0.errors.append("rank \(rank): \(error)") }
                }
                done.signal()
            }
            thread.name = "ringmaster-bench-rank-\(rank)"
            thread.start()
        }
        // Every wait inside has a deadline (30 s per operation), so this one is a backstop.
        for _ in 0..<ranks {
            guard done.wait(timeout: .now() + 900) == .success else {
                fabric.abortAll(reason: "the benchmark ran past 15 minutes")
                throw BenchmarkError("the in-process ranks did not finish within 15 minutes")
            }
        }
        let outcome = results.withLock { $0 }
        if let first = outcome.errors.first { throw BenchmarkError(first) }
        return outcome.rows
    }

    /// One memory-to-memory copy stream on one thread, 64 MiB at a time, for about half a
    /// second: the in-process transport's ceiling. Returns 10^9 B/s.
    public static func copyCeiling() -> Double {
        ReductionBenchmark.withBuffers(bytes: 64 << 20) { source, destination in
            ReductionBenchmark.copyRate(source, destination, seconds: 0.5)
        }
    }

    /// One rank of the TCP benchmark: listens, reports its port, reads every rank's address,
    /// connects, and measures each size; rank 0 prints one JSON row per size.
    public static func worker(rank: Int, world: Int, settings: Settings, secret: [UInt8]) throws {
        let listener = try DataPlaneListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        FileHandle.standardOutput.write(Data("port \(listener.port)\n".utf8))
        guard let line = readLine() else { throw BenchmarkError("no address list on standard input") }
        let addresses = line.split(separator: ",").map(String.init)
        let tcp = try TCPTransport.establish(
            rank: rank, addresses: addresses, generation: 1, secret: secret, listener: listener)
        let transport: any Transport = settings.rdma ? try RDMATransport.establish(over: tcp) : tcp
        defer { transport.close() }
        let communicator = Communicator(transport: transport)
        do {
            try Self.measure(
                communicator,
                settings: settings,
                cpuSeconds: { Self.cpuSeconds(thread: false) },
                emit: { row in
                    FileHandle.standardOutput.write((try? JSONEncoder().encode(row)) ?? Data())
                    FileHandle.standardOutput.write(Data("\n".utf8))
                }
            )
        } catch {
            // Whatever failed, every verbs resource is released (the RDMA failure tests read this).
            transport.close()
            if settings.rdma {
                let live = VerbsResources.live
                FileHandle.standardError.write(
                    Data("verbs resources open after closing: \(live.isEmpty ? "none" : "\(live)")\n".utf8))
            }
            throw error
        }
    }

    /// Measures every size on one rank; on rank 0, `emit` gets each size's row. `cpuSeconds`
    /// reads this rank's CPU time so far.
    static func measure(_ communicator: Communicator, settings: Settings, cpuSeconds: () -> Double, emit: (Row) -> Void)
        throws
    {
        communicator.algorithm = settings.algorithm
        if let chunk = settings.ringChunkBytes { communicator.ringChunkBytes = chunk }
        let world = communicator.worldSize
        let rank = communicator.rank
        let type = settings.type
        for size in settings.sizes {
            let count = size / type.size
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 4), alignment: 64)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            // Warm up, and let rank 0 pick the iteration count (>= 20 and >= 1 s) for everyone.
            let warmStart = ContinuousClock.now
            for _ in 0..<5 { try communicator.allReduce(buffer, count: count, type: type) }
            let perIteration = Self.seconds(ContinuousClock.now - warmStart) / 5
            var iterations = max(20, Int((1.0 / max(perIteration, 1e-7)).rounded(.up)))
            iterations = min(iterations, 100_000)
            try withUnsafeMutableBytes(of: &iterations) { try communicator.broadcast($0, root: 0) }
            try communicator.barrier()
            var times = [Double](repeating: 0, count: iterations)
            let cpuBefore = cpuSeconds()
            for iteration in 0..<iterations {
                let start = ContinuousClock.now
                try communicator.allReduce(buffer, count: count, type: type)
                times[iteration] = Self.seconds(ContinuousClock.now - start)
            }
            let cpu = cpuSeconds() - cpuBefore
            // Every rank's times and CPU, so the row reports the slowest rank per iteration.
            var all = [Double](repeating: 0, count: iterations * world)
            try times.withUnsafeBytes { source in
                try all.withUnsafeMutableBytes { try communicator.allGather(source, into: $0, timeout: .seconds(60)) }
            }
            var cpuTotal = [Double](repeating: 0, count: world)
            var mine = cpu
            try withUnsafeBytes(of: &mine) { source in
                try cpuTotal.withUnsafeMutableBytes { try communicator.allGather(source, into: $0) }
            }
            if rank == 0 {
                let slowest = (0..<iterations).map { iteration in
                    (0..<world).map { all[$0 * iterations + iteration] }.max()!
                }.sorted()
                let p50 = slowest[slowest.count / 2]
                let p99 = slowest[min(slowest.count - 1, Int(Double(slowest.count) * 0.99))]
                let algbw = Double(size) / p50 / 1e9
                emit(
                    Row(
                        bytes: size,
                        iterations: iterations,
                        p50Microseconds: p50 * 1e6,
                        p99Microseconds: p99 * 1e6,
                        algorithmGBps: algbw,
                        busGBps: algbw * 2 * Double(world - 1) / Double(world),
                        cpuMicrosecondsPerOperation: cpuTotal.reduce(0, +) / Double(iterations) * 1e6,
                        algorithm: communicator.algorithm == .automatic
                            ? (size > communicator.smallMessageBytes ? "ring" : "recursive-doubling")
                            : communicator.algorithm.rawValue
                    )
                )
            }
        }
        try communicator.barrier()
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// User and system CPU seconds of this process, or of the calling thread alone.
    static func cpuSeconds(thread: Bool) -> Double {
        var usage = rusage()
        // RUSAGE_THREAD (1, Linux) is not imported from Glibc's headers.
        getrusage(thread ? __rusage_who_t(1) : RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(
            usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}
