// The loaded, validated set of routes and request matching.

/// The result of matching a request against a ``RouteTable``.
public enum RouteMatch: Sendable {
    /// A route answers this method and path; `params` are the path parameters
    /// (`(name, percent-decoded value)`, in pattern order).
    case matched(Route, params: [(String, String)])
    /// Some route has this path but none answers the method: answer `405` with an `Allow`
    /// header listing `allow` (sorted; includes `HEAD` where `GET` is allowed).
    case methodNotAllowed(allow: [String])
    /// A route answers this method and its pattern's literal segments match, but the
    /// path parameter `name`'s segment (`raw`, as sent) has a malformed `%` escape or is
    /// not UTF-8 once percent-decoded, and no other route matches: answer `400` (the
    /// value would reach templates altered).
    case invalidParameter(name: String, raw: String)
    /// No route has this path: answer `404`.
    case notFound
}

/// An immutable, validated set of routes; safe to share between threads and to swap
/// atomically on reload.
///
/// Matching splits the request path once (on the stack), looks only at patterns with the
/// same number of segments, and tries them from the most specific (literal segments before
/// parameters, left to right); it allocates nothing but the parameters of a match.
public struct RouteTable: Sendable {
    /// The routes in load order (files sorted by name).
    public let routes: [Route]
    /// Every route's ``Route/secrets`` (`{{env.*}}` values of at least
    /// ``Template/minimumSecretBytes`` bytes), unique, longest first: redact these from
    /// anything logged or returned.
    public let secrets: [String]

    /// Patterns grouped by segment count (index), most specific first.
    let buckets: [[PathEntry]]

    /// All routes sharing one path shape (e.g. `/checkout/{}`), one per method.
    struct PathEntry: Sendable {
        let pattern: PathPattern
        var methods: [String]
        var routeIndexes: [Int]
        var allow: [String] = []
    }

    /// Builds a table from parsed routes, checking what spans files.
    ///
    /// - Throws: ``RouteLoadError`` when two routes share a `name`, or a method and path
    ///   shape (`/a/{x}` and `/a/{y}` are the same path). The problem is reported on the
    ///   later route's file and names the earlier file.
    public init(routes: [Route]) throws(RouteLoadError) {
        var problems: [String] = []
        var names: [String: Route] = [:]
        var entries: [String: PathEntry] = [:]
        var order: [String] = []
        for (index, route) in routes.enumerated() {
            if let other = names[route.name] {
                problems.append("\(route.file): name: duplicate route name '\(route.name)' (also in \(other.file))")
            } else {
                names[route.name] = route
            }
            let shape = route.path.shape
            if var entry = entries[shape] {
                if let i = entry.methods.firstIndex(of: route.method) {
                    let other = routes[entry.routeIndexes[i]]
                    let same = other.path.source == route.path.source ? "" : " (as \(other.method) \(other.path.source))"
                    problems.append("\(route.file): path: \(route.method) \(route.path.source) is also defined in \(other.file)\(same)")
                } else {
                    entry.methods.append(route.method)
                    entry.routeIndexes.append(index)
                    entries[shape] = entry
                }
            } else {
                entries[shape] = PathEntry(pattern: route.path, methods: [route.method], routeIndexes: [index])
                order.append(shape)
            }
        }
        if !problems.isEmpty { throw RouteLoadError(problems: problems) }

        var maxSegments = 0
        for route in routes { maxSegments = max(maxSegments, route.path.segments.count) }
        var buckets = Array(repeating: [PathEntry](), count: maxSegments + 1)
        for shape in order {
            var entry = entries[shape]!
            var allow = Set(entry.methods)
            if allow.contains("GET") { allow.insert("HEAD") }
            entry.allow = allow.sorted()
            buckets[entry.pattern.segments.count].append(entry)
        }
        for i in buckets.indices {
            buckets[i].sort { a, b in
                for (x, y) in zip(a.pattern.segments, b.pattern.segments) {
                    switch (x, y) {
                    case (.literal, .parameter): return true
                    case (.parameter, .literal): return false
                    default: continue
                    }
                }
                return a.pattern.source < b.pattern.source
            }
        }
        self.routes = routes
        self.buckets = buckets
        var seen: Set<String> = []
        var secrets: [String] = []
        for route in routes {
            for s in route.secrets where seen.insert(s).inserted { secrets.append(s) }
        }
        self.secrets = secrets.sorted { $0.utf8.count != $1.utf8.count ? $0.utf8.count > $1.utf8.count : $0 < $1 }
    }

    /// The route named `name`, or `nil`.
    public func route(named name: String) -> Route? { routes.first { $0.name == name } }

    /// Finds the route for a request.
    ///
    /// - Parameters:
    ///   - method: the request method, case-sensitive (`HEAD` also matches `GET` routes).
    ///   - path: the request target's path; a query string after `?` is ignored.
    /// - Returns: the route and its parameters, `.invalidParameter` when the only routes
    ///   for the method and path have a parameter that is not valid percent-encoded UTF-8,
    ///   `.methodNotAllowed` when the path exists only for other methods, or `.notFound`.
    ///   When several patterns match the path, the most specific one that answers the
    ///   method wins.
    public func match(method: String, path: String) -> RouteMatch {
        var path = path
        return path.withUTF8 { buffer in
            withSegments(of: buffer, maxSegments: buckets.count - 1) { count, starts, ends in
                match(method: method, buffer, bucket: buckets[count], starts, ends)
            } ?? .notFound
        }
    }

    private func match(method: String, _ path: UnsafeBufferPointer<UInt8>, bucket: [PathEntry],
                       _ starts: UnsafeMutableBufferPointer<Int>, _ ends: UnsafeMutableBufferPointer<Int>) -> RouteMatch {
        var allow: [String]?
        var invalid: RouteMatch?
        for entry in bucket {
            guard entry.pattern.literalsMatch(path, starts, ends) else { continue }
            var slot = entry.methods.firstIndex(of: method)
            if slot == nil && method == "HEAD" { slot = entry.methods.firstIndex(of: "GET") }
            if let slot {
                let route = routes[entry.routeIndexes[slot]]
                switch route.path.decodeParameters(path, starts, ends) {
                case .decoded(let params): return .matched(route, params: params)
                case .invalid(let name, let raw): if invalid == nil { invalid = .invalidParameter(name: name, raw: raw) }
                }
                continue
            }
            if allow == nil {
                allow = entry.allow
            } else {
                allow = Array(Set(allow! + entry.allow)).sorted()
            }
        }
        if let invalid { return invalid }
        if let allow { return .methodNotAllowed(allow: allow) }
        return .notFound
    }
}
