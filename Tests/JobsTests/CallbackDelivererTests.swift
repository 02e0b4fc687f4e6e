import Crypto
import Dispatch
import EventLoop
import Foundation
import Jobs
import Locking
import JSON
import Synchronization
import Testing
import TestSupport
import Upstream

/// A real HTTP receiver on 127.0.0.1:0 answering its n-th request (over all
/// connections) with `statuses[n]` (the last one repeats), recording each request.
func receiver(_ statuses: [Int], headers: [(String, String)] = [], hangSeconds: Double = 0) throws -> ScriptedServer {
    let count = Locked(0)
    return try ScriptedServer { conn, server in
        while let req = conn.readRequest() {
            server.record(req)
            if hangSeconds > 0 { Thread.sleep(forTimeInterval: hangSeconds); return }
            let n = count.withLock { c -> Int in defer { c += 1 }; return c }
            let status = statuses[min(n, statuses.count - 1)]
            var s = "HTTP/1.1 \(status) X\r\nContent-Length: 2\r\n"
            for (k, v) in headers { s += "\(k): \(v)\r\n" }
            s += "\r\nok"
            if !conn.write(s) { return }
        }
    }
}

/// One event loop with an `UpstreamClient` and a `CallbackDeliverer` on it.
final class DeliveryHarness: @unchecked Sendable {
    let group: EventLoopGroup
    let store = DeliveryStore()
    let endpoints = CallbackEndpoints()
    let policy: AddressPolicy
    /// The configured `callback_secret` (signs ad-hoc Callback-URL deliveries).
    let secret = "whsec_" + Crypto.base64(Crypto.randomBytes(32))
    let events = Locked<[String]>([])
    private var deliverer: CallbackDeliverer!

    init(schedule: [Duration] = [.zero], attemptTimeout: Duration = .seconds(15), allow: [String] = ["127.0.0.0/8"],
         resolver: HostResolver = .system) throws {
        group = try EventLoopGroup(count: 1)
        policy = try AddressPolicy(allowing: allow)
        let loop = group.loops[0]
        let options = DeliveryOptions(schedule: schedule, attemptTimeout: attemptTimeout)
        let made = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var d: CallbackDeliverer?
        let (store, endpoints, policy, secret, events) = (store, endpoints, policy, secret, events)
        loop.execute {
            let client = UpstreamClient(loop: loop)
            d = CallbackDeliverer(client: client, store: store, endpoints: endpoints, policy: policy, secret: secret,
                                  options: options, resolver: resolver)
            d!.onEvent = { e in
                let text: String
                switch e {
                case .delivered(let r): text = "delivered \(r.jobID)"
                case .attemptFailed(let r, _): text = "retry \(r.jobID)"
                case .deadLettered(let r): text = "dead \(r.jobID)"
                case .endpointDisabled(let id, let r):
                    text = "disabled \(id) after \(r.attempts) attempt(s), last status \(r.lastStatus.map { String($0) } ?? "none")"
                }
                events.withLock { $0.append(text) }
            }
            made.signal()
        }
        made.wait()
        deliverer = d
    }

    deinit {
        onLoop { $0.cancelAll() }
        group.shutdown()
    }

    /// Runs `body` with the deliverer on its loop and returns its result.
    @discardableResult
    func onLoop<T>(_ body: @escaping @Sendable (CallbackDeliverer) -> T) -> T {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: T?
        let d = deliverer!
        group.loops[0].execute {
            result = body(d)
            done.signal()
        }
        done.wait()
        return result!
    }

    @discardableResult
    func enqueue(_ jobID: String, _ target: DeliveryTarget, _ body: [UInt8], owner: String = "shop") -> DeliveryRecord {
        onLoop { $0.enqueue(jobID: jobID, owner: owner, target: target, body: body) }
    }

    /// The record once it reaches `status` (nil after 30 s: a bound for a loaded machine
    /// running the whole suite in parallel, not a timing expectation).
    func wait(_ jobID: String, _ status: DeliveryStatus) -> DeliveryRecord? {
        _ = eventually(timeout: .seconds(30)) { store.record(jobID: jobID)?.status == status }
        guard let r = store.record(jobID: jobID), r.status == status else { return nil }
        return r
    }

