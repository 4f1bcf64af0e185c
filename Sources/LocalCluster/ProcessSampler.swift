import Foundation
import NIOConcurrencyHelpers

/// Watches processes' resident memory and thread counts from `/proc` on a timer, keeping the
/// peak of each, for figures such as "the coordinator's memory under an attack".
public final class ProcessSampler: Sendable {
    /// What one process reached.
    public struct Peak: Sendable, Hashable, CustomStringConvertible {
        /// Resident memory when sampling started, in bytes.
        public var startRSS: Int
        /// The highest resident memory sampled, in bytes.
        public var rss: Int
        /// The kernel's own high-water mark of resident memory (VmHWM), in bytes: it catches peaks
        /// between samples, but covers the process's whole life.
        public var highWaterMark: Int
        /// The most threads sampled.
        public var threads: Int
        /// CPU time (user and system) the process used since sampling started, at the last sample.
        public var cpuSeconds: Double = 0
        /// CPU time when sampling started.
        var startCPUSeconds: Double = 0

        /// Resident memory gained since sampling started, at its peak, in bytes.
        public var rssGrowth: Int { max(0, self.rss - self.startRSS) }

        public var description: String {
            "peak RSS \(self.rss >> 20) MiB (from \(self.startRSS >> 20) MiB, VmHWM \(self.highWaterMark >> 20) MiB), peak threads \(self.threads)"
        }
    }

    let peaks: NIOLockedValueBox<[Int32: Peak]>
    let stopping = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)

    /// Starts sampling `pids` every `interval`, on a thread of its own.
    public init(pids: [Int32], interval: Duration = .milliseconds(20)) {
        var initial: [Int32: Peak] = [:]
        for pid in pids {
            if let status = Self.status(of: pid) {
                var peak = Peak(
                    startRSS: status.rss, rss: status.rss, highWaterMark: status.hwm, threads: status.threads)
                peak.startCPUSeconds = Self.cpuSeconds(of: pid) ?? 0
                initial[pid] = peak
            }
        }
        let peaks = NIOLockedValueBox(initial)
        self.peaks = peaks
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        let thread = Thread { [stopping, finished] in
            // Each turn waits for the stop signal for one interval: the interval is the timer.
            while stopping.wait(timeout: .now() + seconds) == .timedOut {
                for pid in pids {
                    guard let status = Self.status(of: pid) else { continue }
                    let cpu = Self.cpuSeconds(of: pid)
                    peaks.withLockedValue { peaks in
                        guard var peak = peaks[pid] else { return }
                        if let cpu { peak.cpuSeconds = cpu - peak.startCPUSeconds }
                        peak.rss = max(peak.rss, status.rss)
                        peak.highWaterMark = max(peak.highWaterMark, status.hwm)
                        peak.threads = max(peak.threads, status.threads)
                        peaks[pid] = peak
                    }
                }
            }
            finished.signal()
        }
        thread.name = "ringmaster-process-sampler"
        thread.start()
    }

    /// The peaks so far, by process id.
    public var current: [Int32: Peak] { self.peaks.withLockedValue { $0 } }

    /// Stops sampling and returns the peaks.
    public func stop() -> [Int32: Peak] {
        self.stopping.signal()
        _ = self.finished.wait(timeout: .now() + 5)
        return self.current
    }

    /// User and system CPU time of `pid` (all its threads), from /proc/PID/stat; nil once it has exited.
    public static func cpuSeconds(of pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = text.lastIndex(of: ")")
        else { return nil }
        // After the command name (in parentheses, and it may hold spaces): state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// VmRSS, VmHWM (bytes) and Threads of `pid`, from /proc/PID/status; nil once it has exited.
    public static func status(of pid: Int32) -> (rss: Int, hwm: Int, threads: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        var rss = 0
        var hwm = 0
        var threads = 0
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, let value = Int(fields[1]) else { continue }
            switch fields[0] {
            case "VmRSS:": rss = value * 1024
            case "VmHWM:": hwm = value * 1024
            case "Threads:": threads = value
            default: continue
            }
        }
        return (rss, hwm, threads)
    }
}
