import JSON
import Routes

/// The environment injected into route files in tests.
let testEnvironment = [
    "INVENTORY_URL": "http://127.0.0.1:9090",
    "PAYMENTS_URL": "https://payments.example.com",
    "FULFILLMENT_URL": "http://127.0.0.1:9092/v1",
    "API_TOKEN": "tok_secret_123",
]

/// The route file from SPEC §2.
let specExample = #"""
{
  "name": "checkout",
  "method": "POST",
  "path": "/checkout/{order_id}",
  "wait": "2s",
  "max_wait": "30s",
  "steps": [
    { "id": "inventory",
      "request": { "method": "GET", "url": "{{env.INVENTORY_URL}}/stock/{{request.path.order_id}}" },
      "timeout": "500ms" },
    { "id": "payment",
      "request": { "method": "POST", "url": "{{env.PAYMENTS_URL}}/payments",
                   "headers": { "Idempotency-Key": "{{step.idempotency_key}}" },
                   "body": { "amount": "{{request.body.amount}}", "order": "{{request.path.order_id}}" } },
      "timeout": "20s",
      "retry": { "attempts": 3, "backoff": "200ms", "on": [502, 503, 504, "timeout", "connect"] } },
    { "id": "fulfillment", "after": ["payment", "inventory"],
      "when": { "steps.payment.body.status": "succeeded" },
      "request": { "method": "POST", "url": "{{env.FULFILLMENT_URL}}/shipments",
                   "body": { "payment": "{{steps.payment.body.id}}" } },
      "timeout": "5s" }
  ],
  "response": {
    "status": 200,
    "body": { "payment": "{{steps.payment.body}}", "shipment": "{{steps.fulfillment.body.id}}" }
  }
}
"""#

/// Parses `text` as `routes/t.json`.
func parseRoute(_ text: String, file: String = "routes/t.json", environment: [String: String] = testEnvironment) throws(RouteLoadError) -> Route {
    try RouteLoader.parse(file: file, data: Array(text.utf8), environment: environment)
}

/// The problems reported for `text` as `routes/t.json` (empty when it loads).
func problems(_ text: String, environment: [String: String] = testEnvironment) -> [String] {
    do {
        _ = try parseRoute(text, environment: environment)
        return []
    } catch {
        return error.problems
    }
}

/// A route file with the given steps (JSON array body) and extra top-level members.
func routeFile(steps: String = #"{"id": "a", "request": {"url": "http://up.example/x"}}"#, extra: String = "") -> String {
    #"{"name": "t", "method": "POST", "path": "/t/{id}", "# + extra + (extra.isEmpty ? "" : ", ") + #""steps": ["# + steps + "]}"
}

/// A template context backed by a dictionary.
struct MapContext: TemplateContext {
    var values: [TemplateRef: JSON] = [:]
    func resolve(_ ref: TemplateRef) -> JSON? { values[ref] }
}

/// Loads `files` (name, text) as a table.
func loadTable(_ files: [(String, String)]) throws(RouteLoadError) -> RouteTable {
    try RouteLoader.load(files: files.map { (name: $0.0, data: Array($0.1.utf8)) }, environment: testEnvironment)
}

/// A minimal route file text for `method path` named `name`.
func simpleRoute(_ name: String, _ method: String, _ path: String) -> String {
    #"{"name": ""# + name + #"", "method": ""# + method + #"", "path": ""# + path
        + #"", "steps": [{"id": "a", "request": {"url": "http://up.example/x"}}]}"#
}
