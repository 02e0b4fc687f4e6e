/// The on-disk format. All integers are little-endian.
///
/// Every journal file starts with a 16-byte header:
///
///     0  "SBJRNL"      magic (6 bytes)
///     6  version       u8, 1
///     7  file type     u8, 1 = segment (appended to), 2 = compacted (written once)
///     8  number        u64, the number in the file name (its place in replay order)
///
/// followed by records ("frames"), back to back:
///
///     0  length        u32, bytes of the body (everything after the checksum)
///     4  checksum      u32, CRC-32C over the 4 length bytes and then the body
///     8  flags         u8, bits 0-1: operation (1 put, 2 append, 3 delete);
///                      bit 7: "more": the next record belongs to the same append call;
///                      bits 2-6: zero
///     9  kind          u16
///    11  key length    u16
///    13  key           UTF-8
///        payload       the rest of the body
///
/// The checksum covers the length, so a flipped length byte is caught instead of
/// sending the scanner into the middle of a payload. A zero-filled tail (what some
/// file systems leave after a crash) fails the minimum-length check.
///
/// The records of one `append` call are all-or-nothing across a crash: all but the
/// last carry the "more" flag, and recovery cuts an unfinished group as a whole.
/// A group never spans two files (segments roll over only between append calls).
enum Format {
    static let magic: [UInt8] = Array("SBJRNL".utf8)
    static let version: UInt8 = 1
    static let fileHeaderBytes = 16
    /// Length + checksum.
    static let frameHeaderBytes = 8
    /// Flags + kind + key length.
    static let bodyFixedBytes = 5
    /// Framing bytes added to every record on top of key and payload.
    static let recordOverhead = frameHeaderBytes + bodyFixedBytes
    static let moreFlag: UInt8 = 0x80
    static let operationMask: UInt8 = 0x03

    enum FileType: UInt8 {
        case segment = 1
        case compacted = 2

        /// File name prefix; the full name is `<prefix>-<number, 6+ digits>.log`.
        var prefix: String { self == .segment ? "segment" : "compact" }
    }

    static func fileName(_ type: FileType, _ number: Int) -> String {
        let digits = String(number)
        return type.prefix + "-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits + ".log"
    }

    static func fileHeader(_ type: FileType, _ number: Int) -> [UInt8] {
        var h = magic
        h.append(version)
        h.append(type.rawValue)
        appendLE(UInt64(number), to: &h)
        return h
    }

    static func checkFileHeader(_ bytes: UnsafeRawBufferPointer, _ type: FileType, _ number: Int) -> Bool {
        guard bytes.count >= fileHeaderBytes else { return false }
        let expected = fileHeader(type, number)
        for i in 0..<fileHeaderBytes where bytes[i] != expected[i] { return false }
        return true
    }

    /// Appends `record` framed to `buffer` and returns the frame's length (in bytes).
    /// - Throws: `JournalError.invalidRecord` when the key or the frame is too long;
    ///   `buffer` is then unchanged.
    static func encode(_ record: JournalRecord, more: Bool, maxRecordBytes: Int,
                       into buffer: inout [UInt8]) throws(JournalError) -> Int {
        let keyBytes = record.key.utf8.count
        guard keyBytes <= Int(UInt16.max) else {
            throw .invalidRecord("key is \(keyBytes) bytes; the limit is \(UInt16.max)")
        }
        let bodyLength = bodyFixedBytes + keyBytes + record.payload.count
        let frameLength = frameHeaderBytes + bodyLength
        guard frameLength <= maxRecordBytes, bodyLength <= Int(UInt32.max) else {
            throw .invalidRecord("record is \(frameLength) bytes; the limit is \(maxRecordBytes)")
        }
        let start = buffer.count
        buffer.reserveCapacity(start + frameLength)
        appendLE(UInt32(bodyLength), to: &buffer)
        appendLE(UInt32(0), to: &buffer)  // checksum, filled below
        buffer.append(record.operation.rawValue | (more ? moreFlag : 0))
        appendLE(record.kind, to: &buffer)
        appendLE(UInt16(keyBytes), to: &buffer)
        buffer.append(contentsOf: record.key.utf8)
        buffer.append(contentsOf: record.payload)
        sealChecksum(&buffer, frameAt: start)
        return frameLength
    }

