import CLinux
import EventLoop
import Foundation
import Gateway
import Glibc
import TestSupport
import Testing
import Upstream

// Memory and curl-handle baselines around upstream-fault storms.
//
// Heap usage is a whole-process figure (glibc `mallinfo2()`: bytes handed out by
// malloc and not freed, arenas + mmap'ed chunks), and the test runner runs suites
// in parallel, so it cannot be measured next to other tests. The measuring suite
// (`UpstreamFaultMemoryProbe`) therefore runs in a child process — this test
// bundle started again with a filter that selects only it — where nothing else
// runs; `UpstreamFaultMemoryTests` starts that child and checks its verdict.
//
// The method, per fault mode, on a fresh gateway:
//  1. a warm-up storm (`warmUpRequests`), so one-time allocations (Swift metadata,
//     curl's caches, the handle pool, malloc's per-thread caches, metrics slots)
//     happen before the baseline is taken;
//  2. wait until the gateway is idle (no transfer in flight, no run, no socket to
//     the upstream) and the heap figure is steady; that is the baseline;
//  3. the measured storm (`measuredRequests`), the same idle wait, and the heap
//     figure again. The growth must stay under `heapTolerance`.
// With 300 measured requests a leak of 1 KiB per request is 300 KiB, above the
// 256 KiB tolerance; the probe's own self-test leaks 2 KiB per request on purpose
// and must be caught. The tolerance covers what legitimately moves between two
// idle moments: the per-loop wait-budget FIFO keeps 16 bytes per synchronous run
// until the route's wait budget (30 s here) has passed, growing its arrays by
// doubling; malloc's per-thread caches; the test runner's own bookkeeping.
// Observed on a busy 2-core machine (debug build): −26 KiB … +126 KiB across the
// eleven fault modes over several runs; the self-test +680 … +730 KiB. The same gateway answering from a
// fixed route (no upstream) stays within ±5 KiB per 300 requests.

/// Requests of the storm before the baseline is taken.
private let warmUpRequests = 300
/// Requests of the measured storm.
private let measuredRequests = 300
/// Concurrent callers during a storm.
private let stormConcurrency = 20
/// Heap growth allowed across the measured storm, in bytes.
private let heapTolerance = 256 * 1024
/// The step timeout of the probe routes: short, so the timeout faults' storms stay quick.
private let probeStepTimeout = "200ms"

/// Set in the child process that runs `UpstreamFaultMemoryProbe`.
private let probeEnvironment = "SWITCHBOARD_MEMORY_PROBE"

/// Bytes of heap in use in this process (glibc `mallinfo2()`: `uordblks + hblkhd`).
func heapBytesInUse() -> Int { Int(CLinux_malloc_bytes_in_use()) }

extension GatewayHarness {
    /// The gateway's event loops. `Gateway` keeps its loop group private, so the
    /// tests read the stored property `group` by reflection; the callers require a
    /// non-empty answer, so a renamed property fails loudly instead of making the
    /// handle checks vacuous.
    var eventLoops: [EventLoop] {
        (Mirror(reflecting: gateway).descendant("group") as? EventLoopGroup)?.loops ?? []
    }

    /// libcurl easy-handle accounting of every `UpstreamClient` on this gateway's
    /// loops (flows and callback deliveries).
    var upstreamHandles: UpstreamHandleStats { UpstreamClient.handleStats(onLoops: eventLoops) }

    /// The same, per event loop (each loop's clients keep their own handle pools;
    /// a pool never holds more handles than its loop had transfers at once).
    var upstreamHandlesPerLoop: [UpstreamHandleStats] { eventLoops.map { UpstreamClient.handleStats(onLoops: [$0]) } }
}

/// `count` `GET path` requests on fresh connections, `concurrency` at a time;
/// returns the statuses (0: no answer).
func storm(_ gw: GatewayHarness, path: String, count: Int, concurrency: Int) -> [Int] {
    let next = Shared(0)
    let statuses = Shared<[Int]>([])
    let workers = (0..<concurrency).map { _ in
        Background {
            while next.with({ n -> Bool in defer { n += 1 }; return n < count }) {
                let status = (try? gw.connect(timeout: .seconds(15)).request("GET", path))?.status ?? 0
                statuses.with { $0.append(status) }
            }
        }
    }
    for w in workers { w.join() }
    return statuses.get
}

