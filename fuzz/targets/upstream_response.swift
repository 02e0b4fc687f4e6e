// libFuzzer target: the upstream response handling. Each input is the raw bytes an
// upstream HTTP server sends back (status line, headers, body, 1xx interim responses,
// garbage). A helper thread serves them over a real loopback TCP socket to a real
// `UpstreamClient` transfer (libcurl's multi interface driven by an `EventLoop` on its
// own thread): the server reads the request head, writes the input, shuts down its
// writing half and then drains the connection until the client closes it.
//
// Checked for every input: a success has a status in 100...599, a body of at most
// `maxBodyBytes`, a header block whose lines end in LF, header pairs without CR, LF or
// NUL whose by-name lookup (`UpstreamResponse.header`) answers the first match, and a
// body that `JSON.isCanonicalCompact` accepts must parse and serialize back to itself
// (the gateway's pass-through shortcut); a failure has a message. Input is finite and
// ends in EOF, so a transfer must never need its deadline: a timeout is run again with
// a 60 s deadline, and if that one hangs too libFuzzer reports it (-timeout=10).
//
// Compiled against the modules Locking, CLinux (C), EventLoop, Upstream (+ CCurl,
// libcurl) and JSON, each built separately by fuzz/run.
import CCurl
import EventLoop
import Glibc
import JSON
import Locking
import Upstream

/// The response body limit of every request (small, so oversized bodies are common).
private let maxBodyBytes = 4096
/// The longest request head the server reads before answering anyway.
private let maxRequestHead = 16 * 1024

/// The loopback server, the loop thread and the client, set up on first use.
private final class Harness: @unchecked Sendable {
    let port: UInt16
    let group: EventLoopGroup
    let client: UpstreamClient
    /// The bytes the server answers the next connection with.
    let input = Locked<[UInt8]>([])
    /// Posted by each transfer's completion.
    let done = Semaphore()

    init() {
        // Never through a proxy from the environment: the client reads it when created.
        setenv("no_proxy", "*", 1)
        let listener = try! Socket.listen(SocketAddress(host: "127.0.0.1", port: 0), reusePort: false, backlog: 64)
        let fd = listener.fd
        port = listener.port

        group = try! EventLoopGroup(count: 1)
        let loop = group.loops[0]
        let made = Semaphore()
        let box = ResultBox<UpstreamClient>()
        loop.execute { box.value = UpstreamClient(loop: loop); made.signal() }
        made.wait()
        client = box.value!

        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            serve(listenFD: Int32(Int(bitPattern: arg)))
        }, UnsafeMutableRawPointer(bitPattern: Int(fd)))
        precondition(rc == 0, "pthread_create")
    }

    /// Sends one GET for which the server answers `bytes`; waits for the result.
    func exchange(_ bytes: [UInt8], deadline: Duration) -> UpstreamResult {
        input.withLock { $0 = bytes }
        let box = ResultBox<UpstreamResult>()
        let client = self.client, done = self.done, url = "http://127.0.0.1:\(port)/fuzz"
        client.loop.execute {
            let request = UpstreamRequest(method: "GET", url: url, headers: [("Connection", "close")],
                                          deadline: client.loop.now + deadline, maxBodyBytes: maxBodyBytes)
            _ = client.send(request) { r in
                box.value = r
                done.signal()
            }
        }
        // No timeout here: a completion that never comes is a hang libFuzzer reports.
        done.wait()
        return box.value!
    }
}

/// A POSIX semaphore, posted on one thread and waited for on another.
private final class Semaphore: @unchecked Sendable {
    private let sem = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    init() { sem_init(sem, 0, 0) }
    deinit { sem_destroy(sem); sem.deallocate() }
    func signal() { sem_post(sem) }
    func wait() { while sem_wait(sem) != 0 {} }
}

/// A value handed from the loop thread to the fuzzing thread (ordered by a semaphore).
private final class ResultBox<T>: @unchecked Sendable {
    var value: T?
}

private let harness = Harness()
/// `UPSTREAM_FUZZ_VERBOSE=1`: print each input's result (for reproducing a finding).
private let verbose = getenv("UPSTREAM_FUZZ_VERBOSE") != nil

private func describe(_ result: UpstreamResult) -> String {
    switch result {
    case .success(let r):
        var s = "\(r.status), \(r.body.count) body bytes"
        for (n, v) in r.headers { s += "\n  \(Array(n.utf8).count < 64 ? n : "<long name>"): \(v.utf8.count < 200 ? v : "<\(v.utf8.count) bytes>")" }
        return s
    case .failure(let f): return "failure \(f)"
    }
}

/// The server thread: answers each connection with the current input, then keeps it
/// open for reading until the client closes it (so closing never resets data the
/// client has not read yet), without holding up the next connection.
private func serve(listenFD: Int32) -> Never {
    var draining: [(fd: Int32, since: Instant)] = []
    var scratch = [UInt8](repeating: 0, count: 4096)
    while true {
        var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)]
        for d in draining { fds.append(pollfd(fd: d.fd, events: Int16(POLLIN), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), 100)
        let now = Instant.now()
        var kept: [(fd: Int32, since: Instant)] = []
        for (k, d) in draining.enumerated() {
            var open = now - d.since < .seconds(5)
            if open && fds[k + 1].revents != 0 {
                open = recv(d.fd, &scratch, scratch.count, Int32(MSG_DONTWAIT)) > 0
            }
            if open { kept.append(d) } else { close(d.fd) }
        }
        draining = kept
        guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
        let c = accept(listenFD, nil, nil)  // blocking (not inherited from the listener)
        guard c >= 0 else { continue }
        answer(c, scratch: &scratch)
        draining.append((c, Instant.now()))
    }
}

