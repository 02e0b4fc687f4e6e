import Glibc

/// An IPv4 or IPv6 address, as raw network-order bytes (4 or 16 of them).
///
/// Value type, safe from any thread. Parsing is strict: IPv4 only as a dotted
/// quad (`127.0.0.1`, not `127.1`, `0x7f.0.0.1` or `2130706433`), IPv6 in RFC 4291
/// text form without brackets and without a zone (`%eth0`).
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public enum Family: Sendable, Hashable {
        /// IPv4 (4 bytes).
        case v4
        /// IPv6 (16 bytes).
        case v6
    }

    /// The address in network byte order: 4 bytes (IPv4) or 16 bytes (IPv6).
    public let bytes: [UInt8]

    /// An address from raw bytes; nil unless there are exactly 4 or 16 of them.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses a textual address (strict, see the type's documentation); nil when malformed.
    public init?(_ text: String) {
        if text.isEmpty || text.utf8.count > 45 { return nil }
        if text.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
            bytes = withUnsafeBytes(of: &a) { Array($0) }
        } else {
            var a = in_addr()
            guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
            bytes = withUnsafeBytes(of: &a) { Array($0) }
        }
    }

    /// `.v4` for 4 bytes, `.v6` for 16.
    public var family: Family { bytes.count == 4 ? .v4 : .v6 }

    /// Canonical text: dotted quad for IPv4, RFC 5952 form for IPv6 (`inet_ntop`).
    public var description: String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: bytes) }
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        guard inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count)) != nil else { return "?" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The IPv4 address carried inside this IPv6 address, when it is one of the
    /// forms that reach an IPv4 host: IPv4-mapped (`::ffff:a.b.c.d`), NAT64
    /// (`64:ff9b::a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated) and 6to4
    /// (`2002:AABB:CCDD::/48`). Nil for IPv4 addresses and other IPv6 addresses.
    public var embeddedIPv4: IPAddress? {
        guard bytes.count == 16 else { return nil }
        let b = bytes
        let tenZero = b[0..<10].allSatisfy { $0 == 0 }
        if tenZero && b[10] == 0xff && b[11] == 0xff { return IPAddress(bytes: Array(b[12..<16])) }
        if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4..<12].allSatisfy({ $0 == 0 }) {
            return IPAddress(bytes: Array(b[12..<16]))
        }
        if tenZero && b[10] == 0 && b[11] == 0 {
            // `::` and `::1` are IPv6's own unspecified and loopback addresses, not compat forms.
            let last = b[12..<16]
            if last.allSatisfy({ $0 == 0 }) || (b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 1) { return nil }
            return IPAddress(bytes: Array(last))
        }
        if b[0] == 0x20 && b[1] == 0x02 { return IPAddress(bytes: Array(b[2..<6])) }
        return nil
    }

    /// What kind of address this is, for the SSRF guard (see `AddressClass`).
    /// Addresses embedding an IPv4 address (see `embeddedIPv4`) are classified by
    /// that IPv4 address.
    public var classification: AddressClass {
        if bytes.count == 4 { return IPAddress.classifyV4(bytes) }
        return IPAddress.classifyV6(bytes)
    }

    private static func classifyV4(_ b: [UInt8]) -> AddressClass {
        let v = UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
        func within(_ net: UInt32, _ bits: UInt32) -> Bool {
            let mask: UInt32 = bits == 0 ? 0 : ~UInt32(0) << (32 - bits)
            return v & mask == net
        }
        // Cloud metadata services first: they sit inside link-local and CGNAT space.
        if v == 0xA9FE_A9FE || v == 0x6464_64C8 || v == 0xA9FE_AA02 { return .metadata }  // 169.254.169.254, 100.100.100.200, 169.254.170.2
        if v == 0 { return .unspecified }
        if v == 0xFFFF_FFFF { return .broadcast }
        if within(0x7F00_0000, 8) { return .loopback }
        if within(0x0A00_0000, 8) || within(0xAC10_0000, 12) || within(0xC0A8_0000, 16) { return .private }
        if within(0xA9FE_0000, 16) { return .linkLocal }
        if within(0x6440_0000, 10) { return .sharedAddressSpace }
        if within(0xE000_0000, 4) { return .multicast }
        if within(0x0000_0000, 8)            // "this network"
            || within(0xC000_0000, 24)       // IETF protocol assignments
            || within(0xC000_0200, 24)       // TEST-NET-1
            || within(0xC058_6300, 24)       // 6to4 relay anycast
            || within(0xC612_0000, 15)       // benchmarking
            || within(0xC633_6400, 24)       // TEST-NET-2
            || within(0xCB00_7100, 24)       // TEST-NET-3
            || within(0xF000_0000, 4) {      // reserved (class E)
            return .reserved
        }
        return .global
    }

    private static func classifyV6(_ b: [UInt8]) -> AddressClass {
        if b.allSatisfy({ $0 == 0 }) { return .unspecified }
        if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return .loopback }
        // fd00:ec2::254 (AWS instance metadata over IPv6).
        if b == [0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54] { return .metadata }
        if let v4 = IPAddress(bytes: b)?.embeddedIPv4 { return classifyV4(v4.bytes) }
        if b[0] & 0xfe == 0xfc { return .uniqueLocal }                 // fc00::/7
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return .linkLocal }   // fe80::/10
        if b[0] == 0xff { return .multicast }                          // ff00::/8
        // Global unicast is 2000::/3, minus special-purpose blocks inside it.
        if b[0] & 0xe0 != 0x20 { return .reserved }
        if b[0] == 0x20 && b[1] == 0x01 && b[2] < 0x02 { return .reserved }                  // 2001::/23 (Teredo, benchmarking, ORCHID …)
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return .reserved }  // 2001:db8::/32 documentation
        if b[0] == 0x3f && b[1] == 0xff && b[2] & 0xf0 == 0 { return .reserved }             // 3fff::/20 documentation
        return .global
    }
}

