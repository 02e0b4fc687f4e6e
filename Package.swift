// swift-tools-version:6.0
// Switchboard: a synchronous request/response integration gateway.
// No package dependencies: Foundation, Dispatch, Glibc, libcurl and OpenSSL only.
import PackageDescription

let package = Package(
    name: "Switchboard",
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
    ],
    targets: [
        // C shims: Linux calls Glibc does not expose, libcurl's variadic API, OpenSSL.
        .target(name: "CLinux"),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl",
                       providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),

        // Swift modules, each owning one concern.
        // The lock every module shares (a pthread mutex ThreadSanitizer understands).
        .target(name: "Locking"),
        .target(name: "JSON"),
        .target(name: "Journal", dependencies: ["Locking"]),
        .target(name: "Crypto", dependencies: ["COpenSSL"]),
        .target(name: "EventLoop", dependencies: ["CLinux", "Locking"]),
        .target(name: "HTTP1", dependencies: ["EventLoop", "CLinux", "COpenSSL", "Locking"]),
        .target(name: "Upstream", dependencies: ["EventLoop", "CCurl", "Locking"]),
        .target(name: "Routes", dependencies: ["JSON"]),
        .target(name: "Flows", dependencies: ["Routes", "Upstream", "EventLoop", "JSON", "Crypto", "HTTP1", "Locking"]),
        .target(name: "Sandbox", dependencies: ["HTTP1", "EventLoop", "JSON", "Crypto", "Locking"]),
        .target(name: "Gateway", dependencies: ["HTTP1", "Flows", "Jobs", "Journal", "Routes", "Upstream", "EventLoop", "JSON", "Crypto", "Locking"]),
        .target(name: "Jobs", dependencies: ["EventLoop", "Upstream", "JSON", "Crypto", "CLinux", "Locking"]),
        .executableTarget(name: "switchboard", dependencies: ["Gateway", "Sandbox", "Routes", "EventLoop", "HTTP1", "JSON", "Locking", "CLinux"]),

        // Shared by the test targets only: raw socket clients and scripted upstream servers.
        .target(name: "TestSupport", dependencies: ["EventLoop", "Gateway", "Routes", "Upstream", "Locking"], path: "Tests/TestSupport"),
        .testTarget(name: "CryptoTests", dependencies: ["Crypto"]),
        .testTarget(name: "EventLoopTests", dependencies: ["EventLoop"]),
        .testTarget(name: "FlowsTests", dependencies: ["Flows", "JSON"]),
        .testTarget(name: "JSONTests", dependencies: ["JSON"]),
        .testTarget(name: "JournalTests", dependencies: ["Journal"]),
        .testTarget(name: "HTTP1Tests", dependencies: ["HTTP1", "EventLoop", "Locking"]),
        .testTarget(name: "RoutesTests", dependencies: ["Routes", "JSON"]),
        .testTarget(name: "UpstreamTests", dependencies: ["Upstream", "EventLoop", "TestSupport"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "TestSupport", "EventLoop", "JSON", "Crypto"]),
        .testTarget(name: "JobsTests", dependencies: ["Jobs", "Upstream", "EventLoop", "JSON", "Crypto", "TestSupport", "Locking"]),
        .testTarget(name: "GatewayTests", dependencies: ["Gateway", "Sandbox", "HTTP1", "EventLoop", "JSON", "Routes", "TestSupport"]),
        .testTarget(name: "HardeningTests", dependencies: ["Gateway", "HTTP1", "Routes", "Upstream", "Jobs", "EventLoop", "JSON", "TestSupport", "CLinux"]),
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
