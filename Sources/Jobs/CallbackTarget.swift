import Foundation
import Dispatch
import Glibc
import Synchronization

/// Why a callback URL was refused. Every case is the caller's problem (the
/// gateway answers `422`, or `400` for `.malformed`), never a server fault.
/// `description` is safe to show to the caller: it never includes a resolved
/// address, so the guard cannot be used to map internal DNS.
public enum CallbackTargetError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Not an absolute `scheme://host[:port][/path]` URL, or it has user info,
    /// a bad port, a bad host, spaces or control characters. The string says what.
    case malformed(String)
    /// A scheme other than `http` and `https` (the string is the scheme, lowercased).
    case unsupportedScheme(String)
    /// `http` to a host whose addresses are not all covered by `callback_allow`.
    case httpsRequired
    /// The host did not resolve (the string is the resolver's message).
    case unresolvable(host: String, reason: String)
    /// One of the host's addresses is in a refused class and not allow-listed.
    case refused(address: IPAddress, class: AddressClass)

    /// A one-line reason for a problem body's `detail`; never contains a resolved address.
    public var description: String {
        switch self {
        case .malformed(let why): return "malformed callback URL: \(why)"
        case .unsupportedScheme(let s): return "callback URL scheme \"\(s)\" is not allowed (use https)"
        case .httpsRequired: return "callback URL must use https (http is accepted only for hosts covered by callback_allow)"
        case .unresolvable(let host, let reason): return "callback host \"\(host)\" does not resolve: \(reason)"
        case .refused(_, let c): return "callback host resolves to a refused address (\(c.rawValue)); allow it with callback_allow"
        }
    }
}

/// A syntactically valid callback URL, split into the parts the guard needs.
/// Parsing does no I/O. Value type, safe from any thread.
public struct CallbackURL: Sendable, Hashable, CustomStringConvertible {
    /// The URL as given (scheme and host case preserved), used as the request URL.
    public let text: String
    /// `http` or `https` (lowercased).
    public let scheme: String
    /// The host, lowercased, without brackets for IPv6 literals.
    public let host: String
    /// The port: explicit, else 80 (`http`) or 443 (`https`).
    public let port: UInt16
    /// The host when it is an IP literal (`127.0.0.1`, `[::1]`); nil for names.
    public let literal: IPAddress?

    /// Longest URL accepted, in bytes. Default: 2048.
    public static let maxLength = 2048

    /// Parses an absolute `http`/`https` URL.
    /// - Throws: `CallbackTargetError.malformed` or `.unsupportedScheme`. Refused:
    ///   user info (`user@host`: it hides the real host from readers), spaces,
    ///   control characters and backslashes, percent-encoded or non-ASCII hosts
    ///   (give IDNs in punycode), IPv6 zones, ports outside 1...65535, and
    ///   numeric hosts in non-canonical IPv4 forms (`127.1`, `0x7f.0.0.1`,
    ///   `2130706433`) that resolvers and URL parsers read differently.
    public init(parsing raw: String) throws(CallbackTargetError) {
        guard !raw.isEmpty else { throw .malformed("empty") }
        guard raw.utf8.count <= CallbackURL.maxLength else { throw .malformed("longer than \(CallbackURL.maxLength) bytes") }
        for c in raw.utf8 where c <= 0x20 || c == 0x7f || c == UInt8(ascii: "\\") || c >= 0x80 {
            throw .malformed("contains a space, control character, backslash or non-ASCII byte")
        }
        guard let sep = raw.range(of: "://") else { throw .malformed("not an absolute URL (expected scheme://host/…)") }
        let scheme = raw[..<sep.lowerBound].lowercased()
        guard !scheme.isEmpty, scheme.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 43 || $0 == 45 || $0 == 46 }) else {
            throw .malformed("bad scheme")
        }
        guard scheme == "http" || scheme == "https" else { throw .unsupportedScheme(scheme) }
        let rest = raw[sep.upperBound...]
        let authEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let authority = rest[..<authEnd]
        if authority.contains("@") { throw .malformed("user info (user@host) is not allowed") }
        guard !authority.isEmpty else { throw .malformed("missing host") }

        var hostPart: Substring
        var portPart: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw .malformed("unclosed [ in host") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .malformed("unexpected text after ]") }
                portPart = after.dropFirst()
            }
            if hostPart.contains("%") { throw .malformed("IPv6 zone identifiers are not allowed") }
            guard let a = IPAddress(String(hostPart)), a.family == .v6 else { throw .malformed("bad IPv6 literal") }
        } else {
            if let colon = authority.firstIndex(of: ":") {
                hostPart = authority[..<colon]
                portPart = authority[authority.index(after: colon)...]
            } else {
                hostPart = authority
            }
        }
        var port: UInt16 = scheme == "https" ? 443 : 80
        if let p = portPart {
            guard !p.isEmpty, p.utf8.count <= 5, p.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let n = Int(p), n >= 1, n <= 65535 else {
                throw .malformed("port must be 1–65535")
            }
            port = UInt16(n)
        }
        let host = hostPart.lowercased()
        guard !host.isEmpty else { throw .malformed("missing host") }
        var literal: IPAddress? = nil
        if authority.hasPrefix("[") {
            literal = IPAddress(host)
        } else {
            guard host.utf8.count <= 253,
                  host.utf8.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 || $0 == 95 }) else {
                throw .malformed("host may contain only letters, digits, '-', '_' and '.'")
            }
            if let a = IPAddress(host), a.family == .v4 {
                literal = a
            } else {
                var probe = in_addr()
                if inet_aton(host, &probe) != 0 { throw .malformed("numeric host \"\(host)\" is not a dotted-quad IPv4 address") }
                if host.hasPrefix(".") || host.contains("..") { throw .malformed("empty label in host") }
            }
        }
        self.text = raw
        self.scheme = scheme
        self.host = host
        self.port = port
        self.literal = literal
    }

    /// The URL as given.
    public var description: String { text }
}

