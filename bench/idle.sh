#!/usr/bin/env bash
# Memory per idle session: core and one CM as separate release processes on
# loopback; N clients log in over QUIC (SCRAM, bind, stream management,
# presence) and stay idle. Prints the CM's and the core's RSS growth per
# session after settling. Clients run in a third process.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
EXAMPLE=idle CMS=1 USERS=$N CORE_PORT=17370
. bench/cluster.sh
CM=${CM_PIDS# }
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
core0=$(rss $CORE); cm0=$(rss $CM)
mkfifo "$W/hold"
target/release/examples/idle 127.0.0.1:17401 "$W/pki/ca.pem" bench.test "$N" < "$W/hold" > "$W/idle.out" &
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
