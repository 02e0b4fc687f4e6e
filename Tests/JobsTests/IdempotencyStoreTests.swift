import Crypto
import Dispatch
import EventLoop
import Jobs
import Locking
import Synchronization
import Testing

private let scope = IdempotencyScope(caller: "shop", route: "checkout")
private let fp = RequestFingerprint(method: "POST", target: "/checkout/1", body: Array("{\"amount\":5}".utf8))
private let response = StoredResponse(status: 200, headers: [("Content-Type", "application/json")], body: Array("{\"ok\":true}".utf8))

private func token(_ r: IdempotencyBegin) -> IdempotencyToken? {
    if case .new(let t) = r { return t }
    return nil
}

@Suite struct IdempotencyStoreTests {
    /// An unseen key is claimed: `.new` with a token for the given job.
    @Test func begin_ReturnsNew_ForUnseenKey() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        #expect(t.jobID == "job1" && t.key == "k1" && t.scope == scope)
        #expect(s.record(scope, key: "k1")?.isFinished == false)
    }

    /// The same request while the first is running gets the running job and its loop.
    @Test func begin_ReturnsInProgress_ForSameRequestWhileRunning() throws {
        let s = IdempotencyStore()
        _ = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 3)
        guard case .inProgress(let job, let loop) = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job2", loopIndex: 0) else {
            Issue.record("expected inProgress")
            return
        }
        #expect(job == "job1" && loop == 3)
    }

    /// After `complete`, the same request replays the stored response and job id.
    @Test func begin_ReturnsFinished_AfterComplete() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        #expect(s.complete(t, with: response))
        guard case .finished(let job, let r) = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job2", loopIndex: 0) else {
            Issue.record("expected finished")
            return
        }
        #expect(job == "job1" && r.status == 200 && r.body == response.body)
    }

    /// A different request under the same key is a mismatch, running or finished.
    @Test func begin_ReturnsMismatch_ForDifferentFingerprint() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        let other = RequestFingerprint(method: "POST", target: "/checkout/1", body: Array("{\"amount\":6}".utf8))
        guard case .mismatch = try s.begin(scope, key: "k1", fingerprint: other, jobID: "job2", loopIndex: 0) else {
            Issue.record("expected mismatch while running")
            return
        }
        s.complete(t, with: response)
        guard case .mismatch = try s.begin(scope, key: "k1", fingerprint: other, jobID: "job3", loopIndex: 0) else {
            Issue.record("expected mismatch when finished")
            return
        }
    }

    /// Keys are scoped: another caller or another route with the same key starts fresh.
    @Test func begin_ScopesKeys_ByCallerAndRoute() throws {
        let s = IdempotencyStore()
        _ = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)
        #expect(token(try s.begin(IdempotencyScope(caller: "other", route: "checkout"), key: "k1", fingerprint: fp, jobID: "j2", loopIndex: 0)) != nil)
        #expect(token(try s.begin(IdempotencyScope(caller: "shop", route: "refund"), key: "k1", fingerprint: fp, jobID: "j3", loopIndex: 0)) != nil)
    }

    /// Of many threads beginning one key at once, exactly one gets `.new`; all others see its job.
    @Test func begin_GivesExactlyOneNew_UnderConcurrentBegins() {
        let s = IdempotencyStore()
        let news = Atomic(0)
        let sameJob = Atomic(0)
        let winner = Locked<String?>(nil)
        let seen = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 200) { i in
            switch try! s.begin(scope, key: "race", fingerprint: fp, jobID: "job\(i)", loopIndex: i % 4) {
            case .new(let t):
                news.add(1, ordering: .relaxed)
                winner.withLock { $0 = t.jobID }
            case .inProgress(let job, _):
                seen.withLock { $0.append(job) }
                sameJob.add(1, ordering: .relaxed)
            default: break
            }
        }
        #expect(news.load(ordering: .relaxed) == 1)
        #expect(sameJob.load(ordering: .relaxed) == 199)
        let w = winner.withLock { $0 }
        #expect(seen.withLock { $0 }.allSatisfy { $0 == w })
    }

    /// An attached waiter is called once with the response when the run completes.
    @Test func attach_WakesWaiter_OnComplete() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        let got = Locked<[Int?]>([])
        guard case .attached = s.attach(scope, key: "k1", jobID: "job1", waiter: { r in got.withLock { $0.append(r?.status) } }) else {
            Issue.record("expected attached")
            return
        }
        #expect(got.withLock { $0 }.isEmpty)
        s.complete(t, with: response)
        #expect(got.withLock { $0 } == [200])
        #expect(!s.complete(t, with: response))
        #expect(got.withLock { $0 } == [200])
    }

    /// Attaching after completion returns the response at once; to a vanished job, `.notFound`.
    @Test func attach_ReturnsFinishedOrNotFound_WhenNotRunning() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        s.complete(t, with: response)
        guard case .finished(let r) = s.attach(scope, key: "k1", jobID: "job1", waiter: { _ in Issue.record("must not be called") }) else {
            Issue.record("expected finished")
            return
        }
        #expect(r.status == 200)
        guard case .notFound = s.attach(scope, key: "k1", jobID: "other-job", waiter: { _ in }) else {
            Issue.record("expected notFound")
            return
        }
    }

    /// Abandoning releases the key (the next request is `.new`) and wakes waiters with nil.
    @Test func abandon_ReleasesKey_AndWakesWaitersWithNil() throws {
        let s = IdempotencyStore()
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0)))
        let woke = Locked<[Bool]>([])
        _ = s.attach(scope, key: "k1", jobID: "job1", waiter: { r in woke.withLock { $0.append(r == nil) } })
        #expect(s.abandon(t))
        #expect(woke.withLock { $0 } == [true])
        #expect(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job2", loopIndex: 0)) != nil)
    }

    /// A finished record is replayed until its ttl passes, then the key is new again and sweep drops it.
    @Test func finishedRecord_Expires_AfterTTL() throws {
        let s = IdempotencyStore(ttl: .seconds(10))
        let t = try #require(token(try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0, now: 1_000)))
        s.complete(t, with: response, now: 2_000)
        guard case .finished = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "x", loopIndex: 0, now: 11_999) else {
            Issue.record("expected finished before expiry")
            return
        }
        #expect(s.sweep(now: 11_999) == 0)
        #expect(s.sweep(now: 12_000) == 1)
        #expect(s.count == 0)
        s.restore([IdempotencyRecord(scope: scope, key: "k2", fingerprint: fp, jobID: "j", loopIndex: 0, createdAt: 0, expiresAt: 5, response: response)])
        #expect(token(try s.begin(scope, key: "k2", fingerprint: fp, jobID: "job9", loopIndex: 0, now: 5)) != nil)
    }

    /// A record whose run is still going is never swept, however old.
    @Test func sweep_KeepsInProgressRecords() throws {
        let s = IdempotencyStore(ttl: .seconds(1))
        _ = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job1", loopIndex: 0, now: 0)
        #expect(s.sweep(now: 1_000_000_000) == 0)
        guard case .inProgress = try s.begin(scope, key: "k1", fingerprint: fp, jobID: "job2", loopIndex: 0, now: 1_000_000_000) else {
            Issue.record("expected inProgress")
            return
        }
    }

    /// After a crash, a record in progress whose job never reached the journal is
    /// resumable: the same request runs again as the same job (its steps send the
    /// same idempotency keys upstream); another request with the key still mismatches;
    /// a record whose job was journaled stays in progress.
    @Test func restore_RecordWithoutJob_IsResumedUnderItsJobID() throws {
        let s = IdempotencyStore()
        let orphan = IdempotencyRecord(scope: scope, key: "lost", fingerprint: fp, jobID: "jobLost", loopIndex: 1, createdAt: 0, expiresAt: 10)
        let kept = IdempotencyRecord(scope: scope, key: "kept", fingerprint: fp, jobID: "jobKept", loopIndex: 1, createdAt: 0, expiresAt: 10)
        s.restore([orphan, kept], jobIDs: ["jobKept"])
        let other = RequestFingerprint(method: "POST", target: "/checkout/2", body: [])
        guard case .mismatch = try s.begin(scope, key: "lost", fingerprint: other, jobID: "x", loopIndex: 0) else {
            Issue.record("a different request must not take over the key")
            return
        }
        let t = try #require(token(try s.begin(scope, key: "lost", fingerprint: fp, jobID: "fresh", loopIndex: 0)))
        #expect(t.jobID == "jobLost")
        guard case .inProgress(let j, _) = try s.begin(scope, key: "lost", fingerprint: fp, jobID: "fresh2", loopIndex: 0) else {
            Issue.record("the resumed run holds the key")
            return
        }
        #expect(j == "jobLost")
        guard case .inProgress(let k, _) = try s.begin(scope, key: "kept", fingerprint: fp, jobID: "fresh3", loopIndex: 0) else {
            Issue.record("a key whose job was journaled stays in progress")
            return
        }
        #expect(k == "jobKept")
    }

    /// Keys of 1–255 printable ASCII bytes are accepted; empty, longer or control bytes are not.
    @Test func validate_EnforcesKeyShape() throws {
        try IdempotencyStore.validate(key: String(repeating: "a", count: 255))
        #expect(throws: IdempotencyKeyError.tooLong(256)) { try IdempotencyStore.validate(key: String(repeating: "a", count: 256)) }
        #expect(throws: IdempotencyKeyError.empty) { try IdempotencyStore.validate(key: "") }
        #expect(throws: IdempotencyKeyError.invalidCharacters) { try IdempotencyStore.validate(key: "a\u{1}b") }
        let s = IdempotencyStore()
        #expect(throws: IdempotencyKeyError.tooLong(300)) {
            try s.begin(scope, key: String(repeating: "k", count: 300), fingerprint: fp, jobID: "j", loopIndex: 0)
        }
        #expect(s.count == 0)
    }

    /// The fingerprint changes with the method, the target and the body.
    @Test func fingerprint_DependsOnMethodTargetAndBody() {
        let base = RequestFingerprint(method: "POST", target: "/a", body: [1])
        #expect(base == RequestFingerprint(method: "POST", target: "/a", body: [1]))
        #expect(base != RequestFingerprint(method: "PUT", target: "/a", body: [1]))
        #expect(base != RequestFingerprint(method: "POST", target: "/a?x=1", body: [1]))
        #expect(base != RequestFingerprint(method: "POST", target: "/a", body: [2]))
        #expect(base.bytes.count == 32)
    }

    /// Every state change reaches the journal hook, in order.
    @Test func onChange_ReportsEveryChangeInOrder() throws {
        let log = Locked<[String]>([])
        let s = IdempotencyStore(ttl: .seconds(1)) { change in
            switch change {
            case .began(let r): log.withLock { $0.append("began \(r.key)") }
            case .completed(let r): log.withLock { $0.append("completed \(r.key) \(r.response!.status)") }
            case .removed(_, let key): log.withLock { $0.append("removed \(key)") }
            }
        }
        let t = try #require(token(try s.begin(scope, key: "a", fingerprint: fp, jobID: "j1", loopIndex: 0, now: 0)))
        s.complete(t, with: response, now: 0)
        s.sweep(now: 1_000)
        #expect(log.withLock { $0 } == ["began a", "completed a 200", "removed a"])
    }
}

