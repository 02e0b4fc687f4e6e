import Foundation
import Gateway
import Glibc
import Journal
import Testing
import TestSupport

/// When the journal cannot write (the disk full, a file-size limit, the data directory
/// removed while running): a caller never gets a `202` or a `201` for what is not on
/// disk, synchronous routes keep working, the log says why, `/readyz` says so when the
/// journal cannot recover, and writes resume by themselves when they can.
@Suite struct JournalFailureTests {
    /// `slow` always answers `202` (a job); `fast` runs synchronously and writes nothing.
    /// `held`, when given, always answers `202` too, its step calling `held`.
    static func routes(upstream: UInt16, held: UInt16? = nil) -> [String: String] {
        var r = ["slow.json": routeJSON(["name": "slow", "method": "POST", "path": "/slow", "wait": "0s",
                                         "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(upstream)/s"], "timeout": "5s"]]]),
                 "fast.json": routeJSON(["name": "fast", "method": "GET", "path": "/fast", "wait": "5s",
                                         "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(upstream)/f"], "timeout": "5s"]]])]
        if let held {
            r["held.json"] = routeJSON(["name": "held", "method": "POST", "path": "/held", "wait": "0s",
                                        "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(held)/h"], "timeout": "30s"]]])
        }
        return r
    }

    /// A receiver that records each request and never answers (a delivery to it stays pending).
    static func stallingReceiver() throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() { server.record(req) }
        }
    }

    /// A gauge or counter from `/metrics` (no labels).
    static func metric(_ name: String, port: UInt16) -> Double? {
        guard let m = try? RawConnection(port: port).request("GET", "/metrics") else { return nil }
        return (try? Exposition(m.text))?.value(name, [:])
    }

    /// The data directory deleted under a running gateway: its journal files are
    /// unlinked, so anything acknowledged now would be gone at the next start. Async
    /// requests get a `503` problem (no job id), a synchronous route is still served,
    /// `/readyz` answers `503` with `journal_failed` and why, and the callbacks API
    /// answers neither `201` nor `204` for a change it could not record (a failed
    /// deletion keeps the endpoint).
    @Test func dataDirectoryRemoved_RefusesJobsAndEndpointChanges_ServesSyncRoutes_NotReady() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(upstream: up.port)) { $0.callbackAllow = ["127.0.0.0/8"] }
        let register = "{\"url\": \"http://127.0.0.1:\(up.port)/cb\"}"
        #expect(try h.request("POST", "/slow").status == 202)
        let kept = try h.request("POST", "/callbacks", body: register)
        #expect(kept.status == 201)
        let keptID = try #require(kept.object["id"] as? String)
        #expect(try h.request("GET", "/readyz").status == 200)

        try FileManager.default.removeItem(atPath: h.dir + "/data")

        // Its run goes on ("it may still run"), but it sends no callback: its caller
        // was told the job could not be accepted, and has no job id.
        let rx = try Self.stallingReceiver()
        let refused = try h.request("POST", "/slow", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/cb")])
        #expect(refused.status == 503, "\(refused.text)")
        #expect(refused.header("content-type") == "application/problem+json")
        #expect(refused.object["job_id"] == nil)
        #expect(eventually { Self.metric("switchboard_jobs_running", port: h.port) == 0 })
        #expect(Self.metric("switchboard_callbacks_pending", port: h.port) == 0)
        #expect(rx.requests.isEmpty)
        #expect(try h.request("GET", "/fast").status == 200)
        let ready = try h.request("GET", "/readyz")
        #expect(ready.status == 503)
        #expect(ready.object["status"] as? String == "journal_failed")
        // Generic (no credentials needed for /readyz): the paths are in the log only.
        #expect(ready.object["detail"] as? String == "the journal stopped accepting writes; see the log", "\(ready.text)")
        #expect(!ready.text.contains(h.dir))

        let registered = try h.request("POST", "/callbacks", body: register)
        #expect(registered.status == 503, "\(registered.text)")
        #expect(registered.object["id"] == nil)
        let deleted = try h.request("DELETE", "/callbacks/\(keptID)")
        #expect(deleted.status == 503, "\(deleted.text)")
        let list = try h.request("GET", "/callbacks")
        let ids = (list.object["callbacks"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
        #expect(ids == [keptID])
    }

    /// A duplicate (same `Idempotency-Key`) whose budget ends while the original caller
    /// waits, with the journal unable to write: the run's job record cannot be made
    /// durable, so the duplicate gets `503` (no job id), never a `202` for a job that is
    /// not on disk; the original caller still gets the run's own answer.
    @Test func dataDirectoryRemoved_DuplicateGets503_OriginalGetsItsAnswer() throws {
        let gate = Gate()
        defer { gate.open() }
        let held = try ScriptedServer.answering(heldBy: gate)
        let route = routeJSON(["name": "charge", "method": "POST", "path": "/charge", "wait": "30s",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(held.port)/h"], "timeout": "30s"]]])
        let h = try GatewayHarness(routes: ["charge.json": route])
        try FileManager.default.removeItem(atPath: h.dir + "/data")

        nonisolated(unsafe) var original: RawMessage?
        let done = DispatchSemaphore(value: 0)
        Thread {
            original = try? h.request("POST", "/charge", headers: [("Idempotency-Key", "k1"), ("Prefer", "wait=30")])
            done.signal()
        }.start()
        #expect(eventually(timeout: .seconds(30)) { held.requests.count == 1 })
        let duplicate = try h.request("POST", "/charge", headers: [("Idempotency-Key", "k1"), ("Prefer", "respond-async")])
        #expect(duplicate.status == 503, "\(duplicate.text)")
        #expect(duplicate.object["job_id"] == nil)

        gate.open()
        done.wait()
        #expect(original?.status == 200, "\(original?.text ?? "no answer")")
        #expect(held.requests.count == 1)
    }

    /// A deletion the journal cannot record changes nothing: the `503` leaves the
    /// endpoint in its place in the listing (not moved to the end), and its delivery
    /// still pending (not dead-lettered as if the endpoint were gone).
    @Test func failedDeletion_KeepsEndpointInPlace_AndItsDeliveryPending() throws {
        let up = try ScriptedServer.answering()
        let rx = try Self.stallingReceiver()
        let h = try GatewayHarness(routes: Self.routes(upstream: up.port)) { $0.callbackAllow = ["127.0.0.0/8"] }
        var ids: [String] = []
        for path in ["/a", "/b"] {
            let r = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(rx.port)\(path)\"}")
            ids.append(try #require(r.object["id"] as? String, "\(r.text)"))
        }
        #expect(try h.request("POST", "/slow", headers: [("Callback", ids[0])]).status == 202)
        #expect(eventually(timeout: .seconds(30)) { !rx.requests.isEmpty }, "the delivery never started")

        try FileManager.default.removeItem(atPath: h.dir + "/data")

        let deleted = try h.request("DELETE", "/callbacks/\(ids[0])")
        #expect(deleted.status == 503, "\(deleted.text)")
        let list = try h.request("GET", "/callbacks")
        #expect((list.object["callbacks"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ids, "\(list.text)")
        let pending = try h.request("GET", "/callbacks/\(ids[0])/deliveries?status=pending")
        #expect((pending.object["deliveries"] as? [Any])?.count == 1, "\(pending.text)")
        #expect(Self.metric("switchboard_callbacks_pending", port: h.port) == 1)
    }

    /// What the gateway logs (`warn`) when it starts under a file-size limit that a
    /// default journal segment could outgrow.
    static let smallerSegmentsMessage = "file-size limit (RLIMIT_FSIZE) below what a journal segment may grow to: smaller segments are used"

    /// Started under a file-size limit (`ulimit -f`) of 20 MiB, below what a 64 MiB
    /// segment grows to: the gateway says so once (`warn`) and uses segments of
    /// 20 − 16 MiB (room for one record of the largest size above each), so jobs whose
    /// records add up to more than the limit are all accepted, spread over several
    /// segments, none past the limit, and all there after a restart. (Before, every
    /// write once the first segment reached the limit failed: `503` until it was raised.)
    @Test func fileSizeLimitBelowSegmentSize_UsesSmallerSegments_AcceptsEveryJob() throws {
        let limit = 20 << 20
        let up = try ScriptedServer.answering(body: "{\"blob\":\"" + String(repeating: "x", count: 1 << 20) + "\"}")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, text) in Self.routes(upstream: up.port) {
            try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
        }
        // Its log goes through a pipe, which the limit does not apply to.
        var server = try CLITests.Server(routesDir: dir, env: [:], throughPipe: true, fileSizeLimit: limit)
        let warnings = server.logLines.filter { $0["msg"] as? String == Self.smallerSegmentsMessage }
        #expect(warnings.count == 1, "\(server.log)")
        let warning = warnings.first ?? [:]
        #expect(warning["level"] as? String == "warn")
        #expect(warning["file_size_limit"] as? Int == limit)
        #expect(warning["segment_bytes"] as? Int == limit - (16 << 20))
        #expect(warning["default_segment_bytes"] as? Int == 64 << 20)

        var ids: [String] = []
        for n in 0..<26 {
            let accepted = try #require(RawConnection(port: server.port).request("POST", "/slow"))
            #expect(accepted.status == 202, "job \(n): \(accepted.text.prefix(500))\n\(server.log.suffix(2000))")
            guard let id = accepted.object["job_id"] as? String else { break }
            let done = try #require(RawConnection(port: server.port).request("GET", "/jobs/\(id)?wait=10"))
            #expect(done.object["status"] as? String == "succeeded", "job \(n): \(done.text.prefix(500))")
            ids.append(id)
        }
        #expect(!server.log.contains("journal write failed"), "\(server.log.suffix(3000))")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/data").filter { $0.hasSuffix(".log") }
        let sizes = try files.map { try #require((try FileManager.default.attributesOfItem(atPath: "\(dir)/data/\($0)")[.size] as? NSNumber)?.intValue) }
        #expect(sizes.reduce(0, +) > limit, "the jobs wrote more than the limit: \(files) \(sizes)")
        #expect(files.filter { $0.hasPrefix("segment-") }.count >= 2, "\(files)")
        #expect(sizes.allSatisfy { $0 <= limit }, "\(files) \(sizes)")

        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0, "\(server.log.suffix(3000))")
        server = try CLITests.Server(routesDir: dir, env: [:], throughPipe: true, fileSizeLimit: limit)
        for id in ids {
            let job = try #require(RawConnection(port: server.port).request("GET", "/jobs/\(id)"))
            #expect(job.object["status"] as? String == "succeeded", "job \(id) after a restart: \(job.text.prefix(500))")
        }
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
    }

    /// A file-size limit too small for one journal record of the largest size (16 MiB)
    /// in a segment: `serve` refuses to start (exit 1) and says why, instead of failing
    /// every write of such a record.
    @Test func fileSizeLimitTooSmallForARecord_RefusesToStart() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, text) in Self.routes(upstream: 9) {
            try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
        }
        let (code, out, err) = try CLITests.run(["serve", "--routes", dir, "--data", dir + "/data", "--listen", "127.0.0.1:0", "--event-loops", "1"],
                                                timeout: .seconds(30), fileSizeLimit: 16 << 20)
        #expect(code == 1, "\(out)\n\(err)")
        #expect(err.contains("the file-size limit (ulimit -f, RLIMIT_FSIZE) is \(16 << 20) bytes; the journal needs at least \((16 << 20) + 17)"), "\(err)")
        #expect(!out.contains("\"msg\":\"listening\""), "\(out)")
    }

    /// Where util-linux's `prlimit(1)` is, when installed: it sets another process's
    /// file-size limit without privileges (same user).
    static let prlimitPath = ["/usr/bin/prlimit", "/bin/prlimit"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Sets the soft `RLIMIT_FSIZE` (bytes, or "unlimited") of process `pid`.
    static func setFileSizeLimit(_ pid: pid_t, _ soft: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: prlimitPath!)
        p.arguments = ["--pid", "\(pid)", "--fsize=\(soft):unlimited"]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "prlimit --fsize=\(soft) failed")
    }

    /// A full disk without privileges: the real binary's file-size limit is lowered to
    /// its journal segment's current size, so every append fails (EFBIG; the SIGXFSZ
    /// that comes with it must not kill the process). Async requests and endpoint
    /// registrations get `503`, a synchronous route and `/readyz` stay `200` (the next
    /// write may succeed), the log says what failed. Once the limit is lifted, jobs
    /// and endpoints are accepted again without a restart, and after a restart every
    /// job that got a `202` and every endpoint that got a `201` is still there.
    @Test(.enabled(if: prlimitPath != nil, "needs prlimit(1) (util-linux) to set the gateway's RLIMIT_FSIZE"))
    func fileSizeLimitReached_Answers503AndLogsWhy_RecoversWhenLifted_LosesNothingAccepted() throws {
        let up = try ScriptedServer.answering()
        let gate = Gate()
        defer { gate.open() }
        let held = try ScriptedServer.answering(heldBy: gate)
        let rx = try Self.stallingReceiver()
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, text) in Self.routes(upstream: up.port, held: held.port) {
            try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
        }
        let extra = ["--callback-allow", "127.0.0.0/8"]
        // Its log goes through a pipe: the limit must not stop it too.
        var server = try CLITests.Server(routesDir: dir, env: [:], extra: extra, throughPipe: true)
        let pid = server.process.processIdentifier
        func request(_ method: String, _ target: String, body: String = "") throws -> RawMessage {
            try #require(RawConnection(port: server.port).request(method, target, body: Array(body.utf8)))
        }
        let register = "{\"url\": \"http://127.0.0.1:\(up.port)/cb\"}"

        let first = try request("POST", "/slow")
        #expect(first.status == 202)
        let firstID = try #require(first.object["job_id"] as? String)
        #expect(try request("GET", "/jobs/\(firstID)?wait=10").object["status"] as? String == "succeeded")
        let segment = dir + "/data/segment-000001.log"
        let size = try #require((try FileManager.default.attributesOfItem(atPath: segment)[.size] as? NSNumber)?.intValue)
        try Self.setFileSizeLimit(pid, "\(size)")

        let refused = try request("POST", "/slow")
        #expect(refused.status == 503, "\(refused.text)")
        #expect(refused.header("content-type") == "application/problem+json")
        #expect(refused.object["job_id"] == nil)
        #expect(try request("POST", "/callbacks", body: register).status == 503)
        #expect(try request("GET", "/fast").status == 200)
        #expect(try request("GET", "/readyz").status == 200)
        // A refused job whose step is still running when writes succeed again: its
        // step and result records are written with no record of the job (a stray,
        // dropped at the next start), and it sends no callback.
        let refusedHeld = try #require(RawConnection(port: server.port).request(
            "POST", "/held", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/cb")]))
        #expect(refusedHeld.status == 503)
        #expect(eventually { held.requests.count == 1 })
        #expect(server.process.isRunning)
        #expect(eventually { server.log.contains("journal write failed") }, "\(server.log)")
        #expect(server.log.contains("File too large"))

        try Self.setFileSizeLimit(pid, "unlimited")
        gate.open()
        #expect(eventually { Self.metric("switchboard_jobs_running", port: server.port) == 0 })
        #expect(Self.metric("switchboard_callbacks_pending", port: server.port) == 0)
        let second = try request("POST", "/slow")
        #expect(second.status == 202, "\(second.text)")
        let secondID = try #require(second.object["job_id"] as? String)
        let endpoint = try request("POST", "/callbacks", body: register)
        #expect(endpoint.status == 201)
        let endpointID = try #require(endpoint.object["id"] as? String)
        #expect(try request("GET", "/jobs/\(secondID)?wait=10").object["status"] as? String == "succeeded")

        kill(pid, SIGTERM)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)
        server = try CLITests.Server(routesDir: dir, env: [:], extra: extra)
        for id in [firstID, secondID] {
            let job = try request("GET", "/jobs/\(id)?wait=10")
            #expect(job.status == 200, "job \(id) lost: \(job.text)")
            #expect(job.object["status"] as? String == "succeeded")
        }
        #expect(try request("GET", "/callbacks/\(endpointID)").status == 200)
        #expect(server.log.contains("\"stray_jobs_dropped\":1"), "\(server.log)")
        #expect(rx.requests.isEmpty)

        // The stray job's records are gone from the journal itself: only the two jobs
        // that got a `202` have keys left.
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        let journal = try Journal.open(directory: dir + "/data")
        defer { journal.close() }
        let jobKeys = try journal.replay().keys.filter { $0.hasPrefix("job/") }
        #expect(Set(jobKeys) == ["job/\(firstID)", "job/\(secondID)"], "\(jobKeys.sorted())")
    }
}
