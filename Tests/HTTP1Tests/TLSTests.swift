import EventLoop
import Foundation
import Glibc
import Testing
@testable import HTTP1

// MARK: - Helpers

/// The output of a finished child process.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `arguments` (looked up on PATH) to completion; output goes through files,
/// so a chatty child cannot block on a full pipe.
func runProcess(_ arguments: [String], in dir: String) throws -> ProcessResult {
    let outPath = dir + "/stdout-\(UUID().uuidString)"
    let errPath = dir + "/stderr-\(UUID().uuidString)"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = arguments
    p.standardInput = FileHandle.nullDevice
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    try p.run()
    p.waitUntilExit()
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    return ProcessResult(status: p.terminationStatus, stdout: out, stderr: err)
}

/// A temporary directory holding self-signed certificates made with the
/// `openssl` command line tool; removed by `remove()`.
final class CertificateDirectory {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "switchboard-tls-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    /// Writes a fresh RSA key and a self-signed certificate for `/CN=<commonName>`
    /// to `<name>.key.pem` and `<name>.cert.pem`.
    @discardableResult
    func make(_ name: String, commonName: String) throws -> TLSConfiguration {
        let config = TLSConfiguration(certificatePath: "\(path)/\(name).cert.pem", keyPath: "\(path)/\(name).key.pem")
        let r = try runProcess(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                                "-subj", "/CN=\(commonName)", "-keyout", config.keyPath,
                                "-out", config.certificatePath], in: path)
        guard r.status == 0 else { throw SystemError(errno: EINVAL, call: "openssl req: \(r.stderr)") }
        return config
    }

    /// Copies the `from` pair's files over the `to` pair's paths.
    func copy(_ from: TLSConfiguration, over to: TLSConfiguration) throws {
        for (src, dst) in [(from.certificatePath, to.certificatePath), (from.keyPath, to.keyPath)] {
            try? FileManager.default.removeItem(atPath: dst)
            try FileManager.default.copyItem(atPath: src, toPath: dst)
        }
    }
}

/// Runs `body` with a certificate directory holding the pair `server` (CN=localhost)
/// and a TLS server using it; stops the server and removes the files afterwards.
func withTLSServer(limits: HTTPLimits = HTTPLimits(), onRefusal: ((HTTPRefusal) -> Void)? = nil,
                   _ body: (TestServer, CertificateDirectory, TLSConfiguration) throws -> Void) throws {
    let dir = try CertificateDirectory()
    defer { dir.remove() }
    let tls = try dir.make("server", commonName: "localhost")
    try withServer(limits: limits, tls: tls, onRefusal: onRefusal) { s in try body(s, dir, tls) }
}

/// A Python `ssl` client: connects without verifying, offering `alpn` (comma
/// separated, may be empty) and allowing versions up to `maxVersion`, then runs
/// the requests named in `requests` (`GET /path`, `POST /path N` with N bytes,
/// `BIG N` for `/big?N`) on one keep-alive connection. Prints one line per
/// response (`STATUS BODY`, or `STATUS LENGTH` for BIG), then `alpn=…`,
/// `version=…`, `same=…` (one socket throughout); or `refused REASON`.
let pythonClient = #"""
import http.client, socket, ssl, sys
port, alpn, maxv = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = getattr(ssl.TLSVersion, maxv)
if alpn:
    ctx.set_alpn_protocols(alpn.split(","))
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
try:
    c.connect()
except (ssl.SSLError, ConnectionError) as e:
    print("refused", getattr(e, "reason", None) or type(e).__name__)
    sys.exit(0)
first = c.sock
for req in sys.argv[4:]:
    parts = req.split(" ")
    if parts[0] == "BIG":
        c.request("GET", "/big?" + parts[1]); r = c.getresponse(); print(r.status, len(r.read()))
    elif parts[0] == "POST":
        c.request("POST", parts[1], body=b"x" * int(parts[2])); r = c.getresponse(); print(r.status, r.read().decode())
    else:
        c.request("GET", parts[1]); r = c.getresponse(); print(r.status, r.read().decode())
