import Testing
import EventLoop

/// `Duration.nanosecondsClamped` (one 128-by-64-bit division) against the arithmetic of
/// `Duration.components`, which it replaced on a request's path, and `Instant + Duration`
/// at its edges.
struct DurationArithmeticTests {
    /// The seconds-and-attoseconds arithmetic: whole nanoseconds, truncated toward zero,
    /// clamped to `Int64`.
    static func reference(_ d: Duration) -> Int64 {
        let (s, atto) = d.components
        let (ms, o1) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if o1 { return s < 0 ? Int64.min : Int64.max }
        let (sum, o2) = ms.addingReportingOverflow(atto / 1_000_000_000)
        return o2 ? (s < 0 ? Int64.min : Int64.max) : sum
    }

    @Test func nanosecondsClamped_MatchesTheComponentsArithmetic() {
        var cases: [Duration] = [
            .zero, .nanoseconds(1), .nanoseconds(-1), .milliseconds(250), .milliseconds(-1500),
            .seconds(5), .seconds(60), .seconds(86_400 * 365),
            .seconds(9_223_372_036), .seconds(9_223_372_037), .seconds(-9_223_372_036), .seconds(-9_223_372_037),
            .seconds(Int64.max), .seconds(Int64.min),
            Duration(secondsComponent: 3, attosecondsComponent: 999_999_999_999_999_999),
            Duration(secondsComponent: -3, attosecondsComponent: -1),
            Duration(secondsComponent: 0, attosecondsComponent: 999_999_999),
            Duration(secondsComponent: 0, attosecondsComponent: -999_999_999),
            Duration(secondsComponent: 9_223_372_036, attosecondsComponent: 854_775_807_999_999_999),
            Duration(secondsComponent: -9_223_372_036, attosecondsComponent: -854_775_808_000_000_000),
            Duration(secondsComponent: -9_223_372_036, attosecondsComponent: -854_775_808_999_999_999),
        ]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            cases.append(Duration(secondsComponent: Int64.random(in: -20_000_000_000...20_000_000_000, using: &rng),
                                  attosecondsComponent: Int64.random(in: -999_999_999_999_999_999...999_999_999_999_999_999, using: &rng)))
        }
        for d in cases {
            #expect(d.nanosecondsClamped == DurationArithmeticTests.reference(d), "\(d)")
        }
        #expect(Duration.seconds(9_223_372_037).nanosecondsClamped == Int64.max)
        #expect(Duration.seconds(-9_223_372_037).nanosecondsClamped == Int64.min)
        #expect(Duration(secondsComponent: -3, attosecondsComponent: -1).nanosecondsClamped == -3_000_000_000)
    }

    @Test func instantPlusDuration_ClampsAtBothEnds() {
        let t = Instant(nanoseconds: 1_000)
        #expect(t + .nanoseconds(500) == Instant(nanoseconds: 1_500))
        #expect(t + .nanoseconds(-400) == Instant(nanoseconds: 600))
        #expect(t + .seconds(-5) == Instant(nanoseconds: 0))
        #expect(t + .seconds(Int64.max) == .distantFuture)
        #expect(t + .seconds(5) == Instant(nanoseconds: 5_000_001_000))
    }
}
