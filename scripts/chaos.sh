#!/usr/bin/env bash
# The five-minute chaos run of issue 14: a balancer, 3 CMs and a core as
# separate processes, 300 clients chatting with stream management, one
# process SIGKILLed and restarted every 10-20 s (>= 15 kills). Passes when no
# acknowledged message is lost, duplicated or delivered out of order.
#
#   scripts/chaos.sh                 # random seed (printed)
#   scripts/chaos.sh --seed 42       # replay a seed
#   scripts/chaos.sh --short         # the one-minute CI variant
#   scripts/chaos.sh --keep          # keep the run directory (logs, clients.txt,
#                                    # messages.csv, lost.txt) even if it passed
#
# Other options: target/debug/longlink-bench chaos --help. Set
# CHAOS_NO_BUILD=1 to use the binaries already built, CHAOS_SERVER_LOG to
# change the servers' log filter (RUST_LOG syntax; default info).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${CHAOS_NO_BUILD:-}" ]]; then
    cargo build --locked -p longlink -p longlink-bench --bins
fi
target=${CARGO_TARGET_DIR:-target}/debug

# The tool kills its processes on every exit path it sees; its process group
# (the tool and the servers it started) is killed here too, in case the tool
# itself is killed. Hard limit: 15 minutes (the tool's own deadline is 10).
setsid timeout --signal=INT --kill-after=30 900 \
    "$target/longlink-bench" chaos --longlink "$target/longlink" "$@" &
tool=$!
trap 'kill -KILL -- -"$tool" 2>/dev/null || true' EXIT
trap 'kill -INT -- -"$tool" 2>/dev/null || true' INT TERM
status=0
wait "$tool" || status=$?
exit "$status"
