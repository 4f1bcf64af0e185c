import Foundation
import Logging
import Testing
import Workload

@testable import Agent

/// The check an agent makes before it accepts a torch job: the job's interpreter exists and
/// imports torch and the ringmaster package (`python -m ringmaster.torch.check`, run for real).
@Suite struct InterpreterCheckTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "ringmaster-check-\(UUID().uuidString.prefix(8))"
    ).path
    let logger = Logger(label: "test")

    func refusal(_ python: String) -> String? {
        defer { try? FileManager.default.removeItem(atPath: self.directory) }
        do {
            try TorchWorkload.checkInterpreter(python, environment: [:], directory: self.directory, logger: self.logger)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func test_aMissingInterpreter_isRefused_sayingSo() throws {
        let said = try #require(self.refusal("/nonexistent/bin/python3"), "a missing interpreter passed the check")
        #expect(said.contains("there is no `/nonexistent/bin/python3` on this node"), "\(said)")
    }

    @Test func test_anInterpreterWithoutTheRingmasterPackage_isRefused_namingWhatIsMissing() throws {
        // A Python with the Python path emptied of site-packages: the standard library only.
        let bare = self.directory + "-bare"
        try FileManager.default.createDirectory(atPath: bare, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: bare) }
        let script = "\(bare)/python"
        try "#!/bin/sh\nexec python3 -S -I \"$@\"\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let said = try #require(self.refusal(script), "a Python without the packages passed the check")
        #expect(said.contains("No module named"), "\(said)")
        #expect(said.contains("install PyTorch and the ringmaster package"), "\(said)")
        #expect(!TorchWorkload.checkedInterpreters.withLock { $0.contains(script) }, "a failed check is not kept")
    }

    @Test func test_theProjectsInterpreter_passes_andIsCheckedOnce() throws {
        let venv = FileManager.default.currentDirectoryPath + "/.venv/bin/python"
        try #require(
            FileManager.default.isExecutableFile(atPath: venv), "no \(venv): run scripts/setup-python.sh first")
        #expect(self.refusal(venv) == nil)
        #expect(TorchWorkload.checkedInterpreters.withLock { $0.contains(venv) })
    }
}
