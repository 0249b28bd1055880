#!/usr/bin/env bash
# Builds the npm package: wasm (size profile) -> wasm-bindgen (--target web) ->
# wasm-opt -Oz -> pkg/ (generated glue + js/ + pkg-template/) -> npm pack.
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
if [ ! -x "$tools/node_modules/.bin/wasm-opt" ] || [ ! -x "$tools/node_modules/.bin/terser" ]; then
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
fi

# strip=false here: wasm-bindgen reads the target_features section; wasm-opt strips after.
CARGO_PROFILE_WASM_RELEASE_STRIP=false \
  cargo build --lib --target wasm32-unknown-unknown --profile wasm-release --no-default-features
tdir=${CARGO_TARGET_DIR:-target}
raw=$tdir/wasm32-unknown-unknown/wasm-release/idtag.wasm
gen=$tdir/pkg-bindgen
rm -rf "$gen" pkg
wasm-bindgen --target web --no-typescript --out-name idtag_wasm --out-dir "$gen" "$raw"
mkdir -p pkg target/npm
"$tools/node_modules/.bin/wasm-opt" -Oz --strip-debug --strip-producers \
  --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
  --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$gen/idtag_wasm_bg.wasm" -o pkg/idtag_wasm_bg.wasm
# The shipped JS is minified (what a page loads); js/ keeps the readable source.
for f in "$gen/idtag_wasm.js" js/index.js; do
  "$tools/node_modules/.bin/terser" "$f" --module --ecma 2020 --compress passes=2 --mangle \
    --keep-classnames -o "pkg/$(basename "$f")"
done
# wasm-bindgen copies js/io.js (the Tagger's cookie/storage imports) into snippets/.
cp -r "$gen/snippets" pkg/
cp js/index.d.ts pkg/
cp pkg-template/README.md pkg/
sed "s/\"version\": \"[^\"]*\"/\"version\": \"$version\"/" pkg-template/package.json > pkg/package.json

echo "wasm: $(wc -c < "$gen/idtag_wasm_bg.wasm") B after wasm-bindgen, $(wc -c < pkg/idtag_wasm_bg.wasm) B after wasm-opt -Oz" >&2
tgz=$(cd pkg && npm pack --pack-destination ../target/npm --loglevel=error | tail -1)
echo "target/npm/$tgz"
