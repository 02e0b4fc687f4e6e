// swift-tools-version:6.1
// The "Swift stack a Swift user would reach for" peer of benchmarks/run: Hummingbird 2
// serving /proxy, /fanout and /fanout_slow through AsyncHTTPClient (benchmarks/README.md).
//
// A package of its own, outside the main package: Switchboard has no package
// dependencies and these must never become one. benchmarks/run builds it with
// `swift build -c release --package-path benchmarks/peers/hummingbird-ahc
//  --scratch-path benchmarks/peers/hummingbird-ahc/.build-peer` (git-ignored, as is
// Package.resolved).
import PackageDescription

let package = Package(
    name: "HummingbirdPeer",
    platforms: [.macOS(.v14)],
    dependencies: [
        // Without Hummingbird's default traits (swift-configuration support, full Foundation
        // for URL-encoded forms): neither is on the request path, and with them enabled
        // SwiftPM 6.3 recompiled Hummingbird and HummingbirdCore on every build (about two
        // minutes here) instead of finding them up to date.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        .executableTarget(
            name: "hummingbird-peer",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
