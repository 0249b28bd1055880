#!/usr/bin/env bash
# Installs what idtag's build and tests need, when it is missing. Idempotent.
# Needs: rustup/cargo (the machine's toolchain), root for apt-get, npm registry access.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

want_wb="${WASM_BINDGEN_VERSION:?WASM_BINDGEN_VERSION must be the wasm-bindgen version in Cargo.lock}"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "setup: adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

for comp in rustfmt clippy rust-src; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
        echo "setup: adding rustup component $comp"
        rustup component add "$comp"
    fi
done

have_wb="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have_wb" != "$want_wb" ]; then
    echo "setup: installing wasm-bindgen-cli $want_wb (found: ${have_wb:-none})"
    # --locked fails when the registry mirror lacks a locked transitive version; fall back.
    cargo install wasm-bindgen-cli --version "$want_wb" --locked --force \
        || cargo install wasm-bindgen-cli --version "$want_wb" --force
fi

apt_pkgs=()
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_pkgs+=(chromium-driver)
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    echo "setup: apt-get install ${apt_pkgs[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
fi
# Vite 8 (the browser tests) needs Node.js 20.19+; Debian 12's own nodejs is 18.
node_version="$(node --version 2>/dev/null || echo v0)"
node_major="${node_version#v}"; node_major="${node_major%%.*}"
node_minor="$(echo "$node_version" | cut -d. -f2)"
if [ "$node_major" -lt 20 ] || { [ "$node_major" -eq 20 ] && [ "${node_minor:-0}" -lt 19 ]; }; then
    echo "setup: Node.js $node_version is too old: the browser tests need 20.19 or newer (Debian 12 ships 18; install Node 20+)" >&2
    exit 1
fi
echo "setup: ok (wasm-bindgen $want_wb, $(chromium --version 2>/dev/null | head -1))"
