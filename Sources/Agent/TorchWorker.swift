import Foundation
import JobModel
import Logging
import Workload

#if canImport(Glibc)
    import Glibc
#endif

/// One PyTorch worker process: the user's script, started by the agent, connected over a Unix
/// socket in the agent's data directory, sharing one region of memory with the agent for the bulk
/// data (docs/worker-protocol.md). The worker lives as long as the job does on this agent, across
/// generations: a change of membership does not restart it.
final class TorchWorker {
    /// How to start the worker, from the job spec.
    struct Launch: Sendable {
        /// The interpreter (a path, or a name looked up on `PATH`).
        var python: String
        /// The user's script (absolute, or relative to the agent's working directory).
        var script: String
        var arguments: [String]
        var environment: [String: String]
        /// The job's name (for file names and the worker's environment).
        var job: String
        /// The agent's directory for its workers' sockets and logs (created 0700).
        var directory: String
        /// This worker's place among the node's workers, and how many there are.
        var index = 0
        var count = 1
        /// The one GPU this worker sees (its `CUDA_VISIBLE_DEVICES`), on a node with GPUs.
        var gpu: String?
        /// How long the worker has to start, import torch and say hello.
        var startTimeout: Duration = .seconds(120)
    }

    /// What the worker says first (docs/worker-protocol.md).
    struct Hello: Decodable {
        var type: String
        var token: String?
        var version: Int?
        var parameters: Int?
        var state: Int?
        var buckets: [[Int]]?
        var samples: Int?
        var torch: String?
        var device: String?
        var parameterSlots: Int?
        var tensors: [Tensor]?

        /// One tensor of the state, as the hello describes it.
        struct Tensor: Decodable {
            var name: String
            var dtype: String
            var shape: [Int]
            var offset: Int
            var bytes: Int
        }

        enum CodingKeys: String, CodingKey {
            case type, token, parameters, state, buckets, samples, torch, device, tensors
            case version = "protocol"
            case parameterSlots = "parameter_slots"
        }
    }

    /// Any later message from the worker.
    struct Reply: Decodable {
        var type: String
        var index: Int?
        var lossSum: Double?
        var accuracy: Double?
        var loss: Double?
        var message: String?
        /// With doorbells: the number of the event (`bucket`, `gradients`, `applied`) on the
        /// worker's counter.
        var event: UInt32?

        enum CodingKeys: String, CodingKey {
            case type, index, accuracy, loss, message, event
            case lossSum = "loss_sum"
        }
    }

    /// A request to the worker.
    struct Request: Encodable {
        var type: String
        var path: String?
        var bytes: Int?
        var step: UInt64?
        var samples: [Int]?
        var scale: Float?
        /// `result`: where the doorbells start in the region, the worker's line among them (its place
        /// among the node's workers), and how long it spins for `apply`.
        var bells: Int?
        var worker: Int?
        var spinMicroseconds: Int?
        /// `apply`: the value of the doorbell rung for it.
        var seq: UInt32?

        enum CodingKeys: String, CodingKey {
            case type, path, bytes, step, samples, scale, bells, worker, seq
            case spinMicroseconds = "spin_us"
        }
    }

    /// The worker protocol's version (docs/worker-protocol.md); 2 added the `result` region, 3 the
    /// doorbells.
    static let protocolVersion = 3

    let process: Process
    let channel: WorkerChannel
    let memory: SharedMemory
    let hello: Hello
    let logPath: String
    let logger: Logger
    var stopRequested = false
    /// With doorbells: how many of the worker's events the agent has taken, from its counter or
    /// from their messages. A message of an event taken already is a wake-up that crossed the
    /// agent's look at the counter: `receive` skips it.
    var eventsTaken: UInt32 = 0
    var stopped = false
    /// The trainable parameters, the state's size and the buckets, as the worker declared them.
    let parameterCount: Int
    let stateCount: Int
    let buckets: [Range<Int>]
    /// The state's first slots that hold the parameters (trainable or not).
    let parameterSlots: Int
    /// The state's tensors, as the worker described them.
    let tensors: [StateTensor]