/// Resolves a host name to its addresses. The system resolver
/// (`HostResolver.system`, `getaddrinfo`) blocks the calling thread, possibly
/// for seconds: never call it on an event loop. Tests inject fixed answers.
public struct HostResolver: Sendable {
    /// Resolves `host` (a name, never an IP literal) to its addresses, in
    /// preference order, or a reason it could not.
    public let resolve: @Sendable (_ host: String) -> Result<[IPAddress], CallbackTargetError>

    /// A resolver from a function (tests use fixed tables). `resolve` may be called on any thread.
    public init(_ resolve: @escaping @Sendable (_ host: String) -> Result<[IPAddress], CallbackTargetError>) {
        self.resolve = resolve
    }

    /// `getaddrinfo(host, AF_UNSPEC, SOCK_STREAM)`, de-duplicated, in the order
    /// the system returns (RFC 6724 sorting). Blocking; safe from any thread
    /// except an event loop's.
    public static let system = HostResolver { host in
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, nil, &hints, &res)
        guard rc == 0 else {
            return .failure(.unresolvable(host: host, reason: String(cString: gai_strerror(rc))))
        }
        defer { freeaddrinfo(res) }
        var out: [IPAddress] = []
        var p = res
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                    if let ip = withUnsafeBytes(of: a, { IPAddress(bytes: Array($0)) }), !out.contains(ip) { out.append(ip) }
                } else if ai.pointee.ai_family == AF_INET6 {
                    let a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                    if let ip = withUnsafeBytes(of: a, { IPAddress(bytes: Array($0)) }), !out.contains(ip) { out.append(ip) }
                }
            }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { return .failure(.unresolvable(host: host, reason: "no IPv4 or IPv6 address")) }
        return .success(out)
    }
}

/// A callback destination that passed the SSRF guard: the URL and the exact
/// addresses that were checked, with the `CURLOPT_RESOLVE` entry that makes
/// libcurl connect to those addresses and no others. Value type, safe from
/// any thread; the result of one resolution, so re-vet it before each delivery.
public struct CallbackTarget: Sendable, Hashable {
    /// The parsed URL.
    public let url: CallbackURL
    /// Every address the host resolved to, all of them checked and permitted.
    public let addresses: [IPAddress]
    /// Whether every address is covered by `callback_allow` (why `http` was accepted).
    public let allowListed: Bool

    /// `host:port:addr[,addr…]` (IPv6 addresses in brackets) for
    /// `UpstreamRequest.resolve`; nil when the host is an IP literal, since then
    /// the URL itself names the checked address.
    public var resolveEntry: String? {
        guard url.literal == nil else { return nil }
        let list = addresses.map { $0.family == .v6 ? "[\($0)]" : "\($0)" }.joined(separator: ",")
        return "\(url.host):\(url.port):\(list)"
    }

    /// `resolveEntry` as the array `UpstreamRequest.resolve` takes (0 or 1 entry).
    public var resolve: [String] { resolveEntry.map { [$0] } ?? [] }
}

/// The SSRF policy for callback URLs (SPEC §4): which resolved addresses a
/// delivery may connect to, and when plain `http` is acceptable.
///
/// Rules, per resolved address: a `.global` address is permitted; any other
/// class (loopback, private, link-local, unique-local, unspecified, CGNAT,
/// multicast, broadcast, reserved) only when an `allow` block covers the
/// address or the IPv4 address embedded in it (`::ffff:127.0.0.1` is covered
/// by `127.0.0.0/8`). Cloud-metadata addresses are stricter: only a block
/// naming exactly that address (`169.254.169.254/32`) permits one, so a broad
/// `169.254.0.0/16` or `0.0.0.0/0` never opens them by accident. A URL is
/// accepted only when every address is permitted; `http` additionally needs
/// every address covered by `allow`. Value type, safe from any thread.
public struct AddressPolicy: Sendable {
    /// The `callback_allow` blocks. Default: none.
    public var allow: [CIDR]

