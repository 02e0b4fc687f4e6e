import Foundation
import Journal
import Synchronization
import Testing

struct CompactionTests {
    /// Fills a journal with 40 keys rewritten 30 times each (mostly garbage), plus deleted keys; returns the model.
    private func churn(_ journal: Journal, rounds: Int = 30) async throws -> ExpectedState {
        var expected = ExpectedState()
        for round in 0..<rounds {
            for k in 0..<40 {
                let batch: [JournalRecord] = round % 10 == 0
                    ? [.put("job/\(k)", kind: 1, payload: payload(round * 100 + k, count: 200))]
                    : [.append("job/\(k)", kind: 2, payload: payload(round * 100 + k, count: 20)),
                       .put("idem/\(k)", kind: 3, payload: payload(round, count: 200))]
                try await journal.append(batch, durable: false)
                expected.apply(batch)
            }
            let gone: [JournalRecord] = [.put("gone/\(round)", payload: payload(round)), .delete("gone/\(round)")]
            try await journal.append(gone, durable: false)
            expected.apply(gone)
        }
        try journal.sync()
        return expected
    }

    /// `compactNow` keeps exactly the live state, shrinks the files to about the live bytes, and survives reopen.
    @Test func compactNow_KeepsLiveStateAndShrinksFiles() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 32 << 10)
        let journal = try Journal.open(directory: dir.path, options: options)
        let expected = try await churn(journal)
        let before = journal.stats
        #expect(before.totalBytes > 4 * before.liveBytes)

        try journal.compactNow()
        let after = journal.stats
        #expect(try journal.replay() == expected.keys)
        #expect(after.compactions == 1)
        #expect(after.liveBytes == before.liveBytes)
        #expect(after.totalBytes < before.totalBytes / 3)
        #expect(after.totalBytes <= after.liveBytes + 64)
        #expect(dir.logFiles().filter { $0.hasPrefix("compact-") }.count == 1)
        journal.close()

        let reopened = try Journal.open(directory: dir.path, options: options)
        #expect(try reopened.replay() == expected.keys)
        #expect(reopened.openReport.removedFiles.isEmpty)
    }

    /// Compacting repeatedly while another thread keeps appending loses no live key and no record order.
    @Test func compaction_KeepsEveryLiveKey_UnderConcurrentAppends() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 16 << 10)
        let journal = try Journal.open(directory: dir.path, options: options)
        let seeded = try await churn(journal, rounds: 10)
        let model = LockedBox(seeded)
        let stop = Atomic<Bool>(false)
        let finished = DispatchSemaphore(value: 0)
        let writer = Thread {
            var i = 0
            while !stop.load(ordering: .relaxed) || i < 300 {
                let k = i % 50
                let batch: [JournalRecord] = switch i % 4 {
                case 0: [.put("live/\(k)", kind: 1, payload: payload(i, count: 150))]
                case 1, 2: [.append("live/\(k)", kind: 2, payload: payload(i, count: 30))]
                default: [.delete("job/\(k % 40)"), .put("job/\(k % 40)", payload: payload(i))]
                }
                if case .success = journal.appendAndWait(batch, durable: i % 2 == 0) {
                    model.withLock { $0.apply(batch) }
                }
                i += 1
            }
            finished.signal()
        }
        writer.start()
        for _ in 0..<5 {
            try journal.compactNow()
            usleep(20_000)
        }
        stop.store(true, ordering: .relaxed)
        finished.wait()

        let expected = model.withLock { $0.keys }
        #expect(try journal.replay() == expected)
        #expect(journal.stats.compactions == 5)
        try journal.compactNow()
        #expect(journal.stats.totalBytes <= journal.stats.liveBytes + 64)
        journal.close()
        #expect(try Journal.open(directory: dir.path, options: options).replay() == expected)
    }

    /// With automatic compaction on, garbage past the thresholds is compacted in the background and state is kept.
    @Test func automaticCompaction_BoundsTotalBytes_WhenGarbageGrows() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 16 << 10, automaticCompaction: true, compactionMinBytes: 32 << 10)
        let journal = try Journal.open(directory: dir.path, options: options)
        var expected = ExpectedState()
        for round in 0..<300 {
            for k in 0..<10 {
                let batch: [JournalRecord] = [.put("k\(k)", payload: payload(round + k, count: 100))]
                try await journal.append(batch, durable: false)
                expected.apply(batch)
            }
        }
        try journal.sync()
        var waited = 0
        while journal.stats.compactions == 0 && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        let stats = journal.stats
        #expect(stats.compactions >= 1)
        #expect(stats.totalBytes < 200 << 10)  // ~370 KiB written in all
        #expect(try journal.replay() == expected.keys)
        journal.close()
        #expect(try Journal.open(directory: dir.path, options: options).replay() == expected.keys)
    }

    /// A crash that leaves a compaction's temporary file behind reopens with the old state; the file is deleted.
    @Test func open_DeletesCompactionTempFile_AfterCrashMidCompaction() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 16 << 10)
        let expected: ExpectedState
        do {
            let journal = try Journal.open(directory: dir.path, options: options)
            expected = try await churn(journal, rounds: 10)
            journal.close()
        }
        let filesBefore = dir.logFiles()
        let last = filesBefore.last!.dropFirst("segment-".count).prefix(6)
        dir.write("compact-\(last).log.tmp", payload(1, count: 5000))

        let journal = try Journal.open(directory: dir.path, options: options)
        #expect(try journal.replay() == expected.keys)
        #expect(journal.openReport.removedFiles == ["compact-\(last).log.tmp"])
        #expect(journal.openReport.droppedBytes == 0)
        #expect(!dir.names().contains { $0.hasSuffix(".tmp") })
        #expect(dir.logFiles() == filesBefore)
    }

    /// A crash after the compacted file was renamed in but before (or while) old segments were deleted
    /// reopens to the same state: the compacted file supersedes them, and deleted keys stay deleted.
    @Test(arguments: [false, true])
    func open_PrefersCompactedFile_WhenOldSegmentsSurvivedACrash(partiallyDeleted: Bool) async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 8 << 10)
        var expected: ExpectedState
        var oldSegments: [String: [UInt8]] = [:]
        do {
            let journal = try Journal.open(directory: dir.path, options: options)
            expected = try await churn(journal, rounds: 10)
            // A key put in an early segment and deleted later: a resurrection would show it.
            let deleted: [JournalRecord] = [.delete("job/3")]
            try await journal.append(deleted)
            expected.apply(deleted)
            for name in dir.logFiles() { oldSegments[name] = dir.read(name) }
            try journal.compactNow()
            let late: [JournalRecord] = [.append("job/5", kind: 9, payload: [42])]
            try await journal.append(late)
            expected.apply(late)
            journal.close()
        }
        #expect(oldSegments.count >= 3)
        // Put the compacted-away segments back, as if the crash came before their unlink.
        let restore = oldSegments.keys.sorted().filter { !dir.logFiles().contains($0) }
        #expect(!restore.isEmpty)
        for (i, name) in restore.enumerated() where !partiallyDeleted || i % 2 == 1 {
            dir.write(name, oldSegments[name]!)
        }

        let journal = try Journal.open(directory: dir.path, options: options)
        #expect(try journal.replay() == expected.keys)
        #expect(journal.openReport.droppedBytes == 0)
        #expect(!journal.openReport.removedFiles.isEmpty)
        #expect(dir.logFiles().allSatisfy { !restore.contains($0) })
    }
}
