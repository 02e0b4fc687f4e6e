/// CRC-32C (Castagnoli; polynomial 0x1EDC6F41, reflected form 0x82F63B78), the
/// checksum iSCSI, ext4 metadata and LevelDB/RocksDB logs use to detect torn or
/// corrupted records.
///
/// A checksum, not a cryptographic hash: it catches torn writes, bit flips and
/// zero-filled tails, not deliberate tampering. Table-driven, "slicing-by-8"
/// (eight 256-entry tables, eight input bytes per step), which is several
/// times faster than the one-table byte loop and needs no CPU intrinsics.
///
/// Pure functions over immutable tables: safe from any thread.
enum CRC32C {
    /// Eight 256-entry tables laid out one after the other (`table[k * 256 + b]`).
    static let table: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 {
                let prev = t[(k - 1) * 256 + i]
                t[k * 256 + i] = (prev >> 8) ^ t[Int(prev & 0xFF)]
            }
        }
        return t
    }()

    /// Extends `crc` (the checksum of the bytes before `bytes`; 0 for none) with `bytes`.
    ///
    /// `update(update(0, a), b) == update(0, a + b)`, so a checksum can be built in pieces.
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard var p = bytes.baseAddress, bytes.count > 0 else { return crc }
        var n = bytes.count
        var c = ~crc
        return table.withUnsafeBufferPointer { t in
            while n >= 8 {
                let lo = UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)) ^ c
                let hi = UInt32(littleEndian: (p + 4).loadUnaligned(as: UInt32.self))
                c = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                p += 8
                n -= 8
            }
            while n > 0 {
                c = t[Int((c ^ UInt32(p.load(as: UInt8.self))) & 0xFF)] ^ (c >> 8)
                p += 1
                n -= 1
            }
            return ~c
        }
    }

    /// The checksum of `bytes`.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { update(0, $0) }
    }
}
