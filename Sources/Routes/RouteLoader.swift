import JSON

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Everything wrong with a set of route files.
public struct RouteLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// One line per problem, `file: field: message`, in file order.
    ///
    /// `file` is the file's name as given to the loader (e.g. `routes/checkout.json`), or
    /// the directory for directory-level problems. `field` is the path of the offending
    /// value in the file: member names joined by `.`, array positions as `[i]` (the
    /// position in the file, not the run order), and a member name that is not a plain
    /// `[A-Za-z0-9_-]+` as `["name"]`, e.g. `steps[1].retry.on[2]` or
    /// `steps[2].when["steps.payment.body.status"]`. `(file)` and `(directory)` stand for
    /// the whole file or directory.
    public let problems: [String]

    /// Creates an error from problem lines.
    public init(problems: [String]) { self.problems = problems }

    /// The problems, one per line.
    public var description: String { problems.joined(separator: "\n") }
}

/// Reads, validates and compiles route files (SPEC §2).
///
/// Defaults applied to absent fields: `wait` 10 s, `max_wait` max(`wait`, 30 s), step
/// `timeout` 10 s, `request.method` `GET`, `retry.backoff` 100 ms, `retry.on` 502, 503,
/// 504, `timeout` and `connect`, `optional` false, `response.status` 200. A route may have
/// no steps only when it has a `response`.
public enum RouteLoader {
    /// `wait` when a route file has none: 10 s.
    public static let defaultWait: Duration = .seconds(10)
    /// The floor of `max_wait` when a route file has none: 30 s (or `wait`, if longer).
    public static let defaultMaxWait: Duration = .seconds(30)
    /// A step's `timeout` when it has none: 10 s.
    public static let defaultTimeout: Duration = .seconds(10)
    /// `retry.backoff` when absent: 100 ms.
    public static let defaultBackoff: Duration = .milliseconds(100)
    /// The most attempts `retry.attempts` allows: 10.
    public static let maxAttempts = 10
    /// First path segments the gateway serves itself; a route may not start with them.
    public static let reservedPathSegments: Set<String> = ["jobs", "callbacks", "healthz", "readyz", "metrics"]
    /// Headers the gateway or the HTTP layer sets; a route may not set them.
    public static let managedHeaders: Set<String> = [
        "content-length", "transfer-encoding", "connection", "host", "te", "upgrade", "keep-alive", "trailer",
    ]

    /// Loads every `*.json` file in `directory` (not recursive; other files are ignored),
    /// in name order.
    ///
    /// - Parameters:
    ///   - directory: the routes directory, e.g. `routes`; file names in problems and in
    ///     ``Route/file`` are `directory/NAME.json`.
    ///   - environment: values for `{{env.NAME}}` (normally the process environment).
    /// - Throws: ``RouteLoadError`` with every problem found: an unreadable or empty
    ///   directory (`no route files`), unreadable or invalid files, and clashes between files.
    public static func load(directory: String, environment: [String: String]) throws(RouteLoadError) -> RouteTable {
        let names: [String]
        switch listJSONFiles(directory) {
        case .success(let list): names = list
        case .failure(let message): throw RouteLoadError(problems: ["\(directory): (directory): \(message)"])
        }
        guard !names.isEmpty else { throw RouteLoadError(problems: ["\(directory): (directory): no route files (*.json)"]) }
        var files: [(name: String, data: [UInt8])] = []
        var problems: [String] = []
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        for name in names {
            let path = prefix + name
            switch readFile(path) {
            case .success(let data): files.append((path, data))
            case .failure(let message): problems.append("\(path): (file): \(message)")
            }
        }
        do throws(RouteLoadError) {
            let table = try load(files: files, environment: environment)
            if problems.isEmpty { return table }
        } catch {
            problems += error.problems
        }
        throw RouteLoadError(problems: problems)
    }

    /// Loads route files already in memory (in the order given).
    ///
    /// - Throws: ``RouteLoadError`` with the problems of every file, then clashes between files.
    public static func load(files: [(name: String, data: [UInt8])], environment: [String: String]) throws(RouteLoadError) -> RouteTable {
        var routes: [Route] = []
        var problems: [String] = []
        for file in files {
            do throws(RouteLoadError) {
                routes.append(try parse(file: file.name, data: file.data, environment: environment))
            } catch {
                problems += error.problems
            }
        }
        do throws(RouteLoadError) {
            let table = try RouteTable(routes: routes)
            if problems.isEmpty { return table }
        } catch {
            problems += error.problems
        }
        throw RouteLoadError(problems: problems)
    }

