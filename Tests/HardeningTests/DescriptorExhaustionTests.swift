import Foundation
import Glibc
import TestSupport
import Testing

/// The `switchboard` executable built next to the test bundle (or in the
/// scratch path's debug directory).
private func switchboardExecutable() -> String? {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("switchboard").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}


/// CPU time (user + system) used so far by process `pid`, in seconds.
private func cpuSeconds(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return -1 }
    let f = text[text.index(after: close)...].split(separator: " ")
    // Fields after the command: state(0) … utime(11) stime(12), in clock ticks.
    guard f.count > 12, let u = Double(f[11]), let s = Double(f[12]) else { return -1 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

@Suite struct DescriptorExhaustionTests {
    /// With the descriptor limit exhausted (EMFILE on accept) the gateway does not spin its loop, and serves again once clients leave. Runs the real binary in a child process under `ulimit -n 64`, so this test process's limit is untouched.
    @Test func acceptEMFILE_DoesNotSpin_AndRecovers() throws {
        guard let bin = switchboardExecutable() else {
            Issue.record("switchboard executable not found next to the tests")
            return
        }
        let dir = NSTemporaryDirectory() + "switchboard-emfile-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: "\(dir)/routes", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try fixedRoute(name: "echo", method: "POST", path: "/echo").write(toFile: "\(dir)/routes/echo.json", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "ulimit -n 64 && exec \"$0\" serve --routes \"$1/routes\" --data \"$1/data\" --listen 127.0.0.1:0 --event-loops 1", bin, dir]
        // The child's output goes to a file, shown with any failure below.
        let logPath = "\(dir)/gateway.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        p.standardOutput = log
        p.standardError = log
        try p.run()
        let childLog = { () -> String in
            let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            return "gateway output (last 4000 bytes):\n" + String(text.suffix(4000))
        }
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) }; p.waitUntilExit() }
        // The port the kernel chose is in the child's "listening" line.
        var listening: (address: UInt16, admin: UInt16?)?
        _ = eventually(timeout: .seconds(15)) { listening = listeningPorts(inLogAt: logPath); return listening != nil }
        guard let port = listening?.address else {
            Issue.record("the gateway did not start; \(childLog())")
            return
        }
        let healthz = { () -> Int? in
            guard let c = try? RawConnection(port: port, timeout: .seconds(2)) else { return nil }
            return c.request("GET", "/healthz")?.status
        }
        #expect(eventually(timeout: .seconds(15)) { healthz() == 200 }, "the gateway started")

        // Hold far more connections than the descriptor limit allows.
        var held: [Int32] = []
        for _ in 0..<150 { if let fd = rawSocket(port: port) { held.append(fd) } }
        usleep(300_000)
        let before = cpuSeconds(p.processIdentifier)
        sleep(2)
        let used = cpuSeconds(p.processIdentifier) - before
        #expect(before >= 0, "CPU time readable from /proc; \(childLog())")
        #expect(used < 1.0, "the loop spun on EMFILE: \(used)s of CPU in 2s")
        #expect(p.isRunning, "the gateway survived descriptor exhaustion; \(childLog())")

        for fd in held { close(fd) }
        #expect(eventually(timeout: .seconds(10)) { healthz() == 200 }, "serves again once descriptors are free; \(childLog())")
        kill(p.processIdentifier, SIGTERM)
    }
}
