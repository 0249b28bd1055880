# idtag build and test entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export PATH := $(HOME)/.cargo/bin:$(PATH)
WASM_TARGET := wasm32-unknown-unknown
# The wasm-bindgen CLI must match the crate version pinned in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
CHROMEDRIVER ?= /usr/bin/chromedriver
export CHROMEDRIVER

.PHONY: help setup test check fmt-check clippy wasm-check test-native test-wasm

help:
	@echo "make test   - install what is missing, then fmt, clippy, native tests, wasm32 tests in headless Chromium"

## Installs what the tests need when it is missing (idempotent).
setup:
	@WASM_BINDGEN_VERSION=$(WASM_BINDGEN_VERSION) bash .ci/setup.sh

test: setup check test-native test-wasm

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
	WASM_BINDGEN_TEST_TIMEOUT=120 \
	cargo test --target $(WASM_TARGET) --no-default-features --tests

## ---- Browser SDK (npm package) ---------------------------------------------
.PHONY: pkg test-browser test-browser-wasm test-browser-e2e bench-size bench-main-thread

## Builds pkg/ and the tarball target/npm/idtag-<version>.tgz.
pkg:
	bash .ci/build-pkg.sh

## Browser SDK tests: wasm-bindgen tests in headless Chromium, then the packed
## tarball in Node (SSR) and in a Vite build driven by Chromium, then the size budget.
## `pkg` first: it installs the wasm-bindgen CLI (and test runner) pinned by Cargo.lock when missing.
test-browser: pkg test-browser-wasm test-browser-e2e bench-size

test-browser-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	WASM_BINDGEN_TEST_TIMEOUT=120 \
	timeout 900 cargo test --target $(WASM_TARGET) --no-default-features --test browser_tagger

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
