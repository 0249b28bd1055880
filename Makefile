# idtag build and test entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export PATH := $(HOME)/.cargo/bin:$(PATH)
WASM_TARGET := wasm32-unknown-unknown
# The wasm-bindgen CLI must match the crate version pinned in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
CHROMEDRIVER ?= /usr/bin/chromedriver
# Test targets compiled to wasm32 and run in headless Chromium.
WASM_TESTS := --lib --test core_vectors --test core_tag_token --test browser_tagger
export CHROMEDRIVER

.PHONY: help setup test check fmt-check clippy wasm-check test-native test-wasm

help:
	@echo "make test   - install what is missing, then fmt, clippy, native tests, wasm32 tests in headless Chromium"

## Installs what the tests need when it is missing (idempotent).
setup:
	@WASM_BINDGEN_VERSION=$(WASM_BINDGEN_VERSION) bash .ci/setup.sh

test: setup check test-native test-wasm test-browser demo-check

check: fmt-check clippy wasm-check

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --all-targets --all-features -- -D warnings

wasm-check:
	cargo clippy --lib --target $(WASM_TARGET) --no-default-features -- -D warnings

test-native:
	cargo test --all-features

## Core tests compiled to wasm32 and run inside headless Chromium.
test-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	WASM_BINDGEN_TEST_TIMEOUT=120 WASM_BINDGEN_TEST_WEBDRIVER_JSON=$(CURDIR)/.ci/webdriver.json \
	cargo test --target $(WASM_TARGET) --no-default-features $(WASM_TESTS)

## Fuzzes the cookie parser, the tag-token verifier, the email normaliser and the
## browser queue's stored form
## (cargo-fuzz / libFuzzer; RUSTC_BOOTSTRAP lets the stable toolchain build with sanitizers).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := cookie_header tag_token_verify tag_token_signed_claims email_normalize queue_text
.PHONY: fuzz
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || cargo install cargo-fuzz
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p tests/fuzz/corpus/$$t; \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz $$t tests/fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4096 2>&1 | tail -n 3; \
	done

## ---- Browser SDK (npm package) ---------------------------------------------
.PHONY: pkg test-browser test-browser-e2e bench-size bench-main-thread

## Builds pkg/ and the tarball target/npm/idtag-<version>.tgz.
pkg:
	bash .ci/build-pkg.sh

## Browser SDK tests (the wasm-bindgen ones run in test-wasm): the packed tarball in
## Node (SSR) and in a Vite build driven by headless Chromium, then the size budget.
test-browser: pkg test-browser-e2e bench-size

test-browser-e2e: pkg tests/js/node_modules/.package-lock.json
	cd tests/js && IDTAG_TGZ=$$(ls -t $(CURDIR)/target/npm/idtag-*.tgz | head -1) timeout 600 node e2e.mjs

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error

## Size table (gzip bytes of what a page loads) against peers; fails over budget.
bench-size: tests/js/node_modules/.package-lock.json
	@test -f pkg/idtag_wasm_bg.wasm || bash .ci/build-pkg.sh
	cd tests/js && timeout 300 node bench-size.mjs

## Median load-to-completed-tag() time in headless Chromium beside peers' load-to-identify.
bench-main-thread: tests/js/node_modules/.package-lock.json
	@test -f pkg/idtag_wasm_bg.wasm || bash .ci/build-pkg.sh
	cd tests/js && timeout 600 node bench-main-thread.mjs

## The main job: the demo product on embedded defaults (emulator + SQLite), in the foreground.
DEMO_LISTEN ?= 127.0.0.1:8080
.PHONY: demo demo-check demo-deps bench
demo-deps:
	cd examples/demo && npm ci --no-audit --no-fund --loglevel=error

demo: setup pkg demo-deps
	cargo run --example demo --features server,emulator -- --listen $(DEMO_LISTEN)

## The same stack driven headless through the QA journeys; exits 0 only when all pass.
demo-check: setup pkg demo-deps
	timeout 900 cargo run --example demo --features server,emulator -- --check --listen 127.0.0.1:0 --data-dir target/demo-check

## Benchmarks: Marketo calls per 1,000 logins, pacing, intake (release build), then the
## browser package's size and main-thread cost.
bench: setup pkg
	cargo run --release --all-features --example bench_server
	$(MAKE) bench-size bench-main-thread
