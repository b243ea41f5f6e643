#!/usr/bin/env bash
# Quick throughput probe: core and two CMs as separate release processes on
# loopback, PAIRS client pairs (sender on cm-1, receiver on cm-2) pushing
# MESSAGES each. Prints delivered messages per second and the core's CPU time
# per message (from /proc). A rough figure for the spine; the real load tool
# and the side-by-side comparison come with the benchmarking issue.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-20}
MESSAGES=${MESSAGES:-2000}
cargo build --release -p longlink --bin longlink 2>/dev/null
cargo build --release -p tests --example flood 2>/dev/null
BIN=target/release/longlink
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
$BIN certs init --dir "$W/pki" --domain bench.test --cm 2 >/dev/null
cat > "$W/core.toml" <<EOT
domain = "bench.test"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "$W/data"
pki_dir = "$W/pki"
EOT
for i in $(seq 0 $((2 * PAIRS - 1))); do $BIN adduser u$i --password pw --dir "$W" >/dev/null; done
$BIN core --config "$W/core.toml" --listen 127.0.0.1:17270 --admin-listen 127.0.0.1:17280 2>"$W/core.log" &
CORE=$!
for i in 1 2; do
cat > "$W/cm$i.toml" <<EOT
node = "cm-$i"
domain = "bench.test"
listen = "127.0.0.1:1730$i"
core = "127.0.0.1:17270"
pki_dir = "$W/pki"
EOT
$BIN cm --config "$W/cm$i.toml" 2>"$W/cm$i.log" &
CMS="${CMS:-} $!"
done
sleep 2
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
TICK=$(getconf CLK_TCK)
before=$(cpu $CORE)
cms_before=0; for p in $CMS; do cms_before=$((cms_before + $(cpu $p))); done
out=$(target/release/examples/flood 127.0.0.1:17301 127.0.0.1:17302 "$W/pki/ca.pem" bench.test "$PAIRS" "$MESSAGES")
after=$(cpu $CORE)
cms_after=0; for p in $CMS; do cms_after=$((cms_after + $(cpu $p))); done
echo "$out"
delivered=$(echo "$out" | sed 's/.*"delivered":\([0-9]*\).*/\1/')
python3 -c "print('CPU per delivered message: core %.1f us, both CMs %.1f us (includes %d logins)' % (($after-$before)/$TICK*1e6/$delivered, ($cms_after-$cms_before)/$TICK*1e6/$delivered, 2*$PAIRS))"
