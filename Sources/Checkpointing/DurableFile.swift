#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The POSIX calls checkpoints are made of, each turning a failure into a `CheckpointError` that
/// names the path and the errno text, in one place.
///
/// The recipe for a durable file is the one `SecureFile` uses: write a temporary name, fsync it,
/// rename it over the final name, fsync the directory. After a crash the final name holds either
/// nothing or the complete file.
enum DurableFile {
    /// An open file descriptor that closes itself; `close()` reports what close(2) reports, which
    /// on NFS can be the first sign of a failed write.
    struct Descriptor: ~Copyable {
        let fd: Int32
        let path: String
        private var isOpen = true

        init(fd: Int32, path: String) {
            self.fd = fd
            self.path = path
        }

        mutating func close() throws {
            guard self.isOpen else { return }
            self.isOpen = false
            #if canImport(Glibc)
                let result = Glibc.close(self.fd)
            #else
                let result = Darwin.close(self.fd)
            #endif
            if result != 0 && errno != EINTR { throw CheckpointError.system("could not close \(self.path)") }
        }

        deinit {
            if self.isOpen {
                #if canImport(Glibc)
                    _ = Glibc.close(self.fd)
                #else
                    _ = Darwin.close(self.fd)
                #endif
            }
        }
    }

    /// Opens `path` with `flags` (close-on-exec added), retrying on EINTR.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Descriptor {
        while true {
            #if canImport(Glibc)
                let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            #else
                let fd = Darwin.open(path, flags | O_CLOEXEC, mode)
            #endif
            if fd >= 0 { return Descriptor(fd: fd, path: path) }
            if errno == EINTR { continue }
            throw CheckpointError.system("could not open \(path)")
        }
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    static func writeAll(_ descriptor: borrowing Descriptor, _ bytes: UnsafeRawBufferPointer) throws {
        guard var pointer = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            #if canImport(Glibc)
                let count = Glibc.write(descriptor.fd, pointer, left)
            #else
                let count = Darwin.write(descriptor.fd, pointer, left)
            #endif
            if count < 0 {
                if errno == EINTR { continue }
                throw CheckpointError.system("could not write \(descriptor.path)")
            }
            if count == 0 {
                throw CheckpointError.system("could not write \(descriptor.path) (no progress)", errno: EIO)
            }
            pointer += count
            left -= count
        }
    }

    /// Reads exactly `buffer.count` bytes; fewer means the file ended early (`truncated`).
    static func readFully(_ descriptor: borrowing Descriptor, into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            #if canImport(Glibc)
                let count = Glibc.read(descriptor.fd, base + done, buffer.count - done)
            #else
                let count = Darwin.read(descriptor.fd, base + done, buffer.count - done)
            #endif
            if count < 0 {
                if errno == EINTR { continue }
                throw CheckpointError.system("could not read \(descriptor.path)")
            }
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// fsync(2), so the file's data and size are on stable storage.
    static func sync(_ descriptor: borrowing Descriptor) throws {
        while fsync(descriptor.fd) != 0 {
            if errno == EINTR { continue }
            throw CheckpointError.system("could not fsync \(descriptor.path)")
        }
    }

    /// Fsyncs a directory, so the names created, renamed or removed in it are durable.
    static func syncDirectory(_ path: String) throws {
        let descriptor = try Self.open(path, O_RDONLY | O_DIRECTORY)
        try Self.sync(descriptor)
    }

    /// Renames `from` to `to` (atomically replacing `to`).
    static func rename(_ from: String, _ to: String) throws {
        #if canImport(Glibc)
            let result = Glibc.rename(from, to)
        #else
            let result = Darwin.rename(from, to)
        #endif
        guard result == 0 else { throw CheckpointError.system("could not rename \(from) to \(to)") }
    }

    /// Removes a file; a file that is already gone is fine.
    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw CheckpointError.system("could not remove \(path)") }
    }

    /// Creates `path` and its missing parents with `mode`; returns whether `path` itself was created.
    @discardableResult
    static func createDirectory(_ path: String, mode: mode_t = 0o755) throws -> Bool {
        if mkdir(path, mode) == 0 { return true }
        switch errno {
        case EEXIST:
            guard Self.isDirectory(path) else {
                throw CheckpointError.system(
                    "could not create directory \(path): a file of that name exists", errno: EEXIST)
            }
            return false
        case ENOENT:
            let parent = Self.parent(of: path)
            guard parent != path else {
                throw CheckpointError.system("could not create directory \(path)", errno: ENOENT)
            }
            try Self.createDirectory(parent, mode: mode)
            if mkdir(path, mode) == 0 { return true }
            if errno == EEXIST && Self.isDirectory(path) { return false }
            throw CheckpointError.system("could not create directory \(path)")
        default:
            throw CheckpointError.system("could not create directory \(path)")
        }
    }

    /// The directory containing `path` ("/" for a top-level path, "." for a bare name).
    static func parent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    /// What stat(2) says of `path`: nil if it does not exist.
    static func status(_ path: String) throws -> stat? {
        var info = stat()
        if stat(path, &info) == 0 { return info }
        if errno == ENOENT || errno == ENOTDIR { return nil }
        throw CheckpointError.system("could not stat \(path)")
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The names in a directory (without "." and ".."); nil if the directory does not exist.
    static func names(in path: String) throws -> [String]? {
        guard let directory = opendir(path) else {
            if errno == ENOENT { return nil }
            throw CheckpointError.system("could not list \(path)")
        }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(directory) else {
                if errno != 0 { throw CheckpointError.system("could not list \(path)") }
                return names
            }
            let name = withUnsafePointer(to: entry.pointee.d_name) { tuple in
                tuple.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: tuple.pointee)) {
                    String(cString: $0)
                }
            }
            if name != "." && name != ".." { names.append(name) }
        }
    }

    /// Reads a whole (small) file: the manifest.
    static func readWholeFile(_ path: String) throws -> [UInt8] {
        let descriptor = try Self.open(path, O_RDONLY)
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try Self.readFully(descriptor, into: $0) }
            result.append(contentsOf: chunk[0..<count])
            if count < chunk.count { return result }
        }
    }

    /// Durably replaces `path` with `bytes`: temporary name, fsync, (crash point), rename, fsync
    /// of the directory. The temporary file is removed on failure.
    static func replace(
        _ path: String, with bytes: [UInt8], crashAfterTemporary: (point: CrashPoint, step: UInt64)? = nil
    ) throws {
        let directory = Self.parent(of: path)
        let temporary = Self.temporaryName(for: path)
        do {
            var descriptor = try Self.open(temporary, O_WRONLY | O_CREAT | O_TRUNC)
            try bytes.withUnsafeBytes { try Self.writeAll(descriptor, $0) }
            try Self.sync(descriptor)
            try descriptor.close()
            if let crash = crashAfterTemporary { crash.point.reached(step: crash.step) }
            try Self.rename(temporary, path)
        } catch {
            _ = unlink(temporary)
            throw error
        }
        try Self.syncDirectory(directory)
    }

    /// The temporary name for `path`: hidden, in the same directory, unique to this process.
    static func temporaryName(for path: String) -> String {
        let directory = Self.parent(of: path)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        return CheckpointLayout.join(directory, ".\(name).tmp-\(getpid())")
    }

    /// Whether `name` is a temporary name made by `temporaryName(for:)`.
    static func isTemporaryName(_ name: String) -> Bool {
        name.hasPrefix(".") && name.contains(".tmp-")
    }
}
