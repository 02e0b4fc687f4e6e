@testable import Journal
import Foundation
import Testing

struct RecoveryTests {
    /// Writes `count` single-record appends `k0…` to a fresh journal and closes it; returns the records.
    private func seed(_ dir: TempDirectory, count: Int, options: JournalOptions = testOptions()) async throws -> [JournalRecord] {
        let journal = try Journal.open(directory: dir.path, options: options)
        var records: [JournalRecord] = []
        for i in 0..<count {
            let record = JournalRecord.put("k\(i)", kind: UInt16(i), payload: payload(i, count: 40))
            try await journal.append([record])
            records.append(record)
        }
        journal.close()
        return records
    }

    private func state(_ records: some Sequence<JournalRecord>) -> [String: [JournalRecord]] {
        var expected = ExpectedState()
        expected.apply(Array(records))
        return expected.keys
    }

    /// A last record cut short by a few bytes is dropped, everything before it kept, and the cut bytes reported.
    @Test func open_DropsTornLastRecord_AndReportsDroppedBytes() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 5)
        let segment = "segment-000001.log"
        let fullSize = dir.size(segment)
        dir.truncate(segment, by: 3)

        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records.prefix(4)))
        #expect(journal.openReport.droppedBytes == frameBytes(records[4]) - 3)
        #expect(journal.openReport.problems.count == 1)
        #expect(dir.size(segment) == fullSize - frameBytes(records[4]))
        // The journal goes on appending after the cut.
        try await journal.append([.put("after", payload: [9])])
        journal.close()
        let reopened = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try reopened.replay().count == 5)
        #expect(reopened.openReport.droppedBytes == 0)
    }

    /// A flipped byte inside the last record fails its checksum; that record is cut, the rest kept.
    @Test func open_CutsLastRecord_WhenItsChecksumFails() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 5)
        let segment = "segment-000001.log"
        dir.flipByte(segment, at: dir.size(segment) - 2)

        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records.prefix(4)))
        #expect(journal.openReport.droppedBytes == frameBytes(records[4]))
        #expect(journal.openReport.problems.first?.contains("bad checksum") == true)
    }

    /// A flipped byte in a middle record stops replay there: later records are dropped, nothing crashes.
    @Test func open_StopsAtCorruptMiddleRecord_WithoutCrashing() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 6)
        let segment = "segment-000001.log"
        let third = fileHeaderBytes + frameBytes(records[0]) + frameBytes(records[1])
        dir.flipByte(segment, at: third + 20)

        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records.prefix(2)))
        #expect(journal.openReport.droppedBytes == records[2...].map(frameBytes).reduce(0, +))
    }

    /// The bytes cut after a corrupt middle record are kept aside in a `.cut-` file, byte for byte.
    @Test func open_KeepsCutBytesAside_WhenAMiddleRecordIsCorrupt() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 6)
        let segment = "segment-000001.log"
        let third = fileHeaderBytes + frameBytes(records[0]) + frameBytes(records[1])
        dir.flipByte(segment, at: third + 20)
        let original = try #require(FileManager.default.contents(atPath: dir.path + "/" + segment))

        let journal = try Journal.open(directory: dir.path, options: testOptions())
        let aside = try #require(journal.openReport.discardedFiles.first { $0.hasPrefix(segment + ".cut-") })
        let kept = try #require(FileManager.default.contents(atPath: dir.path + "/" + aside))
        #expect(kept == original[third...])
        #expect(try journal.replay() == state(records.prefix(2)))
    }

    /// A flipped length field is caught by the checksum (it covers the length), not followed into garbage.
    @Test func open_StopsAtRecord_WhenItsLengthFieldIsCorrupt() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 4)
        let second = fileHeaderBytes + frameBytes(records[0])
        dir.flipByte("segment-000001.log", at: second)  // low byte of the length
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records.prefix(1)))
    }

    /// Corruption in a non-last segment cuts it there and moves every later segment aside, unread.
    @Test func open_MovesLaterSegmentsAside_WhenAnEarlierSegmentIsCorrupt() async throws {
        let dir = TempDirectory()
        let options = testOptions(segmentBytes: 256)
        let records = try await seed(dir, count: 20, options: options)
        let files = dir.logFiles()
        #expect(files.count >= 4)
        // Each 53-byte record: 16 + 5 records fit before 256; corrupt the 2nd record of segment 1.
        dir.flipByte(files[0], at: fileHeaderBytes + frameBytes(records[0]) + 10)

        let journal = try Journal.open(directory: dir.path, options: options)
        #expect(try journal.replay() == state(records.prefix(1)))
        // Every later segment moved aside, plus the cut tail of the first kept in a `.cut-` file.
        #expect(journal.openReport.discardedFiles.filter { $0.contains(".discarded-") }.count == files.count - 1)
        #expect(journal.openReport.discardedFiles.filter { $0.hasPrefix(files[0] + ".cut-") }.count == 1)
        #expect(dir.logFiles() == [files[0]])
        // New appends land in a fresh segment; a reopen does not bring the discarded ones back.
        try await journal.append([.put("new", payload: [1])])
        journal.close()
        let reopened = try Journal.open(directory: dir.path, options: options)
        #expect(try reopened.replay().keys.sorted() == ["k0", "new"])
        #expect(reopened.openReport.droppedBytes == 0)
    }

    /// The records of one append are all-or-nothing: a torn group is cut whole, earlier appends kept.
    @Test func open_DropsWholeAppendGroup_WhenItsTailIsTorn() async throws {
        let dir = TempDirectory()
        do {
            let journal = try Journal.open(directory: dir.path, options: testOptions())
            try await journal.append([.put("before", payload: [0])])
            try await journal.append([.put("g1", payload: payload(1)), .put("g2", payload: payload(2)),
                                      .put("g3", payload: payload(3))])
            journal.close()
        }
        dir.truncate("segment-000001.log", by: 5)
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay().keys.sorted() == ["before"])
        let group = ["g1", "g2", "g3"].map { frameBytes(.put($0, payload: payload(1))) }.reduce(0, +)
        #expect(journal.openReport.droppedBytes == group - 5)
        #expect(journal.openReport.problems.first?.contains("append group") == true)
    }

    /// A zero-filled tail (what some file systems leave after a crash) is cut; every record is kept.
    @Test func open_CutsZeroFilledTail() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 3)
        let segment = "segment-000001.log"
        dir.write(segment, dir.read(segment) + [UInt8](repeating: 0, count: 4096))
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records))
        #expect(journal.openReport.droppedBytes == 4096)
    }

    /// An empty segment (a crash right after creating it) is removed without dropping anything.
    @Test func open_RemovesEmptySegment_WithoutDroppingRecords() async throws {
        let dir = TempDirectory()
        let records = try await seed(dir, count: 3)
        dir.write("segment-000002.log", [])
        let journal = try Journal.open(directory: dir.path, options: testOptions())
        #expect(try journal.replay() == state(records))
        #expect(journal.openReport.droppedBytes == 0)
        #expect(journal.openReport.removedFiles == ["segment-000002.log"])
    }

    /// CRC-32C matches the standard check value for "123456789".
    @Test func crc32c_MatchesCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let long = payload(7, count: 1001)
        let whole = CRC32C.checksum(long)
        let pieces = long.withUnsafeBytes { CRC32C.update(CRC32C.update(0, .init(rebasing: $0[..<333])), .init(rebasing: $0[333...])) }
        #expect(whole == pieces)
    }
}
