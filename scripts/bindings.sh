#!/usr/bin/env bash
# Generates the app bindings of client-sdk (client-sdk/ffi, UniFFI):
# Kotlin, Swift and Python sources, from the library built for this machine.
# The interface is the same for every target, so these sources go with the
# Android and iOS builds of the library (docs/MOBILE.md).
#
#   scripts/bindings.sh [--release] [OUT_DIR]
#
# OUT_DIR (default target/bindings) gets kotlin/ (uniffi/longlink_ffi/*.kt),
# swift/ (longlink_ffi.swift, longlink_ffiFFI.h, longlink_ffiFFI.modulemap)
# and python/ (longlink_ffi.py beside the library it loads). ktlint and
# swiftformat format the sources where installed.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    cargo_profile=(--release)
    shift
fi
out=${1:-target/bindings}
target=${CARGO_TARGET_DIR:-target}

# one build of both, so they share their dependencies
# (the guarded expansion: bash 3.2, macOS, takes an empty array as unset)
cargo build --locked ${cargo_profile[@]+"${cargo_profile[@]}"} -p longlink-ffi -p uniffi-bindgen

case "$(uname -s)" in
Darwin) lib="$target/$profile/liblonglink_ffi.dylib" ;;
*) lib="$target/$profile/liblonglink_ffi.so" ;;
esac
bindgen="$target/$profile/uniffi-bindgen"

case "$out" in
"" | / | /. | /..) echo "refusing OUT_DIR ${out:-(empty)}" >&2; exit 2 ;;
esac
# only what this script writes there: OUT_DIR may hold other things
for language in kotlin swift python; do
    rm -rf "${out:?}/$language"
done
for language in kotlin swift python; do
    "$bindgen" generate "$lib" --crate longlink_ffi \
        --language "$language" --out-dir "$out/$language"
done
# the Python module loads the library from its own directory
cp "$lib" "$out/python/"
echo "bindings in $out: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