/// A warm-up storm of 60 `GET warm` requests, `stormConcurrency` at a time, then the
/// measured storm of 60 `GET measured`, each followed by a wait until no transfer is in
/// flight and no job runs; returns both storms' statuses and the steady heap (bytes)
/// before and after the measured one.
func stormsAndHeap(_ gw: HardeningGateway, warm: String, measured: String) -> (warm: [Int], measured: [Int], before: Int, after: Int) {
    func idle() -> Bool {
        eventually(timeout: .seconds(15)) { gw.upstreamHandles.inFlight == 0 && gw.metric("switchboard_jobs_running") == 0 }
    }
    let warmStatuses = storm(gw, path: warm, count: 60, concurrency: stormConcurrency)
    #expect(idle(), "\(gw.upstreamHandles)")
    let before = steadyHeapBytes()
    let measuredStatuses = storm(gw, path: measured, count: 60, concurrency: stormConcurrency)
    #expect(idle(), "\(gw.upstreamHandles)")
    return (warmStatuses, measuredStatuses, before, steadyHeapBytes())
}

/// Waits until the gateway is idle after a storm against `upstreamPort`: no
/// transfer in flight, every handle pooled, no run, no socket to the upstream,
/// no upstream handler thread still running, and no caller connection but the
/// probe's own.
/// - Returns: what is still busy, or nil when idle.
func waitUntilIdle(_ gw: GatewayHarness, upstreamPort: UInt16, callerBaseline: Int, handlers: Shared<Int>) -> String? {
    let idle = eventually(timeout: .seconds(15)) {
        let h = gw.upstreamHandles
        return h.inFlight == 0 && h.unaccounted == 0 && handlers.get == 0
            && tcpSocketCount(remotePort: upstreamPort) == 0
            && gw.serverSideSockets == callerBaseline
            && gw.metric("switchboard_jobs_running") == 0
    }
    if idle { return nil }
    return "\(gw.upstreamHandles); upstream handlers running \(handlers.get); upstream sockets \(tcpSocketCount(remotePort: upstreamPort)); caller sockets \(gw.serverSideSockets) (baseline \(callerBaseline)); runs \(gw.metric("switchboard_jobs_running") ?? -1)"
}

/// The heap figure once it has stopped moving: samples every 100 ms until two in a
/// row are within 8 KiB (at most 3 s), then the smaller of the two. Threads that
/// are just exiting (upstream handlers, clients) free their buffers meanwhile.
func steadyHeapBytes() -> Int {
    var last = heapBytesInUse()
    for _ in 0..<30 {
        usleep(100_000)
        let now = heapBytesInUse()
        if abs(now - last) <= 8 * 1024 { return min(now, last) }
        last = now
    }
    return last
}

/// One fault's measurement: heap and handles before and after the measured storm.
struct StormMeasurement: CustomStringConvertible {
    var heapBefore = 0, heapAfter = 0
    var handlesBefore = UpstreamHandleStats(created: 0, cleanedUp: 0, inFlight: 0, idle: 0)
    var handlesAfter = UpstreamHandleStats(created: 0, cleanedUp: 0, inFlight: 0, idle: 0)
    var poolsBefore: [Int] = [], poolsAfter: [Int] = []
    var wrongStatuses = 0
    var busy: String?
    var heapGrowth: Int { heapAfter - heapBefore }
    var description: String {
        "heap \(heapBefore) -> \(heapAfter) bytes (\(heapGrowth >= 0 ? "+" : "")\(heapGrowth), \(String(format: "%.1f", Double(heapGrowth) / Double(measuredRequests))) B/request); "
            + "easy handles before: \(handlesBefore.live) live/\(handlesBefore.idle) idle (per loop \(poolsBefore)), "
            + "after: \(handlesAfter.live) live/\(handlesAfter.idle) idle/\(handlesAfter.inFlight) in flight/\(handlesAfter.unaccounted) unaccounted (per loop \(poolsAfter))"
    }
}

