import EventLoop
import Glibc
import JSON
import Locking
import Synchronization

/// Structured logs: one JSON object per line on standard output, each line
/// written whole (one `write(2)` per batch, under a process-wide lock so lines
/// from different loops never interleave).
///
/// Each event loop owns one `LogBuffer` and appends to it without locking; the
/// buffer is flushed once at the end of the loop iteration, so a burst of
/// requests costs one system call, not one per line.
public final class LogBuffer {
    private var pending: [UInt8] = []
    private var flushScheduled = false
    private let loop: EventLoop?
    private let minimumLevel: Int

    /// Creates a buffer for `loop` (nil: write through at once, for non-loop threads).
    /// - Parameter level: the lowest level written: `debug`, `info`, `warn`, `error`.
    public init(loop: EventLoop?, level: String = "info") {
        self.loop = loop
        self.minimumLevel = LogBuffer.rank(level)
    }

    static func rank(_ level: String) -> Int {
        switch level {
        case "debug": return 0
        case "warn": return 2
        case "error": return 3
        default: return 1
        }
    }

    /// Appends one line with `time`, `level` and `msg` first, then `fields`.
    /// Values must already be free of secrets. Call on the buffer's loop thread.
    /// `keysDistinct`: the caller guarantees no key repeats another or `time`,
    /// `level`, `msg` (skips the check).
    public func log(_ level: String, _ message: String, _ fields: [(String, JSON)] = [], keysDistinct: Bool = false) {
        guard LogBuffer.rank(level) >= minimumLevel else { return }
        append(level, message, fields, keysDistinct: keysDistinct)
    }

    /// Appends a lifecycle line that tools read (`listening`, with the bound addresses)
    /// at level `info`, whatever the buffer's minimum level: `log_level` never drops it.
    /// Otherwise as `log` (same shape, same thread rule).
    public func announce(_ message: String, _ fields: [(String, JSON)] = []) {
        append("info", message, fields, keysDistinct: false)
    }

    /// Appends one line, unfiltered (`log` and `announce` decide whether it is wanted).
    private func append(_ level: String, _ message: String, _ fields: [(String, JSON)], keysDistinct: Bool) {
        if keysDistinct || LogBuffer.keysAreDistinct(fields) {
            // Fast path: the same bytes as the JSONObject path, written directly.
            appendTimeLevelMessage(level, message)
            for (k, v) in fields {
                pending.append(0x2C)
                JSON.appendQuoted(k, to: &pending)
                pending.append(0x3A)
                v.serialize(into: &pending)
            }
            pending.append(0x7D)
            pending.append(0x0A)
            scheduleFlush()
            return
        }
        var o = JSONObject()
        o["time"] = .string(rfc3339Timestamp(wallClockMilliseconds()))
        o["level"] = .string(level)
        o["msg"] = .string(message)
        for (k, v) in fields { o[k] = v }
        JSON.object(o).serialize(into: &pending)
        pending.append(0x0A)
        scheduleFlush()
    }

    /// The `request` line (`info`): the same bytes as `log("info", "request", fields)`
    /// with the fields `request_id`, `route` (when matched), `method` and `path` (when
    /// known: not for a request whose head could not be read), `status`,
    /// `duration_ms`, `outcome`, `bytes`, then `detail` (a short reason, for what the
    /// HTTP layer refused on its own), `job_id` and `trace_id` when given —
    /// written straight to the buffer, without a field array.
    public func logRequest(requestID: String, route: String?, method: String?, path: String?, status: Int,
                           durationMs: Double, outcome: String, bytes: Int, detail: String? = nil,
                           jobID: String?, traceID: String?) {
        guard LogBuffer.rank("info") >= minimumLevel else { return }
        appendTimeLevelMessage("info", "request")
        appendField(LogBuffer.kRequestID, requestID)
        appendField(LogBuffer.kRoute, route)
        appendField(LogBuffer.kMethod, method)
        appendField(LogBuffer.kPath, path)
        pending.append(contentsOf: LogBuffer.kStatus)
        JSON.appendInteger(Int64(status), to: &pending)
        pending.append(contentsOf: LogBuffer.kDurationMs)
        LogBuffer.appendMilliseconds(durationMs, to: &pending)
        appendField(LogBuffer.kOutcome, outcome)
        pending.append(contentsOf: LogBuffer.kBytes)
        JSON.appendInteger(Int64(bytes), to: &pending)
        appendField(LogBuffer.kDetail, detail)
        appendField(LogBuffer.kJobID, jobID)
        appendField(LogBuffer.kTraceID, traceID)
        pending.append(0x7D)
        pending.append(0x0A)
        scheduleFlush()
    }

    /// Appends `key` (`,"name":`) and `value` as a JSON string, when `value` is set.
    private func appendField(_ key: [UInt8], _ value: String?) {
        guard let value else { return }
        pending.append(contentsOf: key)
        JSON.appendQuoted(value, to: &pending)
    }

