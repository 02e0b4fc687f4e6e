import EventLoop
import Glibc
import JSON
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
    public func log(_ level: String, _ message: String, _ fields: [(String, JSON)] = []) {
        guard LogBuffer.rank(level) >= minimumLevel else { return }
        if LogBuffer.keysAreDistinct(fields) {
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
        o["time"] = .string(LogBuffer.timestamp(wallClockMilliseconds()))
        o["level"] = .string(level)
        o["msg"] = .string(message)
        for (k, v) in fields { o[k] = v }
        JSON.object(o).serialize(into: &pending)
        pending.append(0x0A)
        scheduleFlush()
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
            let full = LogBuffer.timestamp(second * 1000)
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
        LogBuffer.writeLock.withLock { _ in
            pending.withUnsafeBytes { p in
                var off = 0
                while off < p.count {
                    let n = Glibc.write(1, p.baseAddress! + off, p.count - off)
                    if n <= 0 { if errno == EINTR { continue }; break }
                    off += n
                }
            }
        }
        pending.removeAll(keepingCapacity: true)
    }

    private static let writeLock = Mutex<Void>(())

    /// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-29T18:27:04.123Z`.
    public static func timestamp(_ ms: Int64) -> String {
        var t = time_t(ms / 1000)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        func p2(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let frac = Int(ms % 1000)
        let f = frac < 10 ? "00\(frac)" : frac < 100 ? "0\(frac)" : "\(frac)"
        return "\(tm.tm_year + 1900)-\(p2(tm.tm_mon + 1))-\(p2(tm.tm_mday))T\(p2(tm.tm_hour)):\(p2(tm.tm_min)):\(p2(tm.tm_sec)).\(f)Z"
    }
}