/// Warm-up storm, baseline, measured storm, measurement, against `fault`.
/// `leakPerRequest` bytes are deliberately leaked by the upstream for each request
/// (the probe's self-test); 0 otherwise.
func measureStorm(_ fault: UpstreamFault, leakPerRequest: Int = 0) throws -> StormMeasurement {
    var server: ScriptedServer? = nil
    let upstreamPort: UInt16
    // Upstream handler threads still running (a dripping one sleeps a second between
    // bytes): the heap is measured once they have all returned.
    let handlers = Shared(0)
    if let b = fault.behaviour {
        let s = try ScriptedServer { conn, _ in
            handlers.with { $0 += 1 }
            defer { handlers.with { $0 -= 1 } }
            if leakPerRequest > 0, let p = malloc(leakPerRequest) { memset(p, 0x5A, leakPerRequest) }
            b(conn)
        }
        server = s
        upstreamPort = s.port
    } else {
        upstreamPort = closedPort()
    }
    defer { server?.stop() }
    let gw = try HardeningGateway(routes: [
        "fault.json": upstreamRoute(name: "fault", path: "/fault", url: "http://127.0.0.1:\(upstreamPort)/x", timeout: probeStepTimeout),
    ]) { config in
        config.upstreamBodyBytes = upstreamBodyLimit
    }
    var m = StormMeasurement()
    guard !gw.eventLoops.isEmpty else {
        m.busy = "the gateway's event loops could not be found (Gateway.group renamed?)"
        return m
    }
    let callerBaseline = gw.serverSideSockets
    let warm = storm(gw, path: "/fault", count: warmUpRequests, concurrency: stormConcurrency)
    if let busy = waitUntilIdle(gw, upstreamPort: upstreamPort, callerBaseline: callerBaseline, handlers: handlers) { m.busy = "after warm-up: \(busy)"; return m }
    m.handlesBefore = gw.upstreamHandles
    m.poolsBefore = gw.upstreamHandlesPerLoop.map(\.live)
    m.heapBefore = steadyHeapBytes()
    let measured = storm(gw, path: "/fault", count: measuredRequests, concurrency: stormConcurrency)
    if let busy = waitUntilIdle(gw, upstreamPort: upstreamPort, callerBaseline: callerBaseline, handlers: handlers) { m.busy = "after the storm: \(busy)"; return m }
    m.heapAfter = steadyHeapBytes()
    m.handlesAfter = gw.upstreamHandles
    m.poolsAfter = gw.upstreamHandlesPerLoop.map(\.live)
    // The exact status per fault (and its time bound) is UpstreamFaultTests' business;
    // with the probe's short step timeout a body fault may end as a timeout instead.
    m.wrongStatuses = (warm + measured).filter { $0 != 502 && $0 != 504 }.count
    return m
}