    private static let kRequestID = Array(",\"request_id\":".utf8)
    private static let kRoute = Array(",\"route\":".utf8)
    private static let kMethod = Array(",\"method\":".utf8)
    private static let kPath = Array(",\"path\":".utf8)
    private static let kStatus = Array(",\"status\":".utf8)
    private static let kDurationMs = Array(",\"duration_ms\":".utf8)
    private static let kOutcome = Array(",\"outcome\":".utf8)
    private static let kBytes = Array(",\"bytes\":".utf8)
    private static let kDetail = Array(",\"detail\":".utf8)
    private static let kJobID = Array(",\"job_id\":".utf8)
    private static let kTraceID = Array(",\"trace_id\":".utf8)

    /// Appends `value` exactly as `JSON.double(value)` serializes, fast for what
    /// request durations are: `k / 1000` for a whole number `0 ≤ k < 10^12`
    /// (e.g. `12.5`, `0.042`, `3.0`). Below 2^53 / 1000 the spacing of doubles is far
    /// finer than 0.001, so the shortest round-trip text of the double nearest
    /// `k / 1000` is `k / 1000` in decimal with trailing zeros dropped (at least one
    /// fractional digit, as Swift's `description` writes it). Anything else goes
    /// through `JSON.appendDouble`.
    static func appendMilliseconds(_ value: Double, to out: inout [UInt8]) {
        let scaled = (value * 1000).rounded()
        guard value >= 0.001, scaled < 1e12, scaled / 1000 == value else {
            JSON.appendDouble(value, to: &out)
            return
        }
        let k = Int64(scaled)
        JSON.appendInteger(k / 1000, to: &out)
        out.append(0x2E)
        var frac = Int(k % 1000)
        if frac == 0 { out.append(0x30); return }
        var digits = 3
        while frac % 10 == 0 { frac /= 10; digits -= 1 }
        if digits == 3 {
            out.append(UInt8(0x30 + frac / 100)); out.append(UInt8(0x30 + (frac / 10) % 10)); out.append(UInt8(0x30 + frac % 10))
        } else if digits == 2 {
            out.append(UInt8(0x30 + frac / 10)); out.append(UInt8(0x30 + frac % 10))
        } else {
            out.append(UInt8(0x30 + frac))
        }
    }

    /// Whether no field repeats another or `time`, `level`, `msg` (the fast path's condition).
    private static func keysAreDistinct(_ fields: [(String, JSON)]) -> Bool {
        for i in fields.indices {
            let k = fields[i].0
            if k == "time" || k == "level" || k == "msg" { return false }
            var j = i + 1
            while j < fields.count {
                if fields[j].0 == k { return false }
                j += 1
            }
        }
        return true
    }

    // `{"time":"2026-11-29T18:27:04.123Z","level":"…","msg":"…"` (no closing brace).
    private func appendTimeLevelMessage(_ level: String, _ message: String) {
        let ms = wallClockMilliseconds()
        let second = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        if second != cachedSecond || cachedPrefix.isEmpty {
            // `{"time":"2026-11-29T18:27:04.` — everything before the milliseconds.
            let full = rfc3339Timestamp(second * 1000)
            cachedPrefix = Array("{\"time\":\"".utf8) + Array(full.utf8.dropLast(4))
            cachedSecond = second
        }
        pending.append(contentsOf: cachedPrefix)
        let frac = Int(ms - second * 1000)
        pending.append(UInt8(0x30 + frac / 100))
        pending.append(UInt8(0x30 + (frac / 10) % 10))
        pending.append(UInt8(0x30 + frac % 10))
        pending.append(contentsOf: LogBuffer.afterTime)
        JSON.appendQuoted(level, to: &pending)
        pending.append(contentsOf: LogBuffer.afterLevel)
        JSON.appendQuoted(message, to: &pending)
    }

    private var cachedSecond: Int64 = .min
    private var cachedPrefix: [UInt8] = []
    private static let afterTime = Array("Z\",\"level\":".utf8)
    private static let afterLevel = Array(",\"msg\":".utf8)

    private func scheduleFlush() {
        if let loop {
            if !flushScheduled {
                flushScheduled = true
                loop.deferUntilEndOfIteration { [self] in
                    flushScheduled = false
                    flush()
                }
            }
        } else {
            flush()
        }
    }

    /// Writes what is buffered.
    public func flush() {
        guard !pending.isEmpty else { return }
        LogBuffer.output.withLock { fd in
            pending.withUnsafeBytes { p in
                var off = 0
                while off < p.count {
                    let n = Glibc.write(fd, p.baseAddress! + off, p.count - off)
                    if n <= 0 { if errno == EINTR { continue }; break }
                    off += n
                }
            }
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Standard output's descriptor, behind the process-wide lock that keeps lines from
    /// different threads whole. (Not `Locked<Void>`: a zero-sized value shares its
    /// address with the lock's own field, and ThreadSanitizer reports that as a race.)
    private static let output = Locked<Int32>(1)

}
