import Crypto
import EventLoop
import Locking

/// Who an idempotency key belongs to (SPEC §5): the caller's API key name
/// ("" when the gateway runs open) and the route's `name`. The same key under
/// another caller or route is a different record.
public struct IdempotencyScope: Hashable, Sendable {
    /// The API key name of the caller.
    public var caller: String
    /// The route's `name`.
    public var route: String
    /// The scope of `caller`'s keys on `route`.
    public init(caller: String, route: String) {
        self.caller = caller
        self.route = route
    }
}

/// SHA-256 over a request's method, target and body: two requests under one
/// key with different fingerprints are a client error (`422`).
public struct RequestFingerprint: Hashable, Sendable, CustomStringConvertible {
    /// The 32 digest bytes.
    public let bytes: [UInt8]

    /// Wraps a digest computed elsewhere (journal replay).
    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// SHA-256 of `method` LF `target` LF `body`.
    /// - Parameters:
    ///   - target: the request target as received (path and query), so the
    ///     same path with another query is a different request.
    public init(method: String, target: String, body: [UInt8]) {
        var m = Array(method.utf8)
        m.append(0x0A)
        m.append(contentsOf: target.utf8)
        m.append(0x0A)
        m.append(contentsOf: body)
        bytes = Crypto.sha256(m)
    }

    /// Lowercase hex.
    public var description: String { Crypto.hex(bytes) }
}

/// The response a finished run produced, kept to replay it (with
/// `Idempotent-Replayed: true`, added by the gateway).
public struct StoredResponse: Sendable {
    /// HTTP status.
    public var status: Int
    /// Header fields, in order.
    public var headers: [(String, String)]
    /// The body bytes.
    public var body: [UInt8]
    /// A response to keep.
    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// One idempotency record. Plain data, so the journal can persist it.
public struct IdempotencyRecord: Sendable {
    /// Caller and route.
    public var scope: IdempotencyScope
    /// The `Idempotency-Key` value.
    public var key: String
    /// The first request's fingerprint.
    public var fingerprint: RequestFingerprint
    /// The job id of the run that owns the key.
    public var jobID: String
    /// The index of the event loop that runs it (to hop there).
    public var loopIndex: Int
    /// Wall-clock creation time, milliseconds since the Unix epoch.
    public var createdAt: Int64
    /// Wall-clock time after which the record may be dropped (ms since the
    /// epoch); meaningful once finished: records in progress are never dropped.
    public var expiresAt: Int64
    /// The run's response; nil while the run is in progress.
    public var response: StoredResponse?

    /// A record with every field given (journal replay; new ones come from `IdempotencyStore.begin`).
    public init(scope: IdempotencyScope, key: String, fingerprint: RequestFingerprint, jobID: String, loopIndex: Int,
                createdAt: Int64, expiresAt: Int64, response: StoredResponse? = nil) {
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.jobID = jobID
        self.loopIndex = loopIndex
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.response = response
    }

    /// Whether the run has finished (a response is stored).
    public var isFinished: Bool { response != nil }
}

/// Proof that `begin` returned `.new`: only its holder completes or abandons the record.
public struct IdempotencyToken: Hashable, Sendable {
    /// Caller and route.
    public let scope: IdempotencyScope
    /// The key.
    public let key: String
    /// The job id the record was claimed for.
    public let jobID: String

    /// A token for a record restored from the journal whose run is resumed.
    public init(scope: IdempotencyScope, key: String, jobID: String) {
        self.scope = scope
        self.key = key
        self.jobID = jobID
    }
}

/// What `IdempotencyStore.begin` found.
public enum IdempotencyBegin: Sendable {
    /// No live record: the caller now owns the key and must run the route, then
    /// `complete` (or `abandon`) with the token.
    case new(IdempotencyToken)
    /// Same request, still running as `jobID` on loop `loopIndex`: attach to it
    /// (`attach`), wait out this caller's own budget, then answer `202` with `jobID`.
    case inProgress(jobID: String, loopIndex: Int)
    /// Same request, finished: replay `response` without running anything.
    case finished(jobID: String, response: StoredResponse)
    /// Same key, different request (fingerprint): answer `422`.
    case mismatch
}

/// What `IdempotencyStore.attach` found.
public enum IdempotencyAttach: Sendable {
    /// The waiter is registered and will be called exactly once.
    case attached
    /// The run finished in the meantime; the waiter will not be called.
    case finished(StoredResponse)
    /// No record for that job any more (abandoned or expired): call `begin` again.
    case notFound
}

/// A malformed `Idempotency-Key` (the gateway answers `400`).
public enum IdempotencyKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The header is present but empty.
    case empty
    /// Longer than `IdempotencyStore.maxKeyBytes` (the value is its length in bytes).
    case tooLong(Int)
    /// Contains a byte outside printable ASCII (0x20–0x7E).
    case invalidCharacters

