import Crypto
import Testing

@Suite struct CryptoTests {
    /// HMAC-SHA256 matches RFC 4231 test case 2.
    @Test func hmacSHA256_MatchesRFC4231Vector() {
        let mac = Crypto.hmacSHA256(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8))
        #expect(Crypto.hex(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    /// SHA-256 of "abc" matches FIPS 180-2.
    @Test func sha256_MatchesKnownDigest() {
        #expect(Crypto.hex(Crypto.sha256(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    /// Random bytes differ between calls and have the requested length.
    @Test func randomBytes_AreFreshEachCall() {
        let a = Crypto.randomBytes(16), b = Crypto.randomBytes(16)
        #expect(a.count == 16)
        #expect(a != b)
    }

    /// A signature verifies with its secret and fails for another body or secret.
    @Test func webhookSignature_VerifiesOnlyTheSignedMessage() throws {
        let secret = WebhookSignature.newSecret()
        let key = try #require(WebhookSignature.key(fromSecret: secret))
        let body = Array("{\"a\":1}".utf8)
        let sig = WebhookSignature.sign(secret: key, id: "msg_1", timestamp: 1700000000, body: body)
        #expect(sig.hasPrefix("v1,"))
        #expect(WebhookSignature.verify(secret: key, id: "msg_1", timestamp: 1700000000, body: body, header: sig))
        #expect(!WebhookSignature.verify(secret: key, id: "msg_1", timestamp: 1700000000, body: Array("{}".utf8), header: sig))
        #expect(!WebhookSignature.verify(secret: Crypto.randomBytes(32), id: "msg_1", timestamp: 1700000000, body: body, header: sig))
    }

    /// The Standard Webhooks reference vector verifies.
    @Test func webhookSignature_MatchesReferenceVector() throws {
        // From the Standard Webhooks specification's example.
        let key = try #require(WebhookSignature.key(fromSecret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
        let body = Array(#"{"test": 2432232314}"#.utf8)
        let sig = WebhookSignature.sign(secret: key, id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1614265330, body: body)
        #expect(sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    /// `appendBase64` (OpenSSL) writes the same text as `base64` (Foundation) for every
    /// padding case, after what the buffer already holds.
    @Test func appendBase64_MatchesBase64() {
        for n in 0...70 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 250) }
            var out = Array("x".utf8)
            Crypto.appendBase64(bytes, to: &out)
            #expect(out == Array(("x" + Crypto.base64(bytes)).utf8))
        }
        let random = Crypto.randomBytes(4099)
        var out: [UInt8] = []
        Crypto.appendBase64(random, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == Crypto.base64(random))
    }
}
