// The `switchboard` command line: `serve`, `check`, `sandbox` (SPEC §1).
import CLinux
import Dispatch
import EventLoop
import Foundation
import Gateway
import HTTP1
import JSON
import Locking
import Routes
import Sandbox

let usage = """
    usage:
      switchboard serve [--config FILE] [--routes DIR] [--listen HOST:PORT] [--data DIR]
                        [--admin-listen HOST:PORT] [--event-loops N] [--drain-timeout DURATION]
                        [--callback-allow CIDR]... [--tls-cert FILE --tls-key FILE]
      switchboard check [--routes DIR]
      switchboard sandbox [--listen HOST:PORT] [--callback-secret whsec_...]...
    """

/// Prints `message` to standard error and exits with `code`.
func die(_ message: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(code)
}

/// Command-line options after the subcommand: `--name value` pairs (repeatable).
struct Options {
    var values: [String: [String]] = [:]

    init(_ args: ArraySlice<String>, allowed: Set<String>) {
        var it = args.makeIterator()
        while let a = it.next() {
            if a == "-h" || a == "--help" { print(usage); exit(0) }
            guard a.hasPrefix("--") else { die("switchboard: unexpected argument \(a)\n\(usage)") }
            var name = String(a.dropFirst(2))
            var value: String?
            if let eq = name.firstIndex(of: "=") {
                value = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            guard allowed.contains(name) else { die("switchboard: unknown option --\(name)\n\(usage)") }
            guard let v = value ?? it.next() else { die("switchboard: --\(name) needs a value") }
            values[name, default: []].append(v)
        }
    }

    func last(_ name: String) -> String? { values[name]?.last }
    func all(_ name: String) -> [String] { values[name] ?? [] }
}

func address(_ text: String, option: String) -> SocketAddress {
    guard let a = SocketAddress(parsing: text) else { die("switchboard: --\(option): expected HOST:PORT, got \(text)") }
    return a
}

func loadRoutes(_ dir: String) -> RouteTable {
    do {
        return try RouteLoader.load(directory: dir, environment: ProcessInfo.processInfo.environment)
    } catch {
        die(error.problems.joined(separator: "\n"), code: 1)
    }
}

/// Catches `signals` from the moment it is made and calls `handler` for each that
/// arrives, one call at a time, on a thread of its own; `wait()` blocks until a call
/// has returned true. Made before a process binds and announces itself, so a signal
/// sent as soon as the announcement is out is caught, never lost: by the time `init`
/// returns, each signal's handler is installed (`sigaction`, which also replaces a
/// `SIG_IGN` inherited from the parent) and the signal unblocked in the calling thread
/// (and so in the threads it starts later). That handler only writes the signal number
/// to a pipe; the thread reads it from there. Make it on the main thread, before other
/// threads are started. At most one per process (the handler's pipe
/// is process-wide). `wait()` may be called from any thread.
final class SignalCatcher: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)

    /// Installs the handlers; exits the process (status 1) if that fails.
    init(_ signals: [Int32], handler: @escaping @Sendable (Int32) -> Bool) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { die("switchboard: cannot catch signals: pipe: \(String(cString: strerror(errno)))", code: 1) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // The handler must never block: with the pipe full (64 KiB of unread signal
        // numbers) a byte is dropped instead.
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        let (readEnd, sem) = (fds[0], semaphore)
        Thread.detachNewThread {
            var byte: UInt8 = 0
            while true {
                let n = read(readEnd, &byte, 1)
                if n == 1 {
                    if handler(Int32(byte)) { sem.signal() }
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
        for s in signals where CLinux_catch_signal(s, fds[1]) != 0 {
            die("switchboard: cannot catch signal \(s): \(String(cString: strerror(errno)))", code: 1)
        }
    }

    /// Blocks the calling thread until `handler` has returned true (perhaps before this call).
    func wait() {
        semaphore.wait()
    }
}

func serve(_ o: Options) {
    var config = GatewayConfig()
    if let file = o.last("config") {
        do { config = try GatewayConfig.load(file: file) } catch { die("\(error)", code: 1) }
    }
    if let v = o.last("routes") { config.routes = v }
    if let v = o.last("listen") { config.listen = address(v, option: "listen") }
    if let v = o.last("admin-listen") { config.adminListen = address(v, option: "admin-listen") }
    if let v = o.last("data") { config.data = v }
    if let v = o.last("event-loops") {
        guard let n = Int(v), n > 0 else { die("switchboard: --event-loops must be a positive integer") }
        config.eventLoops = n
    }
    if let v = o.last("drain-timeout") {
        guard let d = parseDuration(v) else { die("switchboard: --drain-timeout: invalid duration \(v)") }
        config.drainTimeout = d
    }
    config.callbackAllow += o.all("callback-allow")
    switch (o.last("tls-cert"), o.last("tls-key")) {
    case (let cert?, let key?): config.tls = TLSConfiguration(certificatePath: cert, keyPath: key)
    case (nil, nil): break
    default: die("switchboard: --tls-cert and --tls-key go together")
    }

    let log = ControlLog(level: config.logLevel)
    Socket.ignoreSIGPIPE()
    // Past a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) a write raises
    // SIGXFSZ, which would kill the process without a word; ignored, the write fails
    // with EFBIG and the journal reports it like a full disk.
    signal(SIGXFSZ, SIG_IGN)
    // Signals are caught from here on, before anything is bound or announced: a SIGTERM
    // sent the moment the `listening` line is out drains as any other. One that comes
    // while the gateway starts takes effect once it has (a SIGTERM drains at once, a
    // SIGHUP reloads then); a second SIGTERM/SIGINT exits at once, whenever it comes.
    let routesDir = config.routes
    let state = Locked(ServeSignals())
    let signals = SignalCatcher([SIGTERM, SIGINT, SIGHUP]) { sig in
        if sig == SIGHUP {
            let gateway = state.withLock { s -> Gateway? in
                if s.gateway == nil { s.reloadPending = true }
                return s.gateway
            }
            if let gateway { reload(gateway, routesDir: routesDir, log: log) }
            return false
        }
        let n = state.withLock { $0.terminating += 1; return $0.terminating }
        if n > 1 { exit(1) }  // a second SIGTERM/SIGINT exits at once
        return true
    }
    let routes = loadRoutes(config.routes)
    let gateway: Gateway
    do {
        gateway = try Gateway(config: config, routes: routes)
        try gateway.start()
    } catch {
        die("switchboard: cannot start: \(error)", code: 1)
    }
    let reloadPending = state.withLock { s -> Bool in
        s.gateway = gateway
        defer { s.reloadPending = false }
        return s.reloadPending
    }
    // A SIGHUP that came while starting: reloaded now, on the signal thread like any other.
    if reloadPending { kill(getpid(), SIGHUP) }
    let drainTimeout = config.drainTimeout
    signals.wait()
    log("info", "draining", [("timeout_ms", .int(drainTimeout.milliseconds))])
    gateway.drain(timeout: drainTimeout)
    gateway.shutdown()
    log("info", "stopped")
    exit(0)
}

/// What `serve`'s signal handling shares with the start-up (under a lock): the gateway
/// once started, whether a SIGHUP came before that, and how many SIGTERM/SIGINT came.
struct ServeSignals {
    var gateway: Gateway?
    var reloadPending = false
    var terminating = 0
}

/// SIGHUP: re-reads the routes in `routesDir` and the TLS files; a bad route file or
/// certificate keeps the old ones and logs why.
func reload(_ gateway: Gateway, routesDir: String, log: ControlLog) {
    do {
        let table = try RouteLoader.load(directory: routesDir, environment: ProcessInfo.processInfo.environment)
        gateway.reload(routes: table)
        log("info", "routes reloaded", [("routes", .int(Int64(table.routes.count)))])
    } catch {
        log("error", "route reload failed; keeping the old routes", [("problems", .string(error.problems.joined(separator: "; ")))])
    }
    do { try gateway.reloadTLS() } catch {
        log("error", "TLS reload failed; keeping the old certificate", [("error", .string("\(error)"))])
    }
}

/// The command line's own log lines (route reload, drain, stop; the sandbox's start),
/// in the shape of every other line: `time` (RFC 3339, milliseconds), `level`, `msg`,
/// then the fields, values typed (numbers as JSON numbers). Lines below `level`
/// (`debug`, `info`, `warn`, `error`: the config's `log_level`) are dropped.
/// Any thread: each line goes through a `LogBuffer` of its own that writes it at once,
/// whole, under the process-wide log lock.
struct ControlLog: Sendable {
    let level: String

    func callAsFunction(_ level: String, _ message: String, _ fields: [(String, JSON)] = []) {
        LogBuffer(loop: nil, level: self.level).log(level, message, fields)
    }
}

func check(_ o: Options) {
    let dir = o.last("routes") ?? "routes"
    let table = loadRoutes(dir)
    print(RouteLoader.checkReport(table))
    exit(0)
}

func sandbox(_ o: Options) {
    let addr = address(o.last("listen") ?? "127.0.0.1:9090", option: "listen")
    Socket.ignoreSIGPIPE()
    do {
        let group = try EventLoopGroup(count: 1)
        let s = Sandbox(group: group, address: addr, callbackSecrets: o.all("callback-secret"))
        let stop = SignalCatcher([SIGTERM, SIGINT]) { _ in true }
        try s.start()
        ControlLog(level: "info")("info", "sandbox listening", [("address", .string("\(addr.host):\(s.port)"))])
        stop.wait()
        s.shutdown()
        group.shutdown()
        exit(0)
    } catch {
        die("switchboard sandbox: cannot start: \(error)", code: 1)
    }
}

let args = CommandLine.arguments
guard args.count >= 2 else { die(usage) }
switch args[1] {
case "serve":
    serve(Options(args.dropFirst(2), allowed: ["config", "routes", "listen", "admin-listen", "data", "event-loops", "drain-timeout", "callback-allow", "tls-cert", "tls-key"]))
case "check":
    check(Options(args.dropFirst(2), allowed: ["routes"]))
case "sandbox":
    sandbox(Options(args.dropFirst(2), allowed: ["listen", "callback-secret"]))
case "-h", "--help", "help":
    print(usage)
default:
    die("switchboard: unknown command \(args[1])\n\(usage)")
}
