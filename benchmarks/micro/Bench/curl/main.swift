// The libcurl transfer path: UpstreamClient (curl multi, driven by an EventLoop
// through CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION and epoll) doing GETs of a local
// nginx's /json (223 bytes) — the upstream leg of every proxied request.
//   curl/sequential   one transfer at a time (latency-bound: wall µs per transfer)
//   curl/concurrent-64  64 transfers in flight, re-issued as each completes
// Per transfer: wall time, and the process's CPU (user+system over all threads;
// the loop thread does all the work) — the figure to compare with the ~16–20 µs
// of a minimal C client (BENCHMARKS.md) and nginx's ~17 µs per proxied request.
//
//   bench-curl --url http://127.0.0.1:PORT/json [--runs 7] [--sequential 2000] [--concurrent-total 20000]
import Dispatch
import EventLoop
import MicroBench
import Upstream
import CurlBaseline
#if canImport(Glibc)
import Glibc
#endif

let opts = BenchOptions()
guard let url = opts.extra["url"], !url.isEmpty else {
    fatalError("usage: bench-curl --url http://127.0.0.1:PORT/json [--runs N] [--sequential N] [--concurrent-total N]")
}
let sequentialN = Int(opts.extra["sequential"] ?? "") ?? 2000
let concurrentN = Int(opts.extra["concurrent-total"] ?? "") ?? 20000
let width = Int(opts.extra["concurrency"] ?? "") ?? 64

final class Driver: @unchecked Sendable {
    let loop: EventLoop
    let url: String
    var client: UpstreamClient!
    var remaining = 0
    var inFlight = 0
    var ok = 0
    var failed = 0
    var firstError: String?
    var bytes = 0
    let done = DispatchSemaphore(value: 0)

    init(loop: EventLoop, url: String) { self.loop = loop; self.url = url }

    func issue() {
        remaining -= 1
        inFlight += 1
        let req = UpstreamRequest(method: "GET", url: url, deadline: loop.now + .seconds(10))
        client.send(req) { [self] result in
            inFlight -= 1
            switch result {
            case .success(let r):
                if r.status == 200 { ok += 1; bytes += r.body.count } else { failed += 1; firstError = firstError ?? "status \(r.status)" }
            case .failure(let e):
                failed += 1
                firstError = firstError ?? "\(e)"
            }
            if remaining > 0 {
                issue()
            } else if inFlight == 0 {
                done.signal()
            }
        }
    }

    /// Runs `total` transfers with `width` in flight; returns wall ns and process CPU ns (user, system).
    func run(total: Int, width: Int) -> (wall: UInt64, user: UInt64, system: UInt64) {
        ok = 0; failed = 0; bytes = 0
        let c0 = processCPUNs()
        let t0 = wallNs()
        loop.execute { [self] in
            if client == nil { client = UpstreamClient(loop: loop) }
            remaining = total
            for _ in 0..<min(width, total) { issue() }
        }
        done.wait()
        let t1 = wallNs()
        let c1 = processCPUNs()
        if failed > 0 { fatalError("\(failed) of \(total) transfers failed, first: \(firstError ?? "?")") }
        precondition(ok == total)
        return (t1 - t0, c1.user - c0.user, c1.system - c0.system)
    }
}

let group = try! EventLoopGroup(count: 1)
let driver = Driver(loop: group.loops[0], url: url)

func measure(_ name: String, total: Int, width: Int) {
    guard opts.wants(name) else { return }
    _ = driver.run(total: max(200, total / 5), width: width)  // warm: connections, pooled handles
    var wall: [Double] = [], cpu: [Double] = [], user: [Double] = [], sys: [Double] = []
    for _ in 0..<opts.runs {
        let r = driver.run(total: total, width: width)
        wall.append(Double(r.wall) / Double(total))
        cpu.append(Double(r.user + r.system) / Double(total))
        user.append(Double(r.user) / Double(total))
        sys.append(Double(r.system) / Double(total))
    }
    let tps = 1e9 / median(wall)
    func us(_ x: Double) -> String { String(Double(Int(x / 100)) / 10) }
    report(name, wallNsPerOp: wall, cpuNsPerOp: cpu, itersPerRun: total,
           note: "\(width) in flight, \(Int(tps)) transfers/s, CPU µs/transfer user \(us(median(user))) + sys \(us(median(sys)))")
}

/// The same transfers through the minimal C client (no event loop, no Swift): libcurl's own cost.
func measureBaseline(_ name: String, total: Int, width: Int) {
    guard opts.wants(name) else { return }
    _ = curl_baseline_run(url, Int32(max(200, total / 5)), Int32(width))
    var wall: [Double] = [], cpu: [Double] = [], user: [Double] = [], sys: [Double] = []
    for _ in 0..<opts.runs {
        let c0 = processCPUNs()
        let t0 = wallNs()
        let ok = curl_baseline_run(url, Int32(total), Int32(width))
        let t1 = wallNs()
        let c1 = processCPUNs()
        precondition(ok == total, "baseline: \(ok) of \(total) transfers answered 200")
        wall.append(Double(t1 - t0) / Double(total))
        cpu.append(Double(c1.user + c1.system - c0.user - c0.system) / Double(total))
        user.append(Double(c1.user - c0.user) / Double(total))
        sys.append(Double(c1.system - c0.system) / Double(total))
    }
    func us(_ x: Double) -> String { String(Double(Int(x / 100)) / 10) }
    report(name, wallNsPerOp: wall, cpuNsPerOp: cpu, itersPerRun: total,
           note: "C, multi_perform + multi_poll, \(width) in flight, \(Int(1e9 / median(wall))) transfers/s, CPU µs/transfer user \(us(median(user))) + sys \(us(median(sys)))")
}

measure("curl/sequential", total: sequentialN, width: 1)
measure("curl/concurrent-\(width)", total: concurrentN, width: width)
measureBaseline("curl/baseline-c-concurrent-\(width)", total: concurrentN, width: width)
group.shutdown()
