import JSON
import Testing

/// Parses `text`, returning the error (or nil when it parsed).
private func parseError(_ text: String) -> JSONError? {
    do {
        _ = try JSON.parse(text)
        return nil
    } catch {
        return error
    }
}

/// Parses raw bytes, returning the error (or nil when it parsed).
private func parseError(_ bytes: [UInt8]) -> JSONError? {
    do {
        _ = try JSON.parse(bytes)
        return nil
    } catch {
        return error
    }
}

@Suite struct JSONParseTests {
    /// Every scalar literal parses to its case, surrounded by any JSON whitespace.
    @Test func parse_ReturnsScalar_ForEachLiteral() throws {
        #expect(try JSON.parse(" null ") == .null)
        #expect(try JSON.parse("\ttrue\n") == .bool(true))
        #expect(try JSON.parse("\r\nfalse") == .bool(false))
        #expect(try JSON.parse("\"hi\"") == .string("hi"))
    }

    /// Integer literals stay `.int`, keeping their exact value.
    @Test func parse_KeepsIntegerKind_WhenLiteralHasNoFractionOrExponent() throws {
        guard case .int(let v) = try JSON.parse("42") else { Issue.record("not int"); return }
        #expect(v == 42)
        guard case .int(let n) = try JSON.parse("-17") else { Issue.record("not int"); return }
        #expect(n == -17)
        guard case .int(let z) = try JSON.parse("-0") else { Issue.record("not int"); return }
        #expect(z == 0)
    }

    /// The Int64 extremes parse exactly as `.int`.
    @Test func parse_ReturnsInt_ForInt64Extremes() throws {
        guard case .int(let max) = try JSON.parse("9223372036854775807"),
              case .int(let min) = try JSON.parse("-9223372036854775808")
        else { Issue.record("not int"); return }
        #expect(max == Int64.max)
        #expect(min == Int64.min)
    }

    /// Integers beyond Int64 become `.double` rather than failing or wrapping.
    @Test func parse_ReturnsDouble_WhenIntegerExceedsInt64() throws {
        guard case .double(let d) = try JSON.parse("9223372036854775808") else { Issue.record("not double"); return }
        #expect(d == 9_223_372_036_854_775_808.0)
        guard case .double(let big) = try JSON.parse("-123456789012345678901234567890") else { Issue.record("not double"); return }
        #expect(big == -1.2345678901234568e29)
    }

    /// Fractions and exponents parse as `.double`, correctly rounded.
    @Test(arguments: [
        ("1.5", 1.5), ("-0.25", -0.25), ("1e3", 1000.0), ("1E+3", 1000.0), ("2.5e-3", 0.0025),
        ("0.1", 0.1), ("0.000123", 0.000123), ("1.7976931348623157e308", 1.7976931348623157e308),
        ("5e-324", Double.leastNonzeroMagnitude), ("2.2250738585072014e-308", 2.2250738585072014e-308),
        ("9007199254740993.0", 9007199254740992.0), ("123456789.123456789123", 123456789.12345679),
        ("1e-400", 0.0), ("0e99999", 0.0),
    ])
    func parse_ReturnsCorrectlyRoundedDouble_ForFractionOrExponent(text: String, expected: Double) throws {
        guard case .double(let d) = try JSON.parse(text) else { Issue.record("not double: \(text)"); return }
        #expect(d == expected)
    }

    /// Malformed numbers are rejected with the offset of the problem.
    @Test(arguments: [
        ("01", 0, "invalid number: leading zero"), ("-", 1, "invalid number: expected a digit"),
        ("1.", 2, "invalid number: expected a digit after '.'"), (".5", 0, "unexpected '.', expected a value"),
        ("1e", 2, "invalid number: expected a digit in the exponent"), ("+1", 0, "unexpected '+', expected a value"),
        ("-a", 1, "invalid number: expected a digit"), ("[1,2e+]", 6, "invalid number: expected a digit in the exponent"),
        ("1e400", 0, "number out of range"), ("NaN", 0, "unexpected 'N', expected a value"),
    ])
    func parse_RejectsNumber_WhenMalformed(text: String, offset: Int, message: String) {
        #expect(parseError(text) == JSONError(offset: offset, message: message))
    }

