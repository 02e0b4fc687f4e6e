import EventLoop
import JSON
import Testing
@testable import Gateway

/// The request log's direct writer must give the same bytes as the generic JSON path.
struct RequestLogFormatTests {
    /// Times shown to people: RFC 3339, UTC, always three fraction digits; before the
    /// epoch the fraction still counts forward from the whole second.
    @Test func rfc3339Timestamps() {
        #expect(rfc3339Timestamp(0) == "1970-01-01T00:00:00.000Z")
        #expect(rfc3339Timestamp(1_764_440_824_123) == "2025-11-29T18:27:04.123Z")
        #expect(rfc3339Timestamp(1_764_440_824_007) == "2025-11-29T18:27:04.007Z")
        #expect(rfc3339Timestamp(951_782_400_050) == "2000-02-29T00:00:00.050Z")
        #expect(rfc3339Timestamp(-1) == "1969-12-31T23:59:59.999Z")
    }

    /// `appendMilliseconds` writes exactly what `JSON.appendDouble` writes, for
    /// durations rounded to microseconds as the gateway logs them, and for others.
    @Test func millisecondsMatchDoubleSerialization() {
        var values: [Double] = [0, 0.0004, 0.001, 0.01, 0.1, 0.5, 1, 2.5, 10, 12.345, 99.999, 100, 1000.001,
                                123456.789, 999_999_999.999, 1e9, 1e12, 1e15, -1, 0.1 + 0.2, .nan, .infinity]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200_000 {
            let ms = Double(rng.next() % 10_000_000_000) / 1e6 * (rng.next() % 2 == 0 ? 1 : 1000)
            values.append((ms * 1000).rounded() / 1000)
        }
        for k in 0..<20_000 { values.append(Double(k) / 1000) }
        var mismatches: [String] = []
        for v in values {
            var fast: [UInt8] = [], slow: [UInt8] = []
            LogBuffer.appendMilliseconds(v, to: &fast)
            JSON.appendDouble(v, to: &slow)
            if fast != slow { mismatches.append("\(v): \(String(decoding: fast, as: UTF8.self)) vs \(String(decoding: slow, as: UTF8.self))") }
        }
        #expect(mismatches.isEmpty, "\(mismatches.prefix(5))")
    }
}