/// Reads the request head (up to CRLFCRLF, EOF, 2 s or `maxRequestHead` bytes), writes
/// the current input and shuts down the writing half.
private func answer(_ c: Int32, scratch: inout [UInt8]) {
    var tv = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var head: [UInt8] = []
    while head.count < maxRequestHead {
        let n = recv(c, &scratch, scratch.count, 0)
        if n <= 0 { break }
        head.append(contentsOf: scratch[0..<n])
        if endsHead(head) { break }
    }
    let bytes = harness.input.withLock { $0 }
    bytes.withUnsafeBytes { b in
        var off = 0
        while off < b.count {
            let n = send(c, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
            if n <= 0 { break }  // the client gave up (e.g. body too large): fine
            off += n
        }
    }
    shutdown(c, Int32(SHUT_WR))
}

private func endsHead(_ h: [UInt8]) -> Bool {
    guard h.count >= 4 else { return false }
    for i in 0...(h.count - 4) where h[i] == 0x0D && h[i + 1] == 0x0A && h[i + 2] == 0x0D && h[i + 3] == 0x0A {
        return true
    }
    return false
}

// MARK: - Outcome counts (printed at exit, to see what the inputs reach)

nonisolated(unsafe) private var statusClasses = [Int](repeating: 0, count: 6)  // index status / 100
nonisolated(unsafe) private var failures: [UpstreamFailureKind: Int] = [:]
nonisolated(unsafe) private var timeoutsRetried = 0
nonisolated(unsafe) private var canonicalBodies = 0
nonisolated(unsafe) private var statsRegistered = false

private func printStats() {
    var s = "upstream_response: successes by status class"
    for k in 1...5 { s += " \(k)xx=\(statusClasses[k])" }
    s += "; failures protocol=\(failures[.protocol] ?? 0) timeout=\(failures[.timeout] ?? 0) connect=\(failures[.connect] ?? 0)"
    s += "; timeouts re-run=\(timeoutsRetried); canonical JSON bodies=\(canonicalBodies)\n"
    s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

// MARK: - Invariants

private func hasControl(_ s: String) -> Bool {
    s.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }
}

private func asciiCaseInsensitiveEqual(_ a: String, _ b: String) -> Bool {
    a.utf8.count == b.utf8.count && zip(a.utf8, b.utf8).allSatisfy { x, y in
        x == y || (x | 0x20 == y | 0x20 && (x | 0x20) >= 0x61 && (x | 0x20) <= 0x7A)
    }
}

private func check(_ result: UpstreamResult) {
    switch result {
    case .success(let r):
        guard (100...599).contains(r.status) else { fatalError("success with status \(r.status)") }
        statusClasses[r.status / 100] += 1
        guard r.body.count <= maxBodyBytes else { fatalError("body of \(r.body.count) bytes > \(maxBodyBytes)") }
        guard let block = r.headerBlock else { fatalError("a client response without its header block") }
        guard block.raw.isEmpty || block.raw.last == 0x0A else { fatalError("header block does not end in LF") }
        let pairs = r.headers
        let again = block.pairs
        guard pairs.count == again.count, zip(pairs, again).allSatisfy({ $0.0 == $1.0 && $0.1 == $1.1 }) else {
            fatalError("header pairs differ between reads")
        }
        for (n, v) in pairs where hasControl(n) || hasControl(v) {
            fatalError("header field with CR, LF or NUL: \(Array(n.utf8)) = \(Array(v.utf8))")
        }
        // By-name lookup, as a step's `Retry-After` and the templates use it: the first
        // field whose name equals, ignoring ASCII case (RFC 9110 field names are tokens).
        for (n, _) in pairs {
            let first = pairs.first { asciiCaseInsensitiveEqual($0.0, n) }?.1
            guard r.header(n) == first else { fatalError("header(\(Array(n.utf8))) is not the first field of that name") }
        }
        _ = r.header("content-type")?.lowercased().hasPrefix("application/json")
        _ = r.header("retry-after").flatMap { Int64($0) }
        // The pass-through shortcut: bytes judged canonical must be exactly what parse + serialize gives.
        if JSON.isCanonicalCompact(r.body) {
            canonicalBodies += 1
            guard let value = try? JSON.parse(r.body) else {
                fatalError("canonical body does not parse: \(String(decoding: r.body, as: UTF8.self))")
            }
            guard value.serialized == r.body else {
                fatalError("canonical body serializes differently: \(String(decoding: r.body, as: UTF8.self)) -> \(value.text)")
            }
        }
    case .failure(let f):
        failures[f.kind, default: 0] += 1
        guard !f.message.isEmpty else { fatalError("\(f.kind) failure without a message") }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    if !statsRegistered {
        statsRegistered = true
        atexit { printStats() }
    }
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    var result = harness.exchange(data, deadline: .seconds(2))
    if case .failure(let f) = result, f.kind == .timeout {
        // A busy machine may delay a transfer past 2 s; a real hang also outlasts 60 s.
        timeoutsRetried += 1
        result = harness.exchange(data, deadline: .seconds(60))
    }
    if verbose { print("\(data.count) bytes -> \(describe(result))") }
    check(result)
    return 0
}
