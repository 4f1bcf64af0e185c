import ControlPlane
import Foundation
import JobModel
import Logging
import RingmasterSecurity
import Workload

/// Writes a finished job's model: its parameters as raw little-endian Float32, and a description
/// beside them.
struct ModelWriter: Sendable {
    /// Where finished models are written.
    let directory: String
    let logger: Logger

    func save(_ assignment: Assignment, _ workload: any TrainingWorkload) {
        let directory = self.directory
        let job = assignment.job
        do {
            let parameters = try workload.parameters()
            try SecureFile.createDirectory(directory, mode: 0o755)
            let bytes = parameters.withUnsafeBytes { Array($0) }
            try SecureFile.write(bytes, to: "\(directory)/\(job).f32", mode: 0o644)
            let description: [String: Any] = [
                "job": job, "kind": assignment.training.workloadKind, "steps": assignment.training.steps,
                "parameters": parameters.count, "parameter_hash": String(parameterHash(parameters), radix: 16),
                "format": "little-endian float32, layer by layer (weights then bias)",
            ]
            let json = try JSONSerialization.data(withJSONObject: description, options: [.prettyPrinted, .sortedKeys])
            try SecureFile.write(Array(json), to: "\(directory)/\(job).json", mode: 0o644)
            self.logger.info(
                "saved the trained model", metadata: [LogKey.job: "\(job)", "path": "\(directory)/\(job).f32"])
        } catch {
            self.logger.error(
                "could not save the trained model", metadata: [LogKey.job: "\(job)", LogKey.error: "\(error)"])
        }
    }
}
