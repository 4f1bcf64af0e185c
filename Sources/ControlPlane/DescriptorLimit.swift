#if canImport(Glibc)
    import Glibc
#endif

/// The process's limit on open file descriptors.
public enum DescriptorLimit {
    /// Raises the soft limit to the hard limit (what the system allows this process without
    /// privileges) and returns the limit now in force. A service that holds a connection per peer
    /// needs more than the common default of 1,024.
    @discardableResult
    public static func raise() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        // An unlimited hard limit still stops at the kernel's nr_open (1,048,576 by default).
        let target = min(limit.rlim_max, 1 << 20)
        if limit.rlim_cur < target {
            var raised = limit
            raised.rlim_cur = target
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return Int(clamping: min(UInt64(limit.rlim_cur), 1 << 20))
    }
}
