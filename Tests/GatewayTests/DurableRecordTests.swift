import Foundation
import Crypto
@testable import Flows
import JSON
import Jobs
import Journal
import Testing
import TestSupport
import Upstream
@testable import Gateway

/// The job records are written straight into bytes; they must be exactly what
/// building the same `JSONObject` and serializing it gives (the format recovery reads).
struct DurableRecordTests {
    static func pairs(_ p: [(String, String)]) -> JSON { .array(p.map { .array([.string($0.0), .string($0.1)]) }) }

    /// The tree-built reference encoding of a job record.
    static func referenceJob(route: String, owner: String, createdAt: Int64, traceID: String, input: FlowInput,
                             callback: DeliveryTarget?, idempotency: (IdempotencyScope, String)?) -> [UInt8] {
        var o = JSONObject()
        o["route"] = .string(route)
        o["owner"] = .string(owner)
        o["created_at"] = .int(createdAt)
        o["trace_id"] = .string(traceID)
        var i = JSONObject()
        i["method"] = .string(input.method)
        i["path"] = .string(input.path)
        i["params"] = pairs(input.pathParams)
        if let q = input.query { i["query"] = .string(q) }
        i["headers"] = pairs(input.headers.filter { $0.0.lowercased() != "authorization" })
        i["body"] = input.body ?? .null
        i["has_body"] = .bool(input.body != nil)
        o["input"] = .object(i)
        if let callback { o["callback"] = DurableState.target(callback) }
        if let (scope, key) = idempotency {
            o["idempotency"] = .object(["caller": .string(scope.caller), "route": .string(scope.route), "key": .string(key)])
        }
        return JSON.object(o).serialized
    }

    static func referenceStep(index: Int, step: String = "s", outcome: StepOutcome) -> [UInt8] {
        var o = JSONObject()
        o["index"] = .int(Int64(index))
        o["step"] = .string(step)
        o["state"] = .string(outcome.state.rawValue)
        if let s = outcome.status { o["status"] = .int(Int64(s)) }
        o["headers"] = pairs(outcome.headers)
        o["body"] = outcome.body
        o["attempts"] = .int(Int64(outcome.attempts))
        if let k = outcome.errorKind { o["error"] = .string(k.rawValue) }
        if let m = outcome.message { o["message"] = .string(m) }
        return JSON.object(o).serialized
    }

    @Test func jobRecordMatchesTreeEncoding() {
        let inputs = [
            FlowInput(method: "GET", path: "/accept"),
            FlowInput(method: "POST", path: "/checkout/42", pathParams: [("id", "42"), ("q\"x", "a\\b\n")], query: "a=1&b=é",
                      headers: [("Host", "x"), ("AUTHORIZATION", "Bearer s"), ("Authorization", "t"), ("X-Ctl", "\u{1}\t")],
                      body: .object(["amount": .int(1999), "card": .string("tok_visa"), "n": .null])),
            FlowInput(method: "PUT", path: "/p", headers: [("authorizatioN", "x")], body: .null),
        ]
        let callbacks: [DeliveryTarget?] = [nil, .endpoint(id: "ep_1"), .url("https://h.example/x?\"y\"")]
        let idem: [(IdempotencyScope, String)?] = [nil, (IdempotencyScope(caller: "shop", route: "r\"1"), "key-✓")]
        for input in inputs {
            for cb in callbacks {
                for im in idem {
                    let rec = DurableState.jobAccepted(id: "abc", route: "r", owner: "o\"wner", createdAt: 1_764_000_000_123,
                                                       traceID: "0af7651916cd43dd8448eb211c80319c", input: input, callback: cb, idempotency: im)
                    let ref = Self.referenceJob(route: "r", owner: "o\"wner", createdAt: 1_764_000_000_123,
                                                traceID: "0af7651916cd43dd8448eb211c80319c", input: input, callback: cb, idempotency: im)
                    #expect(String(decoding: rec.payload, as: UTF8.self) == String(decoding: ref, as: UTF8.self))
                    #expect(rec.key == "job/abc")
                }
            }
        }
    }

