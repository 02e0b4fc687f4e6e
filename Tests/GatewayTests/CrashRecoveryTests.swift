import Foundation
import Glibc
import Testing
import TestSupport

/// Durability across `kill -9` (SPEC §6), with the real binary and its journal on disk.
@Suite(.serialized) struct CrashRecoveryTests {
    static func orderRoute() -> String {
        routeJSON(["name": "order", "method": "POST", "path": "/order/{n}", "wait": "0s",
                   "steps": [
                       ["id": "pay", "request": ["method": "POST", "url": "{{env.PAY}}/pay",
                                                 "headers": ["Idempotency-Key": "{{step.idempotency_key}}"], "body": ["n": "{{request.path.n}}"]],
                        "timeout": "5s"],
                       ["id": "ship", "after": ["pay"], "request": ["method": "POST", "url": "{{env.SHIP}}/ship",
                                                                     "headers": ["Idempotency-Key": "{{step.idempotency_key}}"], "body": ["n": "{{request.path.n}}"]],
                        "timeout": "5s"],
                   ]])
    }

    /// Accepts jobs under concurrent load, kills the gateway with SIGKILL at a random moment while
    /// steps are in flight, restarts it on the same data directory, and checks: every job that got a
    /// 202 finishes and its callback is delivered; the payment step, whose outcome was journaled,
    /// is never called again; the shipment step that was in flight is re-sent only with the same key.
    @Test(arguments: [150, 400, 650])
    func sigkill_EveryAcceptedJobFinishes_WithoutRepeatingRecordedSteps(killAfterMs: Int) throws {
        let pay = try ScriptedServer.answering(body: "{\"id\":\"pay\",\"status\":\"succeeded\"}")
        let ship = try ScriptedServer.answering(status: 201, body: "{\"id\":\"shp\"}", delay: .milliseconds(900))
        let rx = try ScriptedServer.answering(status: 204, body: "")
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.orderRoute().write(toFile: "\(dir)/order.json", atomically: true, encoding: .utf8)
        let env = ["PAY": "http://127.0.0.1:\(pay.port)", "SHIP": "http://127.0.0.1:\(ship.port)"]
        let extra = ["--callback-allow", "127.0.0.0/8"]

        var server = try CLITests.Server(routesDir: dir, env: env, extra: extra)
        let port = server.port
        let ids = NSLock()
        nonisolated(unsafe) var jobIDs: [String] = []
        DispatchQueue.concurrentPerform(iterations: 12) { n in
            let c = try? RawConnection(port: port)
            if let r = c?.request("POST", "/order/\(n)", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/cb")]),
               r.status == 202, let id = r.object["job_id"] as? String {
                ids.withLock { jobIDs.append(id) }
            }
        }
        #expect(jobIDs.count == 12)
        usleep(useconds_t(killAfterMs * 1000))
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()
        let shipCallsBeforeRestart = ship.requests.count

        server = try CLITests.Server(routesDir: dir, env: env, extra: extra)
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        for id in jobIDs {
            let job = try #require(RawConnection(port: server.port).request("GET", "/jobs/\(id)?wait=20"))
            #expect(job.status == 200, "job \(id) unknown after restart")
            #expect(job.object["status"] as? String == "succeeded", "job \(id): \(job.text)")
        }
        #expect(eventually(timeout: .seconds(20)) { Set(rx.requests.compactMap { $0.object["job_id"] as? String }).isSuperset(of: jobIDs) },
                "callbacks delivered: \(rx.requests.count) of \(jobIDs.count)")

        // Payments: exactly one call per job (the outcome was journaled long before the kill).
        let payKeys = pay.requests.compactMap { $0.header("idempotency-key") }
        #expect(payKeys.count == jobIDs.count)
        #expect(Set(payKeys).count == jobIDs.count)
        // Shipments: at most one re-send per job, always with the same key.
        var shipCalls: [String: Int] = [:]
        for k in ship.requests.compactMap({ $0.header("idempotency-key") }) { shipCalls[k, default: 0] += 1 }
        #expect(shipCalls.count == jobIDs.count)
        #expect(shipCalls.values.allSatisfy { $0 <= 2 })
        #expect(ship.requests.count >= shipCallsBeforeRestart)
        #expect(server.log.contains("recovered from the journal"))
    }

