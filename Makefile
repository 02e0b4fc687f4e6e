# Switchboard — the two commands README promises:
#   make run    build, start the sandbox and the gateway with routes/ (embedded journal in .switchboard/)
#   make test   install what is missing, build, and run every test
SHELL := /bin/bash
SANDBOX_LISTEN ?= 127.0.0.1:9090
LISTEN ?= 127.0.0.1:8080

.PHONY: deps build run test check clean

# System packages the build links against (libcurl with OpenSSL, OpenSSL, pkg-config).
deps:
	@if ! pkg-config --exists libcurl openssl 2>/dev/null || ! dpkg -s libcurl4-openssl-dev >/dev/null 2>&1; then \
	  echo "installing libcurl4-openssl-dev libssl-dev pkg-config"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libcurl4-openssl-dev libssl-dev pkg-config; \
	fi

build: deps
	swift build -c release --product switchboard

run: build
	@bin=$$(swift build -c release --show-bin-path)/switchboard; \
	$$bin sandbox --listen $(SANDBOX_LISTEN) & sandbox=$$!; \
	trap 'kill $$sandbox 2>/dev/null' EXIT; \
	export INVENTORY_URL=http://$(SANDBOX_LISTEN) PAYMENTS_URL=http://$(SANDBOX_LISTEN) \
	       FULFILLMENT_URL=http://$(SANDBOX_LISTEN) PRICING_URL=http://$(SANDBOX_LISTEN) \
	       SHIPPING_URL=http://$(SANDBOX_LISTEN); \
	$$bin check --routes routes && \
	$$bin serve --routes routes --listen $(LISTEN) --data .switchboard --callback-allow 127.0.0.0/8

# Validates routes/ (strict loader, critical paths) with the sandbox's addresses, as `run` does.
check: build
	@INVENTORY_URL=http://$(SANDBOX_LISTEN) PAYMENTS_URL=http://$(SANDBOX_LISTEN) \
	FULFILLMENT_URL=http://$(SANDBOX_LISTEN) PRICING_URL=http://$(SANDBOX_LISTEN) \
	SHIPPING_URL=http://$(SANDBOX_LISTEN) $$(swift build -c release --show-bin-path)/switchboard check --routes routes

test: deps
	swift build --build-tests
	swift test --skip-build

clean:
	rm -rf .build .switchboard

# --- Hardening (issue 7). Not part of `make test`. ---
.PHONY: fuzz-smoke test-tsan test-asan

FUZZ_SMOKE_SECONDS ?= 10
# Builds and runs every libFuzzer target for FUZZ_SMOKE_SECONDS each (see fuzz/README.md).
fuzz-smoke:
	@mkdir -p .build-fuzz; for t in $$(fuzz/run --list); do \
	  echo "== fuzz $$t ($(FUZZ_SMOKE_SECONDS)s)"; log=.build-fuzz/$$t.smoke.log; \
	  if ! fuzz/run $$t $(FUZZ_SMOKE_SECONDS) > $$log 2>&1; then tail -40 $$log; echo "fuzz $$t FAILED (log: $$log)"; exit 1; fi; \
	  grep -E '^(Done|stat::number_of_executed_units)' $$log; \
	done

# The test suite under ThreadSanitizer / AddressSanitizer, each in its own scratch path.
# Narrow with FILTER, e.g. make test-tsan FILTER='HTTP1Tests|UpstreamTests|GatewayTests'.
FILTER ?=
test-tsan: deps
	SWITCHBOARD_SANITIZER=thread swift test --sanitize=thread --scratch-path .build-tsan $(if $(FILTER),--filter '$(FILTER)')

# Leak detection is on (LeakSanitizer), also in the `switchboard` processes the CLI
# tests start (a leak makes them exit 1). lsan.supp lists the allocations that are not
# the project's own leaks, each with the reason; anything else LSan reports is ours.
ASAN_OPTIONS ?= detect_leaks=1
test-asan: deps
	SWITCHBOARD_SANITIZER=address ASAN_OPTIONS=$(ASAN_OPTIONS) LSAN_OPTIONS=suppressions=$(CURDIR)/lsan.supp:print_suppressions=0 \
	  swift test --sanitize=address --scratch-path .build-asan $(if $(FILTER),--filter '$(FILTER)')
