// Timing helpers for the microbenchmarks: calibrated batches, median over runs,
// wall-clock and thread-CPU nanoseconds per operation.
#if canImport(Glibc)
import Glibc
#endif

/// Options every benchmark executable understands:
/// `--runs N` (measured batches, default 7), `--ms T` (target milliseconds per batch, default 100),
/// `--filter SUBSTRING` (only benchmarks whose name contains it).
public struct BenchOptions: Sendable {
    public var runs = 7
    public var targetMs = 100.0
    public var filter: String?
    public var extra: [String: String] = [:]

    public init(_ args: [String] = Array(CommandLine.arguments.dropFirst())) {
        var i = 0
        while i < args.count {
            let a = args[i]
            let v = i + 1 < args.count ? args[i + 1] : ""
            switch a {
            case "--runs": runs = max(1, Int(v) ?? runs); i += 1
            case "--ms": targetMs = max(1, Double(v) ?? targetMs); i += 1
            case "--filter": filter = v; i += 1
            default:
                if a.hasPrefix("--") { extra[String(a.dropFirst(2))] = v; i += 1 }
            }
            i += 1
        }
    }

    public func wants(_ name: String) -> Bool {
        guard let f = filter, !f.isEmpty else { return true }
        return name.contains(f)
    }
}

/// Monotonic wall clock, nanoseconds.
@inline(__always) public func wallNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// CPU time of the calling thread, nanoseconds.
@inline(__always) public func threadCPUNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// CPU time of the whole process (user + system, all threads), nanoseconds.
public func processCPUNs() -> (user: UInt64, system: UInt64) {
    var ru = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &ru)
    func ns(_ t: timeval) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_usec) * 1000 }
    return (ns(ru.ru_utime), ns(ru.ru_stime))
}

/// Keeps `x` alive and opaque to the optimizer.
@inline(never) public func blackHole<T>(_ x: T) {
    withExtendedLifetime(x) {}
}

public func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// One benchmark's figures.
public struct BenchResult: Sendable {
    public var name: String
    public var wallNsPerOp: [Double]
    public var cpuNsPerOp: [Double]
    public var itersPerRun: Int
    public var note: String

    /// `RESULT<TAB>name<TAB>median wall ns/op<TAB>median cpu ns/op<TAB>min wall<TAB>max wall<TAB>iters/run<TAB>runs<TAB>note`
    public var line: String {
        func f(_ x: Double) -> String { x >= 100 ? String(Int(x.rounded())) : String(Double(Int(x * 10)) / 10) }
        return ["RESULT", name, f(median(wallNsPerOp)), f(median(cpuNsPerOp)), f(wallNsPerOp.min() ?? .nan),
                f(wallNsPerOp.max() ?? .nan), String(itersPerRun), String(wallNsPerOp.count), note].joined(separator: "\t")
    }
}

/// Runs `body(n)` (which must perform the operation `n` times) in batches: first
/// calibrates `n` so a batch takes about `options.targetMs`, then measures
/// `options.runs` batches and prints one `RESULT` line (median ns/op over batches,
/// wall clock and the thread's CPU time).
@discardableResult
public func bench(_ name: String, _ options: BenchOptions, note: String = "", _ body: (Int) -> Void) -> BenchResult? {
    guard options.wants(name) else { return nil }
    // Calibrate: double n until a batch takes >= 10 ms, then scale to the target.
    var n = 1
    var took: UInt64 = 0
    while true {
        let t0 = wallNs()
        body(n)
        took = wallNs() - t0
        if took >= 10_000_000 || n >= 1 << 30 { break }
        n *= took < 1_000_000 ? 8 : 2
    }
    let perOp = Double(took) / Double(n)
    n = max(1, Int(options.targetMs * 1_000_000 / max(perOp, 0.01)))
    body(n)  // warm once at the final size
    var wall: [Double] = []
    var cpu: [Double] = []
    for _ in 0..<options.runs {
        let c0 = threadCPUNs()
        let t0 = wallNs()
        body(n)
        let t1 = wallNs()
        let c1 = threadCPUNs()
        wall.append(Double(t1 - t0) / Double(n))
        cpu.append(Double(c1 - c0) / Double(n))
    }
    let r = BenchResult(name: name, wallNsPerOp: wall, cpuNsPerOp: cpu, itersPerRun: n, note: note)
    print(r.line)
    return r
}

/// Prints a `RESULT` line for figures measured elsewhere (e.g. a transfer loop driven by an event loop).
public func report(_ name: String, wallNsPerOp: [Double], cpuNsPerOp: [Double], itersPerRun: Int, note: String = "") {
    print(BenchResult(name: name, wallNsPerOp: wallNsPerOp, cpuNsPerOp: cpuNsPerOp, itersPerRun: itersPerRun, note: note).line)
}
