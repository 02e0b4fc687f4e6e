import Foundation
import Gateway
import Glibc
import Testing
import TestSupport

/// The real `switchboard` binary: `check`, `serve` logs and SIGTERM drain.
@Suite struct CLITests {
    /// Runs the binary to completion and returns (exit code, stdout, stderr). With a
    /// `timeout`, a process still running then gets SIGTERM (a `serve` that should
    /// have refused to start drains and exits 0).
    /// With a `fileSizeLimit` (bytes, a multiple of 512) it runs under that soft
    /// `RLIMIT_FSIZE` (`/bin/sh`'s `ulimit -S -f`, then `exec`).
    static func run(_ args: [String], env: [String: String] = [:], timeout: Duration? = nil,
                    fileSizeLimit: Int? = nil) throws -> (Int32, String, String) {
        let p = Process()
        try setCommand(of: p, args, fileSizeLimit: fileSizeLimit)
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let stop = DispatchWorkItem { if p.isRunning { p.terminate() } }
        if let timeout {
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(timeout.milliseconds)), execute: stop)
        }
        defer { stop.cancel() }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// `check` accepts a good directory and prints each route's critical path.
    @Test func check_PrintsCriticalPath_ForValidRoutes() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "a", "method": "GET", "path": "/a",
                       "steps": [["id": "one", "request": ["method": "GET", "url": "http://127.0.0.1:9/"], "timeout": "2s"],
                                 ["id": "two", "after": ["one"], "request": ["method": "GET", "url": "http://127.0.0.1:9/"], "timeout": "500ms"]]])
            .write(toFile: "\(dir)/a.json", atomically: true, encoding: .utf8)
        let (code, out, _) = try Self.run(["check", "--routes", dir])
        #expect(code == 0)
        #expect(out.contains("2.5s"))
    }

    /// `check` rejects a bad route file with `file: field: message` and a non-zero exit.
    @Test func check_RejectsBadFile_WithFileFieldMessage() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{\"name\":\"a\",\"method\":\"GET\",\"path\":\"/a\",\"steps\":[{\"id\":\"s\",\"request\":{\"method\":\"GET\",\"url\":\"http://x/\"},\"timeout\":\"2 parsecs\"}]}"
            .write(toFile: "\(dir)/bad.json", atomically: true, encoding: .utf8)
        let (code, _, err) = try Self.run(["check", "--routes", dir])
        #expect(code != 0)
        let line = try #require(err.split(separator: "\n").first)
        #expect(line.hasPrefix("\(dir)/bad.json: "))
        #expect(line.contains("timeout"))
    }

    /// `time` with each digit replaced by `0`: the format of a log line's timestamp
    /// (`0000-00-00T00:00:00.000Z` for RFC 3339 with milliseconds, as `LogBuffer` writes).
    static func timeFormat(_ line: [String: Any]) -> String? {
        (line["time"] as? String).map { String($0.map { $0.isNumber ? "0" : $0 }) }
    }

    /// `sandbox` logs its start in the shape of the gateway's lines: `time` (RFC 3339 with
    /// milliseconds), `level` and `msg` first, then `address` (a port 0 resolved).
    @Test func sandbox_LogsListeningLine_InTheShapeOfEveryLine() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try switchboardBinary())
        p.arguments = ["sandbox", "--listen", "127.0.0.1:0"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        // A sandbox that never logs or never stops fails the test instead of hanging it.
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(30), execute: watchdog)
        defer { watchdog.cancel() }
        var text = ""
        while !text.contains("\n") {  // the first line, whenever it comes (end of file: the sandbox died)
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let raw = try #require(text.split(separator: "\n").first, "\(text)")
        #expect(raw.hasPrefix("{\"time\":\"") && raw.contains("\",\"level\":\"info\",\"msg\":\"sandbox listening\",\"address\":\"127.0.0.1:"), "\(raw)")
        let line = try #require(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any])
        #expect(Self.timeFormat(line) == "0000-00-00T00:00:00.000Z", "\(raw)")
        let port = (line["address"] as? String)?.split(separator: ":").last.flatMap { UInt16($0) }
        #expect(port.map { $0 > 0 } == true, "\(raw)")
    }

    /// Makes `p` run the binary with `args`; with a `fileSizeLimit` (bytes, a multiple of
    /// 512) under that soft `RLIMIT_FSIZE`, through `/bin/sh`'s `ulimit -S -f` and then
    /// `exec`, which keeps the process id: signals sent to `p` reach the binary.
    static func setCommand(of p: Process, _ args: [String], fileSizeLimit: Int?) throws {
        if let fileSizeLimit {
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "ulimit -S -f \(fileSizeLimit / 512) && exec \"$0\" \"$@\"", try switchboardBinary()] + args
        } else {
            p.executableURL = URL(fileURLWithPath: try switchboardBinary())
            p.arguments = args
        }
    }

    /// A server process for one test, its output captured to a file.
    final class Server {
        let process = Process()
        let logPath: String
        let port: UInt16
        /// The admin listener's port, when started with `--admin-listen`.
        let adminPort: UInt16?

        /// - Parameter throughPipe: the process writes its output to a pipe that this
        ///   test process copies to the log file (for a server whose own file writes
        ///   are limited, e.g. by `RLIMIT_FSIZE`, while its log must go on).
        /// - Parameter fileSizeLimit: started with this soft `RLIMIT_FSIZE` (bytes, a
        ///   multiple of 512; through `/bin/sh`'s `ulimit -S -f`), the hard limit unchanged.
        init(routesDir: String, env: [String: String], extra: [String] = [], throughPipe: Bool = false,
             fileSizeLimit: Int? = nil) throws {
            logPath = routesDir + "/out.log"
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            let arguments = ["serve", "--routes", routesDir, "--listen", "127.0.0.1:0", "--data", routesDir + "/data", "--event-loops", "1"] + extra
            try CLITests.setCommand(of: process, arguments, fileSizeLimit: fileSizeLimit)
            process.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
            // One open file for both streams (one shared offset): two separate opens would
            // each write from offset 0, so a sanitizer report on stderr would overwrite the
            // log lines on stdout, and later log lines the report.
            let output = FileHandle(forWritingAtPath: logPath)
            if throughPipe, let output {
                let pipe = Pipe()
                pipe.fileHandleForReading.readabilityHandler = { h in
                    let data = h.availableData
                    if data.isEmpty { h.readabilityHandler = nil } else { output.write(data) }
                }
                process.standardOutput = pipe
                process.standardError = pipe
            } else {
                process.standardOutput = output
                process.standardError = output
            }
            try process.run()
            // The ports the kernel chose are in the "listening" log line.
            var found: (address: UInt16, admin: UInt16?)?
            let path = logPath
            _ = eventually(timeout: .seconds(30)) {
                found = listeningPorts(inLogAt: path)
                return found != nil
            }
            guard let found else { process.terminate(); throw HarnessError.noResponse }
            self.port = found.address
            adminPort = found.admin
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        /// The log lines written so far, each parsed as a JSON object (a line that is not
        /// one, such as a sanitizer report's, is left out).
        var logLines: [[String: Any]] {
            log.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }

        /// The first log line whose `msg` is `message`, parsed; nil when there is none yet.
        func logLine(_ message: String) -> [String: Any]? {
            logLines.first { $0["msg"] as? String == message }
        }

        deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
    }

    /// Log lines are JSON, one per request with route, status, duration and outcome, and never hold an env secret.
    @Test func serve_LogsOneJSONLinePerRequest_WithoutSecrets() throws {
        let up = try ScriptedServer.answering(status: 500, body: "{\"oops\":true}")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = "tok_SUPERSECRET_98765"
        try routeJSON(["name": "crm", "method": "GET", "path": "/crm",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/?key={{env.CRM_KEY}}",
                                                          "headers": ["X-Key": "{{env.CRM_KEY}}"]], "timeout": "1s"]]])
            .write(toFile: "\(dir)/crm.json", atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)", "CRM_KEY": secret])
        let r = try #require(RawConnection(port: server.port).request("GET", "/crm"))
        #expect(r.status == 502)
        #expect(!r.text.contains(secret))
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        let requestLines = server.logLines.filter { $0["msg"] as? String == "request" && $0["route"] as? String == "crm" }
        let line = try #require(requestLines.first)
        #expect(line["status"] as? Int == 502)
        #expect(line["outcome"] as? String == "sync")
        #expect(line["duration_ms"] is Double || line["duration_ms"] is Int)
        #expect(line["request_id"] is String)
        #expect(!server.log.contains(secret))
        #expect(up.requests.first?.header("x-key") == secret)
    }

    /// Requests the HTTP layer refuses on its own — unparseable (400), a body over the
    /// limit (413), a request line over the limit (414) — get one log line each (with
    /// method and path when the head was read whole, and the reason as `detail`) and
    /// count as `outcome="error"` (SPEC §8).
    @Test func serve_LogsAndCountsRequestsTheHTTPLayerRefuses() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "r", "method": "POST", "path": "/r", "response": ["status": 200, "body": ["ok": true]]])
            .write(toFile: "\(dir)/r.json", atomically: true, encoding: .utf8)
        let config = try makeTempDir() + "/config.json"  // not among the route files
        defer { try? FileManager.default.removeItem(atPath: (config as NSString).deletingLastPathComponent) }
        try "{\"limits\": {\"body_bytes\": 1000}}".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: [:], extra: ["--config", config])
        func send(_ raw: String) -> Int? {
            guard let c = try? RawConnection(port: server.port), c.write(raw) else { return nil }
            return c.readResponse()?.status
        }
        #expect(send("GET / HTTP/1.1\r\n\r\n") == 400)  // no Host
        #expect(send("POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n") == 413)
        #expect(send("GET /" + String(repeating: "a", count: 20_000) + " HTTP/1.1\r\nHost: a\r\n\r\n") == 414)
        let metrics = try #require(RawConnection(port: server.port).request("GET", "/metrics"))
        let e = try Exposition(metrics.text)
        for status in ["400", "413", "414"] {
            #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": status]) == 1, "\(status)")
        }
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        let lines = server.logLines.filter { $0["msg"] as? String == "request" && $0["outcome"] as? String == "error" }
        #expect(lines.map { $0["status"] as? Int } == [400, 413, 414])
        let tooLarge = try #require(lines.first { $0["status"] as? Int == 413 })
        #expect(tooLarge["method"] as? String == "POST" && tooLarge["path"] as? String == "/r")
        #expect(tooLarge["request_id"] is String && tooLarge["route"] == nil)
        #expect(tooLarge["detail"] as? String == "request body too large")
        let noHost = try #require(lines.first)  // a whole head, refused: its request line is known
        #expect(noHost["method"] as? String == "GET" && noHost["path"] as? String == "/")
        let tooLong = try #require(lines.last)  // the request line itself was the problem
        #expect(tooLong["method"] == nil && tooLong["path"] == nil)
    }

    /// A connection over `max_connections` gets its 503 and one request log line (no
    /// method or path, status 503, outcome `error`, a detail naming the cause) and counts
    /// as `outcome="error"`, status 503, like the requests the HTTP layer refuses (SPEC §8).
    @Test func serve_LogsAndCountsConnectionsOverMaxConnections() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "r", "method": "GET", "path": "/r", "response": ["status": 200, "body": ["ok": true]]])
            .write(toFile: "\(dir)/r.json", atomically: true, encoding: .utf8)
        let config = try makeTempDir() + "/config.json"  // not among the route files
        defer { try? FileManager.default.removeItem(atPath: (config as NSString).deletingLastPathComponent) }
        try "{\"limits\": {\"max_connections\": 2}}".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: [:], extra: ["--config", config])
        var held: [RawConnection] = []
        for _ in 0..<2 {
            let c = try RawConnection(port: server.port)
            #expect(c.request("GET", "/r")?.status == 200)
            held.append(c)
        }
        for _ in 0..<2 {
            let c = try RawConnection(port: server.port)
            #expect(c.write("GET /r HTTP/1.1\r\nHost: a\r\n\r\n"))
            #expect(c.readResponse()?.status == 503)
        }
        // On a held connection: a new one would be refused (and counted) too.
        let metrics = try #require(held[0].request("GET", "/metrics"))
        let e = try Exposition(metrics.text)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "503"]) == 2)
        held.removeAll()
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        let lines = server.logLines.filter { $0["msg"] as? String == "request" && $0["status"] as? Int == 503 }
        #expect(lines.count == 2, "\(server.log.suffix(4000))")
        for line in lines {
            #expect(line["outcome"] as? String == "error")
            #expect(line["method"] == nil && line["path"] == nil && line["route"] == nil)
            #expect(line["detail"] as? String == "too many open connections")
            #expect(line["request_id"] is String)
            #expect((line["bytes"] as? Int ?? 0) > 0)
        }
    }

    /// The admin listener logs and counts what it refuses as the main listener does:
    /// what the HTTP layer refuses on its own (a bad request target: 400; a request
    /// line over the limit: 414) and its own `404`/`405` get one request log line each
    /// with outcome `error` and count in `switchboard_requests_total{outcome="error"}`
    /// (read from the admin listener's `/metrics`); `/healthz` and `/metrics` are not
    /// counted (SPEC §8).
    @Test func serve_LogsAndCountsRequestsTheAdminListenerRefuses() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "r", "method": "GET", "path": "/r", "response": ["status": 200, "body": ["ok": true]]])
            .write(toFile: "\(dir)/r.json", atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: [:], extra: ["--admin-listen", "127.0.0.1:0"])
        let admin = try #require(server.adminPort, "\(server.log.suffix(2000))")
        func send(_ raw: String) -> Int? {
            guard let c = try? RawConnection(port: admin), c.write(raw) else { return nil }
            return c.readResponse()?.status
        }
        #expect(send("GET metrics HTTP/1.1\r\nHost: a\r\n\r\n") == 400)  // not origin-form
        #expect(send("GET /" + String(repeating: "a", count: 20_000) + " HTTP/1.1\r\nHost: a\r\n\r\n") == 414)
        #expect(send("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n") == 404)
        #expect(send("POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n") == 405)
        #expect(send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n") == 200)
        let metrics = try #require(RawConnection(port: admin).request("GET", "/metrics"))
        #expect(metrics.status == 200)
        let e = try Exposition(metrics.text)
        for status in ["400", "414", "404", "405"] {
            #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": status]) == 1, "\(status)")
        }
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "200"]) == nil)
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        let lines = server.logLines.filter { $0["msg"] as? String == "request" }
        #expect(lines.map { $0["status"] as? Int } == [400, 414, 404, 405], "\(server.log.suffix(4000))")
        for line in lines {
            #expect(line["outcome"] as? String == "error")
            #expect(line["request_id"] is String && line["route"] == nil)
        }
        let badTarget = try #require(lines.first)
        #expect(badTarget["detail"] is String)
        #expect(lines.first { $0["status"] as? Int == 414 }?["path"] == nil)  // the request line itself was the problem
        let notFound = try #require(lines.first { $0["status"] as? Int == 404 })
        #expect(notFound["method"] as? String == "GET" && notFound["path"] as? String == "/nope")
        let notAllowed = try #require(lines.first { $0["status"] as? Int == 405 })
        #expect(notAllowed["method"] as? String == "POST" && notAllowed["path"] as? String == "/healthz")
    }

    /// `log_level: "warn"` drops the `info` request lines but not the `listening` line
    /// that tools read the bound port from; it keeps its shape (`level` `info`, `address`).
    @Test func serve_LogLevelWarn_StillLogsListeningLine() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "r", "method": "GET", "path": "/r", "response": ["status": 200, "body": ["ok": true]]])
            .write(toFile: "\(dir)/r.json", atomically: true, encoding: .utf8)
        // Not `.json`: the route loader reads only those.
        let config = dir + "/gateway.conf"
        try "{\"log_level\": \"warn\"}".write(toFile: config, atomically: true, encoding: .utf8)
        // `Server` waits for the `listening` line (and throws without it).
        let server = try Server(routesDir: dir, env: [:], extra: ["--config", config])
        #expect(try #require(RawConnection(port: server.port).request("GET", "/r")).status == 200)
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(6000))")
        let listening = try #require(server.logLine("listening"), "\(server.log)")
        #expect(listening["level"] as? String == "info")
        #expect((listening["address"] as? String)?.hasSuffix(":\(server.port)") == true)
        #expect(server.logLine("request") == nil, "info lines are still dropped: \(server.log)")
        #expect(server.logLine("no api_keys configured: the gateway is OPEN to any caller on 127.0.0.1:\(server.port)") != nil,
                "warn lines are kept: \(server.log)")
    }

    /// SIGTERM lets an in-flight request finish, refuses new connections, and exits 0.
    @Test func sigterm_DrainsInFlightRequest_ThenExitsZero() throws {
        let up = try ScriptedServer.answering(body: "{\"slow\":true}", delay: .milliseconds(800))
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "10s",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
            .write(toFile: "\(dir)/slow.json", atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"])
        let conn = try RawConnection(port: server.port)
        conn.write("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(eventually { up.requests.count == 1 })
        kill(server.process.processIdentifier, SIGTERM)
        let r = try #require(conn.readResponse())
        #expect(r.status == 200)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(6000))")
        #expect((try? RawConnection(port: server.port, timeout: .seconds(1))) == nil)
    }

    /// A SIGTERM sent the moment the `listening` line appears drains and exits 0 —
    /// also when the parent left SIGTERM ignored (inherited across `exec`), where a
    /// signal that arrives before the catching is set up is dropped by the kernel and
    /// the process runs on. Several starts, half of them with SIGTERM ignored.
    @Test func sigterm_SentAsSoonAsListening_IsNeverLost() throws {
        let bin = try switchboardBinary()
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "r", "method": "GET", "path": "/r", "response": ["status": 200, "body": ["ok": true]]])
            .write(toFile: "\(dir)/r.json", atomically: true, encoding: .utf8)
        for attempt in 0..<6 {
            let ignored = attempt % 2 == 0
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            // `trap '' TERM` sets SIGTERM to SIG_IGN, which `exec` keeps.
            p.arguments = ["-c", (ignored ? "trap '' TERM; " : "")
                               + "exec \"$0\" serve --routes \"$1\" --data \"$1/data-\(attempt)\" --listen 127.0.0.1:0 --event-loops 1",
                           bin, dir]
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
            DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(40), execute: watchdog)
            defer { watchdog.cancel() }
            var text = ""
            while !text.contains("\"msg\":\"listening\"") {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }  // end of output: the process is gone
                text += String(decoding: chunk, as: UTF8.self)
            }
            #expect(text.contains("\"msg\":\"listening\""), "\(text)")
            kill(p.processIdentifier, SIGTERM)
            let exited = eventually(timeout: .seconds(10)) { !p.isRunning }
            if !exited { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            let rest = out.fileHandleForReading.readDataToEndOfFile()
            text += String(decoding: rest, as: UTF8.self)
            #expect(exited, "attempt \(attempt) (SIGTERM ignored by the parent: \(ignored)): still running 10 s after SIGTERM\n\(text)")
            #expect(p.terminationReason == .exit && p.terminationStatus == 0,
                    "attempt \(attempt) (SIGTERM ignored by the parent: \(ignored)): \(p.terminationReason == .exit ? "exit" : "signal") \(p.terminationStatus)\n\(text)")
            #expect(text.contains("\"msg\":\"stopped\""), "\(text)")
        }
    }

    /// Past the drain timeout, a still-running request is handed to async mode: its caller gets 202.
    @Test func sigterm_PastDrainTimeout_HandsRunToAsync() throws {
        let up = try ScriptedServer.answering(delay: .seconds(5))
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "20s", "max_wait": "20s",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "10s"]]])
            .write(toFile: "\(dir)/slow.json", atomically: true, encoding: .utf8)
        let server = try Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"], extra: ["--drain-timeout", "300ms"])
        let conn = try RawConnection(port: server.port)
        conn.write("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(eventually { up.requests.count == 1 })
        kill(server.process.processIdentifier, SIGTERM)
        let r = try #require(conn.readResponse())
        #expect(r.status == 202)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(6000))")
    }
}

