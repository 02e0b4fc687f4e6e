private import COpenSSL
import Glibc

/// Where the TLS listener's certificate and private key are (PEM files).
///
/// Both are read by `HTTPServer.start()` and again by `HTTPServer.reloadTLS()`,
/// so a renewed certificate written over the same paths is picked up on reload.
public struct TLSConfiguration: Sendable, Equatable {
    /// PEM file with the server certificate, optionally followed by its
    /// intermediate certificates (leaf first, as nginx's `ssl_certificate`).
    public var certificatePath: String
    /// PEM file with the certificate's private key. It must not be encrypted:
    /// there is no one to type a passphrase.
    public var keyPath: String

    /// Creates a configuration from the certificate (chain) and key file paths.
    public init(certificatePath: String, keyPath: String) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }

    /// Loads the certificate and key as `HTTPServer.start()` would, without
    /// serving (for configuration checks). Safe from any thread.
    /// - Throws: the `TLSError` that `start()` would throw.
    public func validate() throws {
        _ = try TLSContext(self)
    }
}

/// Why the TLS certificate and key could not be loaded (thrown by
/// `HTTPServer.start()` and `HTTPServer.reloadTLS()`). `description` names the
/// file and OpenSSL's or the system's reason.
public enum TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The certificate file cannot be read or holds no usable PEM certificate.
    case certificate(path: String, reason: String)
    /// The key file cannot be read or holds no usable (unencrypted) PEM private key.
    case privateKey(path: String, reason: String)
    /// The private key is not the certificate's key.
    case keyMismatch(certificatePath: String, keyPath: String)
    /// OpenSSL could not set up a TLS context (out of memory or a broken library).
    case setup(reason: String)

    public var description: String {
        switch self {
        case .certificate(let path, let reason): return "TLS certificate \(path): \(reason)"
        case .privateKey(let path, let reason): return "TLS private key \(path): \(reason)"
        case .keyMismatch(let cert, let key): return "TLS private key \(key) does not match certificate \(cert)"
        case .setup(let reason): return "TLS setup failed: \(reason)"
        }
    }
}

/// Results of a transport read or write other than a byte count, for plain
/// sockets and TLS sessions alike (a read also returns 0 at end of input).
enum TransportIO {
    /// Nothing more now: wait until the socket is ready in the same direction.
    static let wouldBlock = -1
    /// TLS only: wait until the socket is ready in the *other* direction (the
    /// session's `readNeedsWritable` / `writeNeedsReadable` says which).
    static let wouldBlockOther = -2
    /// The connection is broken (reset, protocol error): close it.
    static let failed = -3
}

/// The 1.2 cipher suites offered (Mozilla's "intermediate" list, ECDHE and AEAD
/// only); TLS 1.3 keeps OpenSSL's default suites.
private let tls12Ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    + "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    + "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/// A configured server `SSL_CTX`: TLS 1.2 minimum, no renegotiation, ALPN
/// `http/1.1`, the certificate chain and key from a `TLSConfiguration`.
/// Immutable once built, so one context serves every loop; a reload builds a
/// new one and sessions already open keep theirs (each `SSL` holds a reference).
final class TLSContext: @unchecked Sendable {
    let ctx: OpaquePointer

