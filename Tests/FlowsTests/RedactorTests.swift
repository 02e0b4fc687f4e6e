import Flows
import JSON
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

    /// Values under 8 bytes (flags, years, ports, region names) are not secrets, so
    /// ordinary data holding them is left alone.
    @Test func redact_IgnoresValuesShorterThan8Bytes() {
        let r = Redactor(secrets: ["true", "2024", "50051", "eu-west", ""])
        #expect(r.secrets.isEmpty)
        let body = Array(#"{"ok":true,"year":2024,"port":50051,"region":"eu-west"}"#.utf8)
        #expect(r.redactJSON(body) == body)
        #expect(r.redact("true 2024 eu-west") == "true 2024 eu-west")
        #expect(Redactor(secrets: ["12345678"]).secrets == [Array("12345678".utf8)])
    }

    /// A secret at the very start and end of the text is found.
    @Test func redact_FindsSecretsAtEdges() {
        let r = Redactor(secrets: ["edge_key"])
        #expect(r.redact("edge_key-middle-edge_key") == "[redacted]-middle-[redacted]")
    }

    /// Header values holding a secret are redacted; names, order and the other values stay.
    @Test func redactHeaders_ReplacesSecretsInValues_KeepingNamesAndOrder() {
        let r = Redactor(secrets: ["sk_live_ABCDEFGH"])
        let out = r.redact(headers: [("X-Api-Key", "sk_live_ABCDEFGH"), ("Content-Type", "application/json"),
                                     ("X-Echo", "Bearer sk_live_ABCDEFGH")])
        #expect(out.map(\.0) == ["X-Api-Key", "Content-Type", "X-Echo"])
        #expect(out.map(\.1) == ["[redacted]", "application/json", "Bearer [redacted]"])
    }

    /// Headers without a secret, or with no secret configured, come back unchanged.
    @Test func redactHeaders_LeavesCleanHeadersAlone() {
        let headers = [("X-Request", "abc"), ("Content-Type", "application/json")]
        for r in [Redactor(secrets: []), Redactor(secrets: ["sk_live_ABCDEFGH"])] {
            let out = r.redact(headers: headers)
            #expect(out.map(\.0) == headers.map(\.0))
            #expect(out.map(\.1) == headers.map(\.1))
        }
    }

    // MARK: - JSON bodies

    /// A secret inside a string value is replaced within the string.
    @Test func redactJSON_SecretInsideString_IsReplacedInTheString() {
        expectRedacted(["sk_live_ABCDEFGH"], #"{"msg":"token sk_live_ABCDEFGH here","n":1}"#,
                       #"{"msg":"token [redacted] here","n":1}"#)
    }

    /// A string (value or key) that is exactly the secret becomes the marker string.
    @Test func redactJSON_SecretAsWholeString_BecomesMarkerString() {
        expectRedacted(["sk_live_ABCDEFGH"], #"{"t":"sk_live_ABCDEFGH","sk_live_ABCDEFGH":2}"#,
                       #"{"t":"[redacted]","[redacted]":2}"#)
    }

    /// A number holding a numeric secret becomes the string `"[redacted]"`, wherever
    /// the secret sits in it; numbers that do not hold it are untouched.
    @Test func redactJSON_SecretInNumber_BecomesMarkerString() {
        expectRedacted(["12345678"], #"{"n":12345678,"m":[112345678,-12345678,1234567.8,3]}"#,
                       #"{"n":"[redacted]","m":["[redacted]","[redacted]",1234567.8,3]}"#)
        expectRedacted(["12345678"], "12345678", #""[redacted]""#)
        expectRedacted(["12345678"], "{\n  \"n\": 12345678\n}", "{\n  \"n\": \"[redacted]\"\n}")
    }

    /// A secret made of literals and separators: every literal it touches becomes the marker string.
    @Test func redactJSON_SecretOverLiterals_ReplacesEachLiteral() {
        expectRedacted(["true,false"], #"[true,false,null,true]"#, #"["[redacted]","[redacted]",null,true]"#)
        expectRedacted(["null, null"], "[null, null, 1]", #"["[redacted]", "[redacted]", 1]"#)
    }

    /// A secret running over a quote or separator into the next token replaces every
    /// token it touches.
    @Test func redactJSON_SecretSpanningTokens_ReplacesEachToken() {
        expectRedacted([#"sk_9f8e7d6c","n"#], #"{"id":"sk_9f8e7d6c","n":1,"m":2}"#, #"{"id":"[redacted]","[redacted]":1,"m":2}"#)
        expectRedacted(["1234,5678"], "[1234,5678,9]", #"["[redacted]","[redacted]",9]"#)
        expectRedacted([#"ab": 12345"#], #"{"ab": 12345, "c": "ab"}"#, #"{"[redacted]": "[redacted]", "c": "ab"}"#)
    }

    /// A secret holding characters JSON escapes is found escaped as the serializer writes
    /// it, and with `/` written `\/`.
    @Test func redactJSON_EscapedSecret_IsFound() {
        let secret = #"pa"ss\wo/rd"# + "\n1"
        var body: [UInt8] = []
        JSON.object(["p": .string("x " + secret + " y"), "q": .string(secret)]).serialize(into: &body)
        #expect(!String(decoding: body, as: UTF8.self).contains(secret))  // only escaped forms occur
        expectRedacted([secret], String(decoding: body, as: UTF8.self), #"{"p":"x [redacted] y","q":"[redacted]"}"#)
        expectRedacted([secret], #"{"p":"pa\"ss\\wo\/rd\n1"}"#, #"{"p":"[redacted]"}"#)
    }

    /// Bytes that only look like the secret because they start inside an escape (`\n`
    /// then `12345678` holds `n12345678`) still never survive: the string becomes the marker.
    @Test func redactJSON_LookalikeAcrossEscape_ReplacesTheString() {
        expectRedacted(["n12345678"], #"{"s":"a\n12345678","t":"n12345678 b"}"#, #"{"s":"[redacted]","t":"[redacted] b"}"#)
    }

    /// Every occurrence of every secret is handled, in strings, keys and numbers alike.
    @Test func redactJSON_MultipleOccurrences_AreAllReplaced() {
        expectRedacted(
            ["sk_live_ABCDEFGH", "12345678"],
            #"{"a":"sk_live_ABCDEFGH","b":["x sk_live_ABCDEFGH y sk_live_ABCDEFGH",12345678],"c":{"12345678":"id 12345678"}}"#,
            #"{"a":"[redacted]","b":["x [redacted] y [redacted]","[redacted]"],"c":{"[redacted]":"id [redacted]"}}"#)
        expectRedacted(["pässwört-ü"], #"{"k":"ä pässwört-ü ö"}"#, #"{"k":"ä [redacted] ö"}"#)
    }

    /// A secret made only of separators and whitespace cannot be cut out of any token:
    /// the whole body becomes the marker string.
    @Test func redactJSON_SecretOfSeparatorsOnly_RedactsTheWholeBody() {
        expectRedacted(["        "], #"{"a": 1,        "b": 2}"#, #""[redacted]""#)
    }

    /// Without an occurrence the input comes back unchanged (bytes identical), JSON or not.
    @Test func redactJSON_NoOccurrence_ReturnsInputUnchanged() {
        let r = Redactor(secrets: ["sk_live_ABCDEFGH", "http://127.0.0.1:9090"])
        for text in [#"{"a":"sk_live_ABCDEFG","b":[true,null,12345678]}"#, "", "not json sk_live", #"{"u":"http://127.0.0.1:9091"}"#] {
            let bytes = Array(text.utf8)
            #expect(r.redactJSON(bytes) == bytes)
        }
        #expect(Redactor(secrets: []).redactJSON(Array("{}".utf8)) == Array("{}".utf8))
    }

    /// Bytes that are not JSON get the plain byte replacement.
    @Test func redactJSON_NonJSONText_GetsPlainReplacement() {
        let r = Redactor(secrets: ["12345678"])
        #expect(r.redactJSON(Array("account=12345678; ok".utf8)) == Array("account=[redacted]; ok".utf8))
        #expect(r.redactJSON(Array(#"{"n":12345678"#.utf8)) == Array(#"{"n":[redacted]"#.utf8))
    }

    /// Random bodies, each with a secret cut from its own bytes (so it lands anywhere:
    /// in strings, numbers, literals, across escapes and separators), also with `/`
    /// written `\/`: the result always parses and never holds the secret.
    @Test func redactJSON_RandomSecretsFromTheBody_AlwaysLeaveValidJSON() {
        var rng = SplitMix64(seed: 0x5EC12E7)
        var checked = 0
        for _ in 0..<3000 {
            var body: [UInt8] = []
            randomJSON(depth: 0, &rng).serialize(into: &body)
            if Bool.random(using: &rng) { body = body.flatMap { $0 == 0x2F ? [0x5C, 0x2F] : [$0] } }
            guard body.count >= 8 else { continue }
            let length = Int.random(in: 8...min(20, body.count), using: &rng)
            let start = Int.random(in: 0...(body.count - length), using: &rng)
            guard let secret = String(validating: body[start..<start + length], as: UTF8.self) else { continue }
            let out = Redactor(secrets: [secret]).redactJSON(body)
            let shown = String(decoding: body, as: UTF8.self) + " with " + secret + " → " + String(decoding: out, as: UTF8.self)
            #expect((try? JSON.parse(out)) != nil, "not JSON: \(shown)")
            #expect(!contains(out, Array(secret.utf8)), "secret survived: \(shown)")
            checked += 1
        }
        #expect(checked > 1500)
    }

    private func randomJSON(depth: Int, _ rng: inout SplitMix64) -> JSON {
        switch Int.random(in: 0..<(depth < 3 ? 8 : 6), using: &rng) {
        case 0: return .bool(Bool.random(using: &rng))
        case 1: return .null
        case 2: return .int(Int64.random(in: -99_999_999_999...99_999_999_999, using: &rng))
        case 3: return .double(Double(Int.random(in: 0...99_999_999, using: &rng)) / 1000)
        case 4, 5:
            let alphabet = Array("ab12/\\\"\n\té ".unicodeScalars)
            return .string(String(String.UnicodeScalarView((0..<Int.random(in: 0...12, using: &rng)).map { _ in
                alphabet[Int.random(in: 0..<alphabet.count, using: &rng)]
            })))
        case 6: return .array((0..<Int.random(in: 0...4, using: &rng)).map { _ in randomJSON(depth: depth + 1, &rng) })
        default:
            var o = JSONObject()
            for k in 0..<Int.random(in: 0...4, using: &rng) {
                guard case .string(let key) = randomJSON(depth: 3, &rng) else { o["k\(k)"] = .null; continue }
                o[key] = randomJSON(depth: depth + 1, &rng)
            }
            return .object(o)
        }
    }

    /// Redacts `input` with `secrets` and checks the result is `expected`, parses as JSON
    /// and holds no secret's bytes.
    private func expectRedacted(_ secrets: [String], _ input: String, _ expected: String,
                                sourceLocation: SourceLocation = #_sourceLocation) {
        let out = Redactor(secrets: secrets).redactJSON(Array(input.utf8))
        #expect(String(decoding: out, as: UTF8.self) == expected, sourceLocation: sourceLocation)
        #expect((try? JSON.parse(out)) != nil, "not JSON: \(String(decoding: out, as: UTF8.self))", sourceLocation: sourceLocation)
        for secret in secrets {
            #expect(!contains(out, Array(secret.utf8)), "still holds \(secret)", sourceLocation: sourceLocation)
        }
    }

    private func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { haystack[$0..<$0 + needle.count].elementsEqual(needle) }
    }
}

/// A small seeded generator, so a failing random case reproduces.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
