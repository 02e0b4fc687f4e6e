// A resumable HTTP/1.x request parser: a byte-level state machine in the style of
// nginx's ngx_http_parse.c. It never looks back at bytes it has already consumed,
// so input may arrive in pieces of any size (down to one byte) and the state is
// carried from one call to the next. Head bytes are copied once, in bulk, into a
// reusable buffer; token boundaries are kept as offsets into it and turned into
// Strings only when the head is complete.

private let CR: UInt8 = 0x0D
private let LF: UInt8 = 0x0A
private let SP: UInt8 = 0x20
private let HT: UInt8 = 0x09
private let COLON: UInt8 = 0x3A
private let SEMI: UInt8 = 0x3B
private let COMMA: UInt8 = 0x2C

/// Longest chunk-size line accepted (size, extensions and CRLF), in bytes.
private let maxChunkLineBytes = 4096

/// `tchar` from RFC 9110 §5.6.2: `!#$%&'*+-.^_`|~`, DIGIT, ALPHA. A bit per
/// character of 0–127, two 64-bit masks (no table lookup, no branches per class).
@inline(__always) func isTokenChar(_ c: UInt8) -> Bool {
    let low: UInt64 = 0x03FF_6CFA_0000_0000   // 0x21, 0x23–0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0–9
    let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // A–Z, 0x5E–0x60, a–z, 0x7C, 0x7E
    if c < 64 { return (low >> UInt64(c)) & 1 != 0 }
    if c < 128 { return (high >> UInt64(c &- 64)) & 1 != 0 }
    return false
}

/// A field-value byte (RFC 9110 §5.5): VCHAR, SP, HTAB or obs-text; not CTL.
@inline(__always) private func isFieldValueChar(_ c: UInt8) -> Bool {
    (c >= 0x20 && c != 0x7F) || c == HT
}

@inline(__always) private func hexValue(_ c: UInt8) -> Int? {
    switch c {
    case 0x30...0x39: return Int(c &- 0x30)
    case 0x41...0x46: return Int(c &- 0x41 &+ 10)
    case 0x61...0x66: return Int(c &- 0x61 &+ 10)
    default: return nil
    }
}

/// Parses HTTP/1.0 and HTTP/1.1 requests (RFC 9112) from bytes fed in pieces of
/// any size, with strict framing and the limits of `HTTPLimits`.
///
/// Feed bytes with `parse(_:)`. Each call returns one of:
/// - `.needMore`: every byte given was consumed; call again with the next bytes.
/// - `.request(request, consumed:)`: a complete request ended after `consumed`
///   bytes of this buffer; the rest (a pipelined request) has not been looked at:
///   pass it in the next call, which starts a new request.
/// - `.expectContinue(consumed:)`: the head carried `Expect: 100-continue` and a
///   body is expected (HTTP/1.1 only, and only when the declared body is within
///   `bodyBytes`); send `100 Continue`, then call again with the bytes after `consumed`.
/// - `.error(error)`: the request is invalid; answer `error.status` and close. The
///   parser stays failed (every later call returns the same error) until `reset()`.
///
/// Decisions where RFC 9112 leaves a choice:
/// - Line endings must be CRLF; a bare LF is rejected like a bare CR (§2.2).
/// - Empty lines before the request line are ignored (§2.2).
/// - Identical Content-Length values (repeated fields or a list such as `5, 5`) are
///   folded into one; differing values are rejected (RFC 9110 §8.6, RFC 9112 §6.3).
/// - Transfer-Encoding must be exactly `chunked`: other codings are `501`,
///   `chunked` not final or repeated is `400` (§6.1, §6.3). Transfer-Encoding in an
///   HTTP/1.0 request is treated as faulty framing: `400` (§6.1).
/// - Expectations other than `100-continue` are ignored.
/// - The request-target must be visible ASCII (no raw UTF-8).
///
/// A value type with no shared state; one parser per connection.
public struct HTTPRequestParser: Sendable {
    /// The most a `Content-Length` body reserves before its bytes arrive: 64 KiB
    /// (a larger one grows as it comes).
    static let bodyReservationLimit = 64 * 1024