print("alpn=%s" % c.sock.selected_alpn_protocol())
print("version=%s" % c.sock.version())
print("same=%s" % (c.sock is first))
"""#

/// A Python `ssl` client that writes N pipelined GETs in one go (the last with
/// `Connection: close`), reads until the server closes and prints the number of
/// responses, the last body and whether the close was a clean close_notify.
let pythonPipeline = #"""
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), suppress_ragged_eofs=False)
reqs = [b"GET /p%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(n - 1)]
reqs.append(b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
s.sendall(b"".join(reqs))
data, clean = b"", False
while True:
    try:
        chunk = s.recv(65536)
    except ssl.SSLError as e:
        break
    if not chunk:
        clean = True  # recv returns b"" only after the peer's close_notify
        break
    data += chunk
print(data.count(b"HTTP/1.1 200 OK"))
print(data.rsplit(b"\r\n\r\n", 1)[-1].decode())
print("clean=%s" % clean)
"""#

/// Runs `pythonClient` against `port`; returns its output lines.
func python(port: UInt16, alpn: String = "h2,http/1.1", maxVersion: String = "MAXIMUM_SUPPORTED",
            _ requests: [String], dir: CertificateDirectory) throws -> [String] {
    let r = try runProcess(["python3", "-W", "ignore", "-c", pythonClient, String(port), alpn, maxVersion] + requests,
                           in: dir.path)
    #expect(r.status == 0, "python: \(r.stderr)")
    return r.stdout.split(separator: "\n").map(String.init)
}

/// Runs `curl -skv --http1.1` on the given paths (one connection when it can
/// reuse it); returns its result with `-w` printing `|<num_connects>` after each body.
func curl(port: UInt16, _ paths: [String], dir: CertificateDirectory) throws -> ProcessResult {
    try runProcess(["curl", "-skv", "--http1.1", "--max-time", "10", "-w", "|%{num_connects}\n"]
                   + paths.map { "https://127.0.0.1:\(port)\($0)" }, in: dir.path)
}

/// The first 16 bytes of a TLS record that announces a 512-byte ClientHello.
let halfClientHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03, 0, 0, 0, 0, 0]

// MARK: - Tests

@Suite struct TLSTests {
    /// curl completes several requests over one TLS keep-alive connection and gets the right bodies.
    @Test func tlsServer_ServesKeepAliveRequests_WhenClientIsCurl() throws {
        try withTLSServer { s, dir, _ in
            let r = try curl(port: s.port, ["/a", "/b", "/c"], dir: dir)
            #expect(r.status == 0, "curl: \(r.stderr)")
            #expect(r.stdout == "GET /a 0|1\nGET /b 0|0\nGET /c 0|0\n")
            #expect(r.stderr.contains("ALPN: server accepted http/1.1"))
        }
    }

    /// A Python ssl client sends large bodies and reads large responses over one TLS connection.
    @Test func tlsServer_ServesLargeBodies_OverOneConnection() throws {
        try withTLSServer { s, dir, _ in
            let lines = try python(port: s.port, ["GET /one", "POST /up 300000", "BIG 1000000", "GET /two"], dir: dir)
            #expect(lines == ["200 GET /one 0", "200 POST /up 300000", "200 1000000", "200 GET /two 0",
                              "alpn=http/1.1", "version=TLSv1.3", "same=True"])
        }
    }

    /// A hundred pipelined requests in one write are all answered in order, then a clean close_notify.
    @Test func tlsServer_AnswersAll_WhenManyRequestsArePipelined() throws {
        try withTLSServer { s, dir, _ in
            let r = try runProcess(["python3", "-c", pythonPipeline, String(s.port), "100"], in: dir.path)
            #expect(r.status == 0, "python: \(r.stderr)")
            #expect(r.stdout == "100\nGET /last 0\nclean=True\n")
        }
    }

    /// ALPN selects http/1.1 from the client's list, and none is fine when the client offers none.
    @Test func tlsServer_NegotiatesHTTP11_WhenClientOffersALPN() throws {
        try withTLSServer { s, dir, _ in
            let offered = try python(port: s.port, alpn: "h2,http/1.1", ["GET /x"], dir: dir)
            #expect(offered.contains("alpn=http/1.1"))
            let none = try python(port: s.port, alpn: "", ["GET /y"], dir: dir)
            #expect(none.first == "200 GET /y 0")
            #expect(none.contains("alpn=None"))
        }
    }

    /// A client whose ALPN list lacks http/1.1 is refused with an alert (RFC 7301).
    @Test func tlsServer_RefusesHandshake_WhenALPNLacksHTTP11() throws {
        try withTLSServer { s, dir, _ in
            let lines = try python(port: s.port, alpn: "h2", ["GET /x"], dir: dir)
            #expect(lines.first?.hasPrefix("refused") == true, "\(lines)")
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// TLS 1.2 is accepted and TLS 1.1 is refused with a protocol_version alert.
    @Test func tlsServer_RefusesHandshake_WhenClientMaxIsTLS11() throws {
        try withTLSServer { s, dir, _ in
            let tls12 = try python(port: s.port, maxVersion: "TLSv1_2", ["GET /v"], dir: dir)
            #expect(tls12.contains("version=TLSv1.2"))
            let tls11 = try python(port: s.port, maxVersion: "TLSv1_1", ["GET /v"], dir: dir)
            #expect(tls11.first?.hasPrefix("refused") == true, "\(tls11)")
            // The server's alert, not a client that never sent a ClientHello.
            #expect(tls11.first?.contains("PROTOCOL_VERSION") == true, "\(tls11)")
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// A plain-text HTTP request on the TLS port is closed without any HTTP response.
    @Test func tlsServer_ClosesWithoutResponse_WhenRequestIsPlainText() throws {
        try withTLSServer { s, _, _ in
            let c = try s.client()
            c.send("GET /plain HTTP/1.1\r\nHost: h\r\n\r\n")
            let (data, closed) = c.readUntilClosed()
            #expect(closed)
            #expect(!String(decoding: data, as: UTF8.self).contains("HTTP/"))
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// Beyond `maxConnections` a TLS listener closes a new connection without any
    /// bytes (no plain-text 503) and still reports it to `onRefusal`, as not answered.
    @Test func tlsServer_ClosesSilentlyAndReportsRefusal_WhenMaxConnectionsReached() throws {
        let refusals = Recorder<[HTTPRefusal]>([])
        try withTLSServer(limits: HTTPLimits(maxConnections: 1), onRefusal: { r in refusals.update { $0.append(r) } }) { s, _, _ in
            let held = try s.client()  // counted from its accept, handshake or not
            #expect(eventually { s.server.openConnections == 1 })
            let extra = try s.client()
            extra.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            let (data, closed) = extra.readUntilClosed()
            #expect(closed)
            #expect(data.isEmpty)
            #expect(eventually { refusals.get.count == 1 })
            let r = try #require(refusals.get.first)
            #expect(r.error == .tooManyConnections && r.error.status == 503)
            #expect(!r.answered && r.bytes == 0)
            #expect(r.method == nil && r.path == nil)
            #expect(r.detail == "too many open connections (closed without a response)")
            #expect(s.server.openConnections == 1)
            _ = held
        }
    }

    /// Silent and half-ClientHello clients are cut at the handshake timeout while others are served.
    @Test func tlsServer_ClosesStalledHandshake_AtHeaderTimeout() throws {
        try withTLSServer(limits: HTTPLimits(headerTimeout: .milliseconds(300))) { s, dir, _ in
            let start = Instant.now()
            let silent = try s.client()
            let half = try s.client()
            half.send(halfClientHello)
            #expect(eventually { s.server.openConnections == 2 })
            // Others are served meanwhile (curl's handshake is well within 300 ms).
            let r = try curl(port: s.port, ["/other"], dir: dir)
            #expect(r.stdout == "GET /other 0|1\n", "curl: \(r.stderr)")
            for c in [silent, half] {
                let (data, closed) = c.readUntilClosed()
                #expect(closed)
                #expect(data.isEmpty)
            }
            let elapsed = Instant.now() - start
            #expect(elapsed >= .milliseconds(250))
            #expect(elapsed < .seconds(3))
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// reloadTLS serves a certificate written over the same paths to the next connection.
    @Test func reloadTLS_ServesNewCertificate_ToNextConnection() throws {
        try withTLSServer { s, dir, tls in
            let before = try curl(port: s.port, ["/a"], dir: dir)
            #expect(before.stderr.contains("subject: CN=localhost"), "\(before.stderr)")
            let second = try dir.make("second", commonName: "second.example")
            try dir.copy(second, over: tls)
            // Not picked up before a reload.
            #expect(try curl(port: s.port, ["/b"], dir: dir).stderr.contains("subject: CN=localhost"))
            try s.server.reloadTLS()
            let after = try curl(port: s.port, ["/c"], dir: dir)
            #expect(after.stdout == "GET /c 0|1\n")
            #expect(after.stderr.contains("subject: CN=second.example"), "\(after.stderr)")
        }
    }

    /// A failed reload throws and the server keeps serving the certificate it had.
    @Test func reloadTLS_KeepsOldCertificate_WhenNewFilesAreBad() throws {
        try withTLSServer { s, dir, tls in
            try "not a certificate\n".write(toFile: tls.certificatePath, atomically: true, encoding: .utf8)
            #expect(throws: TLSError.self) { try s.server.reloadTLS() }
            let r = try curl(port: s.port, ["/still"], dir: dir)
            #expect(r.stdout == "GET /still 0|1\n")
            #expect(r.stderr.contains("subject: CN=localhost"))
        }
    }

    /// start() throws a TLSError naming the file when the certificate path does not exist.
    @Test func start_ThrowsCertificateError_WhenCertificateIsMissing() throws {
        let dir = try CertificateDirectory()
        defer { dir.remove() }
        let good = try dir.make("server", commonName: "localhost")
        let missing = TLSConfiguration(certificatePath: dir.path + "/nope.pem", keyPath: good.keyPath)
        let error = #expect(throws: TLSError.self) { _ = try TestServer(tls: missing) }
        #expect(error == .certificate(path: missing.certificatePath, reason: "No such file or directory"))
        #expect(error?.description.contains("nope.pem") == true)
        // validate() reports the same error without a server; a good pair passes.
        if let error { #expect(throws: error) { try missing.validate() } }
        try good.validate()
    }

    /// start() throws for a file that is not PEM, and for a key that is not the certificate's.
    @Test func start_ThrowsTLSError_WhenFilesAreInvalidOrMismatched() throws {
        let dir = try CertificateDirectory()
        defer { dir.remove() }
        let a = try dir.make("a", commonName: "a")
        let b = try dir.make("b", commonName: "b")
        let garbage = dir.path + "/garbage.pem"
        try "hello\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let badCert = #expect(throws: TLSError.self) {
            _ = try TestServer(tls: TLSConfiguration(certificatePath: garbage, keyPath: a.keyPath))
        }
        if case .certificate(let path, _)? = badCert { #expect(path == garbage) } else { Issue.record("\(String(describing: badCert))") }
        let badKey = #expect(throws: TLSError.self) {
            _ = try TestServer(tls: TLSConfiguration(certificatePath: a.certificatePath, keyPath: garbage))
        }
        if case .privateKey(let path, _)? = badKey { #expect(path == garbage) } else { Issue.record("\(String(describing: badKey))") }
        let mismatch = #expect(throws: TLSError.self) {
            _ = try TestServer(tls: TLSConfiguration(certificatePath: a.certificatePath, keyPath: b.keyPath))
        }
        #expect(mismatch == .keyMismatch(certificatePath: a.certificatePath, keyPath: b.keyPath))
    }

    /// A plain server is unaffected by reloadTLS (it does nothing).
    @Test func reloadTLS_DoesNothing_WhenServerIsPlain() throws {
        try withServer { s in
            try s.server.reloadTLS()
            #expect(try s.client().get("/p")?.bodyText == "GET /p 0")
        }
    }
}
