#!/usr/bin/env bash
# Memory per idle session: core and one CM as separate release processes on
# loopback; N clients log in over QUIC (SCRAM, bind, stream management,
# presence) and stay idle. Prints the CM's and the core's RSS growth per
# session after settling. Clients run in a third process.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
cargo build --release -p longlink --bin longlink 2>/dev/null
cargo build --release -p tests --example idle 2>/dev/null
BIN=target/release/longlink
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
$BIN certs init --dir "$W/pki" --domain bench.test --cm 1 >/dev/null
cat > "$W/core.toml" <<EOT
domain = "bench.test"
listen = "127.0.0.1:17370"
admin_listen = "127.0.0.1:17380"
data_dir = "$W/data"
pki_dir = "$W/pki"
EOT
for i in $(seq 0 $((N - 1))); do echo "u$i"; done > "$W/users"
# accounts straight into the database while the core is stopped
while read -r u; do $BIN adduser "$u" --password pw --dir "$W" >/dev/null; done < "$W/users"
$BIN core --config "$W/core.toml" 2>"$W/core.log" &
CORE=$!
cat > "$W/cm.toml" <<EOT
node = "cm-1"
domain = "bench.test"
listen = "127.0.0.1:17371"
core = "127.0.0.1:17370"
pki_dir = "$W/pki"
EOT
$BIN cm --config "$W/cm.toml" 2>"$W/cm.log" &
CM=$!
sleep 2
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
core0=$(rss $CORE); cm0=$(rss $CM)
mkfifo "$W/hold"
target/release/examples/idle 127.0.0.1:17371 "$W/pki/ca.pem" bench.test "$N" < "$W/hold" > "$W/idle.out" &
exec 3>"$W/hold"
while ! grep -q ready "$W/idle.out" 2>/dev/null; do sleep 1; done
sleep 5
core1=$(rss $CORE); cm1=$(rss $CM)
exec 3>&-
python3 -c "
n=$N
print('sessions: %d' % n)
print('CM   RSS %d -> %d KiB: %.1f KiB per idle session' % ($cm0, $cm1, ($cm1-$cm0)/n))
print('core RSS %d -> %d KiB: %.1f KiB per idle session' % ($core0, $core1, ($core1-$core0)/n))
print('together: %.1f KiB per idle session' % ((($cm1-$cm0)+($core1-$core0))/n))
"
