import Crypto
import EventLoop
import Flows
import Foundation
import HTTP1
import JSON
import Jobs
import Locking

/// An operation of the callback endpoints API, decided from the request head.
enum CallbacksOperation {
    /// `GET|HEAD /callbacks`: the caller's endpoints.
    case list
    /// `POST /callbacks {"url": …}`: registers an endpoint.
    case register
    /// `GET|HEAD /callbacks/{id}`.
    case show(String)
    /// `DELETE /callbacks/{id}`.
    case delete(String)
    /// `GET|HEAD /callbacks/{id}/deliveries[?status=…]`.
    case deliveries(String)
}

/// The callback endpoints API (SPEC §4): `POST/GET /callbacks`,
/// `DELETE /callbacks/{id}`, `GET /callbacks/{id}/deliveries?status=failed`,
/// and `POST /jobs/{id}/redeliver`. All on the request's loop thread.
extension Gateway {
    /// Classifies a path under `/callbacks`: one of the API's operations; `405`
    /// (with `Allow`) for a method its resource does not take; `404` for any other
    /// path (`/callbacks/`, `/callbacks/{id}/`, an empty segment, an unknown sub-resource).
    static func callbacksTarget(_ head: HTTPRequest) -> RequestTarget {
        let s = pathSegments(head.path)
        guard !s.contains(where: \.isEmpty) else { return .refused(noSuchResource) }
        let m = head.method
        let read = m == "GET" || m == "HEAD"
        switch s.count {
        case 1 where read: return .callbacks(.list)
        case 1 where m == "POST": return .callbacks(.register)
        case 1: return .refused(notAllowed(head, allow: "GET, HEAD, POST"))
        case 2 where read: return .callbacks(.show(String(s[1])))
        case 2 where m == "DELETE": return .callbacks(.delete(String(s[1])))
        case 2: return .refused(notAllowed(head, allow: "GET, HEAD, DELETE"))
        case 3 where s[2] == "deliveries" && read: return .callbacks(.deliveries(String(s[1])))
        case 3 where s[2] == "deliveries": return .refused(notAllowed(head, allow: "GET, HEAD"))
        default: return .refused(noSuchResource)
        }
    }