/// `SIGHUP` route reload on the real binary (SPEC §8).
@Suite struct ReloadTests {
    /// Reload adds a route and removes another while a request on the old route is in
    /// flight and completes; a broken file afterwards keeps the last good set. The
    /// command line's own lines ("routes reloaded", "route reload failed", "draining",
    /// "stopped") have the shape of the request lines: `time` in the same format,
    /// `level` and `msg` first, numbers as JSON numbers.
    @Test func sighup_SwapsRoutes_AndBadFileKeepsOldSet() throws {
        let up = try ScriptedServer.answering(body: "{\"v\":1}", delay: .milliseconds(600))
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old = routeJSON(["name": "old", "method": "GET", "path": "/old",
                             "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
        let new = routeJSON(["name": "new", "method": "GET", "path": "/new",
                             "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
        try old.write(toFile: "\(dir)/old.json", atomically: true, encoding: .utf8)
        let server = try CLITests.Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"])
        let pid = server.process.processIdentifier

        let inFlight = try RawConnection(port: server.port)
        inFlight.write("GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(eventually { up.requests.count == 1 })
        try FileManager.default.removeItem(atPath: "\(dir)/old.json")
        try new.write(toFile: "\(dir)/new.json", atomically: true, encoding: .utf8)
        kill(pid, SIGHUP)
        #expect(eventually { (try? RawConnection(port: server.port).request("GET", "/old"))?.status == 404 })
        #expect(inFlight.readResponse()?.status == 200)
        #expect(try RawConnection(port: server.port).request("GET", "/new")?.status == 200)

        try "{\"name\": \"broken\", \"bogus\": 1}".write(toFile: "\(dir)/broken.json", atomically: true, encoding: .utf8)
        kill(pid, SIGHUP)
        #expect(eventually { server.log.contains("route reload failed") })
        #expect(server.log.contains("broken.json"))
        #expect(try RawConnection(port: server.port).request("GET", "/new")?.status == 200)
        kill(pid, SIGTERM)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(6000))")

        let reloaded = try #require(server.logLine("routes reloaded"), "\(server.log.suffix(6000))")
        #expect(reloaded["routes"] as? Int == 1, "\(reloaded)")  // a number, not the string "1"
        let raw = try #require(server.log.split(separator: "\n").first { $0.contains("\"msg\":\"routes reloaded\"") })
        #expect(raw.hasPrefix("{\"time\":\"") && raw.hasSuffix("\",\"level\":\"info\",\"msg\":\"routes reloaded\",\"routes\":1}"), "\(raw)")
        let failed = try #require(server.logLine("route reload failed; keeping the old routes"))
        #expect(failed["level"] as? String == "error")
        #expect((failed["problems"] as? String)?.contains("broken.json") == true)
        let draining = try #require(server.logLine("draining"), "\(server.log.suffix(6000))")
        #expect(draining["timeout_ms"] as? Int == 30_000, "\(draining)")  // the default drain_timeout
        let stopped = try #require(server.logLine("stopped"), "\(server.log.suffix(6000))")
        let request = try #require(server.logLine("request"))
        #expect(CLITests.timeFormat(request) == "0000-00-00T00:00:00.000Z")
        for line in [reloaded, failed, draining, stopped] {
            #expect(CLITests.timeFormat(line) == CLITests.timeFormat(request), "\(line)")
        }
    }
}

/// `serve --tls-cert/--tls-key`: the main listener speaks TLS only.
@Suite struct TLSListenerTests {
    /// Writes a fresh RSA key (`k.pem`) and a self-signed certificate (`c.pem`) for
    /// `names` (a subjectAltName value) into `dir`, with the `openssl` command line tool.
    static func makeCertificate(in dir: String, names: String) throws {
        let gen = Process()
        gen.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        gen.arguments = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                         "-addext", "subjectAltName=\(names)", "-keyout", "\(dir)/k.pem", "-out", "\(dir)/c.pem"]
        gen.standardOutput = FileHandle.nullDevice
        gen.standardError = FileHandle.nullDevice
        try gen.run()
        gen.waitUntilExit()
        #expect(gen.terminationStatus == 0)
    }

    /// The status code curl gets for `GET url` with `options` (HTTP/1.1), as curl prints it.
    static func curlStatus(_ url: String, _ options: [String]) throws -> String {
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        curl.arguments = ["curl", "-s", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"] + options + [url]
        let out = Pipe()
        curl.standardOutput = out
        try curl.run()
        let code = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        curl.waitUntilExit()
        return code
    }

    /// Starts a gateway whose main listener speaks TLS with a fresh certificate for
    /// `names` (by default localhost and 127.0.0.1), written into `dir`.
    static func tlsServer(in dir: String, names: String = "DNS:localhost,IP:127.0.0.1") throws -> CLITests.Server {
        try makeCertificate(in: dir, names: names)
        try routeJSON(["name": "a", "method": "GET", "path": "/a", "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:9/"], "timeout": "1s"]]])
            .write(toFile: "\(dir)/a.json", atomically: true, encoding: .utf8)
        return try CLITests.Server(routesDir: dir, env: [:], extra: ["--tls-cert", "\(dir)/c.pem", "--tls-key", "\(dir)/k.pem"])
    }

    /// Writes `dir/NAME.json`: a route `GET /NAME` with one step calling `url`.
    static func writeStepRoute(_ name: String, url: String, in dir: String) throws {
        try routeJSON(["name": name, "method": "GET", "path": "/\(name)",
                       "steps": [["id": "s", "request": ["method": "GET", "url": url], "timeout": "5s"]]])
            .write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8)
    }