    /// Recomputes the checksum of the whole frame that starts at `start` in `buffer`.
    static func sealChecksum(_ buffer: inout [UInt8], frameAt start: Int) {
        let crc: UInt32 = buffer.withUnsafeBytes { all in
            let lengthBytes = UnsafeRawBufferPointer(rebasing: all[start..<start + 4])
            let body = UnsafeRawBufferPointer(rebasing: all[(start + frameHeaderBytes)...])
            return CRC32C.update(CRC32C.update(0, lengthBytes), body)
        }
        buffer[start + 4] = UInt8(truncatingIfNeeded: crc)
        buffer[start + 5] = UInt8(truncatingIfNeeded: crc >> 8)
        buffer[start + 6] = UInt8(truncatingIfNeeded: crc >> 16)
        buffer[start + 7] = UInt8(truncatingIfNeeded: crc >> 24)
    }

    /// A frame that passed every check. Ranges index the buffer given to `parse`.
    struct Frame {
        var operation: JournalRecord.Operation
        var more: Bool
        var kind: UInt16
        var key: String
        var payload: Range<Int>
        var length: Int
    }

    enum ParseResult {
        case frame(Frame)
        /// Not a whole valid frame at this offset; the reason is for the report.
        case invalid(String)
    }

    /// Validates and decodes the frame at `offset` in `bytes`.
    static func parse(_ bytes: UnsafeRawBufferPointer, at offset: Int, maxRecordBytes: Int) -> ParseResult {
        let available = bytes.count - offset
        guard available >= frameHeaderBytes else {
            return .invalid("short record header (\(available) of \(frameHeaderBytes) bytes)")
        }
        let bodyLength = Int(readLE(bytes, offset, as: UInt32.self))
        guard bodyLength >= bodyFixedBytes, frameHeaderBytes + bodyLength <= maxRecordBytes else {
            return .invalid("bad record length \(bodyLength)")
        }
        guard available >= frameHeaderBytes + bodyLength else {
            return .invalid("short record (\(available) of \(frameHeaderBytes + bodyLength) bytes)")
        }
        let stored = readLE(bytes, offset + 4, as: UInt32.self)
        let body = offset + frameHeaderBytes
        let computed = CRC32C.update(CRC32C.update(0, UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + 4])),
                                     UnsafeRawBufferPointer(rebasing: bytes[body..<body + bodyLength]))
        guard stored == computed else { return .invalid("bad checksum") }
        let flags = bytes[body]
        guard flags & ~(moreFlag | operationMask) == 0,
              let operation = JournalRecord.Operation(rawValue: flags & operationMask) else {
            return .invalid("bad record flags 0x\(String(flags, radix: 16))")
        }
        let kind = readLE(bytes, body + 1, as: UInt16.self)
        let keyLength = Int(readLE(bytes, body + 3, as: UInt16.self))
        guard bodyFixedBytes + keyLength <= bodyLength else { return .invalid("bad key length \(keyLength)") }
        let keyStart = body + bodyFixedBytes
        guard let key = String(validating: UnsafeRawBufferPointer(rebasing: bytes[keyStart..<keyStart + keyLength]),
                               as: UTF8.self) else {
            return .invalid("key is not UTF-8")
        }
        return .frame(Frame(operation: operation, more: flags & moreFlag != 0, kind: kind, key: key,
                            payload: keyStart + keyLength..<body + bodyLength,
                            length: frameHeaderBytes + bodyLength))
    }

    static func appendLE<T: FixedWidthInteger>(_ value: T, to buffer: inout [UInt8]) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { buffer.append(contentsOf: $0) }
    }

    static func readLE<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
        T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
