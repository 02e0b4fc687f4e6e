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

/// A port that was free a moment ago.
private func freePort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var out = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &out) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: out.sin_port)
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
        let port = freePort()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "ulimit -n 64 && exec \"$0\" serve --routes \"$1/routes\" --data \"$1/data\" --listen 127.0.0.1:\(port) --event-loops 1", bin, dir]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) }; p.waitUntilExit() }
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
        #expect(before >= 0, "CPU time readable from /proc")
        #expect(used < 1.0, "the loop spun on EMFILE: \(used)s of CPU in 2s")
        #expect(p.isRunning, "the gateway survived descriptor exhaustion")

        for fd in held { close(fd) }
        #expect(eventually(timeout: .seconds(10)) { healthz() == 200 }, "serves again once descriptors are free")
        kill(p.processIdentifier, SIGTERM)
    }
}
