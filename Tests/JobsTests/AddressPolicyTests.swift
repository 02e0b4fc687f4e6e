import Jobs
import Locking
import Synchronization
import Testing

/// A resolver answering from a fixed table (no DNS), counting calls.
func fixedResolver(_ table: [String: [String]], calls: Locked<Int>? = nil) -> HostResolver {
    HostResolver { host in
        calls?.withLock { $0 += 1 }
        guard let list = table[host] else { return .failure(.unresolvable(host: host, reason: "not in the test table")) }
        return .success(list.map { IPAddress($0)! })
    }
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

@Suite struct IPAddressTests {
    /// Dotted quads and RFC 4291 text parse to 4 and 16 bytes and print canonically.
    @Test func parse_AcceptsCanonicalForms_AndPrintsThem() {
        #expect(ip("192.168.1.20").bytes == [192, 168, 1, 20])
        #expect(ip("192.168.1.20").description == "192.168.1.20")
        #expect(ip("2001:DB8:0:0::1").bytes.count == 16)
        #expect(ip("2001:DB8:0:0::1").description == "2001:db8::1")
        #expect(ip("::ffff:127.0.0.1").family == .v6)
    }

    /// Shorthand and odd numeric IPv4 forms, zones and brackets are not addresses.
    @Test(arguments: ["127.1", "0x7f.0.0.1", "2130706433", "256.0.0.1", "1.2.3.4.5", "fe80::1%eth0", "[::1]", "", "::g", " 1.2.3.4"])
    func parse_RejectsNonCanonicalText(_ text: String) {
        #expect(IPAddress(text) == nil)
    }

    /// Every address maps to the class the SSRF guard uses for it.
    @Test(arguments: [
        ("127.0.0.1", AddressClass.loopback), ("127.255.255.254", .loopback), ("::1", .loopback),
        ("10.0.0.1", .private), ("172.16.0.1", .private), ("172.31.255.255", .private), ("192.168.1.1", .private),
        ("169.254.1.1", .linkLocal), ("fe80::1", .linkLocal), ("febf::1", .linkLocal),
        ("fc00::1", .uniqueLocal), ("fd12:3456::1", .uniqueLocal),
        ("0.0.0.0", .unspecified), ("::", .unspecified),
        ("169.254.169.254", .metadata), ("fd00:ec2::254", .metadata), ("100.100.100.200", .metadata), ("169.254.170.2", .metadata),
        ("100.64.0.1", .sharedAddressSpace), ("100.127.255.255", .sharedAddressSpace),
        ("::ffff:127.0.0.1", .loopback), ("::ffff:10.1.2.3", .private), ("::ffff:169.254.169.254", .metadata),
        ("64:ff9b::a00:1", .private), ("2002:7f00:1::1", .loopback),
        ("224.0.0.1", .multicast), ("239.255.255.250", .multicast), ("ff02::1", .multicast),
        ("255.255.255.255", .broadcast),
        ("240.0.0.1", .reserved), ("0.1.2.3", .reserved), ("192.0.2.1", .reserved), ("198.18.0.1", .reserved),
        ("2001:db8::1", .reserved), ("2001::1", .reserved), ("100::1", .reserved),
        ("8.8.8.8", .global), ("172.32.0.1", .global), ("100.128.0.1", .global), ("1.1.1.1", .global),
        ("2606:4700::1111", .global), ("::ffff:8.8.8.8", .global),
    ])
    func classification_MatchesAddressBlock(_ text: String, _ expected: AddressClass) {
        #expect(ip(text).classification == expected, "\(text)")
    }
}

@Suite struct CIDRTests {
    /// IPv4 and IPv6 blocks parse, and contain exactly the addresses under their prefix.
    @Test func parse_ContainsAddressesUnderPrefix() throws {
        let v4 = try CIDR(parsing: "127.0.0.0/8")
        #expect(v4.contains(ip("127.200.1.1")))
        #expect(!v4.contains(ip("128.0.0.1")))
        #expect(!v4.contains(ip("::1")))
        let v6 = try CIDR(parsing: "fd00::/8")
        #expect(v6.contains(ip("fd12::1")))
        #expect(!v6.contains(ip("fc00::1")))
        let odd = try CIDR(parsing: "172.16.0.0/12")
        #expect(odd.contains(ip("172.31.255.255")) && !odd.contains(ip("172.32.0.0")))
        #expect(try CIDR(parsing: "0.0.0.0/0").contains(ip("8.8.8.8")))
    }

    /// A bare address is a single-host block (/32 or /128).
    @Test func parse_BareAddress_IsSingleHost() throws {
        #expect(try CIDR(parsing: "10.1.2.3").prefixLength == 32)
        #expect(try CIDR(parsing: "::1").prefixLength == 128)
        #expect(try CIDR(parsing: "10.1.2.3").isSingleHost)
    }

    /// Malformed blocks throw with a reason, including host bits set.
    @Test(arguments: ["", "/8", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/33", "::/129", "10.0.0/8", "abc/8", "10.0.0.0/08", "10.0.0.0/-1", "10.0.0.1/8", "fe80::1/10"])
    func parse_Throws_OnBadInput(_ text: String) {
        #expect(throws: CIDRError.self) { try CIDR(parsing: text) }
    }

    /// The host-bits error names the block the user probably meant.
    @Test func parse_HostBitsError_SuggestsNetwork() {
        do {
            _ = try CIDR(parsing: "10.1.2.3/8")
            Issue.record("expected an error")
        } catch {
            #expect(error.description.contains("10.0.0.0/8"))
        }
    }
}

@Suite struct CallbackURLTests {
    /// Scheme, host, default and explicit ports and IP literals are split out.
    @Test func parse_SplitsSchemeHostPort() throws {
        let a = try CallbackURL(parsing: "https://Hooks.Example.com/cb?x=1")
        #expect(a.scheme == "https" && a.host == "hooks.example.com" && a.port == 443 && a.literal == nil)
        let b = try CallbackURL(parsing: "HTTP://127.0.0.1:9090/hook")
        #expect(b.scheme == "http" && b.port == 9090 && b.literal == ip("127.0.0.1"))
        let c = try CallbackURL(parsing: "https://[::1]:8443")
        #expect(c.host == "::1" && c.port == 8443 && c.literal == ip("::1"))
    }

    /// Malformed or ambiguous URLs are refused before any resolution.
    @Test(arguments: ["", "not a url", "hooks.example.com/cb", "https://", "https:///x", "https://user:pw@example.com/",
                      "https://example.com@10.0.0.1/", "https://127.1/", "https://0x7f000001/", "https://2130706433/",
                      "https://[fe80::1%25eth0]/", "https://[::1/", "https://example.com:0/", "https://example.com:99999/",
                      "https://example.com:/", "https://exa mple.com/", "https://example.com/\u{7f}", "https://exa%6dple.com/",
                      "https://exämple.com/", "https://example..com/", "https://ex\\ample.com/"])
    func parse_RefusesMalformed(_ text: String) {
        #expect(throws: CallbackTargetError.self) { try CallbackURL(parsing: text) }
    }

    /// Schemes other than http and https are refused as such.
    @Test func parse_RefusesOtherSchemes() {
        #expect(throws: CallbackTargetError.unsupportedScheme("ftp")) { try CallbackURL(parsing: "ftp://example.com/x") }
        #expect(throws: CallbackTargetError.unsupportedScheme("file")) { try CallbackURL(parsing: "file:///etc/passwd") }
    }
}

@Suite struct AddressPolicyTests {
    /// One sample per refused class: the guard refuses it when nothing is allow-listed.
    @Test(arguments: ["127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.0.10", "169.254.10.10", "fe80::1", "fd00::1",
                      "0.0.0.0", "::", "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "100.64.1.1",
                      "::ffff:127.0.0.1", "::ffff:192.168.0.1", "224.0.0.251", "ff02::1", "255.255.255.255", "240.1.2.3"])
    func vet_RefusesEachNonPublicClass(_ address: String) {
        let policy = AddressPolicy()
        let resolver = fixedResolver(["hook.example": [address]])
        #expect(throws: CallbackTargetError.refused(address: ip(address), class: ip(address).classification)) {
            try policy.vet("https://hook.example/cb", resolver: resolver)
        }
    }

    /// An IP-literal host is checked like a resolved one, without calling the resolver.
    @Test func vet_ChecksLiteralHost_WithoutResolving() {
        let calls = Locked(0)
        let resolver = fixedResolver([:], calls: calls)
        #expect(throws: CallbackTargetError.refused(address: ip("10.0.0.1"), class: .private)) {
            try AddressPolicy().vet("https://10.0.0.1/cb", resolver: resolver)
        }
        #expect(throws: CallbackTargetError.refused(address: ip("::1"), class: .loopback)) {
            try AddressPolicy().vet("https://[::1]/cb", resolver: resolver)
        }
        #expect(calls.withLock { $0 } == 0)
    }

    /// A host is refused when any one of its addresses is refused.
    @Test func vet_Refuses_WhenOneOfSeveralAddressesIsPrivate() {
        let resolver = fixedResolver(["hook.example": ["93.184.216.34", "10.9.8.7"]])
        #expect(throws: CallbackTargetError.refused(address: ip("10.9.8.7"), class: .private)) {
            try AddressPolicy().vet("https://hook.example/cb", resolver: resolver)
        }
    }

    /// A public https host passes, with a CURLOPT_RESOLVE entry pinning every checked address.
    @Test func vet_PublicHttps_ReturnsPinnedResolveEntry() throws {
        let resolver = fixedResolver(["hook.example": ["93.184.216.34", "2606:2800:220:1::1"]])
        let t = try AddressPolicy().vet("https://hook.example/cb", resolver: resolver)
        #expect(t.addresses == [ip("93.184.216.34"), ip("2606:2800:220:1::1")])
        #expect(t.resolveEntry == "hook.example:443:93.184.216.34,[2606:2800:220:1::1]")
        #expect(t.resolve == ["hook.example:443:93.184.216.34,[2606:2800:220:1::1]"])
        #expect(!t.allowListed)
    }

    /// An IP-literal target needs no resolve entry: the URL names the checked address.
    @Test func vet_LiteralTarget_HasNoResolveEntry() throws {
        let t = try AddressPolicy(allowing: ["127.0.0.0/8"]).vet("http://127.0.0.1:9/x", resolver: fixedResolver([:]))
        #expect(t.resolveEntry == nil)
        #expect(t.resolve.isEmpty)
    }

    /// Plain http to a public host not covered by callback_allow is refused.
    @Test func vet_RequiresHttps_ForHostsNotAllowListed() {
        let resolver = fixedResolver(["hook.example": ["93.184.216.34"]])
        #expect(throws: CallbackTargetError.httpsRequired) {
            try AddressPolicy(allowing: ["10.0.0.0/8"]).vet("http://hook.example/cb", resolver: resolver)
        }
    }

    /// With no allow-list at all, http is refused before any DNS lookup.
    @Test func vet_RefusesHttp_BeforeResolving_WhenNothingIsAllowListed() {
        let calls = Locked(0)
        #expect(throws: CallbackTargetError.httpsRequired) {
            try AddressPolicy().vet("http://hook.example/cb", resolver: fixedResolver(["hook.example": ["93.184.216.34"]], calls: calls))
        }
        #expect(calls.withLock { $0 } == 0)
    }

    /// callback_allow 127.0.0.0/8 lets loopback through, over http too.
    @Test func vet_AllowList_LetsLoopbackThrough() throws {
        let policy = try AddressPolicy(allowing: ["127.0.0.0/8"])
        let t = try policy.vet("http://127.0.0.1:9090/hook")
        #expect(t.allowListed)
        #expect(t.addresses == [ip("127.0.0.1")])
        let named = try policy.vet("http://receiver.test:9090/hook", resolver: fixedResolver(["receiver.test": ["127.0.0.5"]]))
        #expect(named.resolveEntry == "receiver.test:9090:127.0.0.5")
    }

    /// An IPv4 allow block also covers the IPv4-mapped IPv6 form of its addresses.
    @Test func vet_AllowList_CoversIPv4MappedAddresses() throws {
        let policy = try AddressPolicy(allowing: ["127.0.0.0/8"])
        let t = try policy.vet("http://mapped.test:80/", resolver: fixedResolver(["mapped.test": ["::ffff:127.0.0.1"]]))
        #expect(t.resolveEntry == "mapped.test:80:[::ffff:127.0.0.1]")
    }

    /// Allowing loopback does not open other private classes.
    @Test func vet_AllowList_DoesNotOpenOtherClasses() throws {
        let policy = try AddressPolicy(allowing: ["127.0.0.0/8"])
        #expect(throws: CallbackTargetError.refused(address: ip("::1"), class: .loopback)) {
            try policy.vet("http://[::1]:9090/")
        }
        #expect(throws: CallbackTargetError.refused(address: ip("192.168.1.1"), class: .private)) {
            try policy.vet("https://192.168.1.1/")
        }
    }

    /// Metadata addresses open only to an allow entry naming exactly them, never to a broad block.
    @Test func metadata_IsOpenedOnlyBySingleHostAllowEntry() throws {
        let resolver = fixedResolver(["meta.test": ["169.254.169.254"]])
        for broad in ["169.254.0.0/16", "0.0.0.0/0"] {
            #expect(throws: CallbackTargetError.refused(address: ip("169.254.169.254"), class: .metadata)) {
                try AddressPolicy(allowing: [broad]).vet("https://meta.test/", resolver: resolver)
            }
        }
        #expect(try AddressPolicy(allowing: ["169.254.169.254/32"]).vet("https://meta.test/", resolver: resolver).allowListed)
        // A broad block still opens ordinary link-local addresses.
        #expect(try AddressPolicy(allowing: ["169.254.0.0/16"]).permits(ip("169.254.1.1")))
    }

    /// A name that does not resolve is refused as unresolvable.
    @Test func vet_Refuses_UnresolvableHost() {
        #expect(throws: CallbackTargetError.unresolvable(host: "nowhere.test", reason: "not in the test table")) {
            try AddressPolicy().vet("https://nowhere.test/", resolver: fixedResolver([:]))
        }
    }

    /// The system resolver resolves localhost to loopback, which the allow-list then governs.
    @Test func vet_SystemResolver_ResolvesLocalhost() throws {
        #expect(throws: CallbackTargetError.self) { try AddressPolicy().vet("https://localhost/") }
        let t = try AddressPolicy(allowing: ["127.0.0.0/8", "::1/128"]).vet("http://localhost:8080/hook")
        #expect(!t.addresses.isEmpty)
        #expect(t.addresses.allSatisfy { $0.classification == .loopback })
        #expect(t.resolveEntry?.hasPrefix("localhost:8080:") == true)
    }

    /// Refusal messages never reveal the resolved address.
    @Test func refusedDescription_OmitsAddress() {
        let e = CallbackTargetError.refused(address: ip("10.1.2.3"), class: .private)
        #expect(!e.description.contains("10.1.2.3"))
        #expect(e.description.contains("private"))
    }

    /// A malformed allow entry fails the whole policy with the entry named.
    @Test func init_Throws_OnBadAllowEntry() {
        #expect(throws: CIDRError.self) { try AddressPolicy(allowing: ["127.0.0.0/8", "localhost"]) }
    }
}