@Suite struct CallbackEndpointsTests {
    private func target(_ url: String = "http://127.0.0.1:9/hook") throws -> CallbackTarget {
        try AddressPolicy(allowing: ["127.0.0.0/8"]).vet(url)
    }

    /// Each registration gets a fresh id and a fresh whsec_ secret of 32 random bytes.
    @Test func register_GivesFreshIdAndSecret() throws {
        let r = CallbackEndpoints()
        let a = r.register(try target(), owner: "shop")
        let b = r.register(try target(), owner: "shop")
        #expect(a.id != b.id && a.secret != b.secret)
        #expect(CallbackEndpoints.isWellFormedID(a.id))
        #expect(a.secret.hasPrefix("whsec_"))
        #expect(Crypto.fromBase64(String(a.secret.dropFirst(6)))?.count == 32)
        #expect(a.url == "http://127.0.0.1:9/hook" && !a.disabled)
    }

    /// Callers list, find and delete only their own endpoints.
    @Test func ownership_HidesOtherCallersEndpoints() throws {
        let r = CallbackEndpoints()
        let mine = r.register(try target(), owner: "shop")
        _ = r.register(try target(), owner: "other")
        #expect(r.list(owner: "shop").map(\.id) == [mine.id])
        #expect(r.find(mine.id, owner: "other") == nil)
        #expect(!r.delete(mine.id, owner: "other"))
        #expect(r.delete(mine.id, owner: "shop"))
        #expect(r.find(mine.id, owner: "shop") == nil)
        #expect(r.count == 1)
    }