    /// Registers `url` (vetted with the harness policy) for `shop`.
    func register(_ url: String, resolver: HostResolver = .system) throws -> CallbackEndpoint {
        endpoints.register(try policy.vet(url, resolver: resolver), owner: "shop")
    }
}

/// The signature a receiver expects, computed here from the secret without the signing code under test.
func expectedSignature(secret: String, id: String, timestamp: String, body: [UInt8]) -> String {
    let key = Crypto.fromBase64(String(secret.dropFirst("whsec_".count)))!
    return "v1," + Crypto.base64(Crypto.hmacSHA256(key: key, message: Array("\(id).\(timestamp).".utf8) + body))
}

let jobBody = Array(#"{"job_id":"J","route":"checkout","status":"succeeded","response":{"status":200,"headers":{},"body":{"ok":true}}}"#.utf8)

@Suite struct CallbackDelivererTests {
    /// A receiver that reads requests and never answers, counting the connections its
    /// peer closed (a cancelled attempt's transfer closes its connection).
    static func receiverCountingClosedConnections() throws -> (ScriptedServer, Locked<Int>) {
        let closed = Locked(0)
        let rx = try ScriptedServer { conn, server in
            while let req = conn.readRequest() { server.record(req) }
            closed.withLock { $0 += 1 }
        }
        return (rx, closed)
    }

    /// A delivery to a registered endpoint carries Standard Webhooks headers whose signature verifies with the endpoint's secret.
    @Test func delivery_SignatureVerifies_WithEndpointSecret() throws {
        let rx = try receiver([200])
        let h = try DeliveryHarness()
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.enqueue("job-sig", .endpoint(id: ep.id), jobBody)
        let rec = try #require(h.wait("job-sig", .delivered))
        #expect(rec.attempts == 1 && rec.lastStatus == 200)
        let req = try #require(rx.requests.first)
        let id = try #require(req.header("webhook-id"))
        let ts = try #require(req.header("webhook-timestamp"))
        #expect(req.method == "POST" && req.target == "/hook")
        #expect(id == "msg_job-sig")
        #expect(abs(Int64(ts)! - wallClockMilliseconds() / 1000) < 60)
        #expect(req.header("content-type") == "application/json")
        #expect(req.body == jobBody)
        #expect(req.header("webhook-signature") == expectedSignature(secret: ep.secret, id: id, timestamp: ts, body: req.body))
        #expect(eventually { h.events.withLock { $0 } == ["delivered job-sig"] })
    }

    /// An ad-hoc Callback-URL delivery is signed with the configured callback secret, and a job is enqueued only once.
    @Test func adHocURL_IsSignedWithConfiguredSecret_AndEnqueuedOnce() throws {
        let rx = try receiver([200])
        let h = try DeliveryHarness()
        let url = "http://127.0.0.1:\(rx.port)/adhoc"
        h.enqueue("job-adhoc", .url(url), jobBody)
        h.enqueue("job-adhoc", .url(url), Array("other".utf8))
        _ = try #require(h.wait("job-adhoc", .delivered))
        Thread.sleep(forTimeInterval: 0.1)
        #expect(rx.requests.count == 1)
        let req = try #require(rx.requests.first)
        #expect(req.body == jobBody)
        #expect(req.header("webhook-signature") == expectedSignature(secret: h.secret, id: req.header("webhook-id")!,
                                                                   timestamp: req.header("webhook-timestamp")!, body: req.body))
    }

    /// A receiver failing its first two attempts (500) gets the same webhook-id and body each time, and success on the third.
    @Test func delivery_RetriesWithSameIdAndBody_UntilSuccess() throws {
        let rx = try receiver([500, 500, 200])
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(50), .milliseconds(50)])
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.enqueue("job-retry", .endpoint(id: ep.id), jobBody)
        #expect(h.store.pendingCount == 1)
        let rec = try #require(h.wait("job-retry", .delivered))
        #expect(rec.attempts == 3 && rec.lastStatus == 200 && rec.lastError == nil)
        let reqs = rx.requests
        #expect(reqs.count == 3)
        #expect(Set(reqs.compactMap { $0.header("webhook-id") }) == ["msg_job-retry"])
        #expect(reqs.allSatisfy { $0.body == jobBody })
        for r in reqs {
            #expect(r.header("webhook-signature") == expectedSignature(secret: ep.secret, id: r.header("webhook-id")!,
                                                                      timestamp: r.header("webhook-timestamp")!, body: r.body))
        }
        #expect(h.store.pendingCount == 0)
        #expect(eventually { h.events.withLock { $0 } == ["retry job-retry", "retry job-retry", "delivered job-retry"] })
    }

    /// After the last attempt the delivery is dead-lettered and listed as failed; redelivery then succeeds with the same id.
    @Test func delivery_IsDeadLettered_ThenRedeliverySucceeds() throws {
        let rx = try receiver([503, 503, 503, 200])
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(20), .milliseconds(20)])
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.enqueue("job-dead", .endpoint(id: ep.id), jobBody)
        let dead = try #require(h.wait("job-dead", .failed))
        #expect(dead.attempts == 3 && dead.lastStatus == 503 && dead.lastError == "HTTP 503")
        #expect(h.store.deadLetteredTotal == 1 && h.store.pendingCount == 0)

        let listing = h.store.listingJSON(endpointID: ep.id, owner: "shop", status: .failed)
        let entry = try #require(listing["deliveries"]?[0])
        #expect(listing["deliveries"]?.arrayValue?.count == 1)
        #expect(entry["job_id"]?.stringValue == "job-dead")
        #expect(entry["webhook_id"]?.stringValue == "msg_job-dead")
        #expect(entry["attempts"]?.intValue == 3)
        #expect(entry["status"]?.stringValue == "failed")
        #expect(entry["last_status"]?.intValue == 503)
        #expect(entry["last_error"]?.stringValue == "HTTP 503")
        #expect(h.store.listingJSON(endpointID: ep.id, owner: "other", status: .failed)["deliveries"]?.arrayValue?.isEmpty == true)

        let again = h.onLoop { $0.redeliver(jobID: "job-dead", owner: "shop") }
        #expect((try? again.get())?.status == .pending)
        let ok = try #require(h.wait("job-dead", .delivered))
        #expect(ok.attempts == 1 && ok.lastStatus == 200)
        #expect(rx.requests.count == 4)
        #expect(Set(rx.requests.compactMap { $0.header("webhook-id") }) == ["msg_job-dead"])
        #expect(h.store.listingJSON(endpointID: ep.id, owner: "shop", status: .failed)["deliveries"]?.arrayValue?.isEmpty == true)
    }

    /// Redelivery is refused for another caller's job and while a delivery is still pending.
    @Test func redeliver_Refuses_OtherOwnerOrPending() throws {
        let rx = try receiver([500])
        let h = try DeliveryHarness(schedule: [.zero, .seconds(30)])
        h.enqueue("job-p", .url("http://127.0.0.1:\(rx.port)/x"), jobBody)
        #expect(h.onLoop { $0.redeliver(jobID: "job-p", owner: "other") } == .failure(.notFound))
        #expect(h.onLoop { $0.redeliver(jobID: "job-p", owner: "shop") } == .failure(.alreadyPending))
        #expect(h.onLoop { $0.redeliver(jobID: "nope", owner: "shop") } == .failure(.notFound))
    }

    /// A 410 Gone answer disables the endpoint, stops retries and dead-letters the delivery.
    @Test func goneAnswer_DisablesEndpoint() throws {
        let rx = try receiver([410])
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(20), .milliseconds(20)])
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.enqueue("job-gone", .endpoint(id: ep.id), jobBody)
        let rec = try #require(h.wait("job-gone", .failed))
        #expect(rec.lastStatus == 410 && rec.attempts == 1)
        let disabled = try #require(h.endpoints.endpoint(id: ep.id))
        #expect(disabled.disabled)
        #expect(eventually { h.events.withLock { $0 } == ["disabled \(ep.id) after 1 attempt(s), last status 410", "dead job-gone"] })
        #expect(h.onLoop { $0.redeliver(jobID: "job-gone", owner: "shop") } == .failure(.endpointDisabled))
        // Later deliveries to the disabled endpoint never reach the receiver.
        h.enqueue("job-after", .endpoint(id: ep.id), jobBody)
        let after = try #require(h.wait("job-after", .failed))
        #expect(after.lastError == "callback endpoint is disabled")
        Thread.sleep(forTimeInterval: 0.1)
        #expect(rx.requests.count == 1)
    }

    /// A 302 answer is a failure and its Location is never requested.
    @Test func redirectAnswer_IsNotFollowed() throws {
        let landing = try receiver([200])
        let rx = try receiver([302], headers: [("Location", "http://127.0.0.1:\(landing.port)/landed")])
        let h = try DeliveryHarness(schedule: [.zero])
        h.enqueue("job-302", .url("http://127.0.0.1:\(rx.port)/hook"), jobBody)
        let rec = try #require(h.wait("job-302", .failed))
        #expect(rec.lastStatus == 302)
        #expect(rec.lastError?.contains("redirect") == true)
        Thread.sleep(forTimeInterval: 0.2)
        #expect(rx.requests.count == 1)
        #expect(landing.requests.isEmpty && landing.connections == 0)
    }

    /// Delivery connects to the address the guard checked (CURLOPT_RESOLVE), even for a name DNS cannot resolve.
    @Test func delivery_ConnectsToCheckedAddress() throws {
        let rx = try receiver([200])
        let resolver = fixedResolver(["receiver.invalid": ["127.0.0.1"]])
        let h = try DeliveryHarness(resolver: resolver)
        let ep = try h.register("http://receiver.invalid:\(rx.port)/pinned", resolver: resolver)
        h.enqueue("job-pin", .endpoint(id: ep.id), jobBody)
        _ = try #require(h.wait("job-pin", .delivered))
        #expect(rx.requests.first?.header("host") == "receiver.invalid:\(rx.port)")
    }

    /// The guard runs again at delivery: a host that now resolves to a private address is refused without a connection.
    @Test func delivery_IsRefused_WhenHostRebindsToPrivateAddress() throws {
        let rx = try receiver([200])
        let answer = Locked("127.0.0.1")
        let resolver = HostResolver { _ in .success([IPAddress(answer.withLock { $0 })!]) }
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(10)], resolver: resolver)
        let ep = try h.register("http://rebind.test:\(rx.port)/hook", resolver: resolver)
        answer.withLock { $0 = "10.1.2.3" }
        h.enqueue("job-rebind", .endpoint(id: ep.id), jobBody)
        let rec = try #require(h.wait("job-rebind", .failed))
        #expect(rec.attempts == 2 && rec.lastStatus == nil)
        #expect(rec.lastError?.contains("private") == true)
        #expect(rx.connections == 0)
    }

    /// A receiver that hangs only times out its own attempt; another delivery completes meanwhile.
    @Test func hangingReceiver_DoesNotDelayOtherDeliveries() throws {
        let slow = try receiver([200], hangSeconds: 5)
        let fast = try receiver([200])
        let h = try DeliveryHarness(schedule: [.zero], attemptTimeout: .seconds(2))
        h.enqueue("job-slow", .url("http://127.0.0.1:\(slow.port)/slow"), jobBody)
        #expect(eventually { slow.requests.count == 1 })
        h.enqueue("job-fast", .url("http://127.0.0.1:\(fast.port)/fast"), jobBody)
        _ = try #require(h.wait("job-fast", .delivered))
        #expect(h.store.record(jobID: "job-slow")?.status == .pending)
        let timedOut = try #require(h.wait("job-slow", .failed))
        #expect(timedOut.lastError?.hasPrefix("timeout") == true)
    }

    /// A delivery to a deleted endpoint is dead-lettered without a request.
    @Test func deletedEndpoint_DeadLettersDelivery() throws {
        let rx = try receiver([200])
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(10)])
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.endpoints.delete(ep.id, owner: "shop")
        h.enqueue("job-del", .endpoint(id: ep.id), jobBody)
        let rec = try #require(h.wait("job-del", .failed))
        #expect(rec.lastError == "callback endpoint was deleted" && rec.attempts == 1)
        #expect(rx.connections == 0)
        #expect(h.onLoop { $0.redeliver(jobID: "job-del", owner: "shop") } == .failure(.endpointDeleted))
    }

    /// `endpointDeleted` stops this loop's attempt to the endpoint even when another
    /// loop's deliverer already dead-lettered its record (the transfer is cancelled:
    /// the receiver sees its connection close), and dead-letters only what is pending.
    @Test func endpointDeleted_CancelsThisLoopsAttempt_WhenAnotherLoopDeadLetteredIt() throws {
        let (rx, closed) = try Self.receiverCountingClosedConnections()
        let h = try DeliveryHarness(attemptTimeout: .seconds(600))
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        h.enqueue("job-held", .endpoint(id: ep.id), jobBody)
        #expect(eventually(timeout: .seconds(30)) { rx.requests.count == 1 })
        #expect(h.onLoop { $0.activeCount } == 1)
        // What the other loop's `endpointDeleted` did to the shared record.
        h.endpoints.delete(ep.id, owner: "shop")
        var rec = try #require(h.store.record(jobID: "job-held"))
        rec.status = .failed
        rec.lastError = "callback endpoint was deleted"
        h.store.restore([rec])
        #expect(h.onLoop { $0.endpointDeleted(ep.id, owner: "shop") } == 0)
        #expect(h.onLoop { $0.activeCount } == 0)
        #expect(eventually(timeout: .seconds(30)) { closed.withLock { $0 } == 1 }, "the transfer was not cancelled")
        #expect(h.store.record(jobID: "job-held")?.status == .failed)
    }

    /// `cancelAttempts(toEndpoint:)` (what the loops not answering a DELETE run) stops
    /// this loop's attempt to the endpoint — the receiver sees its connection close —
    /// and leaves the shared record as it was (dead-lettering is `endpointDeleted`'s,
    /// on one loop); an attempt to another endpoint goes on.
    @Test func cancelAttempts_StopsOnlyThisEndpointsWork_LeavesTheRecord() throws {
        let (rx, closed) = try Self.receiverCountingClosedConnections()
        let h = try DeliveryHarness(attemptTimeout: .seconds(600))
        let ep = try h.register("http://127.0.0.1:\(rx.port)/hook")
        let other = try h.register("http://127.0.0.1:\(rx.port)/other")
        h.enqueue("job-held", .endpoint(id: ep.id), jobBody)
        h.enqueue("job-other", .endpoint(id: other.id), jobBody)
        #expect(eventually(timeout: .seconds(30)) { rx.requests.count == 2 })
        #expect(h.onLoop { $0.cancelAttempts(toEndpoint: ep.id) } == 1)
        #expect(h.onLoop { $0.activeCount } == 1)
        #expect(eventually(timeout: .seconds(30)) { closed.withLock { $0 } == 1 }, "the transfer was not cancelled")
        #expect(h.store.record(jobID: "job-held")?.status == .pending)
        #expect(h.store.record(jobID: "job-other")?.status == .pending)
    }

    /// A connection refused by the receiver's address is an attempt failure with a reason.
    @Test func refusedConnection_IsRetriedThenDeadLettered() throws {
        let rx = try receiver([200])
        let port = rx.port
        rx.stop()
        let h = try DeliveryHarness(schedule: [.zero, .milliseconds(10)])
        h.enqueue("job-conn", .url("http://127.0.0.1:\(port)/hook"), jobBody)
        let rec = try #require(h.wait("job-conn", .failed))
        #expect(rec.attempts == 2 && rec.lastStatus == nil)
        #expect(rec.lastError?.hasPrefix("connect") == true)
    }

    /// A pending delivery restored from a journal is picked up and delivered by `resume`.
    @Test func resume_DeliversRestoredPendingRecord() throws {
        let rx = try receiver([200])
        let h = try DeliveryHarness()
        let now = wallClockMilliseconds()
        h.store.restore([DeliveryRecord(jobID: "job-restored", webhookID: "msg_job-restored", owner: "shop",
                                        target: .url("http://127.0.0.1:\(rx.port)/r"), body: jobBody, attempts: 2,
                                        lastStatus: 500, lastError: "HTTP 500", createdAt: now - 60_000, updatedAt: now - 1_000,
                                        nextAttemptAt: now - 10)])
        #expect(h.store.pendingCount == 1)
        h.onLoop { $0.resume(jobID: "job-restored") }
        let rec = try #require(h.wait("job-restored", .delivered))
        #expect(rec.attempts == 3)
        #expect(eventually { rx.requests.contains { $0.header("webhook-id") == "msg_job-restored" } })
    }

    /// Every store change reaches the journal hook in order: enqueued, then updates.
    @Test func storeHook_SeesEnqueueAndEveryUpdate() throws {
        let rx = try receiver([500, 200])
        let log = Locked<[String]>([])
        let store = DeliveryStore { c in
            switch c {
            case .enqueued(let r): log.withLock { $0.append("enqueued \(r.status.rawValue)") }
            case .updated(let r): log.withLock { $0.append("updated \(r.status.rawValue) \(r.attempts)") }
            case .removed(let id): log.withLock { $0.append("removed \(id)") }
            }
        }
        let group = try EventLoopGroup(count: 1)
        defer { group.shutdown() }
        let loop = group.loops[0]
        let done = DispatchSemaphore(value: 0)
        let keep = Locked<CallbackDeliverer?>(nil)
        loop.execute {
            let d = CallbackDeliverer(client: UpstreamClient(loop: loop), store: store, endpoints: CallbackEndpoints(),
                                      policy: try! AddressPolicy(allowing: ["127.0.0.0/8"]),
                                      secret: "whsec_" + Crypto.base64(Crypto.randomBytes(32)),
                                      options: DeliveryOptions(schedule: [.zero, .milliseconds(10)]))
            d.enqueue(jobID: "j", owner: "", target: .url("http://127.0.0.1:\(rx.port)/"), body: jobBody)
            keep.withLock { $0 = d }
            done.signal()
        }
        done.wait()
        #expect(eventually { store.record(jobID: "j")?.status == .delivered })
        #expect(store.sweep(deliveredBefore: Int64.max, failedBefore: 0) == 1)
        #expect(log.withLock { $0 } == ["enqueued pending", "updated pending 1", "updated delivered 2", "removed j"])
        loop.execute { keep.withLock { $0 = nil } }
    }
}

