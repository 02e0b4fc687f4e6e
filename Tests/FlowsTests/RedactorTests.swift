import Flows
import Testing

@Suite struct RedactorTests {
    /// Every occurrence of every secret is replaced, longest secret first.
    @Test func redact_ReplacesEveryOccurrence() {
        let r = Redactor(secrets: ["sk_live_123", "sk_live_123456"])
        #expect(r.redact("a sk_live_123456 b sk_live_123 c sk_live_123456") == "a [redacted] b [redacted] c [redacted]")
    }

    /// Text without secrets comes back unchanged (bytes identical).
    @Test func redact_LeavesCleanTextAlone() {
        let r = Redactor(secrets: ["topsecret"])
        let bytes = Array("{\"a\":\"top secret\"}".utf8)
        #expect(r.redact(bytes) == bytes)
    }

    /// Secrets shorter than 4 bytes are ignored rather than shredding ordinary text.
    @Test func redact_IgnoresTinySecrets() {
        let r = Redactor(secrets: ["ab", ""])
        #expect(r.redact("abcabc") == "abcabc")
    }

    /// A secret at the very start and end of the text is found.
    @Test func redact_FindsSecretsAtEdges() {
        let r = Redactor(secrets: ["edge"])
        #expect(r.redact("edge-middle-edge") == "[redacted]-middle-[redacted]")
    }
}