    /// A policy allowing `allow` (default: nothing beyond public addresses over https).
    public init(allow: [CIDR] = []) { self.allow = allow }

    /// A policy from `callback_allow` strings.
    /// - Throws: `CIDRError` for the first malformed entry.
    public init(allowing cidrs: [String]) throws(CIDRError) {
        var list: [CIDR] = []
        for c in cidrs { list.append(try CIDR(parsing: c)) }
        allow = list
    }

    /// Whether an `allow` block covers `address` (or the IPv4 address embedded in it).
    public func isAllowListed(_ address: IPAddress) -> Bool {
        let candidates = [address] + (address.embeddedIPv4.map { [$0] } ?? [])
        let metadata = address.classification == .metadata
        for block in allow {
            for a in candidates where block.contains(a) {
                if !metadata || block.isSingleHost { return true }
            }
        }
        return false
    }

    /// Whether a delivery may connect to `address` (see the type's rules).
    public func permits(_ address: IPAddress) -> Bool {
        address.classification == .global || isAllowListed(address)
    }

    /// Checks already-resolved addresses for `url`. Pure, no I/O, any thread.
    /// - Throws: `.refused` for the first refused address, `.httpsRequired` for
    ///   `http` not fully allow-listed, `.unresolvable` for an empty list.
    public func check(_ url: CallbackURL, addresses: [IPAddress]) throws(CallbackTargetError) -> CallbackTarget {
        guard !addresses.isEmpty else { throw .unresolvable(host: url.host, reason: "no addresses") }
        for a in addresses where !permits(a) { throw .refused(address: a, class: a.classification) }
        let allowListed = addresses.allSatisfy(isAllowListed)
        if url.scheme == "http" && !allowListed { throw .httpsRequired }
        return CallbackTarget(url: url, addresses: addresses, allowListed: allowListed)
    }

    /// Parses `url`, resolves its host with `resolver` (skipped for IP literals)
    /// and checks every address.
    ///
    /// **Blocks** while resolving (with `.system`, `getaddrinfo` can take
    /// seconds): call it off the event loops — at registration on a worker
    /// thread or `DispatchQueue`, or use `vetAsync`. The `http` scheme is
    /// rejected before any resolution when no `allow` block exists.
    /// - Throws: any `CallbackTargetError`.
    public func vet(_ url: String, resolver: HostResolver = .system) throws(CallbackTargetError) -> CallbackTarget {
        let parsed = try CallbackURL(parsing: url)
        if parsed.scheme == "http" && allow.isEmpty { throw .httpsRequired }
        let addresses: [IPAddress]
        if let lit = parsed.literal {
            addresses = [lit]
        } else {
            addresses = try resolver.resolve(parsed.host).get()
        }
        return try check(parsed, addresses: addresses)
    }

    /// `vet` without blocking the caller: an IP-literal host needs no lookup and
    /// `completion` runs at once on the calling thread; a host name is resolved on
    /// a thread of its own (not a Dispatch queue, whose shared worker pool may be
    /// busy), and `completion` runs there. Either way, hop to your loop with
    /// `EventLoop.execute`. Safe from any thread.
    public func vetAsync(_ url: String, resolver: HostResolver = .system,
                         completion: @escaping @Sendable (Result<CallbackTarget, CallbackTargetError>) -> Void) {
        let policy = self
        let work: @Sendable () -> Void = {
            completion(Result { () throws(CallbackTargetError) -> CallbackTarget in try policy.vet(url, resolver: resolver) })
        }
        if let parsed = try? CallbackURL(parsing: url), parsed.literal == nil {
            // At most `maxConcurrentLookups` resolver threads: a flood of callback
            // hosts behind a slow nameserver cannot grow the thread count without bound.
            guard lookupsInFlight.add(1, ordering: .acquiringAndReleasing).newValue <= AddressPolicy.maxConcurrentLookups else {
                lookupsInFlight.subtract(1, ordering: .acquiringAndReleasing)
                completion(.failure(.unresolvable(host: parsed.host, reason: "too many host lookups in progress; try again")))
                return
            }
            Thread {
                work()
                lookupsInFlight.subtract(1, ordering: .acquiringAndReleasing)
            }.start()
        } else {
            work()
        }
    }

    /// The most host-name lookups (each on its own thread) in progress at once,
    /// process-wide; beyond it a callback URL is refused as unresolvable. 64.
    public static let maxConcurrentLookups = 64
}

/// Host-name lookups in progress (see `AddressPolicy.maxConcurrentLookups`).
private let lookupsInFlight = Atomic<Int>(0)