    /// Parses and validates one route file.
    ///
    /// - Parameters:
    ///   - file: the name used in problems and ``Route/file``, e.g. `routes/checkout.json`.
    ///   - data: the file's bytes (JSON).
    ///   - environment: values for `{{env.NAME}}`.
    /// - Throws: ``RouteLoadError`` listing every problem in the file.
    public static func parse(file: String, data: [UInt8], environment: [String: String]) throws(RouteLoadError) -> Route {
        var parser = RouteFileParser(file: file, environment: environment)
        let json: JSON
        do {
            json = try JSON.parse(data)
        } catch {
            throw RouteLoadError(problems: ["\(file): (file): not valid JSON: \(error.message) at byte \(error.offset)"])
        }
        let route = parser.parseRoute(json)
        if let route, parser.problems.isEmpty { return route }
        throw RouteLoadError(problems: parser.problems)
    }

    /// What `switchboard check` prints: one line per route,
    /// `NAME  METHOD PATH  steps=N  critical path T (a → b → c)`, columns aligned, e.g.
    /// `checkout  POST /checkout/{order_id}  steps=3  critical path 65.6s (payment → fulfillment)`.
    /// The critical path is ``Route/criticalPath`` formatted by ``formatDuration(_:)``.
    public static func checkReport(_ table: RouteTable) -> String {
        let nameWidth = table.routes.map { $0.name.count }.max() ?? 0
        let targets = table.routes.map { "\($0.method) \($0.path.source)" }
        let targetWidth = targets.map(\.count).max() ?? 0
        var lines: [String] = []
        for (route, target) in zip(table.routes, targets) {
            let chain = route.criticalPathSteps.isEmpty
                ? "no steps" : route.criticalPathSteps.map { route.steps[$0].id }.joined(separator: " → ")
            lines.append(pad(route.name, nameWidth) + "  " + pad(target, targetWidth) + "  steps=\(route.steps.count)"
                + "  critical path \(formatDuration(route.criticalPath)) (\(chain))")
        }
        return lines.joined(separator: "\n")
    }

    private static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    // MARK: Files

    private static func listJSONFiles(_ directory: String) -> Result<[String], LoadFailure> {
        guard let dir = opendir(directory) else { return .failure(LoadFailure("cannot read directory: \(errnoText())")) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            guard name.hasSuffix(".json"), !name.hasPrefix(".") else { continue }
            var info = stat()
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            names.append(name)
        }
        return .success(names.sorted())
    }

    private static func readFile(_ path: String) -> Result<[UInt8], LoadFailure> {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return .failure(LoadFailure("cannot read file: \(errnoText())")) }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(LoadFailure("cannot read file: \(errnoText())"))
            }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        return .success(data)
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}

/// A message for a file-system failure.
struct LoadFailure: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

// MARK: - One file

/// Parses one route file's JSON, collecting every problem.
struct RouteFileParser {
    let file: String
    let environment: [String: String]
    var problems: [String] = []
    var secrets: [String] = []
    var readsRequestBody = false
    var readsRequestQuery = false

    // Step graph state, in file positions ("orig" indexes).
    var stepIDs: [String?] = []
    var sortedPosition: [Int] = []  // orig → run order
    var originalIndex: [Int] = []  // run order → orig
    var dependencies: [Set<Int>] = []  // orig → transitive deps (orig), when the graph is valid
    var graphValid = false
    var pathParameters: Set<String>?  // nil when the path is invalid (skip those checks)
    var pathSource = ""

    init(file: String, environment: [String: String]) {
        self.file = file
        self.environment = environment
    }

    mutating func problem(_ field: String, _ message: String) {
        problems.append("\(file): \(field): \(message)")
    }

    // MARK: Field helpers

    mutating func checkFields(_ object: JSONObject, allowed: [String], at base: String) {
        for key in object.keys where !allowed.contains(key) {
            var message = "unknown field"
            if let suggestion = allowed.min(by: { editDistance($0, key) < editDistance($1, key) }),
               editDistance(suggestion, key) <= 2 {
                message += " (did you mean '\(suggestion)'?)"
            }
            problem(fieldPath(base, key), message)
        }
    }

