import Glibc

/// One record of the journal: an operation on a key, with an opaque payload.
///
/// The journal never looks inside `kind` or `payload`; it only uses `operation`
/// and `key` to know which records are still *live* (needed to rebuild state)
/// and which are garbage that compaction may drop:
///
/// - `put` replaces the key's state: every earlier record of that key becomes garbage.
/// - `append` adds to the key's state (e.g. "step 2 finished" for a job); earlier
///   records stay live. An `append` to a key with no state starts it.
/// - `delete` ends the key: every record of it (including the delete) becomes garbage.
///
/// Replay yields, per live key, the `put`/`append` records since its last `put`
/// (or since it was started), in the order they were appended.
public struct JournalRecord: Sendable, Hashable {
    /// What a record does to its key's state. Stored as one byte.
    public enum Operation: UInt8, Sendable, Hashable {
        /// Replace the key's state with this record.
        case put = 1
        /// Add this record to the key's state.
        case append = 2
        /// Drop the key's state.
        case delete = 3
    }

    /// What this record does to `key`.
    public var operation: Operation
    /// The state this record belongs to. UTF-8, at most 65,535 bytes.
    public var key: String
    /// A caller-defined tag (e.g. "job accepted" = 1), opaque to the journal. Default: 0.
    public var kind: UInt16
    /// The caller's bytes, opaque to the journal. Default: empty.
    public var payload: [UInt8]

    /// Creates a record. See `Operation` for what each operation does to `key`.
    public init(_ operation: Operation, key: String, kind: UInt16 = 0, payload: [UInt8] = []) {
        self.operation = operation
        self.key = key
        self.kind = kind
        self.payload = payload
    }

    /// A record that replaces `key`'s state.
    public static func put(_ key: String, kind: UInt16 = 0, payload: [UInt8] = []) -> JournalRecord {
        JournalRecord(.put, key: key, kind: kind, payload: payload)
    }

    /// A record that adds to `key`'s state.
    public static func append(_ key: String, kind: UInt16 = 0, payload: [UInt8] = []) -> JournalRecord {
        JournalRecord(.append, key: key, kind: kind, payload: payload)
    }

    /// A record that drops `key`'s state (a tombstone; compaction removes it with the key).
    public static func delete(_ key: String, kind: UInt16 = 0) -> JournalRecord {
        JournalRecord(.delete, key: key, kind: kind, payload: [])
    }
}

/// How a `Journal` writes, syncs, rolls and compacts. Immutable once the journal is open.
public struct JournalOptions: Sendable, Equatable {
    /// Whether durable appends wait for `fdatasync(2)`. Default: `true`.
    ///
    /// `false` keeps the file format and crash-recovery of torn tails, but a
    /// machine crash (not a process crash) may lose acknowledged records. For
    /// tests and throw-away deployments only.
    public var fsync: Bool
    /// Sync every record on its own instead of group commit. Default: `false`.
    ///
    /// Each record is written and `fdatasync`ed before the next one is written,
    /// so throughput is bounded by the disk's sync latency. Exists as the baseline
    /// for the "group commit vs. one fsync per record" benchmark; never faster.
    public var syncEveryRecord: Bool
    /// Size (in bytes) at which the active segment is closed and a new one started. Default: 64 MiB.
    ///
    /// Checked before each append (one `append` call's records), so a segment may
    /// exceed it by up to one append: at most `maxRecordBytes` for a single record. An
    /// append of several records that would take a segment holding records past
    /// `segmentBytes + maxRecordBytes` goes to a new segment instead (only such an append
    /// larger than that, alone in a fresh segment, makes one bigger). Under a file-size
    /// limit see `segmentBytes(fittingFileSizeLimit:)`.
    public var segmentBytes: Int
    /// Minimum garbage (in bytes: total file bytes minus live record bytes) before an
    /// automatic compaction starts. Default: 16 MiB.
    public var compactionMinBytes: Int
    /// Automatic compaction starts when total file bytes reach this multiple of live bytes
    /// (and `compactionMinBytes` of garbage exist). Default: 2.0, i.e. at least half garbage.
    public var compactionRatio: Double
    /// Whether the journal compacts by itself in the background when the thresholds
    /// above are met. `compactNow()` works either way. Default: `true`.
    public var automaticCompaction: Bool
    /// Largest encoded record (in bytes: 13 bytes of framing + key + payload). Default: 16 MiB.
    ///
    /// Appends over it fail with `JournalError.invalidRecord`; on recovery a length
    /// field over it is treated as corruption.
    public var maxRecordBytes: Int

    /// Creates options; every parameter defaults to the value documented on its property.
    public init(fsync: Bool = true, syncEveryRecord: Bool = false, segmentBytes: Int = 64 << 20,
                compactionMinBytes: Int = 16 << 20, compactionRatio: Double = 2.0,
                automaticCompaction: Bool = true, maxRecordBytes: Int = 16 << 20) {
        self.fsync = fsync
        self.syncEveryRecord = syncEveryRecord
        self.segmentBytes = segmentBytes
        self.compactionMinBytes = compactionMinBytes
        self.compactionRatio = compactionRatio
        self.automaticCompaction = automaticCompaction
        self.maxRecordBytes = maxRecordBytes
    }
}