    /// The outcome of one `parse(_:)` call (see the type's documentation).
    public enum Result: Sendable {
        /// All bytes were consumed; more are needed.
        case needMore
        /// A complete request, which ended after `consumed` bytes of the buffer.
        case request(HTTPRequest, consumed: Int)
        /// Send `100 Continue` before the body; the head ended after `consumed` bytes.
        case expectContinue(consumed: Int)
        /// The request is invalid; answer `error.status` and close the connection.
        case error(HTTPParseError)
    }

    /// Where the parser is within the current request.
    public enum Phase: Sendable, Equatable {
        /// Between requests: no byte of the next request has arrived (empty lines aside).
        case idle
        /// Inside a request head.
        case head
        /// Inside a body (Content-Length or chunked, trailers included).
        case body
    }

    /// The limits applied to each request.
    public var limits: HTTPLimits

    enum State: UInt8 {
        case start, startLF
        case method, targetStart, target, version, requestLineLF
        case fieldLineStart, fieldName, fieldValueOWS, fieldValue, fieldLF, headEndLF
        // Body states; everything from `body` on is past the head.
        case body
        case chunkSize, chunkSizeBWS, chunkExt, chunkSizeLF, chunkData, chunkDataCR, chunkDataLF
        case trailerLineStart, trailerName, trailerValue, trailerLF, trailerEndLF
        case failed
    }

    struct FieldSpan {
        var nameStart: Int32, nameEnd: Int32, valueStart: Int32, valueEnd: Int32
    }

    private var state: State = .start
    private var failure: HTTPParseError? = nil
    // Head bytes of the current request, from the first byte of the request line.
    private var head: [UInt8] = []
    private var fields: [FieldSpan] = []
    private var methodEnd = 0, targetStart = 0, targetEnd = 0
    private var versionIndex = 0, major = 0, minor = 0
    private var headerSectionStart = 0
    private var nameStart = 0, nameEnd = 0, valueStart = 0
    private var emptyLineBytes = 0
    // The request being received (head done, body pending).
    private var pending: HTTPRequest? = nil

    /// The head of the request whose body is being read (its `body` empty), e.g.
    /// after `.expectContinue`; nil between requests and inside a head.
    public var pendingHead: HTTPRequest? { pending }
    /// The method and path of the request being received, once its head has been
    /// read whole (also when the head was then refused, e.g. for a body over the
    /// limit); nil before, and between requests. For logging a refusal: set only on
    /// that path, so a served request pays nothing for it.
    public var methodAndPath: (method: String, path: String)? {
        pending.map { ($0.method, $0.path) } ?? headMethodAndPath
    }
    private var headMethodAndPath: (method: String, path: String)?
    private var body: [UInt8] = []
    /// The capacity of the body being received (for tests of `bodyReservationLimit`).
    var bodyCapacity: Int { body.capacity }
    private var remaining = 0
    private var chunkValue = 0, chunkDigits = 0, chunkLineBytes = 0
    private var trailerBytes = 0, trailerFields = 0