    /// Every RFC 8259 escape decodes to its character.
    @Test func parse_DecodesEscapes_InStrings() throws {
        let json = try JSON.parse(#""a\"b\\c\/d\be\ff\ng\rh\ti\u0041\u00e9\u20AC\u0000""#)
        #expect(json == .string("a\"b\\c/d\u{8}e\u{C}f\ng\rh\ti" + "A\u{E9}\u{20AC}\u{0}"))
    }

    /// A surrogate-pair escape decodes to one astral scalar.
    @Test func parse_DecodesSurrogatePair_ToAstralScalar() throws {
        #expect(try JSON.parse(#""\ud83d\ude00!""#) == .string("\u{1F600}!"))
    }

    /// Raw UTF-8 (2-, 3- and 4-byte sequences) passes through unchanged.
    @Test func parse_KeepsRawUTF8_InStrings() throws {
        #expect(try JSON.parse("\"é€😀\"") == .string("é€😀"))
    }

    /// Lone surrogate escapes are rejected (they cannot be Unicode text).
    @Test(arguments: [
        (#""\ud83d""#, 1, "unpaired high surrogate escape"),
        (#""\ud83dx""#, 1, "unpaired high surrogate escape"),
        (#""\ud83d\u0041""#, 1, "unpaired high surrogate escape"),
        (#""ab\ude00""#, 3, "unpaired low surrogate escape"),
    ])
    func parse_RejectsString_WhenSurrogateIsUnpaired(text: String, offset: Int, message: String) {
        #expect(parseError(text) == JSONError(offset: offset, message: message))
    }

    /// Bad escapes, raw control characters and unterminated strings are rejected at their offset.
    @Test(arguments: [
        (#""a\x""#, 2, "invalid escape sequence"), (#""\u12G4""#, 1, #"invalid \u escape"#),
        ("\"a\nb\"", 2, "unescaped control character in string"), ("\"abc", 0, "unterminated string"),
        (#""ab\"#, 0, "unterminated string"), ("\"\t\"", 1, "unescaped control character in string"),
    ])
    func parse_RejectsString_WhenMalformed(text: String, offset: Int, message: String) {
        #expect(parseError(text) == JSONError(offset: offset, message: message))
    }

    /// Invalid UTF-8 (stray continuation, overlong, surrogate, truncated) is rejected at the bad sequence.
    @Test(arguments: [
        [0x22, 0x61, 0x80, 0x22], [0x22, 0x61, 0xC0, 0xAF, 0x22], [0x22, 0x61, 0xED, 0xA0, 0x80, 0x22],
        [0x22, 0x61, 0xE2, 0x82, 0x22], [0x22, 0x61, 0xF5, 0x80, 0x80, 0x80, 0x22], [0x22, 0x61, 0xF0, 0x9F],
    ] as [[UInt8]])
    func parse_RejectsString_WhenUTF8IsInvalid(bytes: [UInt8]) {
        #expect(parseError(bytes) == JSONError(offset: 2, message: "invalid UTF-8"))
    }

    /// Structural errors report the byte offset where parsing stopped.
    @Test(arguments: [
        ("", 0, "unexpected end of input, expected a value"),
        ("   ", 3, "unexpected end of input, expected a value"),
        ("[1,]", 3, "unexpected ']', expected a value"),
        ("{\"a\":1,}", 7, "unexpected '}', expected a string key"),
        ("{\"a\" 1}", 5, "unexpected '1', expected ':' after object key"),
        ("{\"a\":1 \"b\":2}", 7, "unexpected '\"', expected ',' or '}'"),
        ("[1 2]", 3, "unexpected '2', expected ',' or ']'"),
        ("{a:1}", 1, "unexpected 'a', expected a string key"),
        ("[1", 2, "unexpected end of input, expected ',' or ']'"),
        ("tru", 0, "invalid literal, expected 'true'"),
        ("nul!", 0, "invalid literal, expected 'null'"),
        ("{} x", 3, "unexpected 'x' after the JSON value"),
        ("1 2", 2, "unexpected '2' after the JSON value"),
        ("// c\n1", 0, "unexpected '/', expected a value"),
        ("['a']", 1, "unexpected ''', expected a value"),
    ])
    func parse_ReportsOffset_WhenStructureIsInvalid(text: String, offset: Int, message: String) {
        #expect(parseError(text) == JSONError(offset: offset, message: message))
    }

    /// A UTF-8 byte-order mark is not JSON whitespace and is rejected.
    @Test func parse_RejectsByteOrderMark() {
        #expect(parseError([0xEF, 0xBB, 0xBF, 0x31]) == JSONError(offset: 0, message: "unexpected byte 0xEF, expected a value"))
    }

    /// Nesting up to 512 levels parses; the 513th level fails at its bracket.
    @Test func parse_EnforcesDepthLimit_At512Levels() throws {
        let ok = String(repeating: "[", count: 512) + String(repeating: "]", count: 512)
        #expect(throws: Never.self) { try JSON.parse(ok) }
        let deep = String(repeating: "[", count: 513) + String(repeating: "]", count: 513)
        #expect(parseError(deep) == JSONError(offset: 512, message: "nesting deeper than 512 levels"))
        let objects = String(repeating: "{\"a\":", count: 513) + "1" + String(repeating: "}", count: 513)
        #expect(parseError(objects)?.message == "nesting deeper than 512 levels")
    }

    /// A repeated key keeps its first position and its last value.
    @Test func parse_KeepsLastValue_WhenKeyIsRepeated() throws {
        let json = try JSON.parse(#"{"a":1,"b":2,"a":3}"#)
        #expect(json.objectValue?.keys == ["a", "b"])
        #expect(json["a"] == .int(3))
    }

    /// Objects keep the members in the order written.
    @Test func parse_PreservesMemberOrder() throws {
        let json = try JSON.parse(#"{"z":1,"a":2,"m":3}"#)
        #expect(json.objectValue?.keys == ["z", "a", "m"])
        #expect(json.text == #"{"z":1,"a":2,"m":3}"#)
    }

    /// Large objects (beyond the index threshold) parse with last-wins and fast lookup.
    @Test func parse_HandlesLargeObject_WithRepeatedKeys() throws {
        var text = "{"
        for i in 0..<1000 { text += "\"k\(i)\":\(i)," }
        text += "\"k5\":\"again\"}"
        let json = try JSON.parse(text)
        #expect(json.objectValue?.count == 1000)
        #expect(json["k5"] == .string("again"))
        #expect(json["k999"] == .int(999))
        #expect(json.objectValue?.keys[5] == "k5")
    }

    /// Parsing a String and its UTF-8 bytes (or a slice of them) gives the same value.
    @Test func parse_AgreesAcrossInputForms() throws {
        let text = #"{"a":[1,2.5,"x"],"b":{"c":null}}"#
        let bytes = Array(text.utf8)
        #expect(try JSON.parse(text) == JSON.parse(bytes))
        #expect(try JSON.parse(([0x20] + bytes)[1...]) == JSON.parse(bytes))
    }
}

@Suite struct JSONParseErrorRecoveryTests {
    /// An error deep inside nested containers is reported without leaking or corrupting later parses.
    @Test func parse_RecoversCleanly_AfterErrorInsideNestedContainers() throws {
        let bad = #"[{"a":[1,2,{"b":"x","c":[true,"#
        #expect(parseError(bad) == JSONError(offset: 30, message: "unexpected end of input, expected a value"))
        #expect(try JSON.parse(#"[{"a":[1,2,{"b":"x"}]}]"#) == [["a": [1, 2, ["b": "x"]]]])
    }
}