    /// Loads and checks the certificate and key.
    /// - Throws: `TLSError` naming the file that failed and why.
    init(_ config: TLSConfiguration) throws {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw TLSError.setup(reason: "SSL_CTX_new: \(TLSContext.drainErrors())")
        }
        do {
            try TLSContext.configure(ctx, config)
        } catch {
            SSL_CTX_free(ctx)
            ERR_clear_error()
            throw error
        }
        self.ctx = ctx
    }

    deinit { SSL_CTX_free(ctx) }

    private static func configure(_ ctx: OpaquePointer, _ config: TLSConfiguration) throws {
        guard COpenSSL_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 else {
            throw TLSError.setup(reason: "cannot require TLS 1.2: \(drainErrors())")
        }
        _ = SSL_CTX_set_options(ctx, COpenSSL_SSL_OP_server())
        _ = COpenSSL_SSL_CTX_set_mode(ctx, COpenSSL_SSL_MODE_server())
        guard SSL_CTX_set_cipher_list(ctx, tls12Ciphers) == 1 else {
            throw TLSError.setup(reason: "cipher list: \(drainErrors())")
        }
        // An encrypted key must fail, not prompt on the terminal.
        SSL_CTX_set_default_passwd_cb(ctx) { _, _, _, _ in 0 }
        SSL_CTX_set_alpn_select_cb(ctx, { _, out, outLength, offered, offeredLength, _ in
            // RFC 7301: pick http/1.1 from the client's list; a client that offers
            // ALPN without it cannot speak to us (no_application_protocol alert).
            guard let out, let outLength, let offered else { return SSL_TLSEXT_ERR_NOACK }
            var i = 0
            let n = Int(offeredLength)
            while i < n {
                let len = Int(offered[i])
                if len == 8 && i + 1 + len <= n {
                    let p = offered + i + 1
                    // "http/1.1"
                    if p[0] == 0x68 && p[1] == 0x74 && p[2] == 0x74 && p[3] == 0x70 && p[4] == 0x2F
                        && p[5] == 0x31 && p[6] == 0x2E && p[7] == 0x31 {
                        out.pointee = UnsafePointer(p)
                        outLength.pointee = 8
                        return SSL_TLSEXT_ERR_OK
                    }
                }
                i += 1 + len
            }
            return SSL_TLSEXT_ERR_ALERT_FATAL
        }, nil)

        if let reason = unreadable(config.certificatePath) {
            throw TLSError.certificate(path: config.certificatePath, reason: reason)
        }
        if let reason = unreadable(config.keyPath) {
            throw TLSError.privateKey(path: config.keyPath, reason: reason)
        }
        guard SSL_CTX_use_certificate_chain_file(ctx, config.certificatePath) == 1 else {
            throw TLSError.certificate(path: config.certificatePath, reason: drainErrors())
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, config.keyPath, SSL_FILETYPE_PEM) == 1 else {
            let reason = drainErrors()
            if reason.contains("values mismatch") {
                throw TLSError.keyMismatch(certificatePath: config.certificatePath, keyPath: config.keyPath)
            }
            throw TLSError.privateKey(path: config.keyPath, reason: reason)
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            ERR_clear_error()
            throw TLSError.keyMismatch(certificatePath: config.certificatePath, keyPath: config.keyPath)
        }
    }

    /// Why `path` cannot be opened for reading (`strerror`), or nil when it can.
    private static func unreadable(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return String(cString: strerror(errno)) }
        Glibc.close(fd)
        return nil
    }

    /// Empties this thread's OpenSSL error queue into one readable line.
    static func drainErrors() -> String {
        var parts: [String] = []
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(e, &buf, buf.count)
            parts.append(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return parts.isEmpty ? "unknown OpenSSL error" : parts.joined(separator: "; ")
    }
}

/// One server-side TLS session over a non-blocking socket, driven by its
/// connection on the loop thread: `handshake()` until `established`, then
/// `read` / `write`, which return byte counts or `TransportIO` codes.
///
/// OpenSSL reads and writes the socket itself (`SSL_set_fd`); when it needs the
/// socket ready in the other direction than the call's (renegotiation is
/// disabled, so this is rare after the handshake) the matching flag is set and
/// the connection adds that readiness to its epoll interest.
final class TLSSession {
    private var ssl: OpaquePointer?
    /// The handshake completed; application data flows.
    private(set) var established = false
    /// A read or the handshake waits for the socket to become writable.
    var readNeedsWritable = false
    /// A write waits for the socket to become readable.
    var writeNeedsReadable = false
    /// A fatal error happened (or the peer vanished): no close_notify may be sent.
    private var broken = false
    private var closeNotifySent = false

