import Foundation

/// Runs `body` on a thread of its own and returns its result to the awaiting task.
///
/// For work that blocks or may take long (parsing a job spec, verifying a checkpoint): the task
/// serving a connection runs on Swift's cooperative pool, which has as many threads as cores and
/// serves every connection and heartbeat, so work there would hold all of them up. Not a Dispatch
/// queue: on Linux its threads are shared with the same pool (a status request waited 6.9 s behind
/// six checkpoint verifications on one).
func onOwnThread<T: Sendable>(named name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.name = name
        thread.start()
    }
}