    /// Disabling keeps the reason; re-enabling clears it; both reach the hook.
    @Test func setDisabled_TogglesAndReports() throws {
        let changes = Locked<[String]>([])
        let r = CallbackEndpoints { c, _ in
            switch c {
            case .registered: changes.withLock { $0.append("registered") }
            case .updated(let e): changes.withLock { $0.append("disabled=\(e.disabled)") }
            case .deleted: changes.withLock { $0.append("deleted") }
            }
        }
        let e = r.register(try target(), owner: "shop")
        #expect(r.setDisabled(e.id, true, reason: "gone")?.disabledReason == "gone")
        #expect(r.endpoint(id: e.id)?.disabled == true)
        #expect(r.setDisabled(e.id, false)?.disabledReason == nil)
        r.delete(e.id, owner: "shop")
        #expect(changes.withLock { $0 } == ["registered", "disabled=true", "disabled=false", "deleted"])
    }

    /// `register` and `delete` hand their `recorded` callback to the hook with the
    /// change (so a caller is answered only once the change is recorded); without a
    /// hook it is called at once with true. `unregister` takes a registration back
    /// without reporting a change (nothing of it was recorded).
    @Test func registerAndDelete_PassRecordedToTheHook_UnregisterTakesBack() throws {
        let pending = Locked<[@Sendable (Bool) -> Void]>([])
        let changes = Locked<[String]>([])
        let r = CallbackEndpoints { c, recorded in
            changes.withLock { $0.append("\(c)".prefix { $0 != "(" }.description) }
            if let recorded { pending.withLock { $0.append(recorded) } }
        }
        let outcome = Locked<[Bool]>([])
        let e = r.register(try target(), owner: "shop") { ok in outcome.withLock { $0.append(ok) } }
        #expect(outcome.withLock { $0 }.isEmpty)  // not before the hook's write completes
        pending.withLock { $0.removeFirst() }(false)
        #expect(outcome.withLock { $0 } == [false])
        r.unregister(e.id)
        #expect(r.find(e.id, owner: "shop") == nil)

        let kept = r.register(try target(), owner: "shop")
        #expect(r.delete(kept.id, owner: "shop") { ok in outcome.withLock { $0.append(ok) } })
        pending.withLock { $0.removeFirst() }(true)
        #expect(outcome.withLock { $0 } == [false, true])
        #expect(!r.delete(kept.id, owner: "shop") { _ in Issue.record("no change, no callback") })
        #expect(changes.withLock { $0 } == ["registered", "registered", "deleted"])

        let plain = CallbackEndpoints()
        let called = Locked<[Bool]>([])
        let p = plain.register(try target(), owner: "shop") { ok in called.withLock { $0.append(ok) } }
        plain.delete(p.id, owner: "shop") { ok in called.withLock { $0.append(ok) } }
        #expect(called.withLock { $0 } == [true, true])
    }