    @Test func stepAndResultRecordsMatchTreeEncoding() {
        var a = StepOutcome()
        a.state = .succeeded
        a.status = 200
        a.headers = [("Content-Type", "application/json"), ("X-\"q\"", "v\n")]
        a.body = .object(["id": .string("ord"), "items": .array([.int(1), .double(2.5)])])
        a.attempts = 1
        var b = StepOutcome()
        b.state = .failed
        b.errorKind = .timeout
        b.message = "no answer within 5s \"x\""
        b.attempts = 3
        var c = StepOutcome()
        c.state = .skipped
        for (i, o) in [a, b, c].enumerated() {
            let rec = DurableState.stepFinished(job: "j", index: i, step: "step-\(i)", outcome: o)
            #expect(rec.payload == Self.referenceStep(index: i, step: "step-\(i)", outcome: o))
            #expect(rec.key == "job/j" && rec.operation == .append)
        }
        let resp = FlowResponse(status: 502, headers: [("Content-Type", "application/problem+json"), ("A", "\"")], body: Array("{\"x\":1}".utf8))
        let rec = DurableState.jobFinished(job: "j", response: resp, finishedAt: 1_764_400_000_123)
        let ref = JSON.object(["finished_at": .int(1_764_400_000_123), "status": .int(502), "headers": Self.pairs(resp.headers),
                               "body": .string(Crypto.base64(resp.body))]).serialized
        #expect(rec.payload == ref)
    }
}

/// A step record of an upstream response is written from the response's bytes when
/// they are canonical JSON and a plain header block: the same record as from the
/// parsed body and header pairs, and the same as before for any other response.
struct UpstreamStepRecordTests {
    static let headerBlocks = [
        "Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 223\r\nX-Q: \"a\\b\"\t \r\n",  // plain
        "",  // plain, no fields
        "X-Name: caf\u{E9}\r\nA: 1\r\n folded\r\nB: a\rb\u{0}\r\n",  // not plain: parsed
    ]
    static let bodies = [
        #"{"id":"ord_7f3a9c21","items":[{"sku":"SKU-1001","qty":3}],"s":"q\"\\/\n"}"#,  // canonical
        #"[1,-2,"x",null,true,false,{}]"#,  // canonical
        #"{"a": 1, "b": [1.50, 2e3]}"#,  // JSON, not canonical: parsed and re-serialized
        "not json \"é\u{1}",  // a string
        "",  // no body
    ]

    @Test func upstreamStepRecordMatchesTreeEncoding() {
        for header in Self.headerBlocks {
            for body in Self.bodies {
                let response = UpstreamResponse(status: 201, headerBlock: UpstreamHeaderBlock(raw: Array(header.utf8)), body: Array(body.utf8))
                var outcome = StepOutcome()
                outcome.setUpstreamResponse(response, succeededAt: nil)
                outcome.state = .succeeded
                outcome.attempts = 2
                // The record first: written before anything parses the block or the body.
                let rec = DurableState.stepFinished(job: "j", index: 1, step: "s", outcome: outcome)
                let ref = DurableRecordTests.referenceStep(index: 1, outcome: outcome)
                #expect(String(decoding: rec.payload, as: UTF8.self) == String(decoding: ref, as: UTF8.self))
            }
        }
        // The cases above do take the unparsed paths.
        var outcome = StepOutcome()
        outcome.setUpstreamResponse(UpstreamResponse(status: 200, headerBlock: UpstreamHeaderBlock(raw: Array(Self.headerBlocks[0].utf8)),
                                                     body: Array(Self.bodies[0].utf8)), succeededAt: nil)
        #expect(outcome.serializedBodyIfCanonical == Array(Self.bodies[0].utf8))
        #expect(outcome.headerBlock?.forEachPlainField { _, _ in } == true)
    }
}

/// `DurableState.writeAheadLead`: how long before a wait budget ends a job record is
/// written, from the recent durable-write latencies.
struct WriteAheadLeadTests {
    /// Twice the high-water latency (5 ms until measured) plus 1 ms, between 2 and
    /// 50 ms; a spike is remembered over many fast samples (it decays by 1/256 per
    /// sample) instead of being forgotten after a few dozen.
    @Test func lead_FollowsTheLatencyHighWater_AndForgetsASpikeSlowly() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let journal = try Journal.open(directory: dir)
        defer { journal.close() }
        let durable = DurableState(journal: journal)
        #expect(durable.writeAheadLead == .milliseconds(11))  // no sample yet: 5 ms assumed
        durable.noteSyncLatency(10_000_000)  // a spike
        #expect(durable.writeAheadLead == .milliseconds(21))
        for _ in 0..<64 { durable.noteSyncLatency(1_000_000) }
        // 64 fast samples later the spike still counts for most of its size:
        // 10 ms × (255/256)^64 ≈ 7.8 ms.
        let afterFast = durable.writeAheadLead
        #expect(afterFast > .milliseconds(16) && afterFast < .milliseconds(17))
        for _ in 0..<4096 { durable.noteSyncLatency(1_000_000) }
        #expect(durable.writeAheadLead == .milliseconds(3))  // decayed to the latency seen now
        for _ in 0..<4096 { durable.noteSyncLatency(100_000) }
        #expect(durable.writeAheadLead == .milliseconds(2))  // the floor
        durable.noteSyncLatency(100_000_000)
        #expect(durable.writeAheadLead == .milliseconds(50))  // the ceiling
    }
}
