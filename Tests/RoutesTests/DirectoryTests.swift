import Routes
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A temporary directory holding `files`, removed after `body`.
private func withTemporaryDirectory<R>(_ files: [(String, String)], _ body: (String) throws -> R) throws -> R {
    var template = Array("/tmp/switchboard-routes-XXXXXX".utf8CString)
    guard let created = mkdtemp(&template) else { throw TestFailure() }
    let directory = String(cString: created)
    var written: [String] = []
    defer {
        for path in written { unlink(path) }
        rmdir(directory)
    }
    for (name, text) in files {
        let path = directory + "/" + name
        guard let handle = fopen(path, "w") else { throw TestFailure() }
        _ = Array(text.utf8).withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, handle) }
        fclose(handle)
        written.append(path)
    }
    return try body(directory)
}

private struct TestFailure: Error {}

@Suite struct DirectoryTests {
    /// Every *.json file in the directory is loaded in name order; other files are ignored.
    @Test func load_ReadsJSONFilesInNameOrder_IgnoringOthers() throws {
        let table = try withTemporaryDirectory([
            ("b.json", simpleRoute("b", "GET", "/b")), ("a.json", specExample), ("notes.txt", "not a route"),
        ]) { directory in
            try RouteLoader.load(directory: directory, environment: testEnvironment)
        }
        #expect(table.routes.map(\.name) == ["checkout", "b"])
        #expect(table.routes[0].file.hasSuffix("/a.json"))
    }

    /// Problems name each file as directory/NAME.json.
    @Test func load_NamesFilesWithDirectory_InProblems() throws {
        let problems = try withTemporaryDirectory([("bad.json", "{")]) { directory -> [String] in
            do throws(RouteLoadError) {
                _ = try RouteLoader.load(directory: directory, environment: [:])
                return []
            } catch {
                return error.problems.map { $0.replacingOccurrences(directory, "DIR") }
            }
        }
        #expect(problems == ["DIR/bad.json: (file): not valid JSON: unexpected end of input, expected a string key at byte 1"])
    }
}
