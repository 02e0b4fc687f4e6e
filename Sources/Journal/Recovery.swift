import Glibc

/// A journal file with its current size (in bytes).
struct OpenFile {
    let file: JournalFile
    var size: Int
}

/// What `Recovery.run` hands to the writer.
struct Recovered {
    var files: [OpenFile]
    var index: LiveIndex
    /// Greater than every file number seen in the directory (including moved-aside files).
    var nextNumber: Int
    var report: JournalOpenReport
}

/// Start-up: clean the directory, scan every file, cut what is torn or corrupt.
///
/// Rules, in order:
/// 1. `*.tmp` files are an interrupted compaction's output: deleted.
/// 2. The compacted file with the highest number N replaces every segment numbered
///    ≤ N and every older compacted file (it was only renamed into place after it
///    was complete and synced); those are deleted. This is what makes a crash
///    between "compacted file renamed" and "old segments deleted" harmless.
/// 3. The remaining files are read in replay order (compacted file, then segments by
///    number), record by record, checking length, checksum, flags and key.
/// 4. At the first bad record (or unfinished append group) the file is cut back to
///    the last whole group, and every later file is renamed aside
///    (`*.discarded-<unix time>`): replaying past a hole could resurrect a key whose
///    delete was lost, so state ends at the hole, exactly as it would at a torn tail.
/// 5. Empty files and files holding only part of a header (a crash while creating a
///    segment) hold no records: deleted, scanning goes on.
enum Recovery {
    static func run(directory: String, options: JournalOptions) throws(JournalError) -> Recovered {
        var report = JournalOpenReport(droppedBytes: 0, problems: [], discardedFiles: [], removedFiles: [],
                                       filesRead: 0, liveRecords: 0, liveKeys: 0)
        var segments: [Int] = []
        var compacted: [Int] = []
        var maxSeen = 0
        var directoryChanged = false

        for name in try FileIO.listDirectory(directory) {
            let number = fileNumber(name)
            if let number { maxSeen = max(maxSeen, number) }
            if name.hasSuffix(".tmp") && number != nil {
                try FileIO.unlink(directory + "/" + name)
                report.removedFiles.append(name)
                directoryChanged = true
            } else if let number, name == Format.fileName(.segment, number) {
                segments.append(number)
            } else if let number, name == Format.fileName(.compacted, number) {
                compacted.append(number)
            }
        }

        var ordered: [(Format.FileType, Int)] = []
        if let newest = compacted.max() {
            for n in compacted where n < newest {
                try remove(Format.fileName(.compacted, n), directory, &report)
            }
            for n in segments where n <= newest {
                try remove(Format.fileName(.segment, n), directory, &report)
            }
            directoryChanged = directoryChanged || compacted.count > 1 || segments.contains { $0 <= newest }
            segments.removeAll { $0 <= newest }
            ordered.append((.compacted, newest))
        }
        ordered += segments.sorted().map { (.segment, $0) }

        var index = LiveIndex()
        var kept: [OpenFile] = []
        for (position, (type, number)) in ordered.enumerated() {
            let name = Format.fileName(type, number)
            let path = directory + "/" + name
            let file = JournalFile(type: type, number: number, path: path, fd: try FileIO.open(path, O_RDWR))
            let bytes = try FileIO.readAll(file.fd, path: path)
            report.filesRead += 1
            let scan = bytes.withUnsafeBytes { scanFile($0, file: file, options: options, into: &index) }

            if scan.problem == nil {
                kept.append(OpenFile(file: file, size: bytes.count))
                continue
            }
            if scan.headerOnlyPrefix {
                // Created but its header never fully reached the disk: no records were in it.
                try FileIO.unlink(path)
                report.removedFiles.append(name)
                directoryChanged = true
                continue
            }
            let problem = scan.problem ?? "unreadable"
            if scan.validEnd < Format.fileHeaderBytes {
                try discard(name, directory, size: bytes.count, &report)
                report.problems.append("\(name): \(problem); moved aside \(bytes.count) bytes")
            } else {
                // Keep the bytes being cut, so a corrupt record in the middle of a file
                // never destroys the valid records after it: an operator can inspect
                // `<segment>.cut-<unix time>` (the journal itself never reads it back).
                let asideName = "\(name).cut-\(time(nil))"
                let asidePath = directory + "/" + asideName
                let fd = Glibc.open(asidePath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
                if fd < 0 { throw JournalError.io(operation: "open", path: asidePath, errno: errno) }
                let wrote = bytes[scan.validEnd...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                if wrote != bytes.count - scan.validEnd {
                    let e = errno
                    Glibc.close(fd)
                    throw JournalError.io(operation: "write", path: asidePath, errno: e)
                }
                if options.fsync { _ = fsync(fd) }
                Glibc.close(fd)
                report.discardedFiles.append(asideName)
                try FileIO.truncate(file.fd, to: scan.validEnd, path: path)
                if options.fsync { try FileIO.fdatasync(file.fd, path: path) }
                let cut = bytes.count - scan.validEnd
                report.droppedBytes += cut
                report.problems.append("\(name): \(problem); cut \(cut) bytes")
                kept.append(OpenFile(file: file, size: scan.validEnd))
            }
            let later = ordered[(position + 1)...]
            if !later.isEmpty {
                for (laterType, laterNumber) in later {
                    let laterName = Format.fileName(laterType, laterNumber)
                    var st = stat()
                    let size = stat(directory + "/" + laterName, &st) == 0 ? Int(st.st_size) : 0
                    try discard(laterName, directory, size: size, &report)
                }
                report.problems.append("\(later.count) later file(s) moved aside")
            }
            directoryChanged = true
            break
        }
        if directoryChanged && options.fsync { try FileIO.syncDirectory(directory) }

        report.liveRecords = index.liveRecords
        report.liveKeys = index.keys.count
        return Recovered(files: kept, index: index, nextNumber: maxSeen + 1, report: report)
    }

    struct Scan {
        /// Offset just past the last whole, valid append group (0 when the header is bad).
        var validEnd: Int
        /// Why the file ends early; nil when every byte is part of a whole, valid group.
        var problem: String?
        /// The file is shorter than a header and what is there matches the expected header.
        var headerOnlyPrefix: Bool
    }

    /// Reads `bytes` (a whole file) and applies its complete append groups to `index`.
    static func scanFile(_ bytes: UnsafeRawBufferPointer, file: JournalFile, options: JournalOptions,
                         into index: inout LiveIndex) -> Scan {
        guard Format.checkFileHeader(bytes, file.type, file.number) else {
            let expected = Format.fileHeader(file.type, file.number)
            let prefix = bytes.count < Format.fileHeaderBytes && bytes.indices.allSatisfy { bytes[$0] == expected[$0] }
            return Scan(validEnd: 0, problem: "bad file header", headerOnlyPrefix: prefix)
        }
        var position = Format.fileHeaderBytes
        var groupStart: Int? = nil
        var group: [(JournalRecord.Operation, String, Location)] = []
        var problem: String? = nil
        while position < bytes.count {
            switch Format.parse(bytes, at: position, maxRecordBytes: options.maxRecordBytes) {
            case let .invalid(reason):
                problem = "\(reason) at offset \(position)"
                if let start = groupStart, start < position {
                    problem! += " (cutting its whole append group from offset \(start))"
                }
            case let .frame(frame):
                if groupStart == nil { groupStart = position }
                group.append((frame.operation, frame.key, Location(file: file.number, offset: position, length: frame.length)))
                position += frame.length
                if !frame.more {
                    for (operation, key, location) in group { index.apply(operation, key: key, at: location) }
                    group.removeAll(keepingCapacity: true)
                    groupStart = nil
                }
            }
            if problem != nil { break }
        }
        if problem == nil, let start = groupStart { problem = "unfinished append group at offset \(start)" }
        return Scan(validEnd: groupStart ?? position, problem: problem, headerOnlyPrefix: false)
    }

    /// The number in a journal file name (`segment-000012.log…` or `compact-000012.log…`).
    static func fileNumber(_ name: String) -> Int? {
        for prefix in ["segment-", "compact-"] where name.hasPrefix(prefix) {
            let digits = name.dropFirst(prefix.count).prefix { $0.isASCII && $0.isNumber }
            return digits.isEmpty ? nil : Int(digits)
        }
        return nil
    }

    private static func remove(_ name: String, _ directory: String, _ report: inout JournalOpenReport) throws(JournalError) {
        try FileIO.unlink(directory + "/" + name)
        report.removedFiles.append(name)
    }

    private static func discard(_ name: String, _ directory: String, size: Int,
                                _ report: inout JournalOpenReport) throws(JournalError) {
        let aside = "\(name).discarded-\(time(nil))"
        try FileIO.rename(directory + "/" + name, directory + "/" + aside)
        report.discardedFiles.append(aside)
        report.droppedBytes += size
    }
}
