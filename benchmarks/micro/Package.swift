// swift-tools-version:6.0
// Microbenchmarks for Switchboard's hot pieces (benchmarks/micro/README.md).
//
// A package of its own, so that nothing here makes the main package's `swift build`
// or tests slower, and the main Package.swift stays as it is. The main package
// exports only the `switchboard` executable product, so its modules cannot be
// depended on through `.package(path: "../..")`; instead the modules measured here
// are compiled from the main package's sources through the symlinks
// `Sources/<Module> -> ../../../Sources/<Module>` (the working tree, with whatever
// uncommitted changes it has). Target names equal the main package's module names,
// so the sources' `import JSON`, `import EventLoop`, ... resolve unchanged.
import PackageDescription

let package = Package(
    name: "SwitchboardMicro",
    targets: [
        // The main package's modules (symlinked sources, same dependencies as in ../../Package.swift).
        .target(name: "CLinux"),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl"),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl"),
        .target(name: "Locking"),
        .target(name: "JSON"),
        .target(name: "EventLoop", dependencies: ["CLinux", "Locking"]),
        .target(name: "HTTP1", dependencies: ["EventLoop", "CLinux", "COpenSSL"]),
        .target(name: "Routes", dependencies: ["JSON"]),
        .target(name: "Upstream", dependencies: ["EventLoop", "CCurl", "Locking"]),

        // A minimal C libcurl client (multi_perform + multi_poll): the floor bench-curl compares with.
        .target(name: "CurlBaseline", path: "Bench/CurlBaseline", linkerSettings: [.linkedLibrary("curl")]),

        // Timing helpers shared by the benchmarks.
        .target(name: "MicroBench", path: "Bench/MicroBench"),

        // One executable per hot piece.
        .executableTarget(name: "bench-http-parse", dependencies: ["MicroBench", "HTTP1"], path: "Bench/http-parse"),
        .executableTarget(name: "bench-route-match", dependencies: ["MicroBench", "Routes", "JSON"], path: "Bench/route-match"),
        .executableTarget(name: "bench-template", dependencies: ["MicroBench", "Routes", "JSON"], path: "Bench/template"),
        .executableTarget(name: "bench-json", dependencies: ["MicroBench", "JSON"], path: "Bench/json"),
        .executableTarget(name: "bench-curl", dependencies: ["MicroBench", "Upstream", "EventLoop", "CurlBaseline"], path: "Bench/curl"),
    ],
    swiftLanguageModes: [.v6]
)

// Release builds skip the run-time exclusivity checks (`swift_beginAccess` on every
// class-property access in the per-request path); the compile-time checks stay, and
// debug builds (what the tests run) keep the run-time ones.
for target in package.targets where target.type == .regular || target.type == .executable {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
    ]
}
