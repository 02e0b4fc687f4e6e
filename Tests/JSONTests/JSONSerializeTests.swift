import JSON
import Testing

@Suite struct JSONSerializeTests {
    /// Serialization is compact and keeps integers as integers.
    @Test func serialize_WritesCompactText() {
        let json: JSON = ["a": [1, 2, -3], "b": ["c": nil, "d": true, "e": false], "f": "x", "g": 9_223_372_036_854_775_807]
        #expect(json.text == #"{"a":[1,2,-3],"b":{"c":null,"d":true,"e":false},"f":"x","g":9223372036854775807}"#)
        #expect(JSON.int(Int64.min).text == "-9223372036854775808")
        #expect(JSON.int(0).text == "0")
    }

    /// Control characters, quotes and backslashes are escaped; other Unicode is raw UTF-8.
    @Test func serialize_EscapesPerRFC8259() {
        let json = JSON.string("q\"b\\n\nr\rt\tb\u{8}f\u{C}z\u{0}u\u{1F}é😀/")
        #expect(json.text == #""q\"b\\n\nr\rt\tb\bf\fz\u0000u\u001fé😀/""#)
    }

    /// Quoting UTF-8 bytes writes what quoting the string they encode does.
    @Test func appendQuotedUTF8_MatchesAppendQuotedString() {
        for text in ["", "plain", "q\"b\\n\nr\rt\tb\u{8}f\u{C}z\u{0}u\u{1F}é😀/\u{7F}"] {
            var fromString: [UInt8] = [0x2C], fromBytes: [UInt8] = [0x2C]
            JSON.appendQuoted(text, to: &fromString)
            Array(text.utf8).withUnsafeBufferPointer { JSON.appendQuoted(utf8: $0, to: &fromBytes) }
            #expect(fromBytes == fromString)
        }
    }

    /// Doubles use the shortest text that reads back to the same value.
    @Test(arguments: [
        (0.1, "0.1"), (5.0, "5.0"), (-2.5, "-2.5"), (1e-5, "1e-05"), (1.5e20, "1.5e+20"),
        (0.30000000000000004, "0.30000000000000004"), (Double.leastNonzeroMagnitude, "5e-324"), (-0.0, "-0.0"),
    ])
    func serialize_WritesShortestRoundTrip_ForDoubles(value: Double, expected: String) throws {
        #expect(JSON.double(value).text == expected)
        guard case .double(let back) = try JSON.parse(expected) else { Issue.record("not double"); return }
        #expect(back.bitPattern == value.bitPattern)
    }

    /// NaN and infinities have no JSON form and are written as `null`.
    @Test func serialize_WritesNull_ForNonFiniteDoubles() {
        let json: JSON = [.double(.nan), .double(.infinity), .double(-.infinity)]
        #expect(json.text == "[null,null,null]")
    }

    /// serialize(into:) appends to existing bytes instead of replacing them.
    @Test func serialize_AppendsToBuffer() {
        var out = Array("x=".utf8)
        JSON.array([1, "a"]).serialize(into: &out)
        #expect(String(decoding: out, as: UTF8.self) == #"x=[1,"a"]"#)
    }

    /// parse(serialize(v)) == v for a mix of nested values, escapes and numbers.
    @Test(arguments: [
        #"{"a":[1,2.5,-3e-7,"x\ny",true,null],"b":{"c":{"d":[]},"e":{}},"ü":"\u00e9\ud83d\ude00"}"#,
        #"[[[[[["deep"]]]]],-0.0,1e+300,12345678901234567890]"#,
        #""\u0001\u001f\"\\""#,
    ])
    func roundTrip_PreservesValue(text: String) throws {
        let value = try JSON.parse(text)
        let again = try JSON.parse(value.serialized)
        #expect(again == value)
        #expect(again.text == value.text)
    }
}

@Suite struct JSONValueTests {
    /// An int and a double with the same value are equal; different values are not.
    @Test func equality_TreatsIntAndDoubleByValue() {
        #expect(JSON.int(1) == JSON.double(1.0))
        #expect(JSON.double(1.0) == JSON.int(1))
        #expect(JSON.int(1) != JSON.double(1.5))
        #expect(JSON.int(Int64.max) != JSON.double(9_223_372_036_854_775_808.0))
        #expect(JSON.double(.nan) != JSON.double(.nan))
        #expect(JSON.string("1") != JSON.int(1))
    }

    /// Objects compare equal regardless of member order.
    @Test func equality_IgnoresObjectMemberOrder() {
        let a: JSON = ["x": 1, "y": [1, 2]]
        let b: JSON = ["y": [1, 2], "x": 1.0]
        #expect(a == b)
        #expect(a != ["x": 1, "y": [2, 1]])
        #expect(a != ["x": 1])
    }

    /// lookup follows object keys and decimal array indexes, and fails cleanly otherwise.
    @Test func lookup_FollowsKeysAndIndexes() throws {
        let json = try JSON.parse(#"{"a":{"items":[{"id":"x"},{"id":"y"}]},"n":5}"#)
        #expect(json.lookup(["a", "items", "1", "id"]) == .string("y"))
        #expect(json.lookup([]) == json)
        #expect(json.lookup(["a", "items", "2"]) == nil)
        #expect(json.lookup(["a", "items", "01"]) == nil)
        #expect(json.lookup(["a", "items", "-1"]) == nil)
        #expect(json.lookup(["n", "x"]) == nil)
        #expect(json.lookup(["missing"]) == nil)
    }

    /// The convenience accessors return values only for the matching kind.
    @Test func accessors_ReturnValue_OnlyForMatchingKind() {
        #expect(JSON.string("s").stringValue == "s")
        #expect(JSON.int(3).stringValue == nil)
        #expect(JSON.double(4.0).intValue == 4)
        #expect(JSON.double(4.5).intValue == nil)
        #expect(JSON.int(2).doubleValue == 2.0)
        #expect(JSON.bool(true).boolValue == true)
        #expect(JSON.null.isNull)
        #expect(JSON.array([1])[0] == .int(1))
        #expect(JSON.array([1])[1] == nil)
        #expect(JSON.object(["k": 1])["k"] == .int(1))
    }

    /// JSONObject replaces in place, appends new keys, removes on nil, across the index threshold.
    @Test func object_SubscriptSetKeepsOrder_AcrossIndexThreshold() {
        var object = JSONObject()
        for i in 0..<20 { object["k\(i)"] = .int(Int64(i)) }
        object["k3"] = "three"
        #expect(object.keys[3] == "k3")
        #expect(object["k3"] == "three")
        object["k0"] = nil
        #expect(object.count == 19)
        #expect(object.keys.first == "k1")
        #expect(object["k19"] == .int(19))
        for i in 1..<15 { object.removeValue(forKey: "k\(i)") }
        #expect(object.keys == ["k15", "k16", "k17", "k18", "k19"])
        #expect(object["k17"] == .int(17))
        #expect(Array(object).map(\.key) == object.keys)
    }

    /// JSONObject(pairs) with a repeated key keeps the first position and the last value.
    @Test func object_InitKeepsLastValue_WhenKeyIsRepeated() {
        let object = JSONObject([("a", 1), ("b", 2), ("a", 3)])
        #expect(object.keys == ["a", "b"])
        #expect(object["a"] == .int(3))
    }
}