    /// Starts the worker and waits for it to say hello and map the shared memory.
    init(_ launch: Launch, logger: Logger) throws {
        self.logger = logger
        try FileManager.default.createDirectory(
            atPath: launch.directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = chmod(launch.directory, 0o700)
        let safeJob = String(launch.job.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }.prefix(40))
        let nonce = (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let socketPath = "\(launch.directory)/\(safeJob)-\(nonce).sock"
        self.logPath = "\(launch.directory)/\(safeJob)\(launch.count > 1 ? "-\(launch.index)" : "").log"
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()

        let listener = try Self.listen(at: socketPath)
        defer {
            close(listener)
            unlink(socketPath)
        }
        guard
            FileManager.default.createFile(atPath: self.logPath, contents: nil, attributes: [.posixPermissions: 0o600]),
            let log = FileHandle(forWritingAtPath: self.logPath)
        else {
            throw WorkloadError(.workerFailed, "could not create the worker's log file \(self.logPath)")
        }
        // The script runs in its own directory, so a relative path is made absolute first (from the
        // agent's working directory), and a missing script is said as such, before Python says it.
        let script = URL(fileURLWithPath: launch.script).standardizedFileURL.path
        guard FileManager.default.isReadableFile(atPath: script) else {
            throw WorkloadError(
                .workerFailed,
                "the job's script \(script) does not exist on this node (or cannot be read); put it there or fix workload.script"
            )
        }
        var environment = launch.environment
        environment["RINGMASTER_WORKER_SOCKET"] = socketPath
        environment["RINGMASTER_WORKER_TOKEN"] = token
        environment["RINGMASTER_JOB"] = launch.job
        environment["RINGMASTER_LOCAL_RANK"] = "\(launch.index)"
        environment["RINGMASTER_LOCAL_WORKERS"] = "\(launch.count)"
        if let gpu = launch.gpu { environment["CUDA_VISIBLE_DEVICES"] = gpu }
        environment["PYTHONUNBUFFERED"] = "1"
        let process: Process
        do {
            process = try Self.run(
                [Self.interpreter(launch.python), script] + launch.arguments, environment: environment,
                directory: URL(fileURLWithPath: script).deletingLastPathComponent(), output: log)
        } catch {
            throw WorkloadError(
                .workerFailed, "could not start the worker `\(launch.python) \(launch.script)`: \(error)")
        }
        self.process = process
        let logPath = self.logPath
        let describe = { [process] in Self.describeExit(process, logPath: logPath) }
        let deadline = ContinuousClock.now + launch.startTimeout
        let connection: Int32
        do {
            connection = try Self.accept(listener, process: process, deadline: deadline, describe: describe)
        } catch {
            Self.end(process, grace: .seconds(2))
            throw error
        }
        self.channel = WorkerChannel(descriptor: connection, describeLoss: describe)
        do {
            let hello = try self.channel.receive(Hello.self, deadline: deadline, waitingFor: "the worker's hello")
            guard hello.type == "hello", let sent = hello.token,
                Bool(
                    Array(sent.utf8).withUnsafeBytes { a in
                        Array(token.utf8).withUnsafeBytes { b in a.count == b.count && safeCompare(a, b) }
                    })
            else {
                throw WorkloadError(
                    .workerFailed, "the process on the worker socket did not prove it is the worker the agent started")
            }
            guard hello.version == Self.protocolVersion else {
                throw WorkloadError(
                    .workerFailed,
                    "the worker speaks protocol \(hello.version.map(String.init) ?? "none"), the agent \(Self.protocolVersion): install the ringmaster Python package of this release (pip install ./python)"
                )
            }
            guard let parameters = hello.parameters, parameters > 0, let state = hello.state, state >= parameters,
                let buckets = hello.buckets, !buckets.isEmpty
            else {
                throw WorkloadError(.workerFailed, "the worker's hello lacks its parameters, state or buckets")
            }
            var next = 0
            var ranges: [Range<Int>] = []
            for bucket in buckets {
                guard bucket.count == 2, bucket[0] == next, bucket[1] > bucket[0] else {
                    throw WorkloadError(
                        .workerFailed, "the worker's buckets do not partition its \(parameters) parameters in order")
                }
                ranges.append(bucket[0]..<bucket[1])
                next = bucket[1]
            }
            guard next == parameters else {
                throw WorkloadError(
                    .workerFailed, "the worker's buckets cover \(next) of its \(parameters) parameters")
            }
            self.hello = hello
            self.parameterCount = parameters
            self.stateCount = state
            self.buckets = ranges
            self.parameterSlots = min(state, max(parameters, hello.parameterSlots ?? parameters))
            self.tensors = (hello.tensors ?? []).map {
                StateTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape, offsetBytes: $0.offset, bytes: $0.bytes)
            }
            var end = 0
            for tensor in self.tensors {
                guard tensor.offsetBytes >= end, tensor.bytes >= 0, tensor.offsetBytes + tensor.bytes <= state * 4
                else {
                    throw WorkloadError(
                        .workerFailed,
                        "the worker's tensor table does not fit its \(state * 4)-byte state at \(tensor.name)")
                }
                end = tensor.offsetBytes + tensor.bytes
            }
            self.memory = try SharedMemory(floats: parameters + state)
            try self.channel.send(
                Request(type: "memory", path: self.memory.path, bytes: self.memory.bytes), deadline: deadline)
            let ready = try self.channel.receive(Reply.self, deadline: deadline, waitingFor: "the worker to map memory")
            self.memory.unlink()
            guard ready.type == "ready" else {
                throw WorkloadError(
                    .workerFailed, "the worker answered `\(ready.type)` to the shared memory: \(ready.message ?? "")")
            }
        } catch {
            Self.end(process, grace: .seconds(2))
            throw error
        }
        logger.info(
            "worker started",
            metadata: [
                "job": "\(launch.job)", "worker": "\(launch.index)", "pid": "\(process.processIdentifier)",
                "parameters": "\(self.parameterCount)",
                "state": "\(self.stateCount)", "buckets": "\(self.buckets.count)",
                "torch": "\(self.hello.torch ?? "?")", "device": "\(self.hello.device ?? "?")", "log": "\(logPath)",
            ]
        )
    }

