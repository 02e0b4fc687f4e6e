private import COpenSSL
import Foundation

/// Cryptographic primitives Switchboard needs, all from OpenSSL (never hand-rolled):
/// HMAC-SHA256 for Standard Webhooks signatures, SHA-256 for API-key hashes and
/// request fingerprints, `RAND_bytes` for job ids and secrets. Safe from any thread.
public enum Crypto {
    /// HMAC-SHA256 of `message` under `key` (32 bytes), per RFC 2104.
    public static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        key.withUnsafeBufferPointer { k in
            message.withUnsafeBufferPointer { m in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, &out, &len)
            }
        }
        return out
    }

    /// SHA-256 digest of `data` (32 bytes).
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        data.withUnsafeBufferPointer { d in _ = SHA256(d.baseAddress, d.count, &out) }
        return out
    }

    /// `count` cryptographically strong random bytes (`RAND_bytes`).
    /// Traps if OpenSSL's generator fails, which only happens when it cannot be seeded.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        precondition(ok == 1, "RAND_bytes failed")
        return out
    }

    /// Compares two byte strings in time that depends only on their lengths
    /// (`CRYPTO_memcmp`), for secrets and signatures.
    public static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    /// Lowercase hexadecimal text of `bytes`.
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Bytes from hexadecimal text (either case); nil when malformed.
    public static func fromHex(_ text: String) -> [UInt8]? {
        let u = Array(text.utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 97...102: return c - 87
            case 65...70: return c - 55
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(u.count / 2)
        var i = 0
        while i < u.count {
            guard let h = v(u[i]), let l = v(u[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }

    /// Standard base64 (RFC 4648 §4, with padding).
    public static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    /// Appends the standard base64 of `bytes` (the same text as `base64`, as ASCII bytes)
    /// to `out`, with `EVP_EncodeBlock`: no intermediate string or `Data`.
    public static func appendBase64(_ bytes: [UInt8], to out: inout [UInt8]) {
        // EVP_EncodeBlock takes an Int32 length: encode in chunks of a multiple of 3
        // bytes, whose encodings concatenate to that of the whole.
        let chunk = 3 << 28
        bytes.withUnsafeBufferPointer { src in
            var at = 0
            while at < src.count {
                let n = min(chunk, src.count - at)
                let encoded = 4 * ((n + 2) / 3)
                let start = out.count
                out.append(contentsOf: repeatElement(0, count: encoded + 1))  // + EVP_EncodeBlock's NUL
                out.withUnsafeMutableBufferPointer { dst in
                    _ = EVP_EncodeBlock(dst.baseAddress! + start, src.baseAddress! + at, Int32(n))
                }
                out.removeLast()
                at += n
            }
        }
    }

    /// Bytes from standard base64; nil when malformed.
    public static func fromBase64(_ text: String) -> [UInt8]? { Data(base64Encoded: text).map { [UInt8]($0) } }

    /// What the PEM file of certificates at `path` holds, read block by block with
    /// OpenSSL's PEM reader as libcurl reads a CA file: text outside
    /// `-----BEGIN …-----`/`-----END …-----` blocks (comments in a CA bundle) and blocks
    /// that are not certificates are skipped. Reading stops at the first block OpenSSL
    /// cannot read — truncated (no END line), bad base64, or not a certificate inside —
    /// which libcurl would refuse the whole file for. Nil when the file cannot be
    /// opened. Leaves this thread's OpenSSL error queue empty. Any thread.
    public static func pemCertificates(path: String) -> PEMCertificates? {
        guard let bio = BIO_new_file(path, "r") else {
            ERR_clear_error()
            return nil
        }
        defer {
            BIO_free(bio)
            ERR_clear_error()
        }
        var count = 0
        while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
            X509_free(certificate)
            count += 1
        }
        // The read that ends the loop always leaves an error; "no start line" (no
        // further block: the end of the file, or of a directory's nothing) is the clean end.
        let last = ERR_peek_last_error()
        if last == 0 || (ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
            return .read(count: count)
        }
        // The earliest error is the cause ("wrong tag"); later ones wrap it ("nested asn1 error").
        let first = ERR_peek_error()
        let reason = ERR_reason_error_string(first).map { String(cString: $0) } ?? {
            var text = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(first, &text, text.count)
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }()
        return .damaged(index: count + 1, reason: reason)
    }
}

/// What a PEM file of certificates holds (`Crypto.pemCertificates(path:)`).
public enum PEMCertificates: Equatable, Sendable {
    /// Every PEM block was read: `count` certificates among them (0 for an empty file,
    /// a directory, or text without a certificate block).
    case read(count: Int)
    /// The PEM block after the first `index - 1` certificates cannot be read;
    /// `reason` is OpenSSL's (e.g. "bad end line", "bad base64 decode", "wrong tag").
    case damaged(index: Int, reason: String)
}

/// Standard Webhooks signing (https://www.standardwebhooks.com): secrets are
/// `whsec_<base64 key>`, the signed content is `"{id}.{timestamp}.{body}"`, and the
/// header `webhook-signature` holds `v1,<base64 HMAC-SHA256>` (space-separated
/// when several secrets are valid).
public enum WebhookSignature {
    /// A new secret: `whsec_` followed by base64 of 32 random bytes.
    public static func newSecret() -> String { "whsec_" + Crypto.base64(Crypto.randomBytes(32)) }

    /// The HMAC key inside a `whsec_…` secret; nil when it is not of that form.
    public static func key(fromSecret secret: String) -> [UInt8]? {
        guard secret.hasPrefix("whsec_") else { return nil }
        return Crypto.fromBase64(String(secret.dropFirst(6)))
    }

    /// The `webhook-signature` value (`v1,<base64>`) for one message.
    /// - Parameters:
    ///   - timestamp: Unix time in seconds, as sent in `webhook-timestamp`.
    public static func sign(secret key: [UInt8], id: String, timestamp: Int64, body: [UInt8]) -> String {
        let content = Array("\(id).\(timestamp).".utf8) + body
        return "v1," + Crypto.base64(Crypto.hmacSHA256(key: key, message: content))
    }

    /// Whether any `v1,` signature in `header` matches, compared in constant time.
    public static func verify(secret key: [UInt8], id: String, timestamp: Int64, body: [UInt8], header: String) -> Bool {
        let expected = Array(sign(secret: key, id: id, timestamp: timestamp, body: body).utf8)
        for part in header.split(separator: " ") where Crypto.constantTimeEquals(Array(part.utf8), expected) {
            return true
        }
        return false
    }
}
