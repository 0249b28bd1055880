#!/usr/bin/env bash
# Builds the npm package: wasm (size profile, std rebuilt for size) -> wasm-bindgen
# (--target web) -> wasm-opt -Oz -> pkg/ (one bundled module: js/ + the generated glue;
# the wasm; types and pkg-template/) -> npm pack.
# Output: pkg/ and target/npm/idtag-<version>.tgz (path printed last).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
bindgen_version=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q " $bindgen_version\$"; then
  echo "installing wasm-bindgen-cli $bindgen_version (must match Cargo.lock)" >&2
  # --locked fails when the registry lacks a locked transitive version; fall back.
  cargo install --locked wasm-bindgen-cli --version "$bindgen_version" \
    || cargo install wasm-bindgen-cli --version "$bindgen_version"
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

# binaryen from npm, pinned: the distribution's wasm-opt may predate features rustc emits.
tools=.ci/pkg-tools
for bin in wasm-opt terser esbuild; do
  if [ ! -x "$tools/node_modules/.bin/$bin" ]; then
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
    break
  fi
done

# The size build recompiles std for size with panics as a bare trap: no panic
# message formatting or location strings reach the browser (-Cpanic=immediate-abort,
# -Zlocation-detail=none, -Zbuild-std), and MIR is optimised harder (-Zmir-opt-level=3,
# 0.8 KB gzip smaller). These are unstable flags; RUSTC_BOOTSTRAP
# lets the machine's stable toolchain take them for this one build. Needs the
# rust-src component (.ci/setup.sh adds it).
# strip=false here: wasm-bindgen reads the target_features section; wasm-opt strips after.
rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src
RUSTC_BOOTSTRAP=1 CARGO_PROFILE_WASM_RELEASE_STRIP=false \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none -Zmir-opt-level=3" \
  cargo build --lib --target wasm32-unknown-unknown --profile wasm-release --no-default-features \
  -Zbuild-std=std,panic_abort \
  || { echo "build-pkg: the size build failed; it needs a toolchain that knows -Cpanic=immediate-abort and -Zbuild-std (rustc 1.95 is known to work; found $(rustc --version))" >&2; exit 1; }
tdir=${CARGO_TARGET_DIR:-target}
raw=$tdir/wasm32-unknown-unknown/wasm-release/idtag.wasm
gen=$tdir/pkg-bindgen
rm -rf "$gen" pkg
wasm-bindgen --target web --no-typescript --encode-into always --out-name idtag_wasm --out-dir "$gen" "$raw"
mkdir -p pkg target/npm
"$tools/node_modules/.bin/wasm-opt" -Oz --converge --strip-debug --strip-producers --strip-target-features \
  --low-memory-unused --zero-filled-memory \
  --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$gen/idtag_wasm_bg.wasm" -o pkg/idtag_wasm_bg.wasm
# One module is what a page loads: the facade (js/index.js), the generated glue
# it imports as ./idtag_wasm.js and the glue's snippet (js/io.js), bundled and
# minified. js/ keeps the readable source.
cp js/index.js "$gen/index.js"
"$tools/node_modules/.bin/esbuild" "$gen/index.js" --bundle --format=esm --target=es2020 \
  --log-level=warning --outfile="$gen/bundle.js"
"$tools/node_modules/.bin/terser" "$gen/bundle.js" --module --ecma 2020 --compress passes=2 --mangle \
  --keep-classnames -o pkg/index.js
cp js/index.d.ts pkg/
cp pkg-template/README.md pkg/
sed "s/\"version\": \"[^\"]*\"/\"version\": \"$version\"/" pkg-template/package.json > pkg/package.json

echo "wasm: $(wc -c < "$gen/idtag_wasm_bg.wasm") B after wasm-bindgen, $(wc -c < pkg/idtag_wasm_bg.wasm) B after wasm-opt -Oz" >&2
tgz=$(cd pkg && npm pack --pack-destination ../target/npm --loglevel=error | tail -1)
echo "target/npm/$tgz"