    /// Creates a parser. Default limits: `HTTPLimits()`.
    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
    }

    /// Where the parser is within the current request.
    public var phase: Phase {
        switch state {
        case .start, .startLF: return .idle
        case .method, .targetStart, .target, .version, .requestLineLF,
             .fieldLineStart, .fieldName, .fieldValueOWS, .fieldValue, .fieldLF, .headEndLF: return .head
        case .failed: return .idle
        default: return .body
        }
    }

    /// Forgets any partial request and a previous failure.
    public mutating func reset() {
        state = .start
        failure = nil
        resetRequest()
    }

    /// Parses `bytes` (see the type's documentation for the results); `consumed`
    /// counts from the start of `bytes`.
    public mutating func parse(_ bytes: [UInt8]) -> Result {
        bytes.withUnsafeBytes { parse($0) }
    }

    /// Parses `bytes` (see the type's documentation for the results); `consumed`
    /// counts from `bytes.startIndex`.
    public mutating func parse(_ bytes: ArraySlice<UInt8>) -> Result {
        bytes.withUnsafeBytes { parse($0) }
    }

    /// Parses the bytes in `buffer` (see the type's documentation for the results);
    /// `consumed` counts from the start of `buffer`. Never reads outside it and
    /// keeps no pointer into it.
    public mutating func parse(_ buffer: UnsafeRawBufferPointer) -> Result {
        if state == .failed { return .error(failure ?? .invalidRequestLine) }
        guard let raw = buffer.baseAddress, buffer.count > 0 else { return .needMore }
        let p = raw.assumingMemoryBound(to: UInt8.self)
        let n = buffer.count
        var i = 0
        if state.rawValue < State.body.rawValue {
            switch parseHead(p, n, &i) {
            case .more: return .needMore
            case .fail(let e): return .error(e)
            case .done:
                if let r = finishHead(consumed: i) { return r }
            }
        }
        if let r = parseBody(p, n, &i) { return r }
        return .needMore
    }

    // MARK: - Head

    private enum HeadStep { case more, done, fail(HTTPParseError) }

    private mutating func fail(_ e: HTTPParseError) -> HeadStep {
        state = .failed
        failure = e
        return .fail(e)
    }

    private mutating func failResult(_ e: HTTPParseError) -> Result {
        state = .failed
        failure = e
        return .error(e)
    }

    /// Runs the head states over `p[i..<n]`. Offsets into `head` are `base + j` for
    /// an index `j` of this buffer; bytes `p[seg..<…]` are appended to `head` in bulk.
    private mutating func parseHead(_ p: UnsafePointer<UInt8>, _ n: Int, _ i: inout Int) -> HeadStep {
        var seg = (state == .start || state == .startLF) ? -1 : i
        var base = head.count - i
        scan: while i < n {
            switch state {
            case .start:
                // RFC 9112 §2.2: ignore empty lines received before the request-line.
                let c = p[i]
                if c == CR {
                    state = .startLF
                    i += 1
                } else if c == LF {
                    return fail(.bareLF)
                } else {
                    seg = i
                    base = head.count - i
                    state = .method
                }
            case .startLF:
                guard p[i] == LF else { return fail(.bareCR) }
                i += 1
                emptyLineBytes += 2
                if emptyLineBytes > limits.requestLineBytes { return fail(.invalidRequestLine) }
                state = .start
            case .method:
                // RFC 9112 §3: method = token, then exactly one SP.
                var j = i
                while j < n && isTokenChar(p[j]) { j += 1 }
                i = j
                if j == n { break scan }
                if p[j] == SP && base + j > 0 {
                    methodEnd = base + j
                    state = .targetStart
                    i += 1
                } else {
                    return fail(p[j] == SP ? .invalidRequestLine : .invalidMethod)
                }
            case .targetStart:
                let c = p[i]
                if c > SP && c < 0x7F {
                    targetStart = base + i
                    state = .target
                } else {
                    return fail(c == SP || c == CR || c == LF ? .invalidRequestLine : .invalidTarget)
                }
            case .target:
                // RFC 9112 §3.2: the target contains no whitespace or CTL.
                var j = i
                while j < n && p[j] > SP && p[j] < 0x7F { j += 1 }
                i = j
                if j == n { break scan }
                let c = p[j]
                if c == SP {
                    targetEnd = base + j
                    state = .version
                    versionIndex = 0
                    i += 1
                } else {
                    return fail(c == CR || c == LF ? .invalidRequestLine : .invalidTarget)
                }
            case .version:
                // RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT (case-sensitive).
                let c = p[i]
                switch versionIndex {
                case 0: guard c == UInt8(ascii: "H") else { return fail(.invalidVersion) }
                case 1, 2: guard c == UInt8(ascii: "T") else { return fail(.invalidVersion) }
                case 3: guard c == UInt8(ascii: "P") else { return fail(.invalidVersion) }
                case 4: guard c == UInt8(ascii: "/") else { return fail(.invalidVersion) }
                case 5, 7:
                    guard c >= 0x30 && c <= 0x39 else { return fail(.invalidVersion) }
                    if versionIndex == 5 { major = Int(c - 0x30) } else { minor = Int(c - 0x30) }
                case 6: guard c == UInt8(ascii: ".") else { return fail(.invalidVersion) }
                default:
                    guard c == CR else { return fail(c == LF ? .bareLF : .invalidVersion) }
                    if base + i > limits.requestLineBytes { return fail(.requestLineTooLong) }
                    state = .requestLineLF
                }
                versionIndex += 1
                i += 1
            case .requestLineLF:
                guard p[i] == LF else { return fail(.bareCR) }
                guard major == 1 && minor <= 1 else { return fail(.unsupportedVersion) }
                i += 1
                headerSectionStart = base + i
                state = .fieldLineStart
            case .fieldLineStart:
                let c = p[i]
                if isTokenChar(c) {
                    if fields.count >= limits.headers { return fail(.tooManyHeaders) }
                    nameStart = base + i
                    state = .fieldName
                    i += 1
                } else if c == CR {
                    state = .headEndLF
                    i += 1
                } else if c == SP || c == HT {
                    // RFC 9112 §5.2: obs-fold (and §2.2: whitespace before the first field) → 400.
                    return fail(.obsoleteLineFolding)
                } else if c == LF {
                    return fail(.bareLF)
                } else {
                    return fail(.invalidHeaderName)
                }
            case .fieldName:
                // RFC 9112 §5: field-name ":" OWS field-value OWS; RFC 9112 §5.1: no
                // whitespace between the name and the colon.
                var j = i
                while j < n && isTokenChar(p[j]) { j += 1 }
                i = j
                if j == n { break scan }
                let c = p[j]
                if c == COLON {
                    nameEnd = base + j
                    state = .fieldValueOWS
                    i += 1
                } else if c == SP || c == HT {
                    return fail(.whitespaceBeforeColon)
                } else {
                    return fail(.invalidHeaderName)
                }
            case .fieldValueOWS:
                var j = i
                while j < n && (p[j] == SP || p[j] == HT) { j += 1 }
                i = j
                if j == n { break scan }
                valueStart = base + j
                state = .fieldValue
            case .fieldValue:
                var j = i
                while j < n && isFieldValueChar(p[j]) { j += 1 }
                i = j
                if j == n { break scan }
                let c = p[j]
                if c == CR {
                    fields.append(FieldSpan(nameStart: Int32(nameStart), nameEnd: Int32(nameEnd),
                                            valueStart: Int32(valueStart), valueEnd: Int32(base + j)))
                    state = .fieldLF
                    i += 1
                } else if c == LF {
                    return fail(.bareLF)
                } else {
                    return fail(.invalidHeaderValue)
                }
            case .fieldLF:
                // RFC 9112 §2.2: a bare CR is invalid.
                guard p[i] == LF else { return fail(.bareCR) }
                i += 1
                state = .fieldLineStart
            case .headEndLF:
                guard p[i] == LF else { return fail(.bareCR) }
                i += 1
                if base + i - headerSectionStart > limits.headerBytes { return fail(.headerSectionTooLarge) }
                head.append(contentsOf: UnsafeBufferPointer(start: p + seg, count: i - seg))
                return .done
            default:
                return fail(.invalidRequestLine)
            }
        }
        // End of this buffer inside the head: enforce the limits on what arrived so far.
        if seg >= 0 {
            let pos = base + n
            switch state {
            case .method, .targetStart, .target, .version:
                if pos > limits.requestLineBytes { return fail(.requestLineTooLong) }
            case .fieldLineStart, .fieldName, .fieldValueOWS, .fieldValue, .fieldLF, .headEndLF:
                if pos - headerSectionStart > limits.headerBytes { return fail(.headerSectionTooLarge) }
            default:
                break
            }
            head.append(contentsOf: UnsafeBufferPointer(start: p + seg, count: n - seg))
        }
        return .more
    }

    /// Whether `t` is a request-target of a form a server takes (RFC 9112 §3.2):
    /// origin-form (`/path?query`), absolute-form with an `http` or `https` scheme
    /// (any case), or asterisk-form (`*`) for `OPTIONS` only. Authority-form (for
    /// `CONNECT`, which this server does not proxy) and anything else are refused,
    /// as nginx does (`GET healthz` → `400`).
    static func hasValidTargetForm(_ t: UnsafeBufferPointer<UInt8>, methodIsOPTIONS: Bool) -> Bool {
        guard let first = t.first else { return false }
        if first == UInt8(ascii: "/") { return true }
        if first == UInt8(ascii: "*") { return t.count == 1 && methodIsOPTIONS }
        func hasPrefix(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            guard t.count > n else { return false }  // an authority must follow
            for k in 0..<n where t[k] | 0x20 != s.utf8Start[k] | 0x20 { return false }
            return true
        }
        return hasPrefix("http://") || hasPrefix("https://")
    }

    /// Builds the request from a complete head and decides the framing (RFC 9112 §6.3).
    /// - Returns: a result to hand back at once, or nil to go on with the body.
    private mutating func finishHead(consumed: Int) -> Result? {
        let h = head
        let form = h.withUnsafeBufferPointer { hp in
            HTTPRequestParser.hasValidTargetForm(UnsafeBufferPointer(rebasing: hp[targetStart..<targetEnd]),
                                                 methodIsOPTIONS: methodEnd == 7 && hp[0..<7].elementsEqual("OPTIONS".utf8))
        }
        guard form else { return failResult(.invalidTarget) }
        var hostCount = 0
        var clSeen = false, clInvalid = false, clConflict = false, clHave = false
        var contentLength = 0
        var teSeen = false, teCount = 0, teLastChunked = false, teChunkedNotLast = false
        var connClose = false, connKeepAlive = false
        var expectContinue = false
        var headers = HTTPHeaders()
        headers.storage.reserveCapacity(fields.count)
        var method = "", target = "", path = "", query: String? = nil

        h.withUnsafeBufferPointer { hp in
            method = String(decoding: UnsafeBufferPointer(rebasing: hp[0..<methodEnd]), as: UTF8.self)
            let t = UnsafeBufferPointer(rebasing: hp[targetStart..<targetEnd])
            target = String(decoding: t, as: UTF8.self)
            (path, query) = HTTPRequest.splitTarget(t)
            for f in fields {
                let ns = Int(f.nameStart), ne = Int(f.nameEnd), vs = Int(f.valueStart)
                var ve = Int(f.valueEnd)
                while ve > vs && (hp[ve - 1] == SP || hp[ve - 1] == HT) { ve -= 1 }
                let name = String(decoding: UnsafeBufferPointer(rebasing: hp[ns..<ne]), as: UTF8.self)
                let value = String(decoding: UnsafeBufferPointer(rebasing: hp[vs..<ve]), as: UTF8.self)
                headers.storage.append((name: name, value: value))
                switch ne - ns {
                case 4:
                    if equalsLower(hp, ns, "host") { hostCount += 1 }
                case 6:
                    if equalsLower(hp, ns, "expect") && ve - vs == 12 && equalsLower(hp, vs, "100-continue") {
                        expectContinue = true
                    }
                case 10:
                    if equalsLower(hp, ns, "connection") {
                        forEachListElement(hp, vs, ve) { s, e in
                            if e - s == 5 && equalsLower(hp, s, "close") { connClose = true }
                            if e - s == 10 && equalsLower(hp, s, "keep-alive") { connKeepAlive = true }
                        }
                    }
                case 14:
                    if equalsLower(hp, ns, "content-length") {
                        // RFC 9112 §6.3 / RFC 9110 §8.6: 1*DIGIT; a list of identical values is folded.
                        clSeen = true
                        var any = false
                        forEachListElement(hp, vs, ve, keepEmpty: true) { s, e in
                            any = true
                            guard e > s else { clInvalid = true; return }
                            var v = 0
                            for k in s..<e {
                                let c = hp[k]
                                guard c >= 0x30 && c <= 0x39 else { clInvalid = true; return }
                                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                                let (a, o2) = m.addingReportingOverflow(Int(c - 0x30))
                                if o1 || o2 { clInvalid = true; return }
                                v = a
                            }
                            if clHave && v != contentLength { clConflict = true }
                            contentLength = v
                            clHave = true
                        }
                        if !any { clInvalid = true }
                    }
                case 17:
                    if equalsLower(hp, ns, "transfer-encoding") {
                        // RFC 9112 §6.1: codings in order of application; empty list elements ignored.
                        teSeen = true
                        forEachListElement(hp, vs, ve) { s, e in
                            if teLastChunked { teChunkedNotLast = true }
                            teLastChunked = e - s == 7 && equalsLower(hp, s, "chunked")
                            teCount += 1
                        }
                    }
                default:
                    break
                }
            }
        }

        let versionMinor = minor
        /// A whole head refused: its method and path stay readable (`methodAndPath`).
        func refuseHead(_ e: HTTPParseError) -> Result {
            headMethodAndPath = (method, path)
            return failResult(e)
        }
        // RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host,
        // and to any request with more than one Host field.
        if hostCount > 1 { return refuseHead(.multipleHost) }
        if hostCount == 0 && versionMinor == 1 { return refuseHead(.missingHost) }
        var chunked = false
        if teSeen {
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            if versionMinor == 0 { return refuseHead(.invalidTransferEncoding) }
            // RFC 9112 §6.1 / §6.3 (3): Content-Length with Transfer-Encoding is rejected.
            if clSeen { return refuseHead(.contentLengthWithTransferEncoding) }
            if teCount == 0 || teChunkedNotLast { return refuseHead(.invalidTransferEncoding) }
            // Only a lone "chunked" is implemented (nginx answers 501 likewise).
            if !teLastChunked || teCount > 1 { return refuseHead(.unsupportedTransferEncoding) }
            chunked = true
        } else if clSeen {
            // RFC 9112 §6.3 (5): an invalid Content-Length is an unrecoverable error.
            if clInvalid { return refuseHead(.invalidContentLength) }
            if clConflict { return refuseHead(.conflictingContentLength) }
            if contentLength > limits.bodyBytes { return refuseHead(.bodyTooLarge) }
        }

        // RFC 9112 §9.3: persistence.
        let keepAlive = versionMinor == 1 ? !connClose : (connKeepAlive && !connClose)
        let request = HTTPRequest(method: method, target: target, path: path, query: query,
                                  headers: headers, body: [], keepAlive: keepAlive,
                                  versionMinor: versionMinor)
        resetHead()

        if chunked {
            chunkValue = 0; chunkDigits = 0; chunkLineBytes = 0
            state = .chunkSize
        } else if contentLength > 0 {
            // Room for what is announced, up to 64 KiB: a larger body grows as it
            // arrives, so a head announcing a megabyte reserves no megabyte before any
            // of it came (address space a crowd of such heads would exhaust).
            body.reserveCapacity(min(contentLength, HTTPRequestParser.bodyReservationLimit))
            remaining = contentLength
            state = .body
        } else {
            state = .start
            return .request(consume request, consumed: consumed)
        }
        pending = consume request
        // RFC 9110 §10.1.1: only an HTTP/1.1 client gets 100 (Continue).
        if expectContinue && versionMinor == 1 { return .expectContinue(consumed: consumed) }
        return nil
    }

    private mutating func resetHead() {
        if head.capacity > 8192 { head = [] } else { head.removeAll(keepingCapacity: true) }
        if fields.capacity > 256 { fields = [] } else { fields.removeAll(keepingCapacity: true) }
        emptyLineBytes = 0
        versionIndex = 0
    }

    private mutating func resetRequest() {
        resetHead()
        headMethodAndPath = nil
        pending = nil
        body = []
        remaining = 0
    }

    // MARK: - Body

    private mutating func complete(consumed: Int) -> Result {
        var r = pending.take()!
        swap(&r.body, &body)
        state = .start
        return .request(r, consumed: consumed)
    }

    /// Runs the body states over `p[i..<n]`.
    /// - Returns: a result, or nil when every byte was consumed and more are needed.
    private mutating func parseBody(_ p: UnsafePointer<UInt8>, _ n: Int, _ i: inout Int) -> Result? {
        while i < n {
            switch state {
            case .body, .chunkData:
                let take = min(remaining, n - i)
                body.append(contentsOf: UnsafeBufferPointer(start: p + i, count: take))
                i += take
                remaining -= take
                if remaining == 0 {
                    if state == .body { return complete(consumed: i) }
                    state = .chunkDataCR
                }
            case .chunkSize:
                // RFC 9112 §7.1: chunk-size = 1*HEXDIG, then [ chunk-ext ] CRLF.
                let c = p[i]
                if let h = hexValue(c) {
                    if chunkValue > (Int.max >> 4) { return failResult(.invalidChunkSize) }
                    chunkValue = chunkValue << 4 | h
                    chunkDigits += 1
                } else if chunkDigits == 0 {
                    return failResult(.invalidChunkSize)
                } else if c == SEMI {
                    state = .chunkExt
                } else if c == SP || c == HT {
                    state = .chunkSizeBWS
                } else if c == CR {
                    state = .chunkSizeLF
                } else {
                    return failResult(c == LF ? .bareLF : .invalidChunkSize)
                }
                i += 1
                chunkLineBytes += 1
                if chunkLineBytes > maxChunkLineBytes { return failResult(.invalidChunkSize) }
            case .chunkSizeBWS:
                // RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ).
                let c = p[i]
                if c == SEMI {
                    state = .chunkExt
                } else if c != SP && c != HT {
                    return failResult(.invalidChunkSize)
                }
                i += 1
                chunkLineBytes += 1
                if chunkLineBytes > maxChunkLineBytes { return failResult(.invalidChunkSize) }
            case .chunkExt:
                // RFC 9112 §7.1.1: extensions are allowed and ignored.
                var j = i
                while j < n && p[j] != CR && isFieldValueChar(p[j]) { j += 1 }
                chunkLineBytes += j - i
                i = j
                if chunkLineBytes > maxChunkLineBytes { return failResult(.invalidChunkSize) }
                if j == n { break }
                let c = p[j]
                if c == CR {
                    state = .chunkSizeLF
                    i += 1
                } else {
                    return failResult(c == LF ? .bareLF : .invalidChunkSize)
                }
            case .chunkSizeLF:
                guard p[i] == LF else { return failResult(.bareCR) }
                i += 1
                if chunkValue == 0 {
                    // RFC 9112 §7.1.2: the last chunk, then a trailer section (accepted, dropped).
                    trailerBytes = 0
                    trailerFields = 0
                    state = .trailerLineStart
                } else {
                    if chunkValue > limits.bodyBytes - body.count { return failResult(.bodyTooLarge) }
                    remaining = chunkValue
                    state = .chunkData
                }
            case .chunkDataCR:
                guard p[i] == CR else { return failResult(.missingChunkCRLF) }
                i += 1
                state = .chunkDataLF
            case .chunkDataLF:
                guard p[i] == LF else { return failResult(.missingChunkCRLF) }
                i += 1
                chunkValue = 0; chunkDigits = 0; chunkLineBytes = 0
                state = .chunkSize
            case .trailerLineStart, .trailerName, .trailerValue, .trailerLF, .trailerEndLF:
                let c = p[i]
                trailerBytes += 1
                if trailerBytes > limits.headerBytes { return failResult(.headerSectionTooLarge) }
                i += 1
                switch state {
                case .trailerLineStart:
                    if isTokenChar(c) {
                        trailerFields += 1
                        if trailerFields > limits.headers { return failResult(.tooManyHeaders) }
                        state = .trailerName
                    } else if c == CR {
                        state = .trailerEndLF
                    } else if c == SP || c == HT {
                        return failResult(.obsoleteLineFolding)
                    } else {
                        return failResult(c == LF ? .bareLF : .invalidHeaderName)
                    }
                case .trailerName:
                    if c == COLON {
                        state = .trailerValue
                    } else if c == SP || c == HT {
                        return failResult(.whitespaceBeforeColon)
                    } else if !isTokenChar(c) {
                        return failResult(.invalidHeaderName)
                    }
                case .trailerValue:
                    if c == CR {
                        state = .trailerLF
                    } else if c == LF {
                        return failResult(.bareLF)
                    } else if !isFieldValueChar(c) {
                        return failResult(.invalidHeaderValue)
                    }
                case .trailerLF:
                    guard c == LF else { return failResult(.bareCR) }
                    state = .trailerLineStart
                default: // .trailerEndLF
                    guard c == LF else { return failResult(.bareCR) }
                    return complete(consumed: i)
                }
            default:
                return failResult(failure ?? .invalidRequestLine)
            }
        }
        return nil
    }
}