    mutating func string(_ object: JSONObject, _ key: String, at base: String, required: Bool = false) -> String? {
        guard let value = object[key] else {
            if required { problem(fieldPath(base, key), "missing required field") }
            return nil
        }
        guard case .string(let s) = value else {
            problem(fieldPath(base, key), "expected a string")
            return nil
        }
        return s
    }

    /// `.absent`, `.invalid` (problem reported) or the duration.
    enum DurationField {
        case absent, invalid, value(Duration)
    }

    mutating func duration(_ object: JSONObject, _ key: String, at base: String) -> DurationField {
        guard let value = object[key] else { return .absent }
        let field = fieldPath(base, key)
        guard case .string(let s) = value else {
            problem(field, "expected a duration string such as \"500ms\", \"2s\" or \"5m\"")
            return .invalid
        }
        guard let d = parseDuration(s) else {
            problem(field, "invalid duration \(JSON.string(s).text) (use a number and a unit: ms, s, m or h, e.g. \"500ms\")")
            return .invalid
        }
        return .value(d)
    }

    mutating func integer(_ value: JSON, at field: String) -> Int? {
        guard let i = value.intValue, let n = Int(exactly: i) else {
            problem(field, "expected an integer")
            return nil
        }
        return n
    }

    // MARK: Route

    mutating func parseRoute(_ json: JSON) -> Route? {
        guard case .object(let root) = json else {
            problem("(file)", "expected a JSON object (a route with name, method, path and steps)")
            return nil
        }
        checkFields(root, allowed: ["name", "method", "path", "wait", "max_wait", "steps", "response"], at: "")

        let name = string(root, "name", at: "", required: true)
        if let name, !isRouteName(name) {
            problem("name", "invalid route name \(JSON.string(name).text) (use letters, digits, '_', '-' and '.')")
        }
        let method = string(root, "method", at: "", required: true)
        if let method { checkMethod(method, at: "method") }

        var pattern: PathPattern?
        if let source = string(root, "path", at: "", required: true) {
            do {
                let p = try PathPattern(source)
                if case .literal(let first)? = p.segments.first, RouteLoader.reservedPathSegments.contains(first) {
                    problem("path", "/\(first) is served by the gateway itself")
                } else {
                    pattern = p
                }
            } catch {
                problem("path", error.message)
            }
        }
        pathParameters = pattern.map { Set($0.parameterNames) }
        pathSource = pattern?.source ?? ""

        let waitField = duration(root, "wait", at: "")
        let maxWaitField = duration(root, "max_wait", at: "")
        var wait = RouteLoader.defaultWait
        if case .value(let w) = waitField { wait = w }
        var maxWait = max(wait, RouteLoader.defaultMaxWait)
        if case .value(let m) = maxWaitField {
            maxWait = m
            if case .invalid = waitField {} else if wait > m {
                problem("wait", "\(formatDuration(wait)) is longer than max_wait (\(formatDuration(m)))")
            }
        }

        // Steps: the graph first (ids, after, order), then each step with its templates.
        var stepObjects: [JSONObject?] = []
        let hasResponse = root["response"] != nil
        if let steps = root["steps"] {
            if case .array(let elements) = steps {
                for (i, element) in elements.enumerated() {
                    if case .object(let o) = element {
                        stepObjects.append(o)
                    } else {
                        problem("steps[\(i)]", "expected an object")
                        stepObjects.append(nil)
                    }
                }
                if elements.isEmpty && !hasResponse {
                    problem("steps", "a route needs at least one step (or a response)")
                }
            } else {
                problem("steps", "expected an array")
            }
        } else if !hasResponse {
            problem("steps", "missing required field")
        }
        let afterLists = parseGraph(stepObjects)
        let stepIndexes: [String: Int] = {
            var map: [String: Int] = [:]
            for (orig, id) in stepIDs.enumerated() { if let id, map[id] == nil { map[id] = sortedPosition[orig] } }
            return map
        }()
        let compiler = TemplateCompiler(environment: environment, stepIndexes: stepIndexes)

        var parsedSteps: [Step?] = Array(repeating: nil, count: stepObjects.count)
        var dependents: [[Int]] = Array(repeating: [], count: stepObjects.count)
        for orig in stepObjects.indices {
            for dep in afterLists[orig] { dependents[sortedPosition[dep]].append(sortedPosition[orig]) }
        }
        for (orig, object) in stepObjects.enumerated() {
            guard let object else { continue }
            parsedSteps[sortedPosition[orig]] = parseStep(object, orig: orig, after: afterLists[orig],
                                                          dependents: dependents[sortedPosition[orig]].sorted(),
                                                          compiler: compiler)
        }

        var response: ResponseSpec?
        if let r = root["response"] {
            if case .object(let o) = r {
                response = parseResponse(o, compiler: compiler)
            } else {
                problem("response", "expected an object")
            }
        }

        guard problems.isEmpty, let name, let method, let pattern else { return nil }
        let steps = parsedSteps.compactMap { $0 }
        guard steps.count == stepObjects.count else { return nil }
        let (critical, chain) = criticalPath(steps)
        var uniqueSecrets: [String] = []
        for s in secrets where !uniqueSecrets.contains(s) { uniqueSecrets.append(s) }
        return Route(name: name, method: method, path: pattern, wait: wait, maxWait: maxWait, steps: steps,
                     response: response, file: file, readsRequestBody: readsRequestBody, readsRequestQuery: readsRequestQuery,
                     criticalPath: critical, criticalPathSteps: chain, secrets: uniqueSecrets)
    }

