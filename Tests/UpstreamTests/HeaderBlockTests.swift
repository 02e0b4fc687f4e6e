import Dispatch
import Testing
import Upstream

/// `UpstreamHeaderBlock.forEachPlainField`: for a plain block (ASCII, no NUL, CR only
/// before LF, no obs-fold) the bytes of exactly the fields `pairs` gives; nothing otherwise.
@Suite struct HeaderBlockTests {
    static func plainFields(_ block: UpstreamHeaderBlock) -> [String]? {
        var out: [String] = []
        let plain = block.forEachPlainField { name, value in
            out.append(String(decoding: name, as: UTF8.self) + "=" + String(decoding: value, as: UTF8.self))
        }
        return plain ? out : (out.isEmpty ? nil : ["called although not plain"])
    }

    @Test(arguments: [
        "",
        "\r\n",
        "Content-Type: application/json\r\nContent-Length: 223\r\nDate: Mon, 30 Nov 2026 07:29:28 GMT\r\n",
        "A:1\nB:   2 \t \r\nC:\r\nD: a:b:c\r\nno colon here\r\n\r\nE :\tx\ty\t\r\n",
        "X-Ctl: a\u{1}b\u{7F}\r\nX-Q: \"quoted\" \\ back\r\n",
        "Last: no line end",
    ])
    func plainBlock_GivesTheFieldsOfPairs(_ text: String) throws {
        let block = UpstreamHeaderBlock(raw: Array(text.utf8))
        let fields = try #require(Self.plainFields(block))
        #expect(fields == UpstreamHeaderBlock(raw: Array(text.utf8)).pairs.map { $0.0 + "=" + $0.1 })
    }

    @Test(arguments: [
        "A: caf\u{E9}\r\n",          // not ASCII
        "A: a\u{0}b\r\n",            // NUL (replaced by a space in pairs)
        "A: a\rb\r\n",               // CR inside a line (replaced by a space in pairs)
        "A: a\r\r\n",                // CR not right before LF
        "A: 1\r\n continued\r\n",    // obs-fold (joined in pairs)
        "\tlead: 0\r\nA: 1\r\n",     // obs-fold before any field (ignored by pairs)
    ])
    func otherBlock_IsNotPlain(_ text: String) {
        #expect(Self.plainFields(UpstreamHeaderBlock(raw: Array(text.utf8))) == nil)
    }

    /// `pairs` is parsed once and kept (`ComputedOnce`): threads reading one block at the
    /// same moment all get the same fields, and later reads return that kept array. Run
    /// under the thread sanitizer in CI (`make test-tsan`).
    @Test func pairs_ReadFromManyThreadsAtOnce_AreTheSame() {
        for round in 0..<50 {
            let block = UpstreamHeaderBlock(raw: Array("A: \(round)\r\nB: two\r\n folded\r\nC:\r\n".utf8))
            // Each thread writes its own slot only.
            nonisolated(unsafe) let results = UnsafeMutableBufferPointer<String>.allocate(capacity: 8)
            results.initialize(repeating: "")
            defer { _ = results.deinitialize(); results.deallocate() }
            DispatchQueue.concurrentPerform(iterations: results.count) { i in
                results[i] = block.pairs.map { "\($0.0)=\($0.1)" }.joined(separator: ";")
            }
            #expect(Set(results).count == 1)
            #expect(results[0] == "A=\(round);B=two folded;C=")
            #expect(block.pairs.map(\.1) == ["\(round)", "two folded", ""])
        }
    }
}
