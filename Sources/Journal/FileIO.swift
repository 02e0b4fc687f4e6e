import Glibc

/// Thin POSIX wrappers: retry `EINTR`, loop over short reads/writes, and turn
/// failures into `JournalError.io` carrying the call, the path and `errno`.
enum FileIO {
    static func error(_ operation: String, _ path: String, _ code: Int32 = errno) -> JournalError {
        .io(operation: operation, path: path, errno: code)
    }

    /// Opens `path` (`O_CLOEXEC` added), retrying `EINTR`.
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(JournalError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw error("open", path) }
        }
    }

    /// Writes all of `bytes` at `offset`. Returns 0, or the `errno` of the failing call.
    static func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int32 {
        var done = 0
        while done < bytes.count {
            let n = Glibc.pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if n == 0 { return EIO }
            done += n
        }
        return 0
    }

    static func pwriteAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int, path: String) throws(JournalError) {
        let code = bytes.withUnsafeBytes { pwriteAll(fd, $0, at: offset) }
        if code != 0 { throw error("pwrite", path, code) }
    }

    /// Reads up to `buffer.count` bytes at `offset`, stopping early only at end of file.
    /// Returns the number of bytes read, or `-errno`.
    static func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return -Int(errno)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// The whole file behind `fd`.
    static func readAll(_ fd: Int32, path: String) throws(JournalError) -> [UInt8] {
        let size = try fileSize(fd, path: path)
        var bytes = [UInt8](repeating: 0, count: size)
        let n = bytes.withUnsafeMutableBytes { preadFully(fd, $0, at: 0) }
        if n < 0 { throw error("pread", path, Int32(-n)) }
        if n < size { bytes.removeSubrange(n...) }
        return bytes
    }

    static func fileSize(_ fd: Int32, path: String) throws(JournalError) -> Int {
        var st = stat()
        if fstat(fd, &st) != 0 { throw error("fstat", path) }
        return Int(st.st_size)
    }

    static func fdatasync(_ fd: Int32, path: String) throws(JournalError) {
        while Glibc.fdatasync(fd) != 0 {
            if errno != EINTR { throw error("fdatasync", path) }
        }
    }

    static func truncate(_ fd: Int32, to size: Int, path: String) throws(JournalError) {
        while ftruncate(fd, off_t(size)) != 0 {
            if errno != EINTR { throw error("ftruncate", path) }
        }
    }

    /// Makes renames, creations and deletions inside `directory` durable.
    static func syncDirectory(_ directory: String) throws(JournalError) {
        let fd = try open(directory, O_RDONLY | O_DIRECTORY)
        defer { Glibc.close(fd) }
        while Glibc.fsync(fd) != 0 {
            if errno != EINTR { throw error("fsync", directory) }
        }
    }

    static func rename(_ from: String, _ to: String) throws(JournalError) {
        if Glibc.rename(from, to) != 0 { throw error("rename", from + " -> " + to) }
    }

    /// Deletes `path`; a file that is already gone is not an error.
    static func unlink(_ path: String) throws(JournalError) {
        if Glibc.unlink(path) != 0 && errno != ENOENT { throw error("unlink", path) }
    }

    /// Creates `path` and its missing parents (like `mkdir -p`). With `durable`, each
    /// created directory's entry is synced in its parent, so a crash cannot lose a
    /// freshly created data directory together with the records acknowledged in it.
    static func makeDirectories(_ path: String, durable: Bool) throws(JournalError) {
        var parent = path.hasPrefix("/") ? "/" : "."
        var prefix = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/") {
            prefix += part
            if mkdir(prefix, 0o755) == 0 {
                if durable { try syncDirectory(parent) }
            } else if errno != EEXIST {
                throw error("mkdir", prefix)
            }
            parent = prefix
            prefix += "/"
        }
    }

    /// The names in `directory` (without "." and "..").
    static func listDirectory(_ directory: String) throws(JournalError) -> [String] {
        guard let dir = opendir(directory) else { throw error("opendir", directory) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// One open journal file. The descriptor is closed when the last reference goes,
/// so a replay or a compaction that still reads a file keeps it readable even
/// after compaction unlinked it.
///
/// Immutable; `pread` on the descriptor is safe from any thread. Only the writer
/// thread writes (to the active segment).
final class JournalFile: Sendable {
    let type: Format.FileType
    /// The number in the file name; files replay in ascending number.
    let number: Int
    let path: String
    let fd: Int32

    init(type: Format.FileType, number: Int, path: String, fd: Int32) {
        self.type = type
        self.number = number
        self.path = path
        self.fd = fd
    }

    deinit { Glibc.close(fd) }
}

/// Where a record is: file number, byte offset of its frame, frame length (in bytes).
/// Ordered by position in replay order.
struct Location: Comparable, Sendable {
    var file: Int
    var offset: Int
    var length: Int

    static func < (a: Location, b: Location) -> Bool {
        a.file != b.file ? a.file < b.file : a.offset < b.offset
    }
}

/// Reads frames by location through a sliding window of at least 1 MiB, so reading
/// live records in replay order is a few large sequential reads, not one syscall each.
struct WindowReader {
    private var buffer: [UInt8] = []
    private var file = -1
    private var start = 0
    private var count = 0
    private let window = 1 << 20

    /// Calls `body` with the `location.length` bytes at `location` in `file`.
    mutating func withFrame<R>(_ file: JournalFile, _ location: Location,
                               _ body: (UnsafeRawBufferPointer) -> R) throws(JournalError) -> R {
        let offset = location.offset, length = location.length
        if file.number != self.file || offset < start || offset + length > start + count {
            let size = max(window, length)
            if buffer.count < size { buffer = [UInt8](repeating: 0, count: size) }
            let n = buffer.withUnsafeMutableBytes {
                FileIO.preadFully(file.fd, UnsafeMutableRawBufferPointer(rebasing: $0[0..<size]), at: offset)
            }
            if n < 0 { throw FileIO.error("pread", file.path, Int32(-n)) }
            self.file = file.number
            start = offset
            count = n
            guard n >= length else {
                throw .corrupt(path: file.path, offset: offset, reason: "record ends past end of file")
            }
        }
        return buffer.withUnsafeBytes { all in
            body(UnsafeRawBufferPointer(rebasing: all[offset - start..<offset - start + length]))
        }
    }
}

/// The exclusive `flock(2)` on `DIR/LOCK` that keeps two journals (two processes, or
/// two opens in one process: `flock` locks belong to the open file description) off
/// one directory. The file holds the owner's PID for the error message. Released by
/// `release()` or when the process dies; the file itself is never deleted (deleting
/// a lock file races with the next locker).
final class DirectoryLock: Sendable {
    let path: String
    private let fd: Int32

    init(directory: String) throws(JournalError) {
        path = directory + "/LOCK"
        fd = try FileIO.open(path, O_RDWR | O_CREAT)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if code == EINTR { continue }
            defer { Glibc.close(fd) }
            if code == EWOULDBLOCK {
                var bytes = [UInt8](repeating: 0, count: 32)
                let n = bytes.withUnsafeMutableBytes { FileIO.preadFully(fd, $0, at: 0) }
                let text = String(decoding: bytes.prefix(max(0, n)), as: UTF8.self)
                    .trimmed(of: " \n\0")
                throw .locked(path: path, holderPID: Int32(text))
            }
            throw FileIO.error("flock", path, code)
        }
        let pid = Array("\(getpid())\n".utf8)
        do {
            try FileIO.truncate(fd, to: 0, path: path)
            try FileIO.pwriteAll(fd, pid, at: 0, path: path)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Drops the lock. Call once.
    func release() {
        flock(fd, LOCK_UN)
        Glibc.close(fd)
    }
}

extension String {
    fileprivate func trimmed(of set: String) -> String {
        let drop = Set(set)
        var s = Substring(self)
        while let c = s.first, drop.contains(c) { s = s.dropFirst() }
        while let c = s.last, drop.contains(c) { s = s.dropLast() }
        return String(s)
    }
}