    /// A one-line reason for a problem body's `detail`.
    public var description: String {
        switch self {
        case .empty: return "Idempotency-Key must not be empty"
        case .tooLong(let n): return "Idempotency-Key is \(n) bytes long; the limit is \(IdempotencyStore.maxKeyBytes)"
        case .invalidCharacters: return "Idempotency-Key may contain only printable ASCII"
        }
    }
}

/// One change to the store, in order (for the journal).
public enum IdempotencyChange: Sendable {
    /// A key was claimed (`begin` returned `.new`).
    case began(IdempotencyRecord)
    /// The run finished; the record now holds its response.
    case completed(IdempotencyRecord)
    /// The record was dropped (abandoned or expired).
    case removed(scope: IdempotencyScope, key: String)
}

/// Idempotency records (SPEC §5), scoped by (caller, route, key).
///
/// Thread-safe: every operation takes one `Locked` briefly and does no I/O, so
/// any loop may call it; `begin` is atomic, so of many concurrent requests
/// with one key exactly one gets `.new` and only that one calls upstreams.
/// Waiters registered with `attach` are called outside the lock, on the thread
/// that calls `complete` or `abandon`.
public final class IdempotencyStore: Sendable {
    /// Longest key accepted, in bytes. Default: 255 (SPEC §5).
    public static let maxKeyBytes = 255

    /// How long a finished record is kept, counted from when its run finished.
    /// Default: 24 h.
    public let ttl: Duration

    private struct Composite: Hashable {
        let scope: IdempotencyScope
        let key: String
    }
    private struct Entry {
        var record: IdempotencyRecord
        var waiters: [@Sendable (StoredResponse?) -> Void] = []
        /// Restored in progress with no job behind it (the process died before the
        /// run's job record was durable, so no caller got a `202` for it): the next
        /// request with the same key and fingerprint runs it again, as the same job.
        var resumable = false
    }
    private let entries = Locked<[Composite: Entry]>([:])
    private let onChange: (@Sendable (IdempotencyChange) -> Void)?

    /// - Parameters:
    ///   - ttl: how long finished records are kept. Default: 24 h.
    ///   - onChange: called once per change, in order, while the store's lock is
    ///     held; keep it short and never call back into the store from it.
    ///     `restore` does not call it.
    public init(ttl: Duration = .seconds(86_400), onChange: (@Sendable (IdempotencyChange) -> Void)? = nil) {
        self.ttl = ttl
        self.onChange = onChange
    }

    /// Checks a key's shape: 1...255 bytes of printable ASCII.
    /// - Throws: `IdempotencyKeyError`.
    public static func validate(key: String) throws(IdempotencyKeyError) {
        let n = key.utf8.count
        if n == 0 { throw .empty }
        if n > maxKeyBytes { throw .tooLong(n) }
        if !key.utf8.allSatisfy({ $0 >= 0x20 && $0 <= 0x7E }) { throw .invalidCharacters }
    }

    /// Looks up `key` in `scope` and, when there is no live record, claims it
    /// for `jobID` — atomically.
    /// - Parameters:
    ///   - jobID: the id the new run will have (create the run with it).
    ///   - loopIndex: the loop that will run it, for duplicates to hop to.
    ///   - now: wall-clock milliseconds since the Unix epoch (for tests).
    /// - Throws: `IdempotencyKeyError` for a malformed key (nothing is stored).
    public func begin(_ scope: IdempotencyScope, key: String, fingerprint: RequestFingerprint, jobID: String,
                      loopIndex: Int, now: Int64 = wallClockMilliseconds()) throws(IdempotencyKeyError) -> IdempotencyBegin {
        try IdempotencyStore.validate(key: key)
        let c = Composite(scope: scope, key: key)
        return entries.withLock { map -> IdempotencyBegin in
            if let e = map[c] {
                let expired = e.record.isFinished && now >= e.record.expiresAt
                var resumedJobID: String?
                if !expired {
                    guard e.record.fingerprint == fingerprint else { return .mismatch }
                    if let r = e.record.response { return .finished(jobID: e.record.jobID, response: r) }
                    guard e.resumable else { return .inProgress(jobID: e.record.jobID, loopIndex: e.record.loopIndex) }
                    // Run again under the job id it had, so its steps send the same
                    // idempotency keys upstream (an upstream that saw them dedupes).
                    resumedJobID = e.record.jobID
                }
                map[c] = nil
                onChange?(.removed(scope: scope, key: key))
                if let resumedJobID {
                    let rec = IdempotencyRecord(scope: scope, key: key, fingerprint: fingerprint, jobID: resumedJobID,
                                                loopIndex: loopIndex, createdAt: now, expiresAt: now + ttl.milliseconds)
                    map[c] = Entry(record: rec)
                    onChange?(.began(rec))
                    return .new(IdempotencyToken(scope: scope, key: key, jobID: resumedJobID))
                }
            }
            let rec = IdempotencyRecord(scope: scope, key: key, fingerprint: fingerprint, jobID: jobID,
                                        loopIndex: loopIndex, createdAt: now, expiresAt: now + ttl.milliseconds)
            map[c] = Entry(record: rec)
            onChange?(.began(rec))
            return .new(IdempotencyToken(scope: scope, key: key, jobID: jobID))
        }
    }