    mutating func checkMethod(_ method: String, at field: String) {
        let ok = isToken(method) && !method.utf8.contains(where: { $0 >= 0x61 && $0 <= 0x7A })
        if !ok { problem(field, "invalid method \(JSON.string(method).text) (expected an uppercase token such as GET or POST)") }
    }

    // MARK: Graph

    /// Reads step ids and `after` lists, orders the steps and computes transitive
    /// dependencies. Returns each step's direct dependencies (orig indexes).
    mutating func parseGraph(_ objects: [JSONObject?]) -> [[Int]] {
        let n = objects.count
        var firstIndex: [String: Int] = [:]
        stepIDs = []
        for (i, object) in objects.enumerated() {
            guard let object else {
                stepIDs.append(nil)
                continue
            }
            let base = "steps[\(i)]"
            let id = string(object, "id", at: base, required: true)
            if let id {
                if !isStepID(id) {
                    problem(base + ".id", "invalid step id \(JSON.string(id).text) (use letters, digits, '_' and '-')")
                } else if let other = firstIndex[id] {
                    problem(base + ".id", "duplicate step id '\(id)' (also steps[\(other)])")
                } else {
                    firstIndex[id] = i
                }
            }
            stepIDs.append(id)
        }

        var afterLists: [[Int]] = Array(repeating: [], count: n)
        var graphProblems = false
        for (i, object) in objects.enumerated() {
            guard let object, let after = object["after"] else { continue }
            let base = "steps[\(i)].after"
            guard case .array(let entries) = after else {
                problem(base, "expected an array of step ids")
                graphProblems = true
                continue
            }
            for (k, entry) in entries.enumerated() {
                guard case .string(let name) = entry else {
                    problem("\(base)[\(k)]", "expected a step id (a string)")
                    graphProblems = true
                    continue
                }
                guard let dep = firstIndex[name] else {
                    problem("\(base)[\(k)]", "unknown step '\(name)'")
                    graphProblems = true
                    continue
                }
                if afterLists[i].contains(dep) {
                    problem("\(base)[\(k)]", "'\(name)' is listed twice")
                    continue
                }
                afterLists[i].append(dep)
            }
        }

        // Cycles (depth-first; each back edge names one cycle, in run order).
        var color = Array(repeating: 0, count: n)  // 0 new, 1 on stack, 2 done
        var stack: [Int] = []
        var cycles: [[Int]] = []
        func visit(_ v: Int) {
            color[v] = 1
            stack.append(v)
            for d in afterLists[v] {
                if color[d] == 0 {
                    visit(d)
                } else if color[d] == 1, let start = stack.firstIndex(of: d) {
                    // stack[start...] waits for each next one; run order is the reverse.
                    var cycle = Array(stack[start...].reversed())
                    let smallest = cycle.indices.min { cycle[$0] < cycle[$1] }!
                    cycle = Array(cycle[smallest...] + cycle[..<smallest])
                    cycles.append(cycle)
                }
            }
            stack.removeLast()
            color[v] = 2
        }
        for v in 0..<n where color[v] == 0 { visit(v) }
        var reported: Set<[Int]> = []
        for cycle in cycles where reported.insert(cycle).inserted {
            let names = (cycle + [cycle[0]]).map { stepIDs[$0] ?? "?" }
            problem("steps[\(cycle[0])].after", "dependency cycle " + names.joined(separator: " → "))
        }
        graphValid = cycles.isEmpty && !graphProblems

        // Stable topological order (Kahn, lowest file position first).
        sortedPosition = Array(0..<n)
        originalIndex = Array(0..<n)
        dependencies = Array(repeating: [], count: n)
        guard cycles.isEmpty else { return afterLists }
        var placed = Array(repeating: false, count: n)
        var order: [Int] = []
        while order.count < n {
            guard let next = (0..<n).first(where: { v in !placed[v] && afterLists[v].allSatisfy { placed[$0] } }) else { break }
            placed[next] = true
            order.append(next)
        }
        for (position, orig) in order.enumerated() {
            sortedPosition[orig] = position
            originalIndex[position] = orig
            var deps = Set(afterLists[orig])
            for d in afterLists[orig] { deps.formUnion(dependencies[d]) }
            dependencies[orig] = deps
        }
        return afterLists
    }