/// Runs only in the child process started by `UpstreamFaultMemoryTests` (one test
/// at a time, nothing else in the process).
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment[probeEnvironment] != nil))
struct UpstreamFaultMemoryProbe {
    /// After a warm-up storm, a storm of 300 requests against the faulty upstream leaves the heap within the tolerance of its baseline, no handle in flight or unaccounted, and no loop's handle pool larger than the storm's concurrency.
    @Test(arguments: upstreamFaults)
    func faultStorm_ReturnsHeapAndCurlHandlesToBaseline(_ fault: UpstreamFault) throws {
        let m = try measureStorm(fault)
        print("memory-probe \(fault.name): \(m)")
        #expect(m.busy == nil, "\(fault.name): the gateway did not go idle: \(m.busy ?? "")")
        guard m.busy == nil else { return }
        #expect(m.wrongStatuses == 0, "\(fault.name): \(m.wrongStatuses) answers were not a 502 or 504")
        #expect(m.heapGrowth < heapTolerance, "\(fault.name): heap grew by \(m.heapGrowth) bytes over \(measuredRequests) requests (tolerance \(heapTolerance))")
        #expect(m.handlesAfter.inFlight == 0 && m.handlesAfter.unaccounted == 0, "\(fault.name): \(m.handlesAfter)")
        #expect(m.handlesAfter.live == m.handlesAfter.idle, "\(fault.name): every live handle is pooled: \(m.handlesAfter)")
        #expect(m.poolsAfter.count == m.poolsBefore.count && zip(m.poolsBefore, m.poolsAfter).allSatisfy { $1 <= max($0, stormConcurrency) },
                "\(fault.name): a loop's handle pool grew past the storm's concurrency: \(m.poolsBefore) -> \(m.poolsAfter)")
    }

    /// Step URLs templated from request bodies (100 KB each, 20 at a time): once the
    /// transfers are over, the idle handle pool keeps none of them (a pooled handle
    /// keeps only URLs up to `keptURLBytes` parsed), so the heap returns to its baseline.
    @Test func longURLStorm_ThePoolKeepsNoLongURL() throws {
        let gw = try HardeningGateway(routes: [
            "long.json": jsonText(["name": "long", "method": "POST", "path": "/long", "wait": "30s",
                                   "steps": [["id": "up", "timeout": probeStepTimeout,
                                              "request": ["method": "GET", "url": "http://127.0.0.1:\(closedPort())/h?x={{request.body.x}}"]]]]),
        ])
        func post(x: String) -> [Int] {
            let body = "{\"x\":\"\(x)\"}"
            let statuses = Shared<[Int]>([])
            let workers = (0..<stormConcurrency).map { _ in
                Background {
                    for _ in 0..<3 {
                        let status = (try? gw.connect(timeout: .seconds(15)).request("POST", "/long", headers: [("Content-Type", "application/json")], body: Array(body.utf8)))?.status ?? 0
                        statuses.with { $0.append(status) }
                    }
                }
            }
            for w in workers { w.join() }
            return statuses.get
        }
        func idle() -> Bool {
            eventually(timeout: .seconds(15)) { gw.upstreamHandles.inFlight == 0 && gw.metric("switchboard_jobs_running") == 0 }
        }
        // Warm-up with short URLs: the pool grows to the storm's concurrency.
        let warm = post(x: "a")
        #expect(idle(), "\(gw.upstreamHandles)")
        let before = steadyHeapBytes()
        let measured = post(x: String(repeating: "a", count: 100_000))
        #expect(idle(), "\(gw.upstreamHandles)")
        let after = steadyHeapBytes()
        print("memory-probe long URLs: heap \(before) -> \(after) bytes (\(after - before)); \(gw.upstreamHandles)")
        // Refused connections: 502, or 504 when the short step timeout ends first on a busy machine.
        #expect((warm + measured).allSatisfy { $0 == 502 || $0 == 504 }, "\(Set(warm + measured))")
        // 20 idle handles each keeping a 100 KB URL twice (text and parsed) would be ~4 MB.
        #expect(after - before < heapTolerance, "the idle pool kept long URLs: heap grew by \(after - before) bytes")
        #expect(gw.upstreamHandles.live >= stormConcurrency / 2, "the storm ran concurrently: \(gw.upstreamHandles)")
    }

    /// An upstream answering with a 200 KB head (four 50 KB fields, under curl's 100 KB per
    /// line and 300 KB per head), 20 requests at a time: once the transfers are over, no
    /// idle pooled handle keeps such a head (curl holds a handle's last stored fields and
    /// its longest line's buffer until the next transfer: a handle that received a head
    /// over `PooledEasy.keptHeadBytes` is replaced by a fresh one), so the heap returns to
    /// its baseline.
    @Test func largeHeadStorm_ThePoolKeepsNoHead() throws {
        let pad = String(repeating: "a", count: 50_000)
        let head = "HTTP/1.1 200 OK\r\n" + (1...4).map { "X-Pad-\($0): \(pad)\r\n" }.joined()
            + "Content-Length: 2\r\nConnection: close\r\n\r\nok"
        let up = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            _ = conn.write(head)
            shutdown(conn.fd, Int32(SHUT_WR))
            _ = conn.isClosedByPeer()
        }
        let gw = try HardeningGateway(routes: [
            "big.json": jsonText(["name": "big", "method": "GET", "path": "/big", "wait": "30s",
                                  "steps": [["id": "up", "timeout": "5s",
                                             "request": ["method": "GET", "url": "http://127.0.0.1:\(up.port)/h"]]]]),
        ])
        let (warm, measured, before, after) = stormsAndHeap(gw, warm: "/big", measured: "/big")
        print("memory-probe large heads: heap \(before) -> \(after) bytes (\(after - before)); \(gw.upstreamHandles)")
        #expect((warm + measured).allSatisfy { $0 == 200 }, "\(Set(warm + measured))")
        // 20 idle handles each keeping a 200 KB head (fields and line buffer) would be ~8 MB.
        #expect(after - before < heapTolerance, "the idle pool kept large heads: heap grew by \(after - before) bytes")
        #expect(gw.upstreamHandles.live >= stormConcurrency / 2, "the storm ran concurrently: \(gw.upstreamHandles)")
    }

    /// An upstream whose head has a 90 KB line that never reaches the header callback —
    /// one curl refuses itself (a NUL byte) or the head screening refuses (whitespace
    /// before the first field) — 20 requests at a time, after a warm-up of ordinary
    /// answers that filled the pool: no idle pooled handle keeps that line (curl keeps a
    /// handle's longest head line's buffer, `headerb`, for good), so the heap returns to
    /// its baseline.
    @Test(arguments: ["nul", "folded"])
    func refusedLongHeadLineStorm_ThePoolKeepsNoLine(_ kind: String) throws {
        let pad = String(repeating: "a", count: 90_000)
        let bad = kind == "nul" ? "HTTP/1.1 200 OK\r\nX-Pad: \(pad)\u{0}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            : "HTTP/1.1 200 OK\r\n X-Pad: \(pad)\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        let up = try ScriptedServer { conn, _ in
            guard let req = conn.readRequest() else { return }
            _ = conn.write(req.target == "/bad" ? bad : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            shutdown(conn.fd, Int32(SHUT_WR))
            _ = conn.isClosedByPeer()
        }
        func route(_ name: String) -> String {
            jsonText(["name": name, "method": "GET", "path": "/\(name)", "wait": "30s",
                      "steps": [["id": "up", "timeout": "5s",
                                 "request": ["method": "GET", "url": "http://127.0.0.1:\(up.port)/\(name)"]]]])
        }
        let gw = try HardeningGateway(routes: ["good.json": route("good"), "bad.json": route("bad")])
        let (warm, measured, before, after) = stormsAndHeap(gw, warm: "/good", measured: "/bad")
        print("memory-probe refused long head line (\(kind)): heap \(before) -> \(after) bytes (\(after - before)); \(gw.upstreamHandles)")
        #expect(warm.allSatisfy { $0 == 200 } && measured.allSatisfy { $0 == 502 }, "\(Set(warm)) \(Set(measured))")
        #expect(after - before < heapTolerance, "the idle pool kept refused head lines: heap grew by \(after - before) bytes")
    }

    /// The measurement is sharp enough: a deliberate leak of 2 KiB per request (in the upstream, same process) shows up as heap growth above the tolerance.
    @Test func selfTest_ADeliberate2KiBPerRequestLeak_IsCaught() throws {
        let fault = try #require(upstreamFaults.first { $0.name == "closes before answering" })
        let m = try measureStorm(fault, leakPerRequest: 2048)
        print("memory-probe self-test (2 KiB leaked per request): \(m)")
        #expect(m.busy == nil, "\(m.busy ?? "")")
        #expect(m.heapGrowth >= heapTolerance, "a 2 KiB/request leak went unnoticed: growth \(m.heapGrowth) bytes, tolerance \(heapTolerance)")
    }
}