    /// Starts a server session on the accepted socket `fd` (not owned: the
    /// connection closes it). Nil when OpenSSL cannot allocate the session.
    init?(context: TLSContext, fd: Int32) {
        guard let s = SSL_new(context.ctx) else {
            ERR_clear_error()
            return nil
        }
        guard SSL_set_fd(s, fd) == 1 else {
            SSL_free(s)
            ERR_clear_error()
            return nil
        }
        SSL_set_accept_state(s)
        ssl = s
    }

    deinit { if let ssl { SSL_free(ssl) } }

    /// What a handshake step achieved.
    enum HandshakeStep { case done, again, failed }

    /// Advances the handshake as far as the socket allows. On `.again` the
    /// handshake waits for readability, or writability when `readNeedsWritable`.
    func handshake() -> HandshakeStep {
        guard let ssl else { return .failed }
        readNeedsWritable = false
        ERR_clear_error()
        let r = SSL_do_handshake(ssl)
        if r == 1 {
            established = true
            return .done
        }
        switch SSL_get_error(ssl, r) {
        case SSL_ERROR_WANT_READ:
            return .again
        case SSL_ERROR_WANT_WRITE:
            readNeedsWritable = true
            return .again
        default:
            // A plain-text request, a protocol version below 1.2, no shared
            // cipher, a reset: nothing can be said to this client.
            broken = true
            ERR_clear_error()
            return .failed
        }
    }

    /// Reads decrypted bytes into `buffer`.
    /// - Returns: the count (> 0); 0 at end of input (close_notify);
    ///   `TransportIO.wouldBlock`, `.wouldBlockOther` or `.failed`.
    func read(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
        guard let ssl else { return TransportIO.failed }
        ERR_clear_error()
        let n = SSL_read(ssl, buffer, Int32(clamping: count))
        if n > 0 { return Int(n) }
        switch SSL_get_error(ssl, n) {
        case SSL_ERROR_WANT_READ:
            return TransportIO.wouldBlock
        case SSL_ERROR_WANT_WRITE:
            readNeedsWritable = true
            return TransportIO.wouldBlockOther
        case SSL_ERROR_ZERO_RETURN:
            return 0
        default:
            broken = true
            ERR_clear_error()
            return TransportIO.failed
        }
    }

    /// Encrypts and writes bytes (at least one record when it succeeds; the
    /// caller retries with the rest, and after a would-block with the same bytes).
    /// - Returns: the count written (> 0), `TransportIO.wouldBlock`,
    ///   `.wouldBlockOther` or `.failed`.
    func write(_ bytes: UnsafeRawPointer, _ count: Int) -> Int {
        guard let ssl else { return TransportIO.failed }
        ERR_clear_error()
        let n = SSL_write(ssl, bytes, Int32(clamping: count))
        if n > 0 { return Int(n) }
        switch SSL_get_error(ssl, n) {
        case SSL_ERROR_WANT_WRITE:
            return TransportIO.wouldBlock
        case SSL_ERROR_WANT_READ:
            writeNeedsReadable = true
            return TransportIO.wouldBlockOther
        default:
            broken = true
            ERR_clear_error()
            return TransportIO.failed
        }
    }

    /// Whether OpenSSL holds decrypted bytes not yet returned by `read` (epoll
    /// cannot report those). A partial record does not count: the rest of it
    /// arrives on the socket, which epoll does report.
    var hasDecrypted: Bool {
        guard let ssl else { return false }
        return SSL_pending(ssl) > 0
    }

    /// Sends close_notify once, best effort (never waits for the peer's).
    func sendCloseNotify() {
        guard let ssl, established, !broken, !closeNotifySent else { return }
        closeNotifySent = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// Sends close_notify when the session is healthy, then frees it. The socket
    /// is left to the caller.
    func close() {
        guard let ssl else { return }
        sendCloseNotify()
        SSL_free(ssl)
        self.ssl = nil
    }
}