/// Whether `hp[start..<start+literal.count]`, ASCII-lowercased, equals `literal` (lowercase).
@inline(__always)
private func equalsLower(_ hp: UnsafeBufferPointer<UInt8>, _ start: Int, _ literal: StaticString) -> Bool {
    let n = literal.utf8CodeUnitCount
    guard start + n <= hp.count else { return false }
    let l = literal.utf8Start
    for k in 0..<n where asciiLower(hp[start + k]) != l[k] { return false }
    return true
}

/// Calls `body(start, end)` for each element of a comma-separated list in
/// `hp[from..<to]`, with optional whitespace trimmed (RFC 9110 §5.6.1). Empty
/// elements are skipped unless `keepEmpty`.
@inline(__always)
private func forEachListElement(_ hp: UnsafeBufferPointer<UInt8>, _ from: Int, _ to: Int, keepEmpty: Bool = false,
                                _ body: (Int, Int) -> Void) {
    var s = from
    while s <= to {
        var e = s
        while e < to && hp[e] != COMMA { e += 1 }
        var a = s, b = e
        while a < b && (hp[a] == SP || hp[a] == HT) { a += 1 }
        while b > a && (hp[b - 1] == SP || hp[b - 1] == HT) { b -= 1 }
        if b > a || keepEmpty { body(a, b) }
        s = e + 1
    }
}