    /// SIGKILL while a request with an `Idempotency-Key` waits on its run, before the
    /// run's job record was written (no `202` was sent): after the restart, the same
    /// request runs again as the same job — the step sends the same idempotency key
    /// upstream — instead of the key pointing at a job that does not exist.
    @Test func sigkill_BeforeTheJobWasJournaled_LetsTheKeyRunAgainAsTheSameJob() throws {
        let pay = try ScriptedServer.answering(body: "{\"id\":\"pay\",\"status\":\"succeeded\"}", delay: .milliseconds(1500))
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let route = routeJSON(["name": "charge", "method": "POST", "path": "/charge", "wait": "5s",
                               "steps": [["id": "pay", "request": ["method": "POST", "url": "{{env.PAY}}/pay",
                                                                   "headers": ["Idempotency-Key": "{{step.idempotency_key}}"],
                                                                   "body": ["amount": 5]],
                                          "timeout": "5s"]],
                               "response": ["status": 200, "body": "{{steps.pay.body}}"]])
        try route.write(toFile: "\(dir)/charge.json", atomically: true, encoding: .utf8)
        let env = ["PAY": "http://127.0.0.1:\(pay.port)"]
        var server = try CLITests.Server(routesDir: dir, env: env)
        let port = server.port
        let first = Thread { _ = try? RawConnection(port: port).request("POST", "/charge", headers: [("Idempotency-Key", "order-77")], body: Array("{}".utf8)) }
        first.start()
        #expect(eventually(timeout: .seconds(10)) { pay.requests.count == 1 })
        usleep(300_000)  // the key's record is durable (group commit), the job's is not (written near the 5 s budget's end)
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()

        server = try CLITests.Server(routesDir: dir, env: env)
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        let retry = try #require(RawConnection(port: server.port).request("POST", "/charge", headers: [("Idempotency-Key", "order-77")], body: Array("{}".utf8)))
        #expect(retry.status == 200, "\(retry.status) \(retry.text)")
        #expect(retry.object["status"] as? String == "succeeded", "\(retry.text)")
        let keys = pay.requests.compactMap { $0.header("idempotency-key") }
        #expect(keys.count == 2 && Set(keys).count == 1, "the step's upstream key must not change: \(keys)")
        // Replayed from now on.
        let again = try #require(RawConnection(port: server.port).request("POST", "/charge", headers: [("Idempotency-Key", "order-77")], body: Array("{}".utf8)))
        #expect(again.status == 200 && again.header("idempotent-replayed") == "true")
        #expect(pay.requests.count == 2)
    }

    /// A second process on a data directory that is in use refuses to start, with a clear message.
    /// A duplicate (same `Idempotency-Key`, `respond-async`) made the run a durable job
    /// while the original caller — who asked for a `Callback-URL` — kept waiting; the
    /// run then answers that caller in time. SIGKILL right after that answer: the
    /// restart must not resume the job and send the callback to a caller that already
    /// has the result (the job's result is durable before the answer is sent).
    @Test func sigkill_AfterTheOriginalGotItsAnswer_SendsNoCallbackForTheDuplicatesJob() throws {
        let gate = Gate()
        defer { gate.open() }
        let pay = try ScriptedServer.answering(body: "{\"id\":\"pay\"}", heldBy: gate)
        let rx = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                conn.write("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            }
        }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let route = routeJSON(["name": "charge", "method": "POST", "path": "/charge", "wait": "30s",
                               "steps": [["id": "pay", "request": ["method": "POST", "url": "{{env.PAY}}/pay"], "timeout": "30s"]],
                               "response": ["status": 200, "body": "{{steps.pay.body}}"]])
        try route.write(toFile: "\(dir)/charge.json", atomically: true, encoding: .utf8)
        let env = ["PAY": "http://127.0.0.1:\(pay.port)"]
        let extra = ["--callback-allow", "127.0.0.0/8"]
        var server = try CLITests.Server(routesDir: dir, env: env, extra: extra)
        let port = server.port
        nonisolated(unsafe) var original: RawMessage?
        let done = DispatchSemaphore(value: 0)
        Thread {
            original = try? RawConnection(port: port, timeout: .seconds(60)).request(
                "POST", "/charge", headers: [("Idempotency-Key", "order-9"), ("Prefer", "wait=30"),
                                             ("Callback-URL", "http://127.0.0.1:\(rx.port)/hook")], body: Array("{}".utf8))
            done.signal()
        }.start()
        #expect(eventually(timeout: .seconds(30)) { pay.requests.count == 1 })
        let duplicate = try #require(RawConnection(port: port).request(
            "POST", "/charge", headers: [("Idempotency-Key", "order-9"), ("Prefer", "respond-async")], body: Array("{}".utf8)))
        #expect(duplicate.status == 202, "\(duplicate.text)")
        let jobID = try #require(duplicate.object["job_id"] as? String)
        gate.open()
        done.wait()
        #expect(original?.status == 200, "\(original?.text ?? "no answer")")
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()

        server = try CLITests.Server(routesDir: dir, env: env, extra: extra)
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }
        let job = try #require(RawConnection(port: server.port).request("GET", "/jobs/\(jobID)?wait=30"))
        #expect(job.status == 200, "\(job.text)")
        #expect(job.object["status"] as? String == "succeeded", "\(job.text)")
        usleep(1_000_000)  // a resumed job's delivery would have been made by now
        #expect(rx.requests.isEmpty, "callback sent to a caller that got the answer: \(rx.requests.map(\.target))")
        #expect(pay.requests.count == 1)
    }

    @Test func secondProcess_OnLockedDataDirectory_Refuses() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.orderRoute().write(toFile: "\(dir)/order.json", atomically: true, encoding: .utf8)
        let env = ["PAY": "http://127.0.0.1:9", "SHIP": "http://127.0.0.1:9"]
        let first = try CLITests.Server(routesDir: dir, env: env)
        defer { kill(first.process.processIdentifier, SIGTERM); first.process.waitUntilExit() }
        let (code, _, err) = try CLITests.run(["serve", "--routes", dir, "--listen", "127.0.0.1:0", "--data", dir + "/data"], env: env)
        #expect(code != 0)
        #expect(err.contains("lock"))
    }
}