    /// Registers `waiter` to learn how the run `jobID` holding `key` ends: it
    /// is called once with the stored response when the run completes, or with
    /// nil when the owner abandons the key. Call after `begin` returned
    /// `.inProgress(jobID, …)`; hop to your loop inside the waiter.
    public func attach(_ scope: IdempotencyScope, key: String, jobID: String,
                       waiter: @escaping @Sendable (StoredResponse?) -> Void) -> IdempotencyAttach {
        entries.withLock { map -> IdempotencyAttach in
            let c = Composite(scope: scope, key: key)
            guard let e = map[c], e.record.jobID == jobID else { return .notFound }
            if let r = e.record.response { return .finished(r) }
            map[c]!.waiters.append(waiter)
            return .attached
        }
    }

    /// Stores the run's response for replay and wakes attached waiters. The
    /// record is kept `ttl` from `now`. A token whose record is gone is ignored.
    /// - Returns: false when the token no longer matches a record.
    @discardableResult
    public func complete(_ token: IdempotencyToken, with response: StoredResponse, now: Int64 = wallClockMilliseconds()) -> Bool {
        let waiters = entries.withLock { map -> [@Sendable (StoredResponse?) -> Void]? in
            let c = Composite(scope: token.scope, key: token.key)
            guard var e = map[c], e.record.jobID == token.jobID, !e.record.isFinished else { return nil }
            e.record.response = response
            e.record.expiresAt = now + ttl.milliseconds
            let w = e.waiters
            e.waiters = []
            map[c] = e
            onChange?(.completed(e.record))
            return w
        }
        guard let waiters else { return false }
        for w in waiters { w(response) }
        return true
    }

    /// Releases a key whose run never started (e.g. it was refused before any
    /// upstream call): the record is dropped and waiters get nil.
    /// - Returns: false when the token no longer matches an unfinished record.
    @discardableResult
    public func abandon(_ token: IdempotencyToken) -> Bool {
        let waiters = entries.withLock { map -> [@Sendable (StoredResponse?) -> Void]? in
            let c = Composite(scope: token.scope, key: token.key)
            guard let e = map[c], e.record.jobID == token.jobID, !e.record.isFinished else { return nil }
            map[c] = nil
            onChange?(.removed(scope: token.scope, key: token.key))
            return e.waiters
        }
        guard let waiters else { return false }
        for w in waiters { w(nil) }
        return true
    }

    /// Drops finished records whose `expiresAt` has passed. Call periodically
    /// (e.g. every minute from one loop).
    /// - Returns: how many were dropped.
    @discardableResult
    public func sweep(now: Int64 = wallClockMilliseconds()) -> Int {
        entries.withLock { map -> Int in
            let dead = map.filter { $0.value.record.isFinished && now >= $0.value.record.expiresAt }.map(\.key)
            for c in dead {
                map[c] = nil
                onChange?(.removed(scope: c.scope, key: c.key))
            }
            return dead.count
        }
    }

    /// The record for `key` in `scope`, live or not yet swept.
    public func record(_ scope: IdempotencyScope, key: String) -> IdempotencyRecord? {
        entries.withLock { $0[Composite(scope: scope, key: key)]?.record }
    }

    /// Puts records back (journal replay), replacing any with the same scope and
    /// key; does not call `onChange`.
    /// - Parameter jobIDs: the ids of every job the journal holds, when known. A
    ///   record in progress whose job is not among them (the process died before the
    ///   job was journaled, so no caller was told of it) is kept as resumable: the
    ///   next `begin` with its key and fingerprint returns `.new` with the record's
    ///   own job id instead of `.inProgress` for a job that no longer exists.
    ///   Default (nil): every record is restored as it was.
    public func restore(_ records: [IdempotencyRecord], jobIDs: Set<String>? = nil) {
        entries.withLock { map in
            for r in records {
                var e = Entry(record: r)
                if let jobIDs, !r.isFinished, !jobIDs.contains(r.jobID) { e.resumable = true }
                map[Composite(scope: r.scope, key: r.key)] = e
            }
        }
    }

    /// Every record (for compaction snapshots).
    public var all: [IdempotencyRecord] { entries.withLock { $0.values.map(\.record) } }

    /// Number of records held.
    public var count: Int { entries.withLock { $0.count } }
}