    /// Starts a gateway on the routes in `dir` whose config file (written into
    /// `configDir`) trusts the authorities in `caFile` for upstream TLS.
    static func gatewayTrusting(_ caFile: String, routes dir: String, configDir: String, extra: [String] = []) throws -> CLITests.Server {
        let config = "\(configDir)/gateway.json"
        try "{\"upstream_tls\": {\"ca_file\": \"\(caFile)\"}}".write(toFile: config, atomically: true, encoding: .utf8)
        return try CLITests.Server(routesDir: dir, env: [:], extra: ["--config", config] + extra)
    }

    /// A real TLS client (curl) gets answers; a plain-text request on the TLS port gets none.
    @Test func serveWithTLS_AnswersHTTPS_AndClosesPlainText() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try TLSListenerTests.tlsServer(in: dir)
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        #expect(server.log.contains("\"scheme\":\"https\""))
        #expect(try TLSListenerTests.curlStatus("https://127.0.0.1:\(server.port)/healthz", ["-k"]) == "200")

        let plain = try RawConnection(port: server.port, timeout: .seconds(5))
        #expect(plain.request("GET", "/healthz") == nil)
    }

    /// Upstream TLS is verified by default (SPEC §7): a step to an HTTPS upstream whose
    /// certificate no trusted authority signed fails as a `connect` error (`502`),
    /// though the same upstream answers a client that trusts its certificate.
    @Test func upstreamTLS_IsVerified_SelfSignedUpstreamRefused() throws {
        let upDir = try makeTempDir(), dir = try makeTempDir()
        defer { for d in [upDir, dir] { try? FileManager.default.removeItem(atPath: d) } }
        let upstream = try TLSListenerTests.tlsServer(in: upDir)
        defer { kill(upstream.process.processIdentifier, SIGTERM); upstream.process.waitUntilExit() }
        let url = "https://127.0.0.1:\(upstream.port)/healthz"
        #expect(try TLSListenerTests.curlStatus(url, ["--cacert", "\(upDir)/c.pem"]) == "200")
        #expect(try TLSListenerTests.curlStatus(url, []) == "000")  // curl's own verification refuses it too

        try TLSListenerTests.writeStepRoute("tls", url: url, in: dir)
        let gateway = try CLITests.Server(routesDir: dir, env: [:])
        defer { kill(gateway.process.processIdentifier, SIGTERM); gateway.process.waitUntilExit() }
        let listening = try #require(gateway.logLine("listening"))
        #expect(listening["upstream_ca_file"] == nil, "\(listening)")  // the system's authorities
        let r = try #require(try RawConnection(port: gateway.port).request("GET", "/tls"))
        #expect(r.status == 502)
        let body = String(decoding: r.body, as: UTF8.self)
        #expect(body.contains("\"connect\""), "\(body)")
        #expect(body.contains("certificate"), "\(body)")
    }

    /// With `upstream_tls.ca_file` naming the authority that signed it (here the
    /// self-signed certificate itself, in a file with comments around it, as CA bundles
    /// carry them), the same HTTPS upstream is reached: a `200` with its answer, and the
    /// `listening` line names the file (`upstream_ca_file`, as configured). Verification
    /// stays on: the name must still match (a certificate for localhost only is refused
    /// at 127.0.0.1).
    @Test func upstreamTLS_WithConfiguredCAFile_IsReached() throws {
        let upDir = try makeTempDir(), dir = try makeTempDir()
        defer { for d in [upDir, dir] { try? FileManager.default.removeItem(atPath: d) } }
        let upstream = try TLSListenerTests.tlsServer(in: upDir)
        defer { kill(upstream.process.processIdentifier, SIGTERM); upstream.process.waitUntilExit() }
        for (name, host) in [("ip", "127.0.0.1"), ("name", "localhost")] {
            try TLSListenerTests.writeStepRoute(name, url: "https://\(host):\(upstream.port)/healthz", in: dir)
        }
        let caFile = "\(upDir)/commented.pem"
        try ("# test authority\nSubject: CN=localhost\n" + String(contentsOfFile: "\(upDir)/c.pem", encoding: .utf8) + "# end\n")
            .write(toFile: caFile, atomically: true, encoding: .utf8)
        let gateway = try TLSListenerTests.gatewayTrusting(caFile, routes: dir, configDir: upDir)
        defer { kill(gateway.process.processIdentifier, SIGTERM); gateway.process.waitUntilExit() }
        let listening = try #require(gateway.logLine("listening"))
        #expect(listening["upstream_ca_file"] as? String == caFile, "\(listening)")
        for path in ["/ip", "/name"] {
            let r = try #require(try RawConnection(port: gateway.port).request("GET", path))
            let body = String(decoding: r.body, as: UTF8.self)
            #expect(r.status == 200, "\(path): \(body)")
            #expect(body.contains("\"status\":200"), "\(path): \(body)")
        }

        // A certificate for localhost alone does not cover 127.0.0.1, trusted or not.
        let otherDir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: otherDir) }
        let localhostOnly = try TLSListenerTests.tlsServer(in: otherDir, names: "DNS:localhost")
        defer { kill(localhostOnly.process.processIdentifier, SIGTERM); localhostOnly.process.waitUntilExit() }
        try TLSListenerTests.writeStepRoute("ip", url: "https://127.0.0.1:\(localhostOnly.port)/healthz", in: dir)
        try FileManager.default.removeItem(atPath: "\(dir)/name.json")
        let strict = try TLSListenerTests.gatewayTrusting("\(otherDir)/c.pem", routes: dir, configDir: otherDir,
                                                          extra: ["--data", "\(otherDir)/data2"])
        defer { kill(strict.process.processIdentifier, SIGTERM); strict.process.waitUntilExit() }
        let refused = try #require(try RawConnection(port: strict.port).request("GET", "/ip"))
        #expect(refused.status == 502, "\(String(decoding: refused.body, as: UTF8.self))")
        #expect(String(decoding: refused.body, as: UTF8.self).contains("\"connect\""))
    }

    /// New connections to an HTTPS upstream resume the TLS session an earlier one got
    /// (each event loop's client keeps one session cache for all its easy handles,
    /// whichever handle a connection is made on). `openssl s_server -www` closes each
    /// connection after its answer and says in it whether the session was new or reused.
    @Test func upstreamTLS_NewConnectionsResumeTheSession() throws {
        let upDir = try makeTempDir(), dir = try makeTempDir()
        defer { for d in [upDir, dir] { try? FileManager.default.removeItem(atPath: d) } }
        try TLSListenerTests.makeCertificate(in: upDir, names: "DNS:localhost,IP:127.0.0.1")
        let serverOut = "\(upDir)/s_server.out"
        _ = FileManager.default.createFile(atPath: serverOut, contents: nil)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", "\(upDir)/c.pem", "-key", "\(upDir)/k.pem", "-www"]
        server.standardInput = FileHandle.nullDevice
        server.standardOutput = FileHandle(forWritingAtPath: serverOut)
        server.standardError = FileHandle.nullDevice
        try server.run()
        // SIGKILL: s_server keeps the test runner's ignored SIGTERM.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        var port = ""
        try #require(eventually {
            let out = (try? String(contentsOfFile: serverOut, encoding: .utf8)) ?? ""
            guard let line = out.split(separator: "\n").first(where: { $0.hasPrefix("ACCEPT 127.0.0.1:") }) else { return false }
            port = String(line.dropFirst("ACCEPT 127.0.0.1:".count))
            return true
        })

        try TLSListenerTests.writeStepRoute("tls", url: "https://127.0.0.1:\(port)/", in: dir)
        let gateway = try TLSListenerTests.gatewayTrusting("\(upDir)/c.pem", routes: dir, configDir: upDir)
        defer { kill(gateway.process.processIdentifier, SIGTERM); gateway.process.waitUntilExit() }
        var sessions: [String] = []
        for _ in 0..<5 {
            let r = try #require(try RawConnection(port: gateway.port).request("GET", "/tls"))
            let body = String(decoding: r.body, as: UTF8.self)
            #expect(r.status == 200, "\(body)")
            sessions.append(body.contains("Reused, TLS") ? "reused" : body.contains("New, TLS") ? "new" : "?")
        }
        #expect(sessions.first == "new", "\(sessions)")
        #expect(sessions.suffix(3) == ["reused", "reused", "reused"], "\(sessions)")
    }

    /// Steps speak HTTP/1.1 to HTTPS upstreams too: curl offers only `http/1.1` by ALPN.
    /// The upstream here (Python `ssl`) prefers `h2` and answers in HTTP/1.1 whatever
    /// was chosen, with the protocol ALPN chose: had curl offered `h2`, the step would
    /// have failed.
    @Test func upstreamTLS_OffersOnlyHTTP1ByALPN() throws {
        let upDir = try makeTempDir(), dir = try makeTempDir()
        defer { for d in [upDir, dir] { try? FileManager.default.removeItem(atPath: d) } }
        try TLSListenerTests.makeCertificate(in: upDir, names: "DNS:localhost,IP:127.0.0.1")
        let portFile = "\(upDir)/port"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", "-c", Self.alpnUpstream, "\(upDir)/c.pem", "\(upDir)/k.pem", portFile]
        server.standardInput = FileHandle.nullDevice
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        var port = ""
        try #require(eventually {
            port = ((try? String(contentsOfFile: portFile, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return !port.isEmpty
        })
        try TLSListenerTests.writeStepRoute("tls", url: "https://127.0.0.1:\(port)/", in: dir)
        let gateway = try TLSListenerTests.gatewayTrusting("\(upDir)/c.pem", routes: dir, configDir: upDir)
        defer { kill(gateway.process.processIdentifier, SIGTERM); gateway.process.waitUntilExit() }
        let r = try #require(try RawConnection(port: gateway.port).request("GET", "/tls"))
        let body = String(decoding: r.body, as: UTF8.self)
        #expect(r.status == 200, "\(body)")
        #expect(body.contains("\"alpn\":\"http/1.1\""), "\(body)")
    }

    /// A TLS upstream (`argv`: certificate, key, file to write its port to) that offers
    /// `h2` before `http/1.1` by ALPN and answers every request, in HTTP/1.1, with the
    /// protocol ALPN chose: `{"alpn":"…"}`.
    static let alpnUpstream = #"""
import json, socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.set_alpn_protocols(["h2", "http/1.1"])
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(8)
open(sys.argv[3], "w").write(str(ls.getsockname()[1]))
while True:
    raw, _ = ls.accept()
    try:
        c = ctx.wrap_socket(raw, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            more = c.recv(4096)
            if not more: break
            data += more
        body = json.dumps({"alpn": c.selected_alpn_protocol()}, separators=(",", ":")).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        c.close()
    except (OSError, ssl.SSLError):
        raw.close()
"""#

    /// `upstream_tls` in the config file: a `ca_file` that cannot be read, holds no
    /// certificate (a directory) or a damaged PEM block (truncated, bad base64, not a
    /// certificate inside; first or after a good certificate: libcurl would refuse the
    /// whole file), an unknown field or the wrong shape is refused at start with
    /// `file: key: message`; a bundle is taken, with text around its blocks too.
    @Test func upstreamTLSConfig_Checked() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = "\(dir)/config.json"
        try TLSListenerTests.makeCertificate(in: dir, names: "DNS:localhost")
        let one = try String(contentsOfFile: "\(dir)/c.pem", encoding: .utf8)
        try "-----BEGIN CERTIFICATE-----\nMIIB\n".write(toFile: "\(dir)/truncated.pem", atomically: true, encoding: .utf8)
        try (one + "-----BEGIN CERTIFICATE-----\n" + one.split(separator: "\n")[1] + "\n")
            .write(toFile: "\(dir)/truncated-second.pem", atomically: true, encoding: .utf8)
        try (one + "-----BEGIN CERTIFICATE-----\n!!not*base64!!\n-----END CERTIFICATE-----\n")
            .write(toFile: "\(dir)/garbage-second.pem", atomically: true, encoding: .utf8)
        try (one + "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n")
            .write(toFile: "\(dir)/not-der-second.pem", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: "\(dir)/certs", withIntermediateDirectories: false)
        for (text, message) in [
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/missing.pem\"}}",
             "upstream_tls.ca_file: \(dir)/missing.pem: no such file (a relative path is taken from the current directory)"),
            ("{\"upstream_tls\": {\"ca_file\": 5}}", "upstream_tls.ca_file: must be a string"),
            ("{\"upstream_tls\": {\"ca_file\": \"\"}}", "upstream_tls.ca_file: must not be empty (a PEM file)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/truncated.pem\"}}",
             "upstream_tls.ca_file: \(dir)/truncated.pem: certificate 1 is damaged (bad end line)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/truncated-second.pem\"}}",
             "upstream_tls.ca_file: \(dir)/truncated-second.pem: certificate 2 is damaged (bad end line)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/garbage-second.pem\"}}",
             "upstream_tls.ca_file: \(dir)/garbage-second.pem: certificate 2 is damaged (bad base64 decode)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/not-der-second.pem\"}}",
             "upstream_tls.ca_file: \(dir)/not-der-second.pem: certificate 2 is damaged (wrong tag)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/certs\"}}", "upstream_tls.ca_file: \(dir)/certs holds no PEM certificate"),
            ("{\"upstream_tls\": {}}", "upstream_tls.ca_file: is required (a PEM file)"),
            ("{\"upstream_tls\": {\"ca_file\": \"\(dir)/c.pem\", \"verify\": false}}", "upstream_tls.verify: unknown field"),
            ("{\"upstream_tls\": \"\(dir)/c.pem\"}", "upstream_tls: must be an object {\"ca_file\": FILE}"),
        ] {
            try text.write(toFile: config, atomically: true, encoding: .utf8)
            #expect(throws: GatewayConfig.Error.self) { try GatewayConfig.load(file: config) }
            do { _ = try GatewayConfig.load(file: config) } catch { #expect("\(error)" == "\(config): \(message)") }
        }
        // Two certificates in one file (a bundle), as libcurl takes them, also with text
        // before, between and after the blocks (the comments of a CA bundle: libcurl and
        // OpenSSL read only what is inside the blocks).
        try TLSListenerTests.makeCertificate(in: dir, names: "DNS:example.test")
        let two = try String(contentsOfFile: "\(dir)/c.pem", encoding: .utf8)
        try (one + two).write(toFile: "\(dir)/bundle.pem", atomically: true, encoding: .utf8)
        try ("# Private CA bundle\nIssuer: CN=localhost\n\n" + one + "\nSecond authority:\n" + two + "-- end of bundle --\n")
            .write(toFile: "\(dir)/commented.pem", atomically: true, encoding: .utf8)
        for name in ["bundle.pem", "commented.pem"] {
            try "{\"upstream_tls\": {\"ca_file\": \"\(dir)/\(name)\"}}".write(toFile: config, atomically: true, encoding: .utf8)
            #expect(try GatewayConfig.load(file: config).upstreamCAFile == "\(dir)/\(name)")
        }
    }
}

/// Log lines for async job ends and callback attempts (SPEC §8).
@Suite struct JobLogTests {
    /// An async job logs one line when it ends and one per callback attempt, without the callback URL.
    @Test func asyncJob_LogsJobEndAndCallbackAttempts() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(200))
        let n = Counter()
        let rx = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let status = n.increment() == 1 ? 500 : 204
                conn.write("HTTP/1.1 \(status) X\r\nContent-Length: 0\r\n\r\n")
            }
        }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "0s",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
            .write(toFile: "\(dir)/slow.json", atomically: true, encoding: .utf8)
        let configDir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: configDir) }
        try "{\"callback_retry\": [\"0s\", \"50ms\"]}".write(toFile: "\(configDir)/config.json", atomically: true, encoding: .utf8)
        let server = try CLITests.Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"],
                                         extra: ["--config", "\(configDir)/config.json", "--callback-allow", "127.0.0.0/8"])
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        let token = "tok_in_query_123456"
        let r = try #require(RawConnection(port: server.port).request("GET", "/slow", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/cb?token=\(token)")]))
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        #expect(eventually { server.log.contains("\"msg\":\"callback delivered\"") })
        let lines = server.logLines
        let ended = lines.filter { $0["msg"] as? String == "job finished" && $0["job_id"] as? String == id }
        #expect(ended.count == 1)
        #expect(ended.first?["status"] as? String == "succeeded")
        #expect(lines.contains { $0["msg"] as? String == "callback attempt failed" && $0["last_status"] as? Int == 500 })
        #expect(!server.log.contains(token))
    }
}

extension JobLogTests {
    /// `"access_log": false` drops the per-request lines alone — those of routes, of
    /// refusals and of the management API — while `/metrics` still counts every request
    /// and an async job still logs its end; anything but a boolean is refused.
    @Test func accessLogOff_DropsRequestLinesOnly() throws {
        let up = try ScriptedServer.answering(body: "{\"ok\":true}")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "p", "method": "GET", "path": "/p",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
            .write(toFile: "\(dir)/p.json", atomically: true, encoding: .utf8)
        try routeJSON(["name": "later", "method": "GET", "path": "/later", "wait": "0s",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "5s"]]])
            .write(toFile: "\(dir)/later.json", atomically: true, encoding: .utf8)
        let configDir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: configDir) }
        let config = "\(configDir)/config.json"
        try "{\"access_log\": false}".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try CLITests.Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"], extra: ["--config", config])
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        #expect(try RawConnection(port: server.port).request("GET", "/p")?.status == 200)
        #expect(try RawConnection(port: server.port).request("GET", "/nowhere")?.status == 404)
        let accepted = try #require(RawConnection(port: server.port).request("GET", "/later"))
        #expect(accepted.status == 202)
        let id = try #require(accepted.object["job_id"] as? String)
        #expect(try RawConnection(port: server.port).request("GET", "/jobs/\(id)?wait=5")?.status == 200)
        #expect(eventually { server.logLine("job finished") != nil })
        let metrics = try #require(RawConnection(port: server.port).request("GET", "/metrics")).text
        #expect(metrics.contains("switchboard_requests_total{route=\"p\",outcome=\"sync\",status=\"200\"} 1"))
        #expect(metrics.contains("switchboard_requests_total{route=\"\",outcome=\"error\",status=\"404\"} 1"))
        #expect(server.logLine("listening") != nil)
        #expect(server.logLines.filter { $0["msg"] as? String == "request" }.isEmpty)

        for (text, message) in [("{\"access_log\": \"off\"}", "access_log: must be true or false"),
                                ("{\"access_log\": 0}", "access_log: must be true or false")] {
            try text.write(toFile: config, atomically: true, encoding: .utf8)
            do { _ = try GatewayConfig.load(file: config); Issue.record("\(text) was accepted") } catch {
                #expect("\(error)" == "\(config): \(message)")
            }
        }
        try "{\"access_log\": true}".write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try GatewayConfig.load(file: config).accessLog)
    }
}

/// Drain answers long-polls instead of closing them (SPEC §8).
@Suite struct DrainLongPollTests {
    /// A `GET /jobs/{id}?wait=60` outstanding at SIGTERM is answered at once with the job
    /// as it stands, and does not hold the drain: with a 20 s `drain_timeout` and no run
    /// waiting on a caller, the process still stops in seconds (as with 500 ms).
    @Test(arguments: ["500ms", "20s"])
    func sigterm_AnswersOutstandingLongPollAtOnce(drainTimeout: String) throws {
        let up = try ScriptedServer.answering(delay: .seconds(30))
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "0s",
                       "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "40s"]]])
            .write(toFile: "\(dir)/slow.json", atomically: true, encoding: .utf8)
        let server = try CLITests.Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)"], extra: ["--drain-timeout", drainTimeout])
        defer { if server.process.isRunning { kill(server.process.processIdentifier, SIGKILL) } }
        let r = try #require(RawConnection(port: server.port).request("GET", "/slow"))
        let id = try #require(r.object["job_id"] as? String)
        let poll = try RawConnection(port: server.port)
        poll.write("GET /jobs/\(id)?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        usleep(300_000)
        let sent = ContinuousClock.now
        kill(server.process.processIdentifier, SIGTERM)
        let answer = try #require(poll.readResponse())
        #expect(answer.status == 200)
        #expect(answer.object["status"] as? String == "running")
        #expect(ContinuousClock.now - sent < .seconds(10), "answered at the drain's end, not its start")
        server.process.waitUntilExit()
        #expect(ContinuousClock.now - sent < .seconds(15))
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(6000))")
    }
}
