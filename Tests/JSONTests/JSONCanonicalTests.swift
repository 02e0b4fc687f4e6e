import JSON
import Testing

/// `isCanonicalCompact` may only say yes when `serialize(parse(x)) == x`.
@Suite struct JSONCanonicalTests {
    static let canonical = [
        #"{"id":"ord_7f3a9c21","items":[{"sku":"S-1","qty":3,"price":1999}],"ok":true,"n":null}"#,
        #"[]"#, #"{}"#, #"[1,-2,0,"a\"b\\c\n\t"]"#, #""x""#, #"123456789012345678"#, #"{"a":{"a":1}}"#,
    ]
    static let notCanonical = [
        #"{ "a": 1 }"#, #"{"a":1,"a":2}"#, #"1.5"#, #"1e3"#, #"-0"#, #""\/""#, #""\u0041""#, #""é""#,
        #"1234567890123456789"#, #"[1,]"#, #"{"a":1"#, #""#, #"tru"#, #"01"#, "[1] ", #"{"a":1}x"#,
    ]

    /// Whether `serialize(parse(text)) == text` (false when it is not JSON).
    static func roundTrips(_ bytes: [UInt8]) -> Bool {
        guard let parsed = try? JSON.parse(bytes) else { return false }
        return parsed.serialized == bytes
    }

    /// Every byte that needs a look, at every offset of strings 1–24 bytes long (so in
    /// and across the 8-byte words the string scan reads at once): the scan says yes
    /// only when the round trip holds, and for every plain string.
    @Test func stringBytesAtEveryOffset() {
        let special: [[UInt8]] = [[0x22], [0x5C], [0x5C, 0x6E], [0x5C, 0x2F], [0x01], [0x1F], [0x7F], [0x80], [0xC3, 0xA9], [0xFF], [0x20], [0x7E]]
        for length in 1...24 {
            #expect(JSON.isCanonicalCompact([0x22] + Array(repeating: 0x61, count: length) + [0x22]))
            for s in special {
                for at in 0...length {
                    var inner = Array(repeating: UInt8(0x61), count: length)
                    inner.insert(contentsOf: s, at: at)
                    for text in [[0x22] + inner + [0x22], Array(#"{"k":""#.utf8) + inner + Array(#""}"#.utf8)] {
                        let scanned = JSON.isCanonicalCompact(text)
                        if scanned { #expect(JSONCanonicalTests.roundTrips(text), "\(text)") }
                        if s == [0x22] || s == [0x01] || s == [0x1F] || s == [0x7F] || s.first! >= 0x80 || s == [0x5C, 0x2F] {
                            #expect(!scanned, "\(text)")
                        }
                        if s == [0x20] || s == [0x7E] || s == [0x5C, 0x6E] { #expect(scanned, "\(text)") }
                    }
                }
            }
        }
    }

    /// Repeated keys are refused however many keys come between, including keys that
    /// share a length and end bytes with others; distinct ones that share them are not.
    @Test func repeatedKeysAmongLookAlikes() {
        let lookAlikes = ["ab", "ba", "aab", "abb", "a1b", "a2b", "", "x", "abcdefghij", "abcdxfghij"]
        for (i, key) in lookAlikes.enumerated() {
            let others = lookAlikes.filter { $0 != key }.prefix(14)
            let members = others.map { "\"\($0)\":1" }
            let distinct = "{" + (members + ["\"\(key)\":2"]).joined(separator: ",") + "}"
            #expect(JSON.isCanonicalCompact(Array(distinct.utf8)), "\(distinct)")
            #expect(JSONCanonicalTests.roundTrips(Array(distinct.utf8)))
            var repeated = members
            repeated.insert("\"\(key)\":3", at: i % (members.count + 1))
            let text = "{" + (repeated + ["\"\(key)\":2"]).joined(separator: ",") + "}"
            #expect(!JSON.isCanonicalCompact(Array(text.utf8)), "\(text)")
        }
    }

    @Test func agreesWithParseAndSerialize() throws {
        for text in JSONCanonicalTests.canonical {
            #expect(JSON.isCanonicalCompact(Array(text.utf8)), "\(text)")
            let parsed = try JSON.parse(Array(text.utf8))
            #expect(parsed.serialized == Array(text.utf8), "\(text)")
        }
        for text in JSONCanonicalTests.notCanonical {
            #expect(!JSON.isCanonicalCompact(Array(text.utf8)), "\(text)")
        }
    }
}
