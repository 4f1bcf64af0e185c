import ControlPlane
import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#endif

/// A child process whose output is captured line by line (standard output and standard error
/// into one `LineLog`), so that a caller can wait for a line with a deadline instead of sleeping,
/// and read everything it printed afterwards.
///
/// Used by `ringmaster demo`, the integration tests and the benchmarks to run coordinators and
/// agents as real processes.
public final class ChildProcess: Sendable {
    /// A short name for messages (e.g. "coordinator", "agent-1").
    public let name: String
    /// Everything the process printed, both streams, in arrival order.
    public let output: LineLog
    /// Lines printed on standard output only (results, not logs).
    public let standardOutput: LineLog
    let process: Process
    let input: FileHandle?
    let partial = NIOLockedValueBox<[Bool: Data]>([:])
    let exit = NIOLockedValueBox(ExitState())

    /// The process has ended only when it exited and both pipes reached end of file, so that its
    /// output is complete when `waitForExit` returns.
    struct ExitState {
        var status: Int32?
        var pipesAtEOF = 0
        var complete: Bool { self.status != nil && self.pipesAtEOF == 2 }
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    /// Starts `executable` with `arguments` and extra `environment` entries; with `standardInput`,
    /// its standard input is a pipe that `send(line:)` writes to (otherwise it reads nothing).
    public init(
        name: String,
        executable: String,
        arguments: [String],
        environment: [String: String] = [:],
        standardInput: Bool = false
    ) throws {
        self.name = name
        self.output = LineLog(name: name)
        self.standardOutput = LineLog(name: "\(name) standard output")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        let err = Pipe()
        // Close-on-exec for our ends, so that a process another thread spawns meanwhile does not
        // inherit them (an inherited write end would hold the pipe open after this child exits).
        for handle in [
            out.fileHandleForReading, out.fileHandleForWriting, err.fileHandleForReading, err.fileHandleForWriting,
        ] {
            _ = fcntl(handle.fileDescriptor, F_SETFD, FD_CLOEXEC)
        }
        process.standardOutput = out
        process.standardError = err
        if standardInput {
            let pipe = Pipe()
            _ = fcntl(pipe.fileHandleForReading.fileDescriptor, F_SETFD, FD_CLOEXEC)
            _ = fcntl(pipe.fileHandleForWriting.fileDescriptor, F_SETFD, FD_CLOEXEC)
            process.standardInput = pipe
            self.input = pipe.fileHandleForWriting
        } else {
            process.standardInput = FileHandle.nullDevice
            self.input = nil
        }
        self.process = process
        // Each pipe is read by a thread of its own with blocking reads, not by a readability
        // handler: those are dispatch sources, and a FileHandle closed while its source is still
        // registered can crash libdispatch's event loop. The thread keeps its pipe alive until EOF.
        for (pipe, isStdout) in [(out, true), (err, false)] {
            let reader = Thread { [weak self] in
                let fd = pipe.fileHandleForReading.fileDescriptor
                var buffer = [UInt8](repeating: 0, count: 64 * 1024)
                while true {
                    let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    self?.consume(Data(buffer[0..<count]), isStdout: isStdout)
                }
                self?.consume(Data(), isStdout: isStdout)
                withExtendedLifetime(pipe) {}
            }
            reader.name = "ringmaster-child-output"
            reader.start()
        }
        process.terminationHandler = { [weak self] process in
            self?.finished(status: process.terminationStatus)
        }
        try process.run()
    }

    /// The process id.
    public var pid: Int32 { self.process.processIdentifier }

    /// Writes one line to the process's standard input (started with `standardInput: true`).
    public func send(line: String) {
        self.input?.write(Data((line + "\n").utf8))
    }

    /// Waits for a line of output (either stream) that satisfies `predicate`; see `LineLog`.
    @discardableResult
    public func waitForLine(
        within seconds: Double,
        _ what: String,
        occurrence: Int = 1,
        where predicate: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        try await self.output.waitForLine(within: seconds, what, occurrence: occurrence, where: predicate)
    }

    /// Sends `signal` (e.g. SIGTERM, SIGKILL) to the process.
    public func signal(_ signal: Int32) {
        if self.process.isRunning { kill(self.process.processIdentifier, signal) }
    }

    /// Waits for the process to exit and returns its status (the signal number if killed).
    public func waitForExit(within seconds: Double) async throws -> Int32 {
        try await withDeadline(seconds: seconds, waitingFor: "\(self.name) to exit") {
            await withCheckedContinuation { continuation in
                let status: Int32? = self.exit.withLockedValue { exit in
                    if !exit.complete { exit.waiters.append(continuation) }
                    return exit.complete ? exit.status : nil
                }
                if let status { continuation.resume(returning: status) }
            }
        }
    }

    /// Whether the process has exited (and its output is complete).
    public var hasExited: Bool { self.exit.withLockedValue { $0.complete } }

    /// SIGTERM, then SIGKILL if it has not exited within `grace` seconds; returns the status.
    @discardableResult
    public func stop(grace: Double = 10) async -> Int32? {
        self.signal(SIGTERM)
        if let status = try? await self.waitForExit(within: grace) { return status }
        self.signal(SIGKILL)
        return try? await self.waitForExit(within: 10)
    }

    // MARK: - Plumbing

    func consume(_ data: Data, isStdout: Bool) {
        let lines: [String] = self.partial.withLockedValue { partial in
            var buffer = partial[isStdout, default: Data()]
            buffer.append(data)
            var lines: [String] = []
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                lines.append(String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self))
                buffer = Data(buffer[buffer.index(after: newline)...])
            }
            if data.isEmpty && !buffer.isEmpty {
                lines.append(String(decoding: buffer, as: UTF8.self))
                buffer = Data()
            }
            partial[isStdout] = buffer
            return lines
        }
        for line in lines {
            self.output.append(line)
            if isStdout { self.standardOutput.append(line) }
        }
        if data.isEmpty {
            self.update { $0.pipesAtEOF += 1 }
        }
    }

    func finished(status: Int32) {
        self.update { $0.status = status }
        // Should another process still hold a write end of the pipes, the output cannot end by
        // itself: give it a second to drain, then count the process as ended anyway.
        Task { [weak self] in
            try? await Task.sleep(for: .seconds(1))
            self?.update { $0.pipesAtEOF = max($0.pipesAtEOF, 2) }
        }
    }

    func update(_ change: (inout ExitState) -> Void) {
        let (waiters, status): ([CheckedContinuation<Int32, Never>], Int32?) = self.exit.withLockedValue { exit in
            let wasComplete = exit.complete
            change(&exit)
            guard exit.complete && !wasComplete else { return ([], nil) }
            defer { exit.waiters = [] }
            return (exit.waiters, exit.status)
        }
        guard let status else { return }
        let reason = ChildProcessError.exited(name: self.name, status: status)
        self.output.close(reason: reason)
        self.standardOutput.close(reason: reason)
        for waiter in waiters { waiter.resume(returning: status) }
    }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
    }
}

/// A child process ended before what was waited for happened.
public enum ChildProcessError: Error, Sendable, CustomStringConvertible {
    /// The process exited with `status`.
    case exited(name: String, status: Int32)

    public var description: String {
        switch self {
        case .exited(let name, let status):
            return "\(name) exited with status \(status)"
        }
    }
}