/// The kind of an address, as the SSRF guard sees it. Every class except
/// `.global` is refused as a callback destination unless `callback_allow` covers it.
public enum AddressClass: String, Sendable, Hashable, CaseIterable {
    /// A publicly routable unicast address.
    case global = "public"
    /// `127.0.0.0/8`, `::1`.
    case loopback
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    case `private`
    /// `169.254.0.0/16`, `fe80::/10`.
    case linkLocal = "link-local"
    /// `fc00::/7`.
    case uniqueLocal = "unique-local"
    /// `0.0.0.0`, `::`.
    case unspecified
    /// Cloud instance-metadata services: `169.254.169.254`, `169.254.170.2`,
    /// `100.100.100.200`, `fd00:ec2::254`.
    case metadata = "cloud-metadata"
    /// Carrier-grade NAT shared space, `100.64.0.0/10` (RFC 6598).
    case sharedAddressSpace = "cgnat"
    /// `224.0.0.0/4`, `ff00::/8`.
    case multicast
    /// `255.255.255.255`.
    case broadcast
    /// Other special-purpose space: `0.0.0.0/8`, documentation and benchmarking
    /// ranges, `240.0.0.0/4`, and IPv6 outside `2000::/3` or in `2001::/23`.
    case reserved
}

/// Why a CIDR could not be parsed.
public struct CIDRError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The text that was given.
    public let input: String
    /// What is wrong with it.
    public let reason: String
    /// An error about `input`.
    public init(input: String, reason: String) {
        self.input = input
        self.reason = reason
    }
    /// `invalid CIDR "<input>": <reason>`.
    public var description: String { "invalid CIDR \"\(input)\": \(reason)" }
}

/// An address block such as `127.0.0.0/8` or `fd00::/8`. Value type, safe from any thread.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits are zero).
    public let network: IPAddress
    /// The prefix length: 0...32 for IPv4, 0...128 for IPv6.
    public let prefixLength: Int

    /// Parses `address/prefix`; a bare address means a single host (`/32` or `/128`).
    /// - Throws: `CIDRError` when the address or prefix is malformed, the prefix is
    ///   out of range for the family, or host bits are set (`10.1.2.3/8`: the
    ///   error names the intended `10.0.0.0/8`, since a typo here widens or
    ///   narrows an allow-list silently).
    public init(parsing text: String) throws(CIDRError) {
        let t = text.trimmingSpaces
        let parts = t.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first, !first.isEmpty else { throw CIDRError(input: text, reason: "missing address") }
        guard let addr = IPAddress(String(first)) else { throw CIDRError(input: text, reason: "\"\(first)\" is not an IPv4 or IPv6 address") }
        let maxBits = addr.bytes.count * 8
        var bits = maxBits
        if parts.count == 2 {
            let p = parts[1]
            guard !p.isEmpty, p.utf8.count <= 3, p.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), let n = Int(p) else {
                throw CIDRError(input: text, reason: "prefix length \"\(p)\" is not a number")
            }
            guard n <= maxBits else { throw CIDRError(input: text, reason: "prefix length \(n) exceeds \(maxBits)") }
            if p.utf8.count > 1 && p.hasPrefix("0") { throw CIDRError(input: text, reason: "prefix length \"\(p)\" has a leading zero") }
            bits = n
        }
        let masked = CIDR.mask(addr.bytes, bits)
        if masked != addr.bytes {
            throw CIDRError(input: text, reason: "host bits are set (did you mean \(IPAddress(bytes: masked)!)/\(bits)?)")
        }
        network = addr
        prefixLength = bits
    }

    /// A block from an address and prefix length, with host bits cleared; nil when
    /// the prefix is out of range for the family.
    public init?(network: IPAddress, prefixLength: Int) {
        guard prefixLength >= 0, prefixLength <= network.bytes.count * 8 else { return nil }
        self.network = IPAddress(bytes: CIDR.mask(network.bytes, prefixLength))!
        self.prefixLength = prefixLength
    }

    /// Whether `address` lies in this block (same family only: an IPv4 block never
    /// matches an IPv6 address; callers wanting IPv4-mapped matching use
    /// `AddressPolicy`, which also tries `embeddedIPv4`).
    public func contains(_ address: IPAddress) -> Bool {
        guard address.bytes.count == network.bytes.count else { return false }
        return CIDR.mask(address.bytes, prefixLength) == network.bytes
    }

    /// Whether the block is exactly one address (`/32` or `/128`).
    public var isSingleHost: Bool { prefixLength == network.bytes.count * 8 }

    /// `network/prefix`, e.g. `127.0.0.0/8`.
    public var description: String { "\(network)/\(prefixLength)" }

    private static func mask(_ bytes: [UInt8], _ bits: Int) -> [UInt8] {
        var out = bytes
        for i in 0..<out.count {
            let keep = max(0, min(8, bits - i * 8))
            out[i] &= keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
        }
        return out
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