    /// `startDeletion` tells a deletion already being recorded (`inProgress`: it may
    /// still fail and keep the endpoint) from a missing endpoint; once that deletion
    /// failed, a new one starts, and once one was recorded the endpoint is missing.
    @Test func startDeletion_TellsInProgressFromMissing() throws {
        let pending = Locked<[@Sendable (Bool) -> Void]>([])
        let r = CallbackEndpoints { _, recorded in
            if let recorded { pending.withLock { $0.append(recorded) } }
        }
        let e = r.register(try target(), owner: "shop")  // no `recorded`: nothing pending
        #expect(r.startDeletion(e.id, owner: "other") == .missing)
        #expect(r.startDeletion(e.id, owner: "shop") == .started)
        #expect(r.startDeletion(e.id, owner: "shop") { _ in Issue.record("not started, no callback") } == .inProgress)
        pending.withLock { $0.removeFirst() }(false)
        #expect(r.find(e.id, owner: "shop") != nil)
        #expect(r.startDeletion(e.id, owner: "shop") == .started)
        pending.withLock { $0.removeFirst() }(true)
        #expect(r.startDeletion(e.id, owner: "shop") == .missing)
    }

    /// With a hook, a deletion takes effect once it is recorded: until then the
    /// endpoint is still found and listed, a second deletion is refused (false, its
    /// callback never called) and a `setDisabled` is held back (written after a delete
    /// it would bring the endpoint back at replay). A deletion that is not recorded
    /// leaves the endpoint in its place in the list and writes the held-back change.
    /// A hook that reports before returning (a closed journal) does not deadlock.
    @Test func delete_TakesEffectOnceRecorded_FailureKeepsEndpointInPlace() throws {
        let pending = Locked<[@Sendable (Bool) -> Void]>([])
        let changes = Locked<[String]>([])
        let r = CallbackEndpoints { c, recorded in
            switch c {
            case .registered: changes.withLock { $0.append("registered") }
            case .updated(let e): changes.withLock { $0.append("disabled=\(e.disabled)") }
            case .deleted: changes.withLock { $0.append("deleted") }
            }
            if let recorded { pending.withLock { $0.append(recorded) } }
        }
        let a = r.register(try target(), owner: "shop")
        let b = r.register(try target(), owner: "shop")
        let outcome = Locked<[Bool]>([])
        #expect(r.delete(a.id, owner: "shop") { ok in outcome.withLock { $0.append(ok) } })
        #expect(r.find(a.id, owner: "shop") != nil)
        #expect(r.list(owner: "shop").map(\.id) == [a.id, b.id])
        #expect(!r.delete(a.id, owner: "shop") { _ in Issue.record("a refused deletion gets no callback") })
        #expect(r.setDisabled(a.id, true, reason: "gone")?.disabled == true)
        #expect(changes.withLock { $0 } == ["registered", "registered", "deleted"])

        pending.withLock { $0.removeFirst() }(false)
        #expect(outcome.withLock { $0 } == [false])
        #expect(r.list(owner: "shop").map(\.id) == [a.id, b.id])
        #expect(r.endpoint(id: a.id)?.disabledReason == "gone")
        #expect(changes.withLock { $0 } == ["registered", "registered", "deleted", "disabled=true"])

        #expect(r.delete(a.id, owner: "shop") { ok in outcome.withLock { $0.append(ok) } })
        pending.withLock { $0.removeFirst() }(true)
        #expect(outcome.withLock { $0 } == [false, true])
        #expect(r.find(a.id, owner: "shop") == nil)
        #expect(r.list(owner: "shop").map(\.id) == [b.id])
        #expect(!r.delete(a.id, owner: "shop"))

        for ok in [false, true] {
            let at = CallbackEndpoints { _, recorded in recorded?(ok) }
            let e = at.register(try target(), owner: "shop")
            let got = Locked<[Bool]>([])
            #expect(at.delete(e.id, owner: "shop") { v in got.withLock { $0.append(v) } })
            #expect(got.withLock { $0 } == [ok])
            #expect((at.find(e.id, owner: "shop") == nil) == ok)
        }
    }

    /// The JSON shows the secret only when asked to.
    @Test func json_IncludesSecretOnlyWhenAsked() throws {
        let e = CallbackEndpoints().register(try target(), owner: "shop")
        #expect(e.json(includingSecret: true)["secret"]?.stringValue == e.secret)
        #expect(e.json(includingSecret: false)["secret"] == nil)
        #expect(e.json(includingSecret: false)["id"]?.stringValue == e.id)
        #expect(e.json(includingSecret: false)["created_at"]?.stringValue == rfc3339Timestamp(e.createdAt))
    }

    /// Only `cb_` plus 32 lowercase hex digits is a well-formed id.
    @Test func isWellFormedID_ChecksShape() {
        #expect(CallbackEndpoints.isWellFormedID("cb_" + String(repeating: "0a", count: 16)))
        #expect(!CallbackEndpoints.isWellFormedID("cb_" + String(repeating: "0A", count: 16)))
        #expect(!CallbackEndpoints.isWellFormedID("cb_123"))
        #expect(!CallbackEndpoints.isWellFormedID("../../etc"))
    }
}

