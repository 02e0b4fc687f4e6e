import Crypto
import EventLoop
import Foundation
import HTTP1
import JSON
import Routes

/// A configured API key: a caller's name and the SHA-256 of its key (32 bytes).
public struct APIKey: Sendable {
    public var name: String
    public var sha256: [UInt8]
    public init(name: String, sha256: [UInt8]) {
        self.name = name
        self.sha256 = sha256
    }
}

/// Everything `switchboard serve` is configured with (SPEC §1). Built from the
/// JSON config file (`--config`), then CLI flags override single settings.
public struct GatewayConfig: Sendable {
    /// Where the main listener binds. Default: `127.0.0.1:8080`.
    public var listen = SocketAddress(host: "127.0.0.1", port: 8080)
    /// Where `/metrics` is served instead of the main listener; nil = main listener.
    public var adminListen: SocketAddress?
    /// The routes directory. Default: `routes`.
    public var routes = "routes"
    /// The data (journal) directory. Default: `.switchboard`.
    public var data = ".switchboard"
    /// Number of event-loop threads. Default: one per core.
    public var eventLoops = EventLoopGroup.defaultCount
    /// HTTP limits for callers.
    public var limits = HTTPLimits()
    /// Largest upstream response body a step accepts, in bytes. Default: 10 MiB.
    public var upstreamBodyBytes = 10 * 1024 * 1024
    /// How long in-flight runs may go on after SIGTERM. Default: 30 s.
    public var drainTimeout: Duration = .seconds(30)
    /// API keys; empty = the gateway runs open.
    public var apiKeys: [APIKey] = []
    /// CIDRs where `http` callback URLs and private addresses are allowed.
    public var callbackAllow: [String] = []
    /// The secret that signs deliveries to ad-hoc `Callback-URL`s (`whsec_…`); nil = generated and kept in `data`.
    public var callbackSecret: String?
    /// Delay before each delivery attempt. Default: 0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h.
    public var callbackRetry: [Duration] = [.zero, .seconds(5), .seconds(300), .seconds(1800), .seconds(7200), .seconds(18000), .seconds(36000), .seconds(36000)]
    /// How long finished jobs stay queryable. Default: 24 h. At least 1 ms: anything
    /// shorter is refused at start (`jobRetentionProblem`).
    public var jobRetention: Duration = .seconds(86_400)
    /// Log level: `debug`, `info` (default), `warn`, `error`. Lines below it are
    /// dropped, except the `listening` line, written at every level.
    public var logLevel = "info"
    /// Whether every answered request gets its `request` log line (the access log).
    /// Default: true. False drops those lines alone (as nginx's `access_log off`); the
    /// other lines, job and callback lines included, still follow `logLevel`, and
    /// `/metrics` still counts every request.
    public var accessLog = true
    /// How the journal syncs: `group` (default: concurrent durable appends share
    /// one `fdatasync`), `record` (one `fdatasync` per append — for comparison
    /// benchmarks), or `off` (no fsync: a machine crash can lose acknowledged jobs).
    public var journalSync = "group"
    /// The main listener speaks TLS only (1.2+, ALPN http/1.1) when set. The
    /// handshake must finish within `limits.headerTimeout`. Default: nil (plain).
    public var tls: TLSConfiguration?
    /// A PEM file of the certificate authorities trusted for HTTPS upstreams and
    /// callback receivers, in place of the system's (libcurl's defaults, on Debian
    /// `/etc/ssl/certs`); for private CAs. Checked at start: it must hold at least one
    /// certificate and no damaged PEM block (text outside the blocks is allowed).
    /// Verification itself is never off. Default: nil (the system's authorities).
    public var upstreamCAFile: String?

    public init() {}

    /// A configuration problem, with a message naming the file and key.
    public struct Error: Swift.Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Why `retention` cannot be the job retention, or nil when it can. Finished jobs
    /// are retired by the wall clock in whole milliseconds, so under 1 ms (zero or
    /// negative included) a job would be dropped as soon as it finished.
    static func jobRetentionProblem(_ retention: Duration) -> String? {
        retention < .milliseconds(1) ? "must be at least 1ms (e.g. \"24h\")" : nil
    }