    deinit {
        self.stop()
    }

    /// Asks the worker to end (`stop`), then ends it if it does not within a few seconds.
    func stop() {
        self.requestStop()
        self.finishStop()
    }

    /// Sends `stop` (once), without waiting: the node's workers are asked together, then waited for.
    func requestStop() {
        guard !self.stopRequested else { return }
        self.stopRequested = true
        if self.process.isRunning {
            try? self.channel.send(Request(type: "stop"), deadline: .now + .seconds(1))
        }
    }

    /// Waits a few seconds for the worker asked to stop to exit, then ends it.
    func finishStop() {
        self.requestStop()
        guard !self.stopped else { return }
        self.stopped = true
        if self.process.isRunning {
            Self.end(self.process, grace: .seconds(5))
        }
        self.logger.info(
            "worker stopped",
            metadata: [
                "pid": "\(self.process.processIdentifier)",
                "status":
                    "\(self.process.isRunning ? "running" : "\(self.process.terminationReason == .uncaughtSignal ? "signal " : "")\(self.process.terminationStatus)")",
            ])
    }

    /// Sends `request` and waits for the reply of type `expected`.
    @discardableResult
    func call(_ request: Request, expecting expected: String, timeout: Duration) throws -> Reply {
        let deadline = ContinuousClock.now + timeout
        try self.channel.send(request, deadline: deadline)
        return try self.expect(expected, deadline: deadline, after: request.type)
    }

