@testable import Gateway
import Testing

/// `Prefer` parsing (RFC 7240).
@Suite struct PreferenceTests {
    /// The first `wait` wins over later ones.
    @Test func wait_FirstOccurrenceWins() {
        #expect(Preference("wait=3, wait=0").waitSeconds == 3)
    }

    /// Whitespace around `=` and quotes are accepted.
    @Test func wait_AcceptsWhitespaceAndQuotes() {
        #expect(Preference("wait = 4").waitSeconds == 4)
        #expect(Preference("wait=\"5\"").waitSeconds == 5)
    }

    /// A huge number is capped rather than ignored; garbage and negatives are ignored.
    @Test func wait_HugeIsCapped_GarbageIgnored() {
        #expect((Preference("wait=99999999999999999999").waitSeconds ?? 0) > 1_000_000)
        #expect(Preference("wait=abc").waitSeconds == nil)
        #expect(Preference("wait=-1").waitSeconds == nil)
        #expect(Preference("wait=").waitSeconds == nil)
    }

    /// `respond-async` is recognised alongside other preferences, in any case.
    @Test func respondAsync_IsRecognised() {
        #expect(Preference("return=minimal, Respond-Async").respondAsync)
        #expect(!Preference("return=minimal").respondAsync)
    }
}
