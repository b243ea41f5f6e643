#!/usr/bin/env bash
# Quick throughput probe: core and two CMs as separate release processes on
# loopback, PAIRS client pairs (sender on cm-1, receiver on cm-2) pushing
# MESSAGES each. Prints delivered messages per second and the core's CPU time
# per message (from /proc). A rough figure for the spine; the real load tool
# and the side-by-side comparison come with the benchmarking issue.
# BIN=path/to/longlink FLOOD=path/to/flood run another build (nothing is
# built then), e.g. an older one side by side with this one.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-20}
MESSAGES=${MESSAGES:-2000}
EXAMPLE=flood CMS=2 USERS=$((2 * PAIRS)) CORE_PORT=17270
. bench/cluster.sh
CMS=$CM_PIDS
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
TICK=$(getconf CLK_TCK)
before=$(cpu $CORE)
cms_before=0; for p in $CMS; do cms_before=$((cms_before + $(cpu $p))); done
out=$(${FLOOD:-target/release/examples/flood} 127.0.0.1:17301 127.0.0.1:17302 "$W/pki/ca.pem" bench.test "$PAIRS" "$MESSAGES")
after=$(cpu $CORE)
cms_after=0; for p in $CMS; do cms_after=$((cms_after + $(cpu $p))); done
echo "$out"
delivered=$(echo "$out" | sed 's/.*"delivered":\([0-9]*\).*/\1/')
python3 -c "print('CPU per delivered message: core %.1f us, both CMs %.1f us (includes %d logins)' % (($after-$before)/$TICK*1e6/$delivered, ($cms_after-$cms_before)/$TICK*1e6/$delivered, 2*$PAIRS))"
