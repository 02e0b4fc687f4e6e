import CLinux
import Glibc

/// A point on the monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds.
///
/// Deadlines in Switchboard are absolute `Instant`s: a step attempt's timeout, a wait
/// budget and a connection's header timeout are all "the instant it ends", so time
/// spent elsewhere is never counted twice. Safe to use from any thread.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// Nanoseconds since an arbitrary, fixed point (boot time on Linux).
    public var nanoseconds: UInt64

    /// Creates an instant from raw monotonic nanoseconds.
    @inlinable public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    /// The current monotonic time (one `clock_gettime` call, no allocation).
    @inlinable public static func now() -> Instant { Instant(nanoseconds: CLinux_monotonic_ns()) }

    /// An instant later than every real one; used for "no deadline".
    public static let distantFuture = Instant(nanoseconds: UInt64.max / 2)

    /// This instant moved forward by `duration` (saturating at `distantFuture`).
    @inlinable public static func + (lhs: Instant, rhs: Duration) -> Instant {
        let ns = rhs.nanosecondsClamped
        if ns <= 0 { return Instant(nanoseconds: lhs.nanoseconds &- UInt64(min(-ns, Int64(lhs.nanoseconds)))) }
        let sum = lhs.nanoseconds.addingReportingOverflow(UInt64(ns))
        return sum.overflow || sum.partialValue > Instant.distantFuture.nanoseconds
            ? .distantFuture : Instant(nanoseconds: sum.partialValue)
    }

    /// The time from `rhs` to `lhs`; negative when `lhs` is earlier.
    @inlinable public static func - (lhs: Instant, rhs: Instant) -> Duration {
        if lhs.nanoseconds >= rhs.nanoseconds { return .nanoseconds(Int64(lhs.nanoseconds - rhs.nanoseconds)) }
        return .nanoseconds(-Int64(rhs.nanoseconds - lhs.nanoseconds))
    }

    @inlinable public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    /// Seconds from `earlier` to this instant (negative when `earlier` is later), as
    /// `Double((self - earlier).nanosecondsClamped) / 1e9` without building a `Duration`
    /// (whose 128-bit arithmetic costs more than the rest of a log line's timing).
    @inlinable public func seconds(since earlier: Instant) -> Double {
        nanoseconds >= earlier.nanoseconds ? Double(nanoseconds - earlier.nanoseconds) / 1e9
            : -Double(earlier.nanoseconds - nanoseconds) / 1e9
    }

    public var description: String { "Instant(\(nanoseconds)ns)" }
}

extension Duration {
    /// The duration in whole nanoseconds (truncated toward zero), clamped to `Int64`.
    /// One 128-by-64-bit division of the attoseconds (`components` divides 128 by 128
    /// bits in software: several hundred instructions on a request's path).
    @inlinable public var nanosecondsClamped: Int64 {
        let a = attoseconds
        let m = a.magnitude
        let hi = UInt64(truncatingIfNeeded: m >> 64), lo = UInt64(truncatingIfNeeded: m)
        // Beyond ~1.8e10 s the quotient would not fit 64 bits: clamped in any case.
        guard hi < 1_000_000_000 else { return a < 0 ? Int64.min : Int64.max }
        let q = UInt64(1_000_000_000).dividingFullWidth((high: hi, low: lo)).quotient
        if a < 0 { return q > UInt64(Int64.max) ? Int64.min : -Int64(q) }
        return q > UInt64(Int64.max) ? Int64.max : Int64(q)
    }

    /// The duration in whole milliseconds (truncated toward zero).
    @inlinable public var milliseconds: Int64 { nanosecondsClamped / 1_000_000 }
}

/// Wall-clock time in milliseconds since the Unix epoch (`CLOCK_REALTIME`), for
/// timestamps shown to people and written to the journal; never for deadlines.
@inlinable public func wallClockMilliseconds() -> Int64 { Int64(CLinux_realtime_ms()) }

/// `ms` (milliseconds since the Unix epoch) as an RFC 3339 UTC timestamp with
/// milliseconds, e.g. `2026-11-29T18:27:04.123Z`: the one form every time shown
/// to people takes (logs, jobs, callback endpoints).
public func rfc3339Timestamp(_ ms: Int64) -> String {
    let second = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
    var t = time_t(second)
    var tm = Glibc.tm()
    gmtime_r(&t, &tm)
    func p2(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    let frac = Int(ms - second * 1000)
    let f = frac < 10 ? "00\(frac)" : frac < 100 ? "0\(frac)" : "\(frac)"
    return "\(tm.tm_year + 1900)-\(p2(tm.tm_mon + 1))-\(p2(tm.tm_mday))T\(p2(tm.tm_hour)):\(p2(tm.tm_min)):\(p2(tm.tm_sec)).\(f)Z"
}
