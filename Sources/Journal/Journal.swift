/// An append-only, crash-safe journal of keyed records in one directory.
///
/// Files in the directory:
/// - `LOCK`: `flock`ed while open; holds the owner's PID.
/// - `segment-NNNNNN.log`: appended records; the highest-numbered one is active.
///   A new one starts when the active one reaches `JournalOptions.segmentBytes`.
/// - `compact-NNNNNN.log`: the live records of every file numbered ≤ NNNNNN,
///   written by compaction. Replay reads it first, then the later segments.
/// - `*.tmp` (interrupted compaction, deleted on open) and `*.discarded-…`
///   (files after a corrupt record, moved aside on open; never read again).
///
/// Durability: a `durable` append's completion runs only after `fdatasync(2)`
/// covered its bytes. Appends arriving while a sync is in progress share the next
/// one (group commit). The records of one `append` call are all-or-nothing across
/// a crash.
///
/// Thread-safety: every method may be called from any thread, concurrently.
/// Completion handlers run on the journal's single writer thread, one at a time;
/// keep them short (hop back to your own loop), and never call the blocking methods
/// (`sync`, `close`, `compactNow`, `replay`, `forEachLiveRecord`) from one — that
/// is a precondition failure, as it would wait for itself.
///
/// The journal does not know what the records mean: `kind` and `payload` are opaque;
/// only `operation` and `key` decide what is live (see `JournalRecord`).
public final class Journal: Sendable {
    /// The directory given to `open`.
    public let directory: String
    /// The options given to `open`.
    public let options: JournalOptions
    /// What open found and repaired: log `openReport.description` once at start-up.
    public let openReport: JournalOpenReport

    private let core: JournalCore

    private init(core: JournalCore, report: JournalOpenReport) {
        self.core = core
        self.directory = core.directory
        self.options = core.options
        self.openReport = report
    }

    /// Opens (creating if needed) the journal in `directory`, recovering its state.
    ///
    /// Blocking: reads every journal file once. Cuts a torn or corrupt tail back to
    /// the last whole append, moves files after a corrupt record aside, deletes an
    /// interrupted compaction's leftovers; `openReport` says what and how many bytes.
    /// Never fails because of damaged contents, only because of locks and I/O.
    ///
    /// - Parameters:
    ///   - directory: the data directory; created with its parents if missing.
    ///   - options: see `JournalOptions`; default: durable, 64 MiB segments.
    /// - Throws: `JournalError.locked` when another journal (this process or another)
    ///   has the directory open; `JournalError.io` when a file operation fails.
    public static func open(directory: String, options: JournalOptions = JournalOptions()) throws(JournalError) -> Journal {
        precondition(options.segmentBytes > 0, "JournalOptions.segmentBytes must be positive")
        precondition(options.maxRecordBytes >= Format.recordOverhead, "JournalOptions.maxRecordBytes is too small")
        precondition(options.compactionRatio >= 1, "JournalOptions.compactionRatio must be at least 1")
        try FileIO.makeDirectories(directory, durable: options.fsync)
        let lock = try DirectoryLock(directory: directory)
        do throws(JournalError) {
            let recovered = try Recovery.run(directory: directory, options: options)
            let core = try JournalCore(directory: directory, options: options, lock: lock, recovered: recovered)
            return Journal(core: core, report: recovered.report)
        } catch {
            lock.release()
            throw error
        }
    }

    deinit { core.close() }

    /// Appends `records`, all-or-nothing, and calls `completion` once they are written
    /// (`durable: false`) or written and synced to disk (`durable: true`).
    ///
    /// Returns at once; the records are encoded on the calling thread and written by
    /// the writer thread. Appends from one thread are written in call order.
    /// An empty durable append completes once everything appended before it is durable.
    ///
    /// `completion` is called exactly once: on the writer thread, or — only when the
    /// journal is already closed — on the calling thread with `.closed`. Failures:
    /// `.invalidRecord` (nothing written), `.io` (nothing written; the journal goes
    /// on), `.poisoned` (a sync failed; every later write fails too), `.closed`.
    public func append(_ records: [JournalRecord], durable: Bool,
                       completion: @escaping @Sendable (Result<Void, JournalError>) -> Void) {
        var bytes: [UInt8] = []
        // Room for every frame at once: one allocation per append, not one per record.
        bytes.reserveCapacity(records.reduce(0) { $0 + Format.recordOverhead + $1.key.utf8.count + $1.payload.count })
        var pending: [PendingRecord] = []
        pending.reserveCapacity(records.count)
        var rejection: JournalError? = nil
        for (i, record) in records.enumerated() {
            do throws(JournalError) {
                let length = try Format.encode(record, more: i < records.count - 1,
                                               maxRecordBytes: options.maxRecordBytes, into: &bytes)
                pending.append(PendingRecord(operation: record.operation, key: record.key, length: length))
            } catch {
                rejection = error
                bytes = []
                pending = []
                break
            }
        }
        let work = Work.append(PendingAppend(bytes: bytes, records: pending, durable: durable,
                                             rejection: rejection, completion: completion))
        if !core.post(work) { completion(.failure(.closed)) }
    }

