import Foundation
import Journal
import Testing

struct JournalBasicsTests {
    /// Records appended durably are replayed identically after close and reopen.
    @Test func reopen_ReplaysSameState_AfterClose() async throws {
        let dir = TempDirectory()
        var expected = ExpectedState()
        do {
            let journal = try Journal.open(directory: dir.path, options: testOptions())
            let batches: [[JournalRecord]] = [
                [.put("job/1", kind: 1, payload: payload(1)), .append("job/1", kind: 2, payload: payload(2))],
                [.put("job/2", kind: 1, payload: Array("héllo".utf8))],
                [.append("job/1", kind: 3, payload: [])],
            ]
            for batch in batches {
                try await journal.append(batch)
                expected.apply(batch)
            }
            #expect(try journal.replay() == expected.keys)
            journal.close()
        }
        let reopened = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try reopened.replay() == expected.keys)
        #expect(reopened.openReport.droppedBytes == 0)
        #expect(reopened.openReport.problems.isEmpty)
        #expect(reopened.openReport.liveRecords == 4)
        #expect(reopened.openReport.liveKeys == 2)
    }

    /// `put` replaces a key's records, `append` adds to them (or starts them), `delete` drops the key.
    @Test func operations_FollowPutAppendDeleteSemantics_BeforeAndAfterReopen() async throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        try await journal.append([.put("a", kind: 1, payload: [1])])
        try await journal.append([.append("a", kind: 2, payload: [2])])
        try await journal.append([.put("a", kind: 3, payload: [3])])       // replaces [1, 2]
        try await journal.append([.append("b", kind: 4, payload: [4])])    // starts b
        try await journal.append([.put("c", payload: [5]), .delete("c")])  // c gone
        try await journal.append([.delete("never-existed")])
        try await journal.append([.put("d", payload: [6])])
        try await journal.append([.delete("d")])
        try await journal.append([.append("d", payload: [7])])             // d restarts after delete
        let want: [String: [JournalRecord]] = [
            "a": [.put("a", kind: 3, payload: [3])],
            "b": [.append("b", kind: 4, payload: [4])],
            "d": [.append("d", payload: [7])],
        ]
        #expect(try journal.replay() == want)
        #expect(journal.stats.liveKeys == 3)
        #expect(journal.stats.liveRecords == 3)
        journal.close()
        #expect(try Journal.open(directory: dir.path, options: testOptions()).replay() == want)
    }

    /// `forEachLiveRecord` yields live records across keys in the order they were appended.
    @Test func forEachLiveRecord_YieldsAppendOrder_AcrossKeys() async throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        try await journal.append([.put("z", payload: [1])])
        try await journal.append([.put("a", payload: [2])])
        try await journal.append([.append("z", payload: [3])])
        try await journal.append([.put("m", payload: [4]), .put("a", payload: [5])])
        var seen: [[UInt8]] = []
        try journal.forEachLiveRecord { seen.append($0.payload) }
        #expect(seen == [[1], [3], [4], [5]])
    }

    /// A second open of a locked directory fails with `.locked` naming this process; it opens again after close.
    @Test func open_FailsWithLocked_WhenDirectoryIsAlreadyOpen() throws {
        let dir = TempDirectory()
        let first = try Journal.open(directory: dir.path, options: testOptions())
        #expect {
            _ = try Journal.open(directory: dir.path, options: testOptions())
        } throws: { error in
            guard case let .locked(path, pid) = error as? JournalError else { return false }
            return path == dir.file("LOCK") && pid == getpid()
        }
        first.close()
        let second = try Journal.open(directory: dir.path, options: testOptions())
        second.close()
    }

    /// Open fails with `.locked` while another process (flock(1)) holds the directory's LOCK file.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/flock")))
    func open_FailsWithLocked_WhenAnotherProcessHoldsTheLock() throws {
        let dir = TempDirectory()
        try FileManager.default.createDirectory(atPath: dir.path, withIntermediateDirectories: true)
        let holder = Process()
        // The shell takes the lock on fd 9 (waiting while a probe below holds it), then
        // becomes `sleep` with fd 9 still open, so terminating it releases the lock.
        holder.executableURL = URL(fileURLWithPath: "/bin/sh")
        holder.arguments = ["-c", "exec 9>>\"$0\" && flock 9 && exec sleep 30", dir.file("LOCK")]
        try holder.run()
        defer { holder.terminate(); holder.waitUntilExit() }
        var sawLocked = false
        for _ in 0..<200 where !sawLocked {
            do {
                let journal = try Journal.open(directory: dir.path, options: testOptions())
                journal.close()  // flock(1) had not started yet; try again
                usleep(10_000)
            } catch JournalError.locked {
                sawLocked = true
            }
        }
        #expect(sawLocked)
    }

    /// The active segment rolls over at `segmentBytes`, and reopening replays records from every segment.
    @Test func segments_RollOver_WhenSegmentBytesReached() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 1024)
        var expected = ExpectedState()
        do {
            let journal = try Journal.open(directory: dir.path, options: options)
            for i in 0..<100 {
                let batch: [JournalRecord] = [.put("key/\(i)", payload: payload(i, count: 100))]
                try await journal.append(batch)
                expected.apply(batch)
            }
            #expect(journal.stats.segmentCount >= 9)
            journal.close()
        }
        #expect(dir.logFiles().count >= 9)
        #expect(dir.logFiles().allSatisfy { dir.size($0) <= 1024 + 200 })
        let reopened = try Journal.open(directory: dir.path, options: options)
        #expect(try reopened.replay() == expected.keys)
    }

    /// Appends queued faster than they are written reach the writer as large batches;
    /// a segment still takes appends only while it is below `segmentBytes`, so none
    /// outgrows `segmentBytes + maxRecordBytes`, the bound a file-size limit is sized
    /// against (`segmentBytes(fittingFileSizeLimit:)`). Everything replays.
    @Test func segments_StayWithinSegmentPlusOneRecord_WhenBatchesAreLarge() async throws {
        let dir = TempDirectory()
        var options = testOptions(segmentBytes: 2048)
        options.maxRecordBytes = 1024
        var expected = ExpectedState()
        do {
            let journal = try Journal.open(directory: dir.path, options: options)
            let done = LockedBox(0)
            for i in 0..<400 {
                let batch: [JournalRecord] = [.put("key/\(i)", payload: payload(i, count: 300 + i % 400))]
                expected.apply(batch)
                journal.append(batch, durable: i % 7 == 0) { result in
                    if case .success = result { done.withLock { $0 += 1 } }
                }
            }
            try journal.sync()
            #expect(done.withLock { $0 } == 400)
            journal.close()
        }
        let sizes = dir.logFiles().map { dir.size($0) }
        #expect(sizes.count >= 40)
        #expect(sizes.allSatisfy { $0 <= 2048 + 1024 }, "\(sizes)")
        let reopened = try Journal.open(directory: dir.path, options: options)
        #expect(try reopened.replay() == expected.keys)

        #expect(options.segmentBytes(fittingFileSizeLimit: 1 << 20) == 2048)
        #expect(options.segmentBytes(fittingFileSizeLimit: 2048 + 1024) == 2048)
        #expect(options.segmentBytes(fittingFileSizeLimit: 2047 + 1024) == 2047)
        #expect(options.smallestFileSizeLimit == 16 + 1024 + 1)
        #expect(options.segmentBytes(fittingFileSizeLimit: options.smallestFileSizeLimit) == 17)
        #expect(options.segmentBytes(fittingFileSizeLimit: options.smallestFileSizeLimit - 1) == nil)
    }

    /// Non-durable appends complete without any fsync; `sync()` then makes them durable with one.
    @Test func append_DoesNotSync_WhenNotDurable() async throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        for i in 0..<20 { try await journal.append([.put("k\(i)", payload: [UInt8(i)])], durable: false) }
        #expect(journal.stats.syncs == 0)
        #expect(try journal.replay().count == 20)
        try journal.sync()
        #expect(journal.stats.syncs == 1)
    }

    /// A key over 65,535 bytes or a record over `maxRecordBytes` is rejected and nothing of its append is written.
    @Test func append_RejectsWholeAppend_WhenARecordIsTooLarge() async throws {
        let dir = TempDirectory()
        var options = testOptions()
        options.maxRecordBytes = 1000
        let journal = try Journal.open(directory: dir.path, options: options)
        await #expect(throws: JournalError.self) {
            try await journal.append([.put("ok", payload: [1]), .put("big", payload: payload(0, count: 2000))])
        }
        await #expect(throws: JournalError.self) {
            try await journal.append([.put(String(repeating: "k", count: 70_000))])
        }
        #expect(journal.stats.appendedRecords == 0)
        try await journal.append([.put("after", payload: [2])])
        #expect(try journal.replay() == ["after": [.put("after", payload: [2])]])
    }

    /// After `close()`, appends complete with `.closed` and blocking calls throw `.closed`.
    @Test func append_FailsWithClosed_AfterClose() async throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        journal.close()
        journal.close()  // idempotent
        let result = journal.appendAndWait([.put("k")])
        #expect(result.failure == .closed)
        #expect(throws: JournalError.closed) { try journal.sync() }
        #expect(throws: JournalError.closed) { _ = try journal.replay() }
    }

    /// Close writes and syncs non-durable appends still pending, so a reopen sees them.
    @Test func close_FlushesPendingAppends_BeforeReleasingTheLock() throws {
        let dir = TempDirectory()
        do {
            let journal = try Journal.open(directory: dir.path, options: testOptions())
            for i in 0..<500 { journal.append([.put("k\(i)", payload: payload(i))], durable: false) { _ in } }
            journal.close()
        }
        #expect(try Journal.open(directory: dir.path, options: testOptions()).replay().count == 500)
    }

    /// Opening creates the directory and its missing parents.
    @Test func open_CreatesDirectory_WhenMissing() throws {
        let dir = TempDirectory()
        let nested = dir.path + "/a/b/data"
        let journal = try Journal.open(directory: nested, options: testOptions())
        #expect(FileManager.default.fileExists(atPath: nested + "/LOCK"))
        #expect(FileManager.default.fileExists(atPath: nested + "/segment-000001.log"))
        journal.close()
    }

    /// A data directory deleted while the journal is open (its files now unlinked, so
    /// nothing appended would be found by the next open) stops the journal: durable
    /// appends fail with `.poisoned` naming the deleted segment, every later append
    /// fails too, and `stats.poisoned` says why.
    @Test func removedDirectory_StopsTheJournal_InsteadOfWritingIntoTheVoid() throws {
        let dir = TempDirectory()
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        defer { journal.close() }
        #expect(journal.appendAndWait([.put("before")]).failure == nil)
        #expect(journal.stats.poisoned == nil)
        try FileManager.default.removeItem(atPath: dir.path)

        guard case let .poisoned(reason)? = journal.appendAndWait([.put("after")]).failure else {
            Issue.record("a durable append into a deleted directory must fail")
            return
        }
        #expect(reason.contains("segment-000001.log was deleted"), "\(reason)")
        #expect(journal.stats.poisoned != nil)
        // Every later write fails too, durable or not.
        #expect(journal.appendAndWait([.put("later")], durable: false).failure == journal.stats.poisoned)
    }

    /// The data directory's path leading to another directory (moved away and a new one
    /// made in its place: the files still exist, but not where the next open looks)
    /// stops the journal too.
    @Test func replacedDirectory_StopsTheJournal() throws {
        let dir = TempDirectory()
        let data = dir.path + "/data"
        let journal = try Journal.open(directory: data, options: testOptions())
        defer { journal.close() }
        #expect(journal.appendAndWait([.put("before")]).failure == nil)
        try FileManager.default.moveItem(atPath: data, toPath: dir.path + "/moved")
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: false)

        guard case let .poisoned(reason)? = journal.appendAndWait([.put("after")]).failure else {
            Issue.record("a durable append after the directory was replaced must fail")
            return
        }
        #expect(reason.contains("replaced"), "\(reason)")
        // What was acknowledged before is intact where it went ("after" is there too:
        // written and synced before the check found the directory gone, but never
        // acknowledged).
        journal.close()
        let moved = try Journal.open(directory: dir.path + "/moved", options: testOptions()).replay().keys.sorted()
        #expect(moved.contains("before"), "\(moved)")
    }
    /// Rollovers that fail after creating the next segment (here its header write hits
    /// the file-size limit, as on a full disk) leave no file behind and use up no
    /// number: 50 failed appends leave one segment, and the next rollover once writes
    /// succeed again makes `segment-000002.log`; nothing acknowledged is lost. In a
    /// child process: the limit applies to the whole process.
    @Test func failedRollovers_LeaveNoSegmentFiles_AndKeepTheNumber() async {
        await #expect(processExitsWith: .success) {
            signal(SIGXFSZ, SIG_IGN)
            let dir = TempDirectory()
            let options = testOptions(segmentBytes: 1024)
            guard let journal = try? Journal.open(directory: dir.path, options: options) else { exit(10) }
            // Nine records fill the first segment past 1024 bytes; no rollover yet.
            for i in 0..<9 where journal.appendAndWait([.put("key/\(i)", payload: payload(i, count: 100))]).failure != nil { exit(11) }
            guard dir.logFiles() == ["segment-000001.log"] else { exit(12) }
            var limit = rlimit()
            getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit)
            let unlimited = limit
            limit.rlim_cur = 8
            setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit)
            for i in 0..<50 where journal.appendAndWait([.put("refused/\(i)", payload: payload(i))]).failure == nil { exit(13) }
            guard dir.logFiles() == ["segment-000001.log"] else { exit(14) }
            limit = unlimited
            setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit)
            guard journal.appendAndWait([.put("after", payload: payload(99))]).failure == nil else { exit(15) }
            guard dir.logFiles() == ["segment-000001.log", "segment-000002.log"] else { exit(16) }
            journal.close()
            guard let reopened = try? Journal.open(directory: dir.path, options: options),
                  let keys = try? reopened.replay().keys else { exit(17) }
            guard Set(keys) == Set((0..<9).map { "key/\($0)" } + ["after"]) else { exit(18) }
            reopened.close()
            try? FileManager.default.removeItem(atPath: dir.path)
            exit(0)
        }
    }
}
