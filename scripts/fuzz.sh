#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz, cargo-fuzz on nightly) for SECONDS
# seconds each, one after the other, starting from its seed corpus in
# tests/fuzz/corpus/TARGET. `scripts/fuzz.sh 30` is the CI run, `scripts/fuzz.sh
# 900` the long one; name targets after SECONDS to run only those.
#
# The committed corpus is only read: what the fuzzer finds goes to
# tests/fuzz/corpus-run/TARGET (ignored by git; to keep new finds, minimize
# them into the corpus with `TARGET -merge=1 tests/fuzz/corpus/TARGET
# tests/fuzz/corpus-run/TARGET`). A crash, a failed assertion, a timeout (an
# input taking over 10 s) or running out of memory (2 GB) fails the run;
# the input is kept in tests/fuzz/artifacts/. Every target runs even when
# an earlier one failed; the exit status says whether any did.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

fuzz=tests/fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz")
fi

# -a: debug assertions (integer overflow checks) on; one build for all targets
cargo +nightly fuzz build --fuzz-dir "$fuzz" -O -a
bin=$fuzz/target/x86_64-unknown-linux-gnu/release

failed=()
mkdir -p "$fuzz/artifacts"
for t in "${targets[@]}"; do
    mkdir -p "$fuzz/corpus-run/$t"
    echo "== $t: ${secs}s"
    if ! "$bin/$t" "$fuzz/corpus-run/$t" "$fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$t-" 2>"$fuzz/artifacts/$t.log"; then
        failed+=("$t")
        tail -n 60 "$fuzz/artifacts/$t.log"
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$fuzz/artifacts/$t.log" || true
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]} (inputs in $fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${secs}s without a failure"