    // MARK: Step

    mutating func parseStep(_ object: JSONObject, orig: Int, after: [Int], dependents: [Int],
                            compiler: TemplateCompiler) -> Step? {
        let base = "steps[\(orig)]"
        let start = problems.count
        checkFields(object, allowed: ["id", "request", "timeout", "retry", "after", "when", "success", "optional"], at: base)
        let scope = Scope.step(orig)

        var request: RequestSpec?
        if let r = object["request"] {
            if case .object(let o) = r {
                request = parseRequest(o, at: base + ".request", scope: scope, compiler: compiler)
            } else {
                problem(base + ".request", "expected an object")
            }
        } else {
            problem(base + ".request", "missing required field")
        }

        var timeout = RouteLoader.defaultTimeout
        if case .value(let t) = duration(object, "timeout", at: base) {
            if t <= .zero { problem(base + ".timeout", "must be greater than 0") }
            timeout = t
        }

        var retry: RetryPolicy?
        if let r = object["retry"] {
            if case .object(let o) = r {
                retry = parseRetry(o, at: base + ".retry")
            } else {
                problem(base + ".retry", "expected an object")
            }
        }

        var conditions: [Condition] = []
        if let w = object["when"] {
            if case .object(let o) = w {
                for (key, value) in o {
                    if let c = parseCondition(key: key, value: value, at: fieldPath(base + ".when", key), orig: orig, compiler: compiler) {
                        conditions.append(c)
                    }
                }
            } else {
                problem(base + ".when", "expected an object of \"steps.ID.…\": value conditions")
            }
        }

        var success: Set<Int>?
        if let s = object["success"] {
            if case .array(let entries) = s, !entries.isEmpty {
                var set: Set<Int> = []
                for (k, entry) in entries.enumerated() {
                    guard let status = integer(entry, at: "\(base).success[\(k)]") else { continue }
                    if (100...599).contains(status) {
                        set.insert(status)
                    } else {
                        problem("\(base).success[\(k)]", "status must be between 100 and 599")
                    }
                }
                success = set
            } else {
                problem(base + ".success", "expected a non-empty array of statuses")
            }
        }

        var optional = false
        if let o = object["optional"] {
            if case .bool(let b) = o { optional = b } else { problem(base + ".optional", "expected true or false") }
        }

        guard problems.count == start, let id = stepIDs[orig], let request else { return nil }
        return Step(id: id, index: sortedPosition[orig], request: request, timeout: timeout, retry: retry,
                    after: after.map { sortedPosition[$0] }.sorted(), dependents: dependents, when: conditions,
                    success: success, optional: optional)
    }