extension JournalOptions {
    /// The soft file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) of this process, in bytes;
    /// nil when there is none. A journal write past it fails (`EFBIG`). Any thread.
    public static func currentFileSizeLimit() -> Int? {
        var limit = rlimit()
        // `RLIM_INFINITY` is all ones: above `Int.max`.
        guard getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit) == 0,
              limit.rlim_cur < rlim_t(Int.max) else { return nil }
        return Int(limit.rlim_cur)
    }

    /// The segment size (in bytes) to use so that no segment outgrows a file-size limit
    /// of `limit` bytes: `segmentBytes` when `segmentBytes + maxRecordBytes` (the most a
    /// segment holds, see `segmentBytes`) fits within `limit`, else `limit - maxRecordBytes`.
    /// (An append of several records whose total is over `limit - 16` still cannot be
    /// written under that limit.)
    /// - Returns: nil when `limit` is below `smallestFileSizeLimit` (the journal cannot
    ///   work under it).
    public func segmentBytes(fittingFileSizeLimit limit: Int) -> Int? {
        guard limit >= smallestFileSizeLimit else { return nil }
        return Swift.min(segmentBytes, limit - maxRecordBytes)
    }

    /// The smallest file-size limit (in bytes) the journal works under with these
    /// options: a segment's file header (16 bytes) and one record of `maxRecordBytes`,
    /// plus a byte.
    public var smallestFileSizeLimit: Int { Format.fileHeaderBytes + maxRecordBytes + 1 }
}

/// Why a journal operation failed.
public enum JournalError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Another `Journal` (in this or another process) holds the directory's `LOCK` file.
    /// `holderPID` is the process id written in that file, when readable.
    case locked(path: String, holderPID: Int32?)
    /// A system call failed: `operation` names it, `errno` is its error code.
    case io(operation: String, path: String, errno: Int32)
    /// The record cannot be written (key over 65,535 UTF-8 bytes, or larger than
    /// `JournalOptions.maxRecordBytes`). Nothing of that append was written.
    case invalidRecord(String)
    /// A record read back from disk does not match its checksum (found by replay or
    /// compaction after open; open itself cuts corruption instead of failing).
    case corrupt(path: String, offset: Int, reason: String)
    /// The journal was closed; nothing more can be appended.
    case closed
    /// The journal refuses every further write; reopen it to recover what is on disk.
    /// Either an `fdatasync` failed (the kernel may have dropped dirty pages), a failed
    /// write could not be cut back, or the journal's files are no longer where the next
    /// open would read them (the data directory was deleted, renamed or replaced).
    case poisoned(String)

    /// A one-line explanation, suitable for a log line or a CLI error.
    public var description: String {
        switch self {
        case let .locked(path, pid):
            let who = pid.map { "process \($0)" } ?? "another process"
            return "journal is locked by \(who) (\(path)); is another switchboard using this data directory?"
        case let .io(operation, path, code):
            return "journal I/O error: \(operation) \(path): \(String(cString: strerror(code))) (errno \(code))"
        case let .invalidRecord(reason):
            return "journal record rejected: \(reason)"
        case let .corrupt(path, offset, reason):
            return "journal record corrupt: \(path) at offset \(offset): \(reason)"
        case .closed:
            return "journal is closed"
        case let .poisoned(reason):
            return "journal stopped accepting writes until restarted: \(reason)"
        }
    }
}

/// A point-in-time view of the journal's size and activity, e.g. for the
/// `switchboard_journal_bytes` gauge. Values are exact as of the last write batch.
public struct JournalStats: Sendable, Equatable {
    /// Bytes of records still needed to rebuild state (framing included).
    public var liveBytes: Int
    /// Bytes of all journal files on disk (segments, compacted file, headers).
    public var totalBytes: Int
    /// Number of journal files (segments plus the compacted file, if any).
    public var segmentCount: Int
    /// Number of keys with live state.
    public var liveKeys: Int
    /// Number of live records over all keys.
    public var liveRecords: Int
    /// Records appended since open.
    public var appendedRecords: Int
    /// `fdatasync` calls made to cover appended records since open (one per group
    /// commit, or one per record with `syncEveryRecord`). 0 when `fsync` is off.
    public var syncs: Int
    /// Compactions completed since open.
    public var compactions: Int
    /// The last compaction's error, if it failed (the journal keeps working without it).
    public var lastCompactionError: JournalError?
    /// Why the journal refuses every write from now on (`JournalError.poisoned`), nil
    /// while it accepts them. Only reopening clears it. A failed write that the
    /// journal could cut back (e.g. the disk was full) does not set it.
    public var poisoned: JournalError? = nil
}

/// What `Journal.open` found and repaired, for the caller to log once at start-up.
public struct JournalOpenReport: Sendable, Equatable, CustomStringConvertible {
    /// Bytes cut from the journal: a torn or corrupt tail, plus whole files after a
    /// corrupt record (moved aside, see `discardedFiles`). 0 after a clean shutdown.
    public var droppedBytes: Int
    /// Human-readable findings, one per problem ("segment-000003.log: bad checksum at
    /// offset 4096; cut 180 bytes").
    public var problems: [String]
    /// Files renamed to `*.discarded-<unix time>` because they follow a corrupt record
    /// (replaying them would skip over lost records). Kept for inspection, never read.
    public var discardedFiles: [String]
    /// Leftovers deleted: temporary files of an interrupted compaction, and files a
    /// finished compaction had already replaced.
    public var removedFiles: [String]
    /// Journal files read (after cleanup).
    public var filesRead: Int
    /// Live records recovered.
    public var liveRecords: Int
    /// Live keys recovered.
    public var liveKeys: Int

    /// One line: what was recovered, and what was dropped if anything.
    public var description: String {
        var line = "journal: recovered \(liveRecords) records for \(liveKeys) keys from \(filesRead) files"
        if droppedBytes > 0 || !problems.isEmpty {
            line += "; dropped \(droppedBytes) bytes (\(problems.joined(separator: "; ")))"
        }
        if !removedFiles.isEmpty { line += "; removed leftovers \(removedFiles.joined(separator: ", "))" }
        return line
    }
}

