import Dispatch
import EventLoop
import Foundation
@testable import Journal
import Routes
import Testing
import TestSupport
@testable import Gateway

/// A finished async job's callback survives a crash at any point: its delivery record
/// is journaled before the job's result, and a journal cut between the two resumes the
/// job (no step called again) and delivers the callback.
@Suite struct CallbackDurabilityTests {
    /// A flag shared with a server thread.
    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value: Bool
        init(_ value: Bool) { self.value = value }
        /// The value before this call; sets it to `new`.
        func exchange(_ new: Bool) -> Bool { lock.withLock { defer { value = new }; return value } }
        var get: Bool { lock.withLock { value } }
    }

    static func route(up: UInt16) -> String {
        routeJSON(["name": "order", "method": "POST", "path": "/order", "wait": "0s",
                   "steps": [["id": "pay", "request": ["method": "POST", "url": "http://127.0.0.1:\(up)/pay"], "timeout": "5s"]],
                   "response": ["status": 200, "body": ["paid": "{{steps.pay.body.ok}}"]]])
    }

    static func start(dir: String, data: String) throws -> Gateway {
        let table = try RouteLoader.load(directory: dir, environment: [:])
        var config = GatewayConfig()
        config.listen = SocketAddress(host: "127.0.0.1", port: 0)
        config.eventLoops = 2
        config.data = data
        config.logLevel = "error"
        config.callbackAllow = ["127.0.0.0/8"]
        Socket.ignoreSIGPIPE()
        let gateway = try Gateway(config: config, routes: table)
        try gateway.start()
        return gateway
    }

    /// The live records of the journal in `data`, in the order they were appended.
    static func records(_ data: String) throws -> [JournalRecord] {
        let journal = try Journal.open(directory: data)
        defer { journal.close() }
        var out: [JournalRecord] = []
        try journal.forEachLiveRecord { out.append($0) }
        return out
    }

    /// The records of the journal in `data` as written: one array per append (a group
    /// of frames chained by the "more" flag), oldest first, live or not.
    static func appendGroups(_ data: String) throws -> [[(key: String, kind: UInt16)]] {
        let names = try FileManager.default.contentsOfDirectory(atPath: data).filter { $0.hasPrefix("segment-") && $0.hasSuffix(".log") }.sorted()
        var groups: [[(key: String, kind: UInt16)]] = []
        var open: [(key: String, kind: UInt16)] = []
        for name in names {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(data)/\(name)")))
            var offset = Format.fileHeaderBytes
            while offset < bytes.count {
                guard case let .frame(f) = bytes.withUnsafeBytes({ Format.parse($0, at: offset, maxRecordBytes: .max) }) else { break }
                open.append((f.key, f.kind))
                if !f.more {
                    groups.append(open)
                    open = []
                }
                offset += f.length
            }
        }
        return groups
    }

    /// The delivery record comes before the result in the journal; a journal holding
    /// everything but the result (a crash between the two) restarts into the job
    /// finishing from its journaled step and its callback delivered.
    @Test func deliveryRecord_PrecedesTheJobResult_AndACrashBetweenThemLosesNothing() throws {
        let up = try ScriptedServer.answering()
        // The receiver never answers its first request (the delivery stays pending, its
        // record as enqueued), then answers 204.
        let first = Flag(true)
        let rx = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                if first.exchange(false) { continue }
                if !conn.write("HTTP/1.1 204 No Content\r\n\r\n") { return }
            }
        }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.route(up: up.port).write(toFile: "\(dir)/order.json", atomically: true, encoding: .utf8)

        // A job with a callback runs to its end; its first delivery attempt hangs.
        var jobID = ""
        do {
            let gateway = try Self.start(dir: dir, data: "\(dir)/data")
            defer { gateway.shutdown() }
            let accepted = try #require(RawConnection(port: gateway.port).request(
                "POST", "/order", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/cb")]))
            #expect(accepted.status == 202)
            jobID = try #require(accepted.object["job_id"] as? String)
            let job = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)?wait=10"))
            #expect(job.object["status"] as? String == "succeeded")
            #expect(eventually { rx.requests.count == 1 })
        }
        let records = try Self.records("\(dir)/data")
        let delivery = try #require(records.firstIndex { $0.key == "delivery/\(jobID)" })
        let result = try #require(records.firstIndex { $0.key == "job/\(jobID)" && $0.kind == RecordKind.jobFinished.rawValue })
        #expect(delivery < result, "the job's result was journaled before its callback's delivery record")
        // Both in one append: a write that fails (a full disk still takes a small record
        // after refusing a larger one) cannot keep the result and lose the delivery.
        let group = try Self.appendGroups("\(dir)/data").first { $0.contains { $0.key == "delivery/\(jobID)" } }
        #expect(group?.map(\.key) == ["delivery/\(jobID)", "job/\(jobID)"], "\(String(describing: group))")
        #expect(group?.last?.kind == RecordKind.jobFinished.rawValue)

        // A crash between the two: the same records without the result, in a fresh journal.
        let cut = "\(dir)/cut"
        do {
            let journal = try Journal.open(directory: cut)
            defer { journal.close() }
            let done = DispatchSemaphore(value: 0)
            let ok = Flag(false)
            journal.append(records.filter { !($0.key == "job/\(jobID)" && $0.kind == RecordKind.jobFinished.rawValue) }, durable: true) { r in
                if case .success = r { _ = ok.exchange(true) }
                done.signal()
            }
            done.wait()
            #expect(ok.get)
        }
        let gateway = try Self.start(dir: dir, data: cut)
        defer { gateway.shutdown() }
        let job = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)?wait=10"))
        #expect(job.object["status"] as? String == "succeeded", "\(job.text)")
        #expect(eventually { rx.requests.count == 2 }, "the pending callback was not delivered after the restart")
        #expect(up.requests.count == 1, "the journaled step was called again")
        #expect(rx.requests.allSatisfy { ($0.json as? [String: Any])?["job_id"] as? String == jobID })
    }
}
