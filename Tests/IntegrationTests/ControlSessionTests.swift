import ControlPlane
import Foundation
import LocalCluster
import RingmasterSecurity
import RingmasterWire
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What a client of the control plane sees when the coordinator's process dies under an open
/// session: `closed`, the one error that tells callers (agents, the CLI, the demo's polls) to
/// move on, rather than whichever of a reset, an end of file or a TLS stream cut short came first.
@Suite("Control sessions")
struct ControlSessionTests {
    @Test(.timeLimit(.minutes(1)))
    func aCoordinatorKilledUnderAnOpenSession_readsAsClosed() async throws {
        let directory = try TestDirectory()
        let state = "\(directory.path)/state"
        for attempt in 0..<3 {
            let coordinator = try ChildProcess(
                name: "coordinator", executable: try ringmasterExecutable(),
                arguments: ["coordinator", "--state-dir", state, "--listen", "127.0.0.1:0"])
            let line = try await coordinator.standardOutput.waitForLine(within: 30, "the coordinator's address") {
                $0.hasPrefix("listening ")
            }
            let address = try ControlAddress(parsing: String(line.dropFirst("listening ".count)))
            let authority = try #require(try CertificateAuthority.load(directory: state))
            let credentials = try TestCoordinator.credentials(
                from: authority, role: .operator, name: "tester", clock: AdjustableClock())
            let outcome: Result<Envelope, any Error> = await Result(awaiting: {
                try await ControlClient(address: address, credentials: credentials).withConnection { session in
                    var status = Envelope()
                    status.adminRequest = .with { $0.jobStatus = .init() }
                    _ = try await session.request(status)
                    coordinator.signal(SIGKILL)
                    _ = try await coordinator.waitForExit(within: 20)
                    // The first request after the kill, the second after a reset for the first
                    // write: one of them meets the dead connection.
                    _ = try await session.request(status)
                    return try await session.request(status)
                }
            })
            switch outcome {
            case .success:
                Issue.record("attempt \(attempt): requests to a killed coordinator were answered")
            case .failure(let error as ControlClientError):
                guard case .closed = error else {
                    Issue.record("attempt \(attempt): \(error), not closed")
                    return
                }
            case .failure(let error):
                Issue.record("attempt \(attempt): \(type(of: error)) \(error), not ControlClientError.closed")
            }
        }
    }
}

extension Result where Failure == any Error {
    init(awaiting body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
