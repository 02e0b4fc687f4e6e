import Dispatch
import Foundation
import Journal

/// A fresh directory under the system temp dir, deleted when the value goes away.
final class TempDirectory: Sendable {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "journal-tests-" + UUID().uuidString
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    /// Journal files (`*.log`) in replay order.
    func logFiles() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { $0.hasSuffix(".log") }.sorted { a, b in
            let ca = a.hasPrefix("compact-"), cb = b.hasPrefix("compact-")
            return ca != cb ? ca : a < b
        }
    }

    func names() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    func size(_ name: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: file(name)))?[.size] as? NSNumber)?.intValue ?? -1
    }

    func read(_ name: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: file(name)) ?? Data()) }

    func write(_ name: String, _ bytes: [UInt8]) {
        _ = FileManager.default.createFile(atPath: file(name), contents: Data(bytes))
    }

    func truncate(_ name: String, by bytes: Int) {
        let data = read(name)
        write(name, Array(data.prefix(data.count - bytes)))
    }

    func flipByte(_ name: String, at offset: Int) {
        var data = read(name)
        data[offset] ^= 0x5A
        write(name, data)
    }
}

/// File header bytes at the start of every journal file.
let fileHeaderBytes = 16

/// Bytes a record takes on disk: 13 bytes of framing plus key and payload.
func frameBytes(_ record: JournalRecord) -> Int { 13 + record.key.utf8.count + record.payload.count }

/// `count` bytes derived from `seed`, so payloads differ per record.
func payload(_ seed: Int, count: Int = 32) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: seed &* 31 &+ $0) }
}

/// Options for tests: real fsync, no automatic compaction unless asked.
func testOptions(segmentBytes: Int = 64 << 20, fsync: Bool = true, automaticCompaction: Bool = false,
                 compactionMinBytes: Int = 16 << 20, syncEveryRecord: Bool = false) -> JournalOptions {
    JournalOptions(fsync: fsync, syncEveryRecord: syncEveryRecord, segmentBytes: segmentBytes,
                   compactionMinBytes: compactionMinBytes, automaticCompaction: automaticCompaction)
}

extension Journal {
    /// Appends and blocks until the completion ran; usable from plain threads.
    func appendAndWait(_ records: [JournalRecord], durable: Bool = true) -> Result<Void, JournalError> {
        let done = DispatchSemaphore(value: 0)
        let box = LockedBox<Result<Void, JournalError>?>(nil)
        append(records, durable: durable) { result in
            box.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return box.withLock { $0! }
    }

    /// Live state as `key -> [(operation, kind, payload)]`, for compact comparisons.
    func state() throws -> [String: [JournalRecord]] { try replay() }
}

/// A model of what replay must return, applied record by record like the journal does.
struct ExpectedState {
    var keys: [String: [JournalRecord]] = [:]

    mutating func apply(_ records: [JournalRecord]) {
        for r in records {
            switch r.operation {
            case .put: keys[r.key] = [r]
            case .append: keys[r.key, default: []].append(r)
            case .delete: keys[r.key] = nil
            }
        }
    }
}

/// Runs `body(thread)` on `count` new threads and waits for all of them.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for t in 0..<count {
        group.enter()
        let thread = Thread {
            body(t)
            group.leave()
        }
        thread.start()
    }
    group.wait()
}

/// Seconds since an arbitrary start, monotonic.
func monotonicSeconds() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) / 1e9
}

extension Result {
    /// The error, or nil on success.
    var failure: Failure? {
        if case let .failure(error) = self { return error }
        return nil
    }
}

/// A value behind an `NSLock` (pthread-based, so ThreadSanitizer understands it,
/// unlike `Synchronization.Mutex` on Linux).
final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