@Suite struct UpstreamFaultMemoryTests {
    /// Runs `UpstreamFaultMemoryProbe` (every upstream-fault mode plus the self-test) alone in a child process and requires it to pass. Skipped under the sanitizers, which replace malloc (AddressSanitizer's LeakSanitizer covers leaks there).
    @Test(.disabled(if: ProcessInfo.processInfo.environment["SWITCHBOARD_SANITIZER"] != nil, "the sanitizers replace malloc; mallinfo2() does not see their heap"),
          .enabled(if: ProcessInfo.processInfo.environment[probeEnvironment] == nil))
    func upstreamFaultStorms_ReturnHeapAndHandlesToBaseline_InAChildProcess() throws {
        let out = NSTemporaryDirectory() + "switchboard-memory-probe-\(UUID().uuidString).log"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        p.arguments = ["--testing-library", "swift-testing", "--filter", "UpstreamFaultMemoryProbe"]
        p.environment = ProcessInfo.processInfo.environment.merging([probeEnvironment: "1"]) { $1 }
        p.standardOutput = log
        p.standardError = log
        try p.run()
        let finished = eventually(timeout: .seconds(300)) { !p.isRunning }
        if !finished { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        try? log.close()
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("memory-probe") }
        for l in lines { print(l) }
        #expect(finished, "the probe did not finish within 300 s")
        #expect(p.terminationStatus == 0, "the probe failed:\n\(text.suffix(6000))")
        #expect(lines.count == upstreamFaults.count + 5, "every fault mode, the long URLs, the large heads, the two refused long head lines and the self-test reported (\(lines.count)):\n\(text.suffix(3000))")
    }
}