    /// Whether `record` can be written: its key is at most 65,535 UTF-8 bytes and its
    /// frame at most `options.maxRecordBytes`. An append of records that all fit is
    /// never rejected with `.invalidRecord`, so callers may combine them into one append.
    public func fits(_ record: JournalRecord) -> Bool {
        let keyBytes = record.key.utf8.count
        let bodyLength = Format.bodyFixedBytes + keyBytes + record.payload.count
        return keyBytes <= Int(UInt16.max) && Format.frameHeaderBytes + bodyLength <= options.maxRecordBytes
            && bodyLength <= Int(UInt32.max)
    }

    /// Appends `records`, all-or-nothing, and returns once they are written
    /// (`durable: false`) or synced to disk (`durable: true`, the default).
    /// Same semantics as `append(_:durable:completion:)`; for control paths and tests.
    /// - Throws: see `append(_:durable:completion:)`.
    public func append(_ records: [JournalRecord], durable: Bool = true) async throws(JournalError) {
        let result: Result<Void, JournalError> = await withCheckedContinuation { continuation in
            append(records, durable: durable) { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    /// Blocks until everything appended before this call is written and synced.
    /// For shutdown paths; durable appends do not need it.
    /// - Throws: `.closed`, `.poisoned`, or `.io` when the sync fails.
    public func sync() throws(JournalError) {
        try core.request { .sync($0) }.get()
    }

    /// Writes and syncs pending appends, stops the writer, closes the files and releases
    /// the directory lock. Blocking and idempotent; later appends fail with `.closed`.
    /// A running compaction is abandoned (safely: its temporary file is deleted).
    /// Also done by `deinit`.
    public func close() {
        precondition(!core.isWriterThread, "Journal.close() must not be called from a completion handler")
        core.close()
    }

    /// Compacts now: seals the active segment and rewrites every sealed file into one
    /// file holding only live records, then deletes the old files. Blocks until done.
    ///
    /// Appends go on meanwhile (the copy runs on a background queue; only the final
    /// swap runs on the writer thread). For tests and admin tools; the journal also
    /// compacts by itself (see `JournalOptions.automaticCompaction`).
    /// - Throws: `.io` or `.corrupt` when the compaction fails (state is unchanged),
    ///   `.closed` when the journal closes first.
    public func compactNow() throws(JournalError) {
        try core.request { .compact($0) }.get()
    }

    /// Size and activity counters, e.g. for the `switchboard_journal_bytes` gauge.
    /// Non-blocking; up to date as of the last write batch.
    public var stats: JournalStats { core.stats }

    /// The live state, per key: the key's `put`/`append` records in append order.
    ///
    /// Call right after `open` (before appending) to rebuild in-memory state; a call
    /// later sees every append whose completion already ran. Blocking: reads the live
    /// records from disk (sequentially, in large reads).
    /// - Throws: `.io` on a read error, `.corrupt` if a record changed on disk since open,
    ///   `.closed` after `close()`.
    public func replay() throws(JournalError) -> [String: [JournalRecord]] {
        var state: [String: [JournalRecord]] = [:]
        try forEach {
            state[$0.key, default: []].append($0)
            return true
        }
        return state
    }

    /// Calls `body` with every live record in the order the records were appended
    /// (across keys), on the calling thread. Same snapshot rules as `replay()`.
    ///
    /// Use this instead of `replay()` when rebuilding needs the global order (e.g. an
    /// endpoint registered before the jobs that use it) or the state is large.
    /// - Throws: `JournalError` as `replay()` does, or whatever `body` throws (which stops the replay).
    public func forEachLiveRecord(_ body: (JournalRecord) throws -> Void) throws {
        var failure: (any Error)? = nil
        try forEach { record in
            do {
                try body(record)
                return true
            } catch {
                failure = error
                return false
            }
        }
        if let failure { throw failure }
    }

    /// Reads the live records in order until `body` returns false.
    private func forEach(_ body: (JournalRecord) -> Bool) throws(JournalError) {
        let snapshot = try core.request { .snapshot($0) }.get()
        var reader = WindowReader()
        for location in snapshot.locations {
            guard let file = snapshot.files[location.file] else {
                throw .corrupt(path: directory, offset: location.offset, reason: "file \(location.file) is gone")
            }
            let record = try reader.withFrame(file, location) { frame -> JournalRecord? in
                guard case let .frame(f) = Format.parse(frame, at: 0, maxRecordBytes: .max) else { return nil }
                return JournalRecord(f.operation, key: f.key, kind: f.kind, payload: Array(frame[f.payload]))
            }
            guard let record else {
                throw .corrupt(path: file.path, offset: location.offset, reason: "checksum mismatch on replay")
            }
            if !body(record) { return }
        }
    }
}