    /// Reads a JSON config file (SPEC §1); unknown keys are an error.
    /// - Throws: `GatewayConfig.Error` with `file: key: message`.
    public static func load(file: String) throws -> GatewayConfig {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw Error(message: "\(file): cannot read the file")
        }
        let json: JSON
        do { json = try JSON.parse([UInt8](data)) } catch {
            throw Error(message: "\(file): not valid JSON: \(error)")
        }
        guard case .object(let o) = json else { throw Error(message: "\(file): the config must be a JSON object") }
        var c = GatewayConfig()
        func fail(_ key: String, _ msg: String) -> Error { Error(message: "\(file): \(key): \(msg)") }
        func string(_ key: String, _ v: JSON) throws -> String {
            guard case .string(let s) = v else { throw fail(key, "must be a string") }
            return s
        }
        func duration(_ key: String, _ v: JSON) throws -> Duration {
            let s = try string(key, v)
            guard let d = parseDuration(s) else { throw fail(key, "invalid duration \"\(s)\" (use e.g. \"250ms\", \"2s\", \"5m\")") }
            return d
        }
        func int(_ key: String, _ v: JSON) throws -> Int {
            guard let i = v.intValue, i > 0 else { throw fail(key, "must be a positive integer") }
            return Int(i)
        }
        for (key, v) in o {
            switch key {
            case "listen":
                guard let a = SocketAddress(parsing: try string(key, v)) else { throw fail(key, "expected host:port") }
                c.listen = a
            case "admin_listen":
                guard let a = SocketAddress(parsing: try string(key, v)) else { throw fail(key, "expected host:port") }
                c.adminListen = a
            case "routes": c.routes = try string(key, v)
            case "data": c.data = try string(key, v)
            case "event_loops": c.eventLoops = try int(key, v)
            case "drain_timeout": c.drainTimeout = try duration(key, v)
            case "job_retention":
                c.jobRetention = try duration(key, v)
                if let problem = jobRetentionProblem(c.jobRetention) { throw fail(key, problem) }
            case "log_level":
                let l = try string(key, v)
                guard ["debug", "info", "warn", "error"].contains(l) else { throw fail(key, "must be debug, info, warn or error") }
                c.logLevel = l
            case "access_log":
                guard case .bool(let b) = v else { throw fail(key, "must be true or false") }
                c.accessLog = b
            case "callback_secret":
                let s = try string(key, v)
                guard let k = WebhookSignature.key(fromSecret: s), (24...64).contains(k.count) else {
                    throw fail(key, "must be whsec_ followed by base64 of 24–64 bytes")
                }
                c.callbackSecret = s
            case "callback_allow":
                guard case .array(let a) = v else { throw fail(key, "must be an array of CIDRs") }
                c.callbackAllow = try a.enumerated().map { try string("\(key)[\($0.offset)]", $0.element) }
            case "callback_retry":
                guard case .array(let a) = v, !a.isEmpty else { throw fail(key, "must be a non-empty array of durations") }
                c.callbackRetry = try a.enumerated().map { i, e in
                    let s = try string("\(key)[\(i)]", e)
                    if s == "0s" || s == "0ms" || s == "0" { return .zero }
                    return try duration("\(key)[\(i)]", e)
                }
            case "api_keys":
                guard case .array(let a) = v else { throw fail(key, "must be an array") }
                c.apiKeys = try a.enumerated().map { i, e in
                    guard case .object(let k) = e else { throw fail("\(key)[\(i)]", "must be an object") }
                    for kk in k.keys where kk != "name" && kk != "sha256" { throw fail("\(key)[\(i)].\(kk)", "unknown field") }
                    guard case .string(let name)? = k["name"], !name.isEmpty else { throw fail("\(key)[\(i)].name", "is required") }
                    guard case .string(let hex)? = k["sha256"], let h = Crypto.fromHex(hex), h.count == 32 else {
                        throw fail("\(key)[\(i)].sha256", "must be 64 hex digits (SHA-256 of the key)")
                    }
                    return APIKey(name: name, sha256: h)
                }
            case "limits":
                guard case .object(let l) = v else { throw fail(key, "must be an object") }
                for (lk, lv) in l {
                    let k = "limits.\(lk)"
                    switch lk {
                    case "header_bytes": c.limits.headerBytes = try int(k, lv)
                    case "headers": c.limits.headers = try int(k, lv)
                    case "body_bytes": c.limits.bodyBytes = try int(k, lv)
                    case "request_line_bytes": c.limits.requestLineBytes = try int(k, lv)
                    case "header_timeout": c.limits.headerTimeout = try duration(k, lv)
                    case "idle_timeout": c.limits.idleTimeout = try duration(k, lv)
                    case "max_connections": c.limits.maxConnections = try int(k, lv)
                    case "upstream_body_bytes": c.upstreamBodyBytes = try int(k, lv)
                    default: throw fail(k, "unknown field")
                    }
                }
            case "journal":
                guard case .object(let j) = v else { throw fail(key, "must be an object") }
                for (jk, jv) in j {
                    guard jk == "sync" else { throw fail("journal.\(jk)", "unknown field") }
                    let mode = try string("journal.sync", jv)
                    guard ["group", "record", "off"].contains(mode) else { throw fail("journal.sync", "must be group, record or off") }
                    c.journalSync = mode
                }
            case "tls":
                guard case .object(let t) = v else { throw fail(key, "must be an object {\"cert\": FILE, \"key\": FILE}") }
                for k in t.keys where k != "cert" && k != "key" { throw fail("tls.\(k)", "unknown field") }
                guard case .string(let cert)? = t["cert"] else { throw fail("tls.cert", "is required (a PEM file)") }
                guard case .string(let keyFile)? = t["key"] else { throw fail("tls.key", "is required (a PEM file)") }
                c.tls = TLSConfiguration(certificatePath: cert, keyPath: keyFile)
            case "upstream_tls":
                guard case .object(let t) = v else { throw fail(key, "must be an object {\"ca_file\": FILE}") }
                for k in t.keys where k != "ca_file" { throw fail("upstream_tls.\(k)", "unknown field") }
                guard let value = t["ca_file"] else { throw fail("upstream_tls.ca_file", "is required (a PEM file)") }
                let ca = try string("upstream_tls.ca_file", value)
                guard !ca.isEmpty else { throw fail("upstream_tls.ca_file", "must not be empty (a PEM file)") }
                guard FileManager.default.fileExists(atPath: ca) else {
                    throw fail("upstream_tls.ca_file", "\(ca): no such file (a relative path is taken from the current directory)")
                }
                switch Crypto.pemCertificates(path: ca) {
                case nil: throw fail("upstream_tls.ca_file", "cannot read \(ca)")
                case .damaged(let index, let reason)?: throw fail("upstream_tls.ca_file", "\(ca): certificate \(index) is damaged (\(reason))")
                case .read(count: 0)?: throw fail("upstream_tls.ca_file", "\(ca) holds no PEM certificate")
                case .read?: break
                }
                c.upstreamCAFile = ca
            default:
                throw fail(key, "unknown field")
            }
        }
        return c
    }
}

