#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Durable, private file writes for keys, certificates and state.
///
/// A write goes to a temporary file created with the final permissions (so a secret is never
/// readable by others, not even for a moment), is fsynced, renamed over the target, and the
/// directory is fsynced: after a crash the file holds either the old or the new contents.
public enum SecureFile {
    /// Creates `path` (and its parents) with permissions `mode` if it does not exist, and
    /// tightens an existing directory to `mode`.
    public static func createDirectory(_ path: String, mode: mode_t = 0o700) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw Self.error("could not create directory \(current)")
            }
        }
        if chmod(path, mode) != 0 {
            throw Self.error("could not set permissions on \(path)")
        }
    }

    /// Atomically replaces `path` with `bytes`, readable only by its owner by default.
    public static func write(_ bytes: some Collection<UInt8>, to path: String, mode: mode_t = 0o600) throws {
        let temporary = "\(path).tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Self.error("could not create \(temporary)") }
        var closed = false
        defer {
            if !closed { close(fd) }
        }
        // open() applies the umask; set the mode explicitly so it is exactly `mode`.
        guard fchmod(fd, mode) == 0 else { throw Self.error("could not set permissions on \(temporary)") }
        let array = Array(bytes)
        var written = 0
        while written < array.count {
            let result = array.withUnsafeBytes { raw in
                Glibc.write(fd, raw.baseAddress! + written, raw.count - written)
            }
            if result < 0 {
                if errno == EINTR { continue }
                let failure = Self.error("could not write \(temporary)")
                unlink(temporary)
                throw failure
            }
            written += result
        }
        guard fsync(fd) == 0 else {
            let failure = Self.error("could not fsync \(temporary)")
            unlink(temporary)
            throw failure
        }
        close(fd)
        closed = true
        guard rename(temporary, path) == 0 else {
            let failure = Self.error("could not rename \(temporary) to \(path)")
            unlink(temporary)
            throw failure
        }
        try Self.syncDirectory(containing: path)
    }

    /// Reads a whole file, or returns nil if it does not exist.
    public static func read(_ path: String) throws -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw Self.error("could not open \(path)")
        }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Self.error("could not read \(path)")
            }
            if count == 0 { return result }
            result.append(contentsOf: chunk[0..<count])
        }
    }

    /// The permission bits of `path`, or nil if it does not exist.
    public static func permissions(of path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & 0o777
    }

    static func syncDirectory(containing path: String) throws {
        let directory: String
        if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            directory = "."
        }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Self.error("could not open directory \(directory)") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw Self.error("could not fsync directory \(directory)") }
    }

    static func error(_ message: String) -> SecurityError {
        let code = errno
        return SecurityError(.fileAccess, "\(message): \(String(cString: strerror(code))) (errno \(code))")
    }
}
