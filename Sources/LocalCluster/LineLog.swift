import ControlPlane
import Foundation
import NIOConcurrencyHelpers

/// An append-only list of text lines that callers can wait on: "the 2nd line containing X",
/// with a deadline, instead of sleeping and looking. Holds a child process's output, or the
/// lines a test's log handler captured.
public final class LineLog: Sendable {
    struct Waiter {
        let id: UUID
        let occurrence: Int
        let predicate: @Sendable (String) -> Bool
        let continuation: CheckedContinuation<String, any Error>
    }

    struct State {
        var lines: [String] = []
        var waiters: [Waiter] = []
        var closedReason: (any Error)?
    }

    let state = NIOLockedValueBox(State())
    /// A name for messages ("coordinator", "agent-1 stderr").
    public let name: String

    /// Makes an empty log.
    public init(name: String) {
        self.name = name
    }

    /// Every line so far.
    public var lines: [String] { self.state.withLockedValue { $0.lines } }

    /// Appends a line and wakes the waiters it satisfies.
    public func append(_ line: String) {
        let ready: [(CheckedContinuation<String, any Error>, String)] = self.state.withLockedValue { state in
            state.lines.append(line)
            var ready: [(CheckedContinuation<String, any Error>, String)] = []
            state.waiters.removeAll { waiter in
                guard let match = Self.match(state.lines, waiter.occurrence, waiter.predicate) else { return false }
                ready.append((waiter.continuation, match))
                return true
            }
            return ready
        }
        for (continuation, line) in ready { continuation.resume(returning: line) }
    }

    /// Ends the log (its source exited): waiters not yet satisfied fail with `reason`.
    public func close(reason: any Error) {
        let waiters = self.state.withLockedValue { state in
            state.closedReason = reason
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.continuation.resume(throwing: reason) }
    }

    /// Waits until the `occurrence`-th line (1-based, counting lines already there) satisfies
    /// `predicate`, and returns it. Throws `DeadlineExceeded` naming `what` after `seconds`.
    @discardableResult
    public func waitForLine(
        within seconds: Double,
        _ what: String,
        occurrence: Int = 1,
        where predicate: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        let id = UUID()
        do {
            return try await withDeadline(seconds: seconds, waitingFor: "\(self.name) to show \(what)") {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { continuation in
                        self.state.withLockedValue { state in
                            if let line = Self.match(state.lines, occurrence, predicate) {
                                continuation.resume(returning: line)
                            } else if let reason = state.closedReason {
                                continuation.resume(throwing: reason)
                            } else {
                                state.waiters.append(
                                    Waiter(
                                        id: id, occurrence: occurrence, predicate: predicate, continuation: continuation
                                    ))
                            }
                        }
                    }
                } onCancel: {
                    self.removeWaiter(id, throwing: CancellationError())
                }
            }
        } catch let error as DeadlineExceeded {
            self.removeWaiter(id, throwing: error)
            throw LineWaitTimedOut(wait: error, lastLines: Array(self.lines.suffix(8)))
        } catch {
            self.removeWaiter(id, throwing: error)
            throw error
        }
    }

    /// How many lines satisfy `predicate` so far.
    public func count(where predicate: (String) -> Bool) -> Int {
        self.state.withLockedValue { $0.lines.filter(predicate).count }
    }

    static func match(_ lines: [String], _ occurrence: Int, _ predicate: (String) -> Bool) -> String? {
        var seen = 0
        for line in lines where predicate(line) {
            seen += 1
            if seen == occurrence { return line }
        }
        return nil
    }

    func removeWaiter(_ id: UUID, throwing error: any Error) {
        let continuation = self.state.withLockedValue { state -> CheckedContinuation<String, any Error>? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index).continuation
        }
        continuation?.resume(throwing: error)
    }
}

/// A wait for a line that ran past its deadline, with the last lines that did arrive.
public struct LineWaitTimedOut: Error, Sendable, CustomStringConvertible {
    /// The deadline that passed.
    public var wait: DeadlineExceeded
    /// The log's last lines when it passed.
    public var lastLines: [String]

    public var description: String {
        "\(self.wait); last lines:\n" + self.lastLines.map { "  \($0.prefix(300))" }.joined(separator: "\n")
    }
}
