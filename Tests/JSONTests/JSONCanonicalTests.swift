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