    /// Serves one operation of the callbacks API (classified by `callbacksTarget`).
    func handleCallbacks(_ op: CallbacksOperation, _ req: HTTPRequest, _ w: HTTPResponseWriter, caller: String, state: LoopState,
                         requestID: String, start: Instant) {
        let reply: (HTTPResponse) -> Void = { [unowned self] r in
            self.finishRequest(state, w, req, r, route: nil, outcome: r.status < 400 ? "sync" : "error", requestID: requestID, start: start)
        }
        let problem: (Int, String) -> Void = { status, detail in reply(Problem(status: status, detail: detail).httpResponse) }
        switch op {
        case .list:
            let list = endpoints.list(owner: caller).map { $0.json(includingSecret: false) }
            reply(HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: JSON.object(["callbacks": .array(list)]).serialized))
        case .register:
            guard case .object(let o)? = try? JSON.parse(req.body), case .string(let url)? = o["url"] else {
                return problem(400, "send {\"url\": \"https://…\"}")
            }
            for k in o.keys where k != "url" { return problem(400, "unknown field \(k)") }
            guard endpoints.list(owner: caller).count < Gateway.maxEndpointsPerCaller else {
                return problem(422, "limit of \(Gateway.maxEndpointsPerCaller) callback endpoints per caller reached; delete some first")
            }
            let loop = state.loop
            let (reply, problem) = (LoopBound(reply), LoopBound(problem))
            policy.vetAsync(url) { [unowned self] result in
                loop.execute {
                    let (reply, problem) = (reply.value, problem.value)
                    switch result {
                    case .success(let target):
                        // Answered once the endpoint is durable (SPEC §6): a 201 for an
                        // endpoint the journal could not write would be lost at restart.
                        let answer: (Bool, CallbackEndpoint) -> Void = { [unowned self] ok, e in
                            guard ok else {
                                self.endpoints.unregister(e.id)
                                return problem(503, "the callback endpoint could not be recorded; try again")
                            }
                            reply(HTTPResponse(status: 201, headers: [("Content-Type", "application/json"), ("Location", "/callbacks/\(e.id)")],
                                               body: e.json(includingSecret: true).serialized))
                        }
                        // The write may complete before `register` returns; its hop to this
                        // loop runs after this closure, when `registered` is set.
                        let (bound, registered) = (LoopBound(answer), Locked<CallbackEndpoint?>(nil))
                        let e = self.endpoints.register(target, owner: caller) { ok in
                            loop.execute { bound.value(ok, registered.withLock { $0! }) }
                        }
                        registered.withLock { $0 = e }
                    case .failure(let err):
                        if case .malformed = err { problem(400, "url: \(err.description)") } else { problem(422, "url refused: \(err.description)") }
                    }
                }
            }
        case .show(let id):
            guard let e = endpoints.find(id, owner: caller) else { return problem(404, "no callback endpoint \(id)") }
            reply(HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: e.json(includingSecret: false).serialized))
        case .delete(let id):
            // Answered once the deletion is durable; until then the endpoint stays as it
            // was (listed, delivered to), and stays so when the deletion cannot be recorded.
            let loop = state.loop
            let (boundReply, boundProblem) = (LoopBound(reply), LoopBound(problem))
            let started = endpoints.startDeletion(id, owner: caller) { [unowned self] ok in
                loop.execute {
                    guard ok else {
                        return boundProblem.value(503, "the deletion could not be recorded; the endpoint is kept, try again")
                    }
                    // Its pending deliveries end now, not at their next attempt (up to hours
                    // away), and no loop starts or continues an attempt to it after the 204.
                    self.endpointDeletedOnEveryLoop(id, owner: caller, answeringOn: loop) { boundReply.value(HTTPResponse(status: 204)) }
                }
            }
            // `recorded` is then never called, so this is the only answer. A concurrent
            // deletion's write may still fail and keep the endpoint: not a `404`, which a
            // client retrying its own DELETE would take for success.
            switch started {
            case .started: break
            case .missing: problem(404, "no callback endpoint \(id)")
            case .inProgress:
                var r = Problem(status: 409, detail: "a deletion of this endpoint is in progress; retry").httpResponse
                r.headers.append(("Retry-After", "1"))
                reply(r)
            }
        case .deliveries(let id):
            guard endpoints.find(id, owner: caller) != nil else { return problem(404, "no callback endpoint \(id)") }
            var status: DeliveryStatus? = nil
            for (k, v) in FlowRun.parseQuery(req.query ?? "") where k == "status" {
                guard let s = DeliveryStatus(rawValue: v) else { return problem(400, "status must be pending, delivered or failed") }
                status = s
            }
            let body = deliveries.listingJSON(endpointID: id, owner: caller, status: status)
            reply(HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: body.serialized))
        }
    }

    /// Runs `CallbackDeliverer.endpointDeleted` (the store scan that dead-letters the
    /// endpoint's pending deliveries) once, on `loop`'s deliverer (the first loop's
    /// when `loop` is none of the gateway's), and
    /// `cancelAttempts(toEndpoint:)` on every other loop's (each cancels its own timers
    /// and transfers to the endpoint, without touching the store), then `done` on
    /// `loop` once all have run (never, when a loop has stopped: shutdown). Any thread.
    func endpointDeletedOnEveryLoop(_ id: String, owner: String, answeringOn loop: EventLoop, _ done: @escaping () -> Void) {
        let remaining = Locked(states.count)
        let done = LoopBound(done)
        let scanner = (states.first { $0.loop === loop } ?? states.first)?.loop
        for s in states {
            s.loop.execute {
                if s.loop === scanner {
                    s.deliverer.endpointDeleted(id, owner: owner)
                } else {
                    s.deliverer.cancelAttempts(toEndpoint: id)
                }
                if remaining.withLock({ n -> Int in n -= 1; return n }) == 0 { loop.execute { done.value() } }
            }
        }
    }

    /// The most callback endpoints one caller may register. 1000.
    static let maxEndpointsPerCaller = 1000

    /// `POST /jobs/{id}/redeliver`: sends the job's dead-lettered (or delivered) callback again.
    func handleRedeliver(jobID: String, _ req: HTTPRequest, _ w: HTTPResponseWriter, caller: String, state: LoopState,
                         requestID: String, start: Instant) {
        let reply: (HTTPResponse) -> Void = { [unowned self] r in
            self.finishRequest(state, w, req, r, route: nil, outcome: r.status < 400 ? "sync" : "error", requestID: requestID, start: start)
        }
        switch state.deliverer.redeliver(jobID: jobID, owner: caller) {
        case .success(let record):
            reply(HTTPResponse(status: 202, headers: [("Content-Type", "application/json")], body: JSON.object([
                "job_id": .string(record.jobID), "webhook_id": .string(record.webhookID), "status": .string(record.status.rawValue),
            ]).serialized))
        case .failure(.notFound):
            reply(Problem(status: 404, detail: "no delivery for job \(jobID)").httpResponse)
        case .failure(let e):
            reply(Problem(status: 409, detail: e.description).httpResponse)
        }
    }

    /// The secret for deliveries to ad-hoc `Callback-URL`s when the config has
    /// none: read from `DATA/callback_secret`, or generated there (mode 0600) on first start.
    /// - Throws: `GatewayConfig.Error` when the directory or file cannot be used.
    static func loadOrCreateCallbackSecret(dataDirectory: String) throws -> String {
        let path = dataDirectory + "/callback_secret"
        if let d = FileManager.default.contents(atPath: path) {
            let s = String(decoding: d, as: UTF8.self).trimmingCharacters(in: " \n\r\t")
            guard WebhookSignature.key(fromSecret: s) != nil else { throw GatewayConfig.Error(message: "\(path): not a whsec_ secret") }
            return s
        }
        do {
            try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        } catch {
            throw GatewayConfig.Error(message: "\(dataDirectory): cannot create the data directory: \(error)")
        }
        let s = WebhookSignature.newSecret()
        guard FileManager.default.createFile(atPath: path, contents: Data((s + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw GatewayConfig.Error(message: "\(path): cannot write the callback secret")
        }
        return s
    }
}
