import ControlPlane
import Foundation
import NIOConcurrencyHelpers

/// A child process whose output is captured line by line, so that a caller can wait for a line
/// (with a deadline) instead of sleeping, and read everything it printed afterwards.
///
/// Used by `ringmaster demo`, the integration tests and the benchmarks to run coordinators and
/// agents as real processes.
public final class ChildProcess: Sendable {
    /// A short name for messages (e.g. "coordinator", "agent-1").
    public let name: String
    let process: Process
    let state = NIOLockedValueBox(Captured())
    let exited = NIOLockedValueBox<[CheckedContinuation<Int32, Never>]>([])

    struct Captured {
        var stdout: [String] = []
        var stderr: [String] = []
        var partial: [Bool: Data] = [:]
        var waiters: [(id: UUID, predicate: @Sendable (String) -> Bool, continuation: CheckedContinuation<String, any Error>)] = []
        var exitStatus: Int32?
    }

    /// Starts `executable` with `arguments` and extra `environment` entries.
    public init(name: String, executable: String, arguments: [String], environment: [String: String] = [:]) throws {
        self.name = name
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        self.process = process
        for (pipe, isStdout) in [(out, true), (err, false)] {
            pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                if data.isEmpty {
                    handle.readabilityHandler = nil
                }
                self?.consume(data, isStdout: isStdout)
            }
        }
        process.terminationHandler = { [weak self] process in
            self?.finished(status: process.terminationStatus)
        }
        try process.run()
    }

    /// The process id.
    public var pid: Int32 { self.process.processIdentifier }

    /// Lines printed on standard output so far.
    public var standardOutput: [String] { self.state.withLockedValue { $0.stdout } }

    /// Lines printed on standard error so far (logs).
    public var standardError: [String] { self.state.withLockedValue { $0.stderr } }

    /// Everything printed so far, both streams.
    public var allOutput: [String] { self.state.withLockedValue { $0.stdout + $0.stderr } }

    /// Waits until a line (on either stream, already printed or printed later) satisfies
    /// `predicate`, and returns it; throws `DeadlineExceeded` naming `what` after `seconds`, or an
    /// error if the process exits first.
    @discardableResult
    public func waitForLine(
        within seconds: Double,
        _ what: String,
        where predicate: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        let id = UUID()
        let name = self.name
        do {
            return try await withDeadline(seconds: seconds, waitingFor: "\(name) to print \(what)") {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { continuation in
                        self.state.withLockedValue { state in
                            if let line = (state.stdout + state.stderr).first(where: predicate) {
                                continuation.resume(returning: line)
                            } else if let status = state.exitStatus {
                                continuation.resume(throwing: ChildProcessError.exited(name: name, status: status, waitingFor: what))
                            } else {
                                state.waiters.append((id, predicate, continuation))
                            }
                        }
                    }
                } onCancel: {
                    self.removeWaiter(id, throwing: CancellationError())
                }
            }
        } catch {
            self.removeWaiter(id, throwing: error)
            throw error
        }
    }

    /// Sends `signal` (e.g. SIGTERM, SIGKILL) to the process.
    public func signal(_ signal: Int32) {
        if self.process.isRunning { kill(self.process.processIdentifier, signal) }
    }

    /// Waits for the process to exit and returns its status (the signal number if killed).
    public func waitForExit(within seconds: Double) async throws -> Int32 {
        let name = self.name
        return try await withDeadline(seconds: seconds, waitingFor: "\(name) to exit") {
            await withCheckedContinuation { continuation in
                let status: Int32? = self.state.withLockedValue { state in
                    guard let status = state.exitStatus else {
                        self.exited.withLockedValue { $0.append(continuation) }
                        return nil
                    }
                    return status
                }
                if let status { continuation.resume(returning: status) }
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace` seconds.
    @discardableResult
    public func stop(grace: Double = 10) async -> Int32? {
        self.signal(SIGTERM)
        if let status = try? await self.waitForExit(within: grace) { return status }
        self.signal(SIGKILL)
        return try? await self.waitForExit(within: 10)
    }

    // MARK: - Plumbing

    func consume(_ data: Data, isStdout: Bool) {
        var ready: [(CheckedContinuation<String, any Error>, String)] = []
        self.state.withLockedValue { state in
            var buffer = state.partial[isStdout, default: Data()]
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
            state.partial[isStdout] = buffer
            for line in lines {
                if isStdout { state.stdout.append(line) } else { state.stderr.append(line) }
                state.waiters.removeAll { waiter in
                    guard waiter.predicate(line) else { return false }
                    ready.append((waiter.continuation, line))
                    return true
                }
            }
        }
        for (continuation, line) in ready { continuation.resume(returning: line) }
    }

    func finished(status: Int32) {
        let (waiters, name): ([CheckedContinuation<String, any Error>], String) = self.state.withLockedValue { state in
            state.exitStatus = status
            let waiting = state.waiters.map(\.continuation)
            state.waiters = []
            return (waiting, self.name)
        }
        for waiter in waiters {
            waiter.resume(throwing: ChildProcessError.exited(name: name, status: status, waitingFor: "a line"))
        }
        let exitWaiters = self.exited.withLockedValue { list in
            defer { list = [] }
            return list
        }
        for waiter in exitWaiters { waiter.resume(returning: status) }
    }

    func removeWaiter(_ id: UUID, throwing error: any Error) {
        let continuation = self.state.withLockedValue { state -> CheckedContinuation<String, any Error>? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index).continuation
        }
        continuation?.resume(throwing: error)
    }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
    }
}

/// A child process ended before what was waited for happened.
public enum ChildProcessError: Error, Sendable, CustomStringConvertible {
    /// The process exited with `status` while `waitingFor` had not happened.
    case exited(name: String, status: Int32, waitingFor: String)

    public var description: String {
        switch self {
        case .exited(let name, let status, let what):
            return "\(name) exited with status \(status) before printing \(what)"
        }
    }
}