    /// The next reply that is not the message of an event taken from the doorbell already; nil
    /// when none came by `quiet` (the caller looks at the doorbell again), an error at `deadline`.
    func receive(
        deadline: ContinuousClock.Instant, quiet: ContinuousClock.Instant? = nil, waitingFor what: String
    ) throws -> Reply? {
        while true {
            guard
                let reply = try self.channel.receive(
                    Reply.self, deadline: deadline, quiet: quiet ?? deadline, waitingFor: what)
            else { return nil }
            guard let event = reply.event else { return reply }
            let ahead = Int32(bitPattern: event &- self.eventsTaken)
            if ahead <= 0 { continue }
            guard ahead == 1 else {
                throw WorkloadError(
                    .workerFailed,
                    "the worker sent event \(event) after event \(self.eventsTaken); the agent and the worker's ringmaster package do not speak the same protocol"
                )
            }
            self.eventsTaken = event
            return reply
        }
    }

    /// The next reply (see `receive(deadline:quiet:waitingFor:)`), waiting for it until `deadline`.
    func receive(deadline: ContinuousClock.Instant, waitingFor what: String) throws -> Reply {
        while true {
            if let reply = try self.receive(deadline: deadline, quiet: nil, waitingFor: what) { return reply }
        }
    }

    /// The next reply, which must be of type `expected`.
    func expect(_ expected: String, deadline: ContinuousClock.Instant, after request: String) throws -> Reply {
        let reply = try self.receive(deadline: deadline, waitingFor: "the worker's answer to `\(request)`")
        guard reply.type == expected else {
            if reply.type == "error" {
                throw self.failure("the worker refused `\(request)`: \(reply.message ?? "")")
            }
            throw WorkloadError(.workerFailed, "the worker answered `\(reply.type)` to `\(request)`")
        }
        return reply
    }

    /// A failure the worker reported: with how it ended, if it did, and its last lines, which
    /// hold the script's own traceback.
    func failure(_ what: String) -> WorkloadError {
        // A script that raised is printing its traceback and tearing torch down: give it a moment.
        _ = Self.waitForExit(self.process, until: .now + .seconds(3))
        return WorkloadError(.workerFailed, "\(what); \(Self.describeExit(self.process, logPath: self.logPath))")
    }

    // MARK: - Process

    /// The interpreter as the worker is started with it: the worker runs in its script's
    /// directory, so a relative path is made absolute first, from the agent's working directory; a
    /// bare name is looked up on PATH, as given.
    static func interpreter(_ python: String) -> String {
        python.contains("/") ? URL(fileURLWithPath: python).standardizedFileURL.path : python
    }

    /// Starts `arguments` through /usr/bin/env (which looks a bare interpreter name up on PATH),
    /// with the agent's environment plus `environment`, standard output and error into `output`
    /// (closed here once the child has it), standard input empty.
    static func run(
        _ arguments: [String], environment: [String: String], directory: URL?, output: FileHandle
    ) throws -> Process {
        defer { try? output.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if let directory { process.currentDirectoryURL = directory }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return process
    }

    static func listen(at path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw WorkloadError(.workerFailed, "could not make a Unix socket: \(errnoText())") }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw WorkloadError(
                .workerFailed,
                "the worker socket's path \(path) is too long for a Unix socket; give the agent a shorter data directory"
            )
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, Glibc.listen(fd, 1) == 0 else {
            let text = errnoText()
            close(fd)
            throw WorkloadError(.workerFailed, "could not listen on the worker socket \(path): \(text)")
        }
        _ = chmod(path, 0o600)
        return fd
    }

