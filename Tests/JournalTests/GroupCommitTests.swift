import Foundation
import Journal
import Synchronization
import Testing

struct GroupCommitTests {
    /// 1000 durable appends fired from 8 threads all complete, replay in full, and share far fewer than 1000 fsyncs.
    @Test func durableAppends_ShareFsyncs_WhenConcurrent() throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        let succeeded = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
        let done = DispatchGroup()
        onThreads(8) { t in
            for i in 0..<125 {
                done.enter()
                journal.append([.put("t\(t)/\(i)", kind: 1, payload: payload(i, count: 100))], durable: true) { result in
                    switch result {
                    case .success: succeeded.add(1, ordering: .relaxed)
                    case .failure: failed.add(1, ordering: .relaxed)
                    }
                    done.leave()
                }
            }
        }
        done.wait()
        #expect(succeeded.load(ordering: .relaxed) == 1000)
        #expect(failed.load(ordering: .relaxed) == 0)
        let syncs = journal.stats.syncs
        print("journal group commit: 1000 concurrent durable appends from 8 threads took \(syncs) fsyncs")
        #expect(syncs >= 1)
        // Shared fsyncs: far fewer than one per append. Under ThreadSanitizer every
        // thread runs many times slower, so fewer appends overlap; only "fewer" holds.
        let sanitized = ProcessInfo.processInfo.environment["SWITCHBOARD_SANITIZER"] != nil
        #expect(syncs < (sanitized ? 1000 : 250))
        journal.close()

        let reopened = try Journal.open(directory: dir.path, options: testOptions())
        let state = try reopened.replay()
        #expect(state.count == 1000)
        #expect(state["t7/124"] == [.put("t7/124", kind: 1, payload: payload(124, count: 100))])
    }

    /// Closed-loop clients (each waits for its ack before the next append) still get batched into shared fsyncs.
    @Test func durableAppends_ShareFsyncs_WhenClientsWaitForEachAck() throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        onThreads(8) { t in
            for i in 0..<50 {
                _ = journal.appendAndWait([.put("t\(t)/\(i)", payload: payload(i))])
            }
        }
        #expect(try journal.replay().count == 400)
        #expect(journal.stats.syncs < 400)
    }

    /// `syncEveryRecord` pays one fsync per record, even for a multi-record append (the baseline mode).
    @Test func syncEveryRecord_SyncsEachRecord() async throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions(syncEveryRecord: true))
        for i in 0..<10 { try await journal.append([.put("a\(i)"), .put("b\(i)")]) }
        #expect(journal.stats.syncs == 20)
        #expect(try journal.replay().count == 20)
    }
}

/// Prints durable appends/s (not asserted): group commit vs. one fsync per record,
/// with closed-loop clients like concurrent requests waiting for their `202`.
@Suite(.serialized) struct ThroughputReport {
    private func measure(_ label: String, options: JournalOptions, clients: Int, seconds: Double) throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: options)
        let count = Atomic<Int>(0)
        let latencies = LockedBox<[Double]>([])
        let deadline = monotonicSeconds() + seconds
        let start = monotonicSeconds()
        onThreads(clients) { t in
            var i = 0
            var mine: [Double] = []
            while monotonicSeconds() < deadline {
                let begin = monotonicSeconds()
                if case .success = journal.appendAndWait([.put("job/\(t)/\(i)", kind: 1, payload: payload(i, count: 256))]) {
                    count.add(1, ordering: .relaxed)
                    mine.append(monotonicSeconds() - begin)
                }
                i += 1
            }
            latencies.withLock { $0 += mine }
        }
        let elapsed = monotonicSeconds() - start
        let n = count.load(ordering: .relaxed)
        let sorted = latencies.withLock { $0.sorted() }
        let p50 = sorted.isEmpty ? 0 : sorted[sorted.count / 2] * 1000
        let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, sorted.count * 99 / 100)] * 1000
        let syncs = journal.stats.syncs
        print(String(format: "journal throughput [%@] clients=%d: %.0f durable appends/s, %d appends, %d fsyncs (%.1f appends/fsync), p50 %.2f ms, p99 %.2f ms",
                     label, clients, Double(n) / elapsed, n, syncs, Double(n) / Double(max(syncs, 1)), p50, p99))
        journal.close()
    }

    /// Prints durable appends/s with group commit vs. fsync per record (1, 16 and 64 concurrent clients).
    @Test func throughput_GroupCommitVersusSyncEveryRecord_Printed() throws {
        for clients in [1, 16, 64] {
            try measure("group commit", options: testOptions(), clients: clients, seconds: 1.0)
            try measure("fsync per record", options: testOptions(syncEveryRecord: true), clients: clients, seconds: 1.0)
        }
    }
}
