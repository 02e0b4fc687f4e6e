// Duration strings used by route files and the config: "250ms", "2s", "1.5s", "5m", "1h".

/// Parses a duration written as a non-negative decimal number followed by a unit:
/// `ms` (milliseconds), `s` (seconds), `m` (minutes) or `h` (hours), e.g. `"250ms"`,
/// `"2s"`, `"1.5s"`, `"5m"`, `"1h"`, `"0s"`.
///
/// No sign, spaces, exponent or other unit is accepted (`""`, `"10"`, `"-1s"`, `"1d"`,
/// `"1.s"`, `".5s"` are all `nil`). Precision is one nanosecond: finer fractions are
/// truncated. Zero is accepted (`"0s"`); callers that need a positive value check it.
///
/// - Returns: the duration, or `nil` when `text` is not of that form or exceeds about 292 years.
public func parseDuration(_ text: String) -> Duration? {
    let bytes = Array(text.utf8)
    var i = 0
    var whole: UInt64 = 0
    var wholeDigits = 0
    while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
        let (m, o1) = whole.multipliedReportingOverflow(by: 10)
        let (s, o2) = m.addingReportingOverflow(UInt64(bytes[i] - 0x30))
        if o1 || o2 { return nil }
        whole = s
        wholeDigits += 1
        i += 1
    }
    guard wholeDigits > 0 else { return nil }
    var fraction: UInt64 = 0
    var fractionScale: UInt64 = 1
    if i < bytes.count, bytes[i] == 0x2E {
        i += 1
        var fractionDigits = 0
        while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
            if fractionDigits < 18 {
                fraction = fraction * 10 + UInt64(bytes[i] - 0x30)
                fractionScale *= 10
            }
            fractionDigits += 1
            i += 1
        }
        guard fractionDigits > 0 else { return nil }
    }
    let unitNanoseconds: UInt64
    switch String(decoding: bytes[i...], as: UTF8.self) {
    case "ms": unitNanoseconds = 1_000_000
    case "s": unitNanoseconds = 1_000_000_000
    case "m": unitNanoseconds = 60_000_000_000
    case "h": unitNanoseconds = 3_600_000_000_000
    default: return nil
    }
    let (wholeNs, o1) = whole.multipliedReportingOverflow(by: unitNanoseconds)
    if o1 { return nil }
    // fraction × unit / scale, exactly, in 128 bits.
    let product = fraction.multipliedFullWidth(by: unitNanoseconds)
    let fractionNs = fractionScale.dividingFullWidth(product).quotient
    let (total, o2) = wholeNs.addingReportingOverflow(fractionNs)
    if o2 || total > UInt64(Int64.max) { return nil }
    return .nanoseconds(Int64(total))
}

/// Formats a duration for people: under a second in milliseconds (`"500ms"`, `"0.25ms"`),
/// else in seconds (`"2s"`, `"25.7s"`, `"90s"`), with at most three decimals and no
/// trailing zeros. Negative durations get a leading `-`.
public func formatDuration(_ duration: Duration) -> String {
    let ns = nanoseconds(of: duration)
    if ns < 0 { return "-" + formatDuration(.nanoseconds(-ns)) }
    if ns < 1_000_000_000 { return decimal(ns, unit: 1_000_000) + "ms" }
    return decimal(ns, unit: 1_000_000_000) + "s"
}

/// `value / unit` with up to three decimals, rounded half up, trailing zeros removed.
private func decimal(_ value: Int64, unit: Int64) -> String {
    var whole = value / unit
    var fraction = ((value % unit) * 1000 + unit / 2) / unit
    if fraction == 1000 {
        whole += 1
        fraction = 0
    }
    guard fraction != 0 else { return String(whole) }
    var digits = 3
    while fraction % 10 == 0 {
        fraction /= 10
        digits -= 1
    }
    var text = String(fraction)
    while text.utf8.count < digits { text = "0" + text }
    return "\(whole).\(text)"
}

/// Whole nanoseconds in `duration`, clamped to `Int64`.
func nanoseconds(of duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    let (ms, o1) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if o1 { return seconds < 0 ? Int64.min : Int64.max }
    let (sum, o2) = ms.addingReportingOverflow(attoseconds / 1_000_000_000)
    return o2 ? (seconds < 0 ? Int64.min : Int64.max) : sum
}