    /// Accepts the worker's connection, failing at once when the process exits first.
    static func accept(
        _ listener: Int32, process: Process, deadline: ContinuousClock.Instant, describe: () -> String
    ) throws -> Int32 {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                return fd
            }
            guard errno == EAGAIN || errno == EINTR else {
                throw WorkloadError(.workerFailed, "could not accept the worker's connection: \(errnoText())")
            }
            guard process.isRunning else {
                throw WorkloadError(.workerFailed, "the worker exited before it connected: \(describe())")
            }
            guard ContinuousClock.now < deadline else {
                throw WorkloadError(
                    .workerFailed,
                    "the worker did not connect to the agent in time (does the script call ringmaster.torch.init?): \(describe())"
                )
            }
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, 100)
        }
    }

    /// Ends `process`: waits `grace` for it to exit, then SIGTERM, then SIGKILL.
    static func end(_ process: Process, grace: Duration) {
        let deadline = ContinuousClock.now + grace
        if Self.waitForExit(process, until: deadline) { return }
        process.terminate()
        if Self.waitForExit(process, until: .now + .seconds(2)) { return }
        kill(process.processIdentifier, SIGKILL)
        _ = Self.waitForExit(process, until: .now + .seconds(5))
    }

    /// Whether the process exited by `deadline`.
    static func waitForExit(_ process: Process, until deadline: ContinuousClock.Instant) -> Bool {
        // `Process` reaps its child on a thread of its own; `isRunning` turns false then.
        while process.isRunning {
            guard ContinuousClock.now < deadline else { return false }
            var descriptor = pollfd(fd: -1, events: 0, revents: 0)
            _ = poll(&descriptor, 0, 20)
        }
        return true
    }

    /// How the worker ended (or that it is still running), with the last lines of its log.
    static func describeExit(_ process: Process, logPath: String) -> String {
        _ = Self.waitForExit(process, until: .now + .milliseconds(500))
        let status: String
        if process.isRunning {
            status = "it is still running"
        } else if process.terminationReason == .uncaughtSignal {
            status = "it was killed by signal \(process.terminationStatus)"
        } else {
            status = "it exited with status \(process.terminationStatus)"
        }
        // The last line first (a Python traceback ends with the exception), then a few before it:
        // the coordinator keeps the first 500 characters of a reason.
        let tail = Self.lastLines(of: logPath, count: 6)
        guard let last = tail.last else { return status }
        let before = tail.dropLast()
        return before.isEmpty
            ? "\(status); its last line: \(last)"
            : "\(status); its last line: \(last); before it: \(before.joined(separator: " | "))"
    }

    /// The last `count` lines of a file (at most its last 8 KiB).
    static func lastLines(of path: String, count: Int) -> [String] {
        guard let handle = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? handle.close() }
        let end = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: end > 8192 ? end - 8192 : 0)
        let data = (try? handle.readToEnd()) ?? Data()
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
        return Array(lines.suffix(count))
    }
}

/// Whether two byte strings of equal length are equal, in time that does not depend on where they
/// differ (the worker's token is a secret).
func safeCompare(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    var difference: UInt8 = 0
    for index in 0..<a.count { difference |= a[index] ^ b[index] }
    return difference == 0
}

func errnoText() -> String { String(cString: strerror(errno)) }

/// A region of memory the agent shares with its worker: a file under /dev/shm (mode 0600, a
/// random name), mapped by both, unlinked once the worker has mapped it.
final class SharedMemory {
    let path: String
    let bytes: Int
    let base: UnsafeMutableRawPointer
    var linked = true

    init(floats: Int) throws {
        let name = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        self.path = "/dev/shm/ringmaster-\(name)"
        self.bytes = max(4, floats * MemoryLayout<Float>.size)
        let fd = open(self.path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw WorkloadError(.workerFailed, "could not create shared memory at \(self.path): \(errnoText())")
        }
        defer { close(fd) }
        guard ftruncate(fd, off_t(self.bytes)) == 0 else {
            let text = errnoText()
            Glibc.unlink(self.path)
            throw WorkloadError(
                .workerFailed, "could not size \(self.bytes) bytes of shared memory (is /dev/shm full?): \(text)")
        }
        guard let base = mmap(nil, self.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            let text = errnoText()
            Glibc.unlink(self.path)
            throw WorkloadError(.workerFailed, "could not map shared memory: \(text)")
        }
        self.base = base
    }

    deinit {
        self.unlink()
        munmap(self.base, self.bytes)
    }

    func unlink() {
        guard self.linked else { return }
        self.linked = false
        Glibc.unlink(self.path)
    }

    /// The floats from slot `offset` on.
    func floats(at offset: Int, count: Int) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: self.base.assumingMemoryBound(to: Float.self) + offset, count: count)
    }
}
