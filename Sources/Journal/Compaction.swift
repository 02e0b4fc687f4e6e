import Glibc

/// How a background compaction ended; sent back to the writer thread to install.
enum CompactionOutcome: Sendable {
    /// The compacted file is complete, synced and renamed into place. `newOffsets[i]`
    /// is where the i-th input location now is; `size` is the file's length (in bytes).
    case done(output: JournalFile, size: Int, newOffsets: [Int])
    case failed(JournalError)
    case cancelled
}

/// One compaction's work, run off the writer thread: copy the live records of the
/// sealed files numbered ≤ `last` into `compact-<last>.log`.
///
/// Crash safety, step by step:
/// 1. Records are written to `compact-<last>.log.tmp` (recovery deletes `*.tmp`).
/// 2. The temporary file is `fdatasync`ed, renamed to its final name, and the
///    directory is `fsync`ed. From then on, recovery prefers it over every input.
/// 3. Only then (on the writer thread) are the inputs unlinked. A crash before or
///    during that leaves inputs that recovery deletes as superseded.
///
/// Inputs are sealed: nothing writes to them any more, so reading them here needs
/// no lock. Each copied record's checksum is verified; the "more" flag is cleared
/// (every live record belongs to a complete group), which re-seals the checksum.
struct CompactionJob: Sendable {
    let directory: String
    let last: Int
    let inputs: [JournalFile]
    /// Live locations in the inputs, in replay order.
    let locations: [Location]
    let fsync: Bool

    func run(cancelled: () -> Bool) -> CompactionOutcome {
        let name = Format.fileName(.compacted, last)
        let path = directory + "/" + name
        let temporary = path + ".tmp"
        do throws(JournalError) {
            let output = JournalFile(type: .compacted, number: last, path: path,
                                     fd: try FileIO.open(temporary, O_RDWR | O_CREAT | O_TRUNC))
            var buffer = Format.fileHeader(.compacted, last)
            var flushed = 0
            var newOffsets: [Int] = []
            newOffsets.reserveCapacity(locations.count)
            var reader = WindowReader()
            let byNumber = Dictionary(uniqueKeysWithValues: inputs.map { ($0.number, $0) })
            for (i, location) in locations.enumerated() {
                if i & 1023 == 0 && cancelled() {
                    try? FileIO.unlink(temporary)
                    return .cancelled
                }
                guard let file = byNumber[location.file] else {
                    throw JournalError.corrupt(path: path, offset: location.offset, reason: "compaction input missing")
                }
                let start = buffer.count
                let valid = try reader.withFrame(file, location) { frame -> Bool in
                    guard case .frame = Format.parse(frame, at: 0, maxRecordBytes: .max) else { return false }
                    buffer.append(contentsOf: frame)
                    return true
                }
                guard valid else {
                    throw JournalError.corrupt(path: file.path, offset: location.offset,
                                               reason: "checksum mismatch while compacting")
                }
                let flags = start + Format.frameHeaderBytes
                if buffer[flags] & Format.moreFlag != 0 {
                    buffer[flags] &= ~Format.moreFlag
                    Format.sealChecksum(&buffer, frameAt: start)
                }
                newOffsets.append(flushed + start)
                if buffer.count >= 1 << 20 {
                    try FileIO.pwriteAll(output.fd, buffer, at: flushed, path: temporary)
                    flushed += buffer.count
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            try FileIO.pwriteAll(output.fd, buffer, at: flushed, path: temporary)
            flushed += buffer.count
            if fsync { try FileIO.fdatasync(output.fd, path: temporary) }
            try FileIO.rename(temporary, path)
            if fsync { try FileIO.syncDirectory(directory) }
            return .done(output: output, size: flushed, newOffsets: newOffsets)
        } catch {
            try? FileIO.unlink(temporary)
            return .failed(error)
        }
    }
}