@Suite struct DeliveryOptionsTests {
    /// Delays are jittered within ±20 % by default, vary, and a zero delay stays zero.
    @Test func delay_IsJitteredWithinBounds() {
        let o = DeliveryOptions(schedule: [.zero, .seconds(10)])
        let samples = (0..<500).map { _ in o.delay(beforeAttempt: 1) }
        #expect(samples.allSatisfy { $0 >= .seconds(8) && $0 <= .seconds(12) })
        #expect(Set(samples.map { $0.nanosecondsClamped }).count > 1)
        #expect(o.delay(beforeAttempt: 0) == .zero)
        #expect(o.delay(beforeAttempt: 7) == .zero)
    }

    /// Even full jitter never makes a delay negative.
    @Test func delay_IsNeverNegative() {
        let o = DeliveryOptions(schedule: [.milliseconds(1)], jitter: 5)
        #expect((0..<500).allSatisfy { _ in o.delay(beforeAttempt: 0) >= .zero })
        #expect(o.jitter == 1)
    }

    /// The default schedule is SPEC §4's: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    @Test func defaults_MatchSpec() {
        let o = DeliveryOptions()
        #expect(o.schedule == [.zero, .seconds(5), .seconds(300), .seconds(1800), .seconds(7200), .seconds(18_000), .seconds(36_000), .seconds(36_000)])
        #expect(o.attemptTimeout == .seconds(15))
    }
}