    mutating func parseRequest(_ object: JSONObject, at base: String, scope: Scope, compiler: TemplateCompiler) -> RequestSpec? {
        let start = problems.count
        checkFields(object, allowed: ["method", "url", "headers", "body"], at: base)
        var method = "GET"
        if let m = string(object, "method", at: base) {
            checkMethod(m, at: base + ".method")
            method = m
        }
        var url: Template?
        if let text = string(object, "url", at: base, required: true) {
            if let template = compileTemplate(text, at: base + ".url", scope: scope, compiler: compiler) {
                if let message = urlProblem(template) { problem(base + ".url", message) } else { url = template }
            }
        }
        let headers = parseHeaders(object["headers"], at: base + ".headers", scope: scope, compiler: compiler)
        var body: TemplateValue?
        if let b = object["body"] {
            body = compileValue(b, at: base + ".body", scope: scope, compiler: compiler)
        }
        guard problems.count == start, let url else { return nil }
        return RequestSpec(method: method, url: url, headers: headers, body: body)
    }

    mutating func parseHeaders(_ value: JSON?, at base: String, scope: Scope, compiler: TemplateCompiler) -> [(name: String, value: Template)] {
        guard let value else { return [] }
        guard case .object(let object) = value else {
            problem(base, "expected an object of header names to strings")
            return []
        }
        var headers: [(name: String, value: Template)] = []
        for (name, v) in object {
            let field = fieldPath(base, name)
            guard isToken(name) else {
                problem(field, "invalid header name")
                continue
            }
            if RouteLoader.managedHeaders.contains(name.lowercased()) {
                problem(field, "\(name) is set by the gateway, not by routes")
                continue
            }
            guard case .string(let text) = v else {
                problem(field, "expected a string")
                continue
            }
            if let template = compileTemplate(text, at: field, scope: scope, compiler: compiler) {
                if template.parts.contains(where: { if case .literal(let s) = $0 { s.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) } else { false } }) {
                    problem(field, "header value contains CR, LF or NUL")
                    continue
                }
                headers.append((name, template))
            }
        }
        return headers
    }

    mutating func parseRetry(_ object: JSONObject, at base: String) -> RetryPolicy? {
        let start = problems.count
        checkFields(object, allowed: ["attempts", "backoff", "within", "on"], at: base)
        var attempts = 1
        if let a = object["attempts"] {
            if let n = integer(a, at: base + ".attempts") {
                if (1...RouteLoader.maxAttempts).contains(n) {
                    attempts = n
                } else {
                    problem(base + ".attempts", "must be between 1 and \(RouteLoader.maxAttempts)")
                }
            }
        } else {
            problem(base + ".attempts", "missing required field")
        }
        var backoff = RouteLoader.defaultBackoff
        if case .value(let b) = duration(object, "backoff", at: base) { backoff = b }
        var within: Duration?
        if case .value(let w) = duration(object, "within", at: base) {
            if w <= .zero { problem(base + ".within", "must be greater than 0") }
            within = w
        }
        var on = RetryOn.default
        if let o = object["on"] {
            if case .array(let entries) = o, !entries.isEmpty {
                var statuses: Set<Int> = []
                var timeout = false, connect = false, proto = false
                for (k, entry) in entries.enumerated() {
                    switch entry {
                    case .string("timeout"): timeout = true
                    case .string("connect"): connect = true
                    case .string("protocol"): proto = true
                    default:
                        if let s = entry.intValue, (100...599).contains(s) {
                            statuses.insert(Int(s))
                        } else {
                            problem("\(base).on[\(k)]", "expected a status (100-599), \"timeout\", \"connect\" or \"protocol\"")
                        }
                    }
                }
                on = RetryOn(statuses: statuses, timeout: timeout, connect: connect, protocol: proto)
            } else {
                problem(base + ".on", "expected a non-empty array of statuses and \"timeout\", \"connect\" or \"protocol\"")
            }
        }
        guard problems.count == start else { return nil }
        return RetryPolicy(attempts: attempts, backoff: backoff, within: within, on: on)
    }

    mutating func parseCondition(key: String, value: JSON, at field: String, orig: Int, compiler: TemplateCompiler) -> Condition? {
        guard key.hasPrefix("steps.") else {
            problem(field, "a condition must read a dependency's result: \"steps.ID.status\", \"steps.ID.body…\" or \"steps.ID.headers.NAME\"")
            return nil
        }
        switch compiler.parseReference(key) {
        case .failure(let error):
            problem(field, error.message)
            return nil
        case .success(.env):
            return nil  // unreachable: the key starts with "steps."
        case .success(.ref(let ref)):
            guard let target = ref.stepIndex else { return nil }
            if !checkDependency(target, from: orig, name: key, at: field) { return nil }
            var path = key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            if case .stepHeader(_, let header) = ref { path = Array(path.prefix(3)) + [header] }
            return Condition(path: path, equals: value, ref: ref)
        }
    }

    mutating func parseResponse(_ object: JSONObject, compiler: TemplateCompiler) -> ResponseSpec? {
        let start = problems.count
        checkFields(object, allowed: ["status", "headers", "body"], at: "response")
        var status = 200
        if let s = object["status"], let n = integer(s, at: "response.status") {
            if (100...599).contains(n) { status = n } else { problem("response.status", "status must be between 100 and 599") }
        }
        let headers = parseHeaders(object["headers"], at: "response.headers", scope: .response, compiler: compiler)
        var body: TemplateValue?
        if let b = object["body"] { body = compileValue(b, at: "response.body", scope: .response, compiler: compiler) }
        guard problems.count == start else { return nil }
        return ResponseSpec(status: status, headers: headers, body: body)
    }

    // MARK: Templates

    /// Where a template sits: in step `orig`'s request, or in the response.
    enum Scope {
        case step(Int)
        case response
    }

    mutating func compileTemplate(_ text: String, at field: String, scope: Scope, compiler: TemplateCompiler) -> Template? {
        switch compiler.compile(text) {
        case .failure(let error):
            report(error, at: field)
            return nil
        case .success(let template):
            return checkReferences(template, at: field, scope: scope) ? template : nil
        }
    }

    mutating func compileValue(_ json: JSON, at field: String, scope: Scope, compiler: TemplateCompiler) -> TemplateValue {
        var errors: [(String, TemplateError)] = []
        let value = TemplateValue.compile(json, field: field, compiler: compiler) { errors.append(($0, $1)) }
        for (f, e) in errors { report(e, at: f) }
        func walk(_ v: TemplateValue, _ f: String, _ parser: inout RouteFileParser) {
            switch v {
            case .literal: break
            case .string(let t): _ = parser.checkReferences(t, at: f, scope: scope)
            case .array(let elements): for (i, e) in elements.enumerated() { walk(e, f + "[\(i)]", &parser) }
            case .object(let members): for (k, m) in members { walk(m, fieldPath(f, k), &parser) }
            }
        }
        walk(value, field, &self)
        return value
    }

    mutating func report(_ error: TemplateError, at field: String) {
        problem(field, error.reference.isEmpty ? error.message : "\(error.message) in {{\(error.reference)}}")
    }

    /// Checks what a compiled template may refer to from where it sits; records secrets and
    /// body use. Returns false when a problem was reported.
    mutating func checkReferences(_ template: Template, at field: String, scope: Scope) -> Bool {
        secrets += template.secretValues
        var ok = true
        for part in template.parts {
            guard case .reference(let ref, let name) = part else { continue }
            switch ref {
            case .requestBody:
                readsRequestBody = true
            case .requestQuery:
                readsRequestQuery = true
            case .requestPath(let parameter):
                if let pathParameters, !pathParameters.contains(parameter) {
                    problem(field, "'\(parameter)' is not a parameter of path \(pathSource) in {{\(name)}}")
                    ok = false
                }
            case .stepIdempotencyKey, .stepRemainingMs:
                if case .response = scope {
                    problem(field, "only available in a step's request, not in the response, in {{\(name)}}")
                    ok = false
                }
            case .stepStatus(let target), .stepBody(let target, _), .stepHeader(let target, _):
                if case .step(let orig) = scope, !checkDependency(target, from: orig, name: "{{\(name)}}", at: field) {
                    ok = false
                }
            default:
                break
            }
        }
        return ok
    }

    /// Whether step `orig` may read step `target` (a run-order index): it must be one of
    /// its (transitive) dependencies. Reports a problem when not.
    mutating func checkDependency(_ target: Int, from orig: Int, name: String, at field: String) -> Bool {
        guard graphValid else { return true }
        let targetOrig = originalIndex[target]
        let targetID = stepIDs[targetOrig] ?? "?"
        if targetOrig == orig {
            problem(field, "a step cannot read its own result in \(name)")
            return false
        }
        if !dependencies[orig].contains(targetOrig) {
            problem(field, "step '\(targetID)' is not a dependency of this step (add it to after) in \(name)")
            return false
        }
        return true
    }

    /// Why a URL template is unsafe or malformed, or nil. Never quotes the URL (it may hold secrets).
    func urlProblem(_ template: Template) -> String? {
        var prefix = ""
        if case .literal(let text)? = template.parts.first { prefix = text }
        for part in template.parts {
            if case .literal(let text) = part, text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) {
                return "URL contains a space or control character"
            }
        }
        let lower = prefix.lowercased()
        let schemeLength: Int
        if lower.hasPrefix("https://") {
            schemeLength = 8
        } else if lower.hasPrefix("http://") {
            schemeLength = 7
        } else if prefix.isEmpty || !prefix.contains("://") && template.parts.count > 1 {
            return "URL must begin with a fixed http:// or https:// scheme and host (only {{env.*}} may come before the path)"
        } else {
            return "URL must start with http:// or https://"
        }
        let rest = prefix.utf8.dropFirst(schemeLength)
        let authority = rest.prefix(while: { $0 != 0x2F && $0 != 0x3F && $0 != 0x23 })
        if authority.count == rest.count && template.parts.count > 1 {
            return "URL host must be fixed: a template value may only come after the host (start the path with '/')"
        }
        let hostPort = authority.split(separator: 0x40, omittingEmptySubsequences: false).last ?? authority[...]
        var host = hostPort[...]
        if hostPort.first == 0x5B {  // [IPv6]:port
            guard let close = hostPort.firstIndex(of: 0x5D) else { return "URL has an invalid host" }
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.first == 0x3A, isPort(after.dropFirst()) else { return "URL has an invalid port" }
            }
            host = hostPort[..<close]
        } else if let colon = hostPort.firstIndex(of: 0x3A) {
            guard isPort(hostPort[hostPort.index(after: colon)...]) else { return "URL has an invalid port" }
            host = hostPort[..<colon]
        }
        if host.isEmpty { return "URL has no host" }
        if hostPort.first != 0x5B {
            // What libcurl refuses at run time (a non-ASCII name fails when curl tries to
            // convert it, others as a bad host name) is refused here, before any call.
            if host.contains(where: { $0 >= 0x80 }) {
                return "URL host has non-ASCII characters, which libcurl refuses (internationalized names are not converted: write the host's ASCII form, xn--…)"
            }
            if host.contains(0x25) { return "URL host must not be percent-encoded" }
            if !host.allSatisfy(isHostNameByte) {
                return "URL host may contain only ASCII letters, digits, '-', '.', '_' and '~'"
            }
        }
        return nil
    }

    /// `[A-Za-z0-9._~-]`: the bytes a step URL's host name may hold (RFC 3986 unreserved).
    func isHostNameByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E
    }

    func isPort(_ digits: Substring.UTF8View.SubSequence) -> Bool {
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return false }
        let value = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return value >= 1 && value <= 65535
    }

    // MARK: Critical path

    func criticalPath(_ steps: [Step]) -> (Duration, [Int]) {
        var finish: [Duration] = []
        var previous: [Int?] = []
        for step in steps {
            var start = Duration.zero
            var from: Int?
            for d in step.after where from == nil || finish[d] > start {
                start = finish[d]
                from = d
            }
            finish.append(start + step.worstCaseDuration)
            previous.append(from)
        }
        guard var last = finish.indices.max(by: { finish[$0] < finish[$1] }) else { return (.zero, []) }
        let total = finish[last]
        var chain = [last]
        while let p = previous[last] {
            chain.append(p)
            last = p
        }
        return (total, chain.reversed())
    }
}

// MARK: - Small helpers

/// `[A-Za-z0-9_.-]+`
func isRouteName(_ text: String) -> Bool {
    !text.isEmpty && text.utf8.allSatisfy {
        ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D || $0 == 0x2E
    }
}

/// `[A-Za-z0-9_-]+`
func isStepID(_ text: String) -> Bool {
    !text.isEmpty && text.utf8.allSatisfy {
        ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D
    }
}

/// Levenshtein distance (for "did you mean" suggestions on short field names).
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.utf8), b = Array(b.utf8)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = Array(repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
