#!/usr/bin/env bash
# longlink side by side with ejabberd and Prosody, in one run, on loopback.
#
#   bench/compare.sh                 # everything (installs ejabberd and prosody if missing)
#   SERVERS="longlink" bench/compare.sh
#   USERS=500 RATES=1000,5000 STEP=10 LOGIN_C=1,16 REPEAT=3 bench/compare.sh
#   CORE_THREADS=2 SERVERS=longlink bench/compare.sh   # the core's --threads
#   LONGLINK_TRANSPORTS=quic SERVERS=longlink bench/compare.sh   # one transport
#   OTHER_TRANSPORTS=starttls ...   # ejabberd and Prosody over STARTTLS only
#   CM_WRAP="valgrind --tool=massif --massif-out-file=/tmp/cm.massif" SERVERS=longlink SCENARIOS=idle bench/compare.sh
#       # the CM under a profiler (here: where its memory per session goes)
#   PROBE=1 SERVERS="longlink ejabberd" SCENARIOS=chat bench/compare.sh
#       # beside each chat step, bench/probe.py (an independent client, STARTTLS
#       # servers only) measures delivery time too, for a check of the tool
#
# Every server gets the same users (bench0 … bench{USERS-1}, password
# "bench"), the same TLS certificate (from `longlink certs`), no shaper and
# Nagle off, and is measured by the same load tool (tests/load), run in
# its own process on the same machine. longlink is driven over STARTTLS
# straight to a CM, and over QUIC through the balancer; ejabberd and Prosody
# over STARTTLS and plain TCP. None archives messages (as configured here);
# "longlink+mam" is longlink again with its archive on, chat only. Each
# server is restarted for each transport and each run, so every run starts
# from fresh processes (idle memory too). Results: JSON lines in $OUT/results.jsonl,
# and the table bench/table.py prints. Everything started here is stopped
# by PID at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000}
RATES=${RATES:-1000,2500,5000,7500,10000}
STEP=${STEP:-10}
LOGIN_C=${LOGIN_C:-1,8,32}
IDLE_USERS=${IDLE_USERS:-$USERS}
REPEAT=${REPEAT:-1}
SERVERS=${SERVERS:-"floor longlink longlink_mam ejabberd prosody"}
SCENARIOS=${SCENARIOS:-"idle chat login"}
OUT=${OUT:-target/compare}
DOMAIN=bench.test
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
# thousands of sockets per process (servers inherit it)
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -p longlink --bin longlink -p longlink-bench --bin longlink-bench 2>&1 | tail -1
BIN=target/release/longlink
LOAD=target/release/longlink-bench
W=$(mktemp -d /tmp/longlink-compare.XXXXXX)
chmod 755 "$W"
STARTED=()
cleanup() {
    for p in "${STARTED[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "${EJABBERD_CTL:-}" ]; then $EJABBERD_CTL stop >/dev/null 2>&1 || true; fi
    if [ -n "${KEEP_LOGS:-}" ]; then cp -r "$W" "$KEEP_LOGS"; fi
    rm -rf "$W"
}
trap cleanup EXIT

$BIN certs init --dir "$W/pki" --domain $DOMAIN --cm 1 >/dev/null
CA="$W/pki/ca.pem"
cat "$W/pki/cm-1.pem" "$W/pki/cm-1.key" > "$W/pki/server.pem"
chmod 644 "$W/pki/"*

# Runs the load tool; tags each JSON line with the server and run number.
load() { # server port transport run pids... -- scenario args...
    local server=$1 port=$2 transport=$3 run=$4; shift 4
    local pids=()
    while [ "$1" != "--" ]; do pids+=(--pid "$1"); shift; done
    shift
    $LOAD --server 127.0.0.1:$port --domain $DOMAIN --transport "$transport" --ca "$CA" \
        --prefix bench --password bench --mechanism "${MECH:-SCRAM-SHA-1}" \
        ${TCP_SOURCES:+--tcp-sources "$TCP_SOURCES"} "${pids[@]}" "$@" \
        | python3 -c "
import json, sys
for line in sys.stdin:
    row = json.loads(line); row['server'] = '$server'; row['run'] = $run
    print(json.dumps(row), flush=True)" >> "$OUT/results.jsonl"
}

scenarios() { # server port transport pids...  (run number in $RUN)
    local server=$1 port=$2 transport=$3 run=$RUN; shift 3
    for s in $SCENARIOS; do
        echo "== $server over $transport: $s (run $run)" >&2
        case $s in
        idle) load "$server" "$port" "$transport" "$run" "$@" -- idle --users "$IDLE_USERS" ;;
        chat)
            if [ -n "${PROBE:-}" ] && [ "$transport" = starttls ]; then
                probe_chat "$server" "$port" "$run" "$@"
            else
                load "$server" "$port" "$transport" "$run" "$@" -- chat --users "$USERS" --rates "$RATES" --step-secs "$STEP"
            fi ;;
        login) load "$server" "$port" "$transport" "$run" "$@" -- login --users "$USERS" --concurrency "$LOGIN_C" --step-secs "$STEP" ;;
        scale) load "$server" "$port" "$transport" "$run" "$@" -- scale --users "$USERS" \
                --active "${ACTIVE:-1000}" --rate "${SCALE_RATE:-1000}" --secs "$STEP" ;;
        migrate)
            if [ "$transport" = quic ]; then
                load "$server" "$port" "$transport" "$run" "$@" -- migrate --users 200 --rate 1000 --every 5 --secs "$((STEP * 2))"
            fi ;;
        esac
    done
}

# Each rate on its own: the load tool's chat step, and bench/probe.py's two
# clients (accounts bench$USERS and bench$((USERS+1))) at 50 msg/s during its
# measured window (from the tool's "window open" line); both lines go to the
# results.
probe_chat() { # server port run pids...
    local server=$1 port=$2 run=$3; shift 3
    for rate in ${RATES//,/ }; do
        local err="$W/tool-$run-$rate.err"
        load "$server" "$port" starttls "$run" "$@" -- chat --users "$USERS" --rates "$rate" --step-secs "$STEP" 2>"$err" &
        local tool=$!
        for _ in $(seq 1 1200); do grep -q "window open" "$err" 2>/dev/null && break; sleep 0.1; done
        python3 bench/probe.py --server 127.0.0.1:$port --domain $DOMAIN --ca "$CA" \
            --users "bench$USERS,bench$((USERS + 1))" --password bench --rate 50 --secs "$((STEP - 1))" \
            --label "$server starttls $rate" \
            | python3 -c "
import json, sys
for line in sys.stdin:
    row = json.loads(line); row['server'] = '$server'; row['transport'] = 'starttls'; row['rate'] = $rate; row['run'] = $run
    print(json.dumps(row), flush=True)" | tee -a "$OUT/results.jsonl" >&2
        wait $tool
        cat "$err" >&2
    done
}

wait_port() { # tcp port
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $1)))"; then return 0; fi
        sleep 0.2
    done
    echo "nothing listens on $1" >&2; return 1
}

start_longlink() {
    local d="$W/longlink"
    rm -rf "$d"; mkdir -p "$d"
    cat > "$d/core.toml" <<EOT
domain = "$DOMAIN"
listen = "127.0.0.1:17280"
admin_listen = "127.0.0.1:17290"
data_dir = "$d/data"
pki_dir = "$W/pki"
archive = ${ARCHIVE:-false}
EOT
    cat > "$d/lb.toml" <<EOT
listen = ["127.0.0.1:17271"]
backend_listen = "127.0.0.1:17272"
control_listen = "127.0.0.1:17273"
admin_listen = "127.0.0.1:17281"
pki_dir = "$W/pki"
EOT
    cat > "$d/cm.toml" <<EOT
node = "cm-1"
domain = "$DOMAIN"
listen = "127.0.0.1:17301"
core = "127.0.0.1:17280"
pki_dir = "$W/pki"
tcp_listen = "127.0.0.1:17471"

[balancer]
control = "127.0.0.1:17273"
encap = "127.0.0.1:17272"
EOT
    mkdir -p "$d/deploy" "$d/data"
    ln -s "$d/data" "$d/deploy/data"
    $BIN adduser bench --count "$((USERS + 2))" --password bench --dir "$d/deploy" >/dev/null
    RUST_LOG=${CORE_LOG:-info} $BIN core --config "$d/core.toml" ${CORE_THREADS:+--threads $CORE_THREADS} 2>"$d/core.log" & local core=$!; STARTED+=($core)
    $BIN lb --config "$d/lb.toml" 2>"$d/lb.log" & local lb=$!; STARTED+=($lb)
    # CM_WRAP runs the CM under a profiler, e.g.
    # CM_WRAP="valgrind --tool=massif --massif-out-file=/tmp/cm.massif"
    ${CM_WRAP:-} $BIN cm --config "$d/cm.toml" 2>"$d/cm.log" & local cm=$!; STARTED+=($cm)
    wait_port 17471
    sleep 3 # the CM joins the balancer
    LL=($core $cm $lb)
}

# longlink with its message archive on (XEP-0313: a durable write per
# message before it is acknowledged), which the other two are not running.
run_longlink_mam() {
    for RUN in $(seq 1 "$REPEAT"); do
        ARCHIVE=true start_longlink
        SCENARIOS=chat scenarios longlink+mam 17471 starttls core=${LL[0]} cm=${LL[1]}
        kill "${LL[@]}"; wait "${LL[@]}" 2>/dev/null || true
    done
}

run_longlink() {
    for RUN in $(seq 1 "$REPEAT"); do
        for transport in ${LONGLINK_TRANSPORTS:-starttls quic}; do
            start_longlink
            case $transport in
            starttls) scenarios longlink 17471 starttls core=${LL[0]} cm=${LL[1]} ;;
            quic) scenarios longlink 17271 quic core=${LL[0]} cm=${LL[1]} lb=${LL[2]} ;;
            esac
            kill "${LL[@]}"; wait "${LL[@]}" 2>/dev/null || true
        done
    done
}

# The load tool's floor: its chat scenario through a trivial message switch
# (`longlink-bench switch`: plain TCP, SASL PLAIN, messages copied to their
# recipient). What the tool reads here is its own share of every figure.
run_floor() {
    for RUN in $(seq 1 "$REPEAT"); do
        $LOAD switch --listen 127.0.0.1:15299 --domain $DOMAIN 2>/dev/null & local sw=$!; STARTED+=($sw)
        wait_port 15299
        MECH=PLAIN SCENARIOS=chat scenarios floor 15299 plain switch=$sw
        kill $sw; wait $sw 2>/dev/null || true
    done
}

install() { # package binary
    command -v "$2" >/dev/null && return 0
    echo "installing $1 from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; }
}

start_prosody() {
    local d="$W/prosody"
    rm -rf "$d"; mkdir -p "$d/data"
    chown -R prosody: "$d" 2>/dev/null || true
    cat > "$d/prosody.cfg.lua" <<EOT
pidfile = "$d/prosody.pid"
data_path = "$d/data"
daemonize = false
log = { warn = "$d/prosody.log" }
network_backend = "epoll"
interfaces = { "127.0.0.1" }
c2s_ports = { 15222 }
c2s_direct_tls_ports = { }
s2s_ports = { }
modules_enabled = { "roster", "saslauth", "tls", "disco", "ping", "register", "posix" }
modules_disabled = { "s2s" }
authentication = "internal_hashed"
allow_registration = true
min_seconds_between_registrations = 0
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
limits = { c2s = { rate = "100mb/s" } }
ssl = { certificate = "$W/pki/cm-1.pem"; key = "$W/pki/cm-1.key" }
VirtualHost "$DOMAIN"
EOT
    # (raise the open-files limit to the hard one, as for ejabberd)
    runuser -u prosody -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec prosody --config "$1"' sh "$d/prosody.cfg.lua" 2>"$d/stderr.log" &
    PROSODY=$!; STARTED+=($PROSODY)
    wait_port 15222
    PROSODY_PID=$(pgrep -u prosody -f "prosody --config $d" | head -1)
    $LOAD --server 127.0.0.1:15222 --domain $DOMAIN --transport plain --ca "$CA" \
        --prefix bench --password bench register --users "$((USERS + 2))"
}

run_prosody() {
    install prosody prosody
    for RUN in $(seq 1 "$REPEAT"); do for transport in ${OTHER_TRANSPORTS:-starttls plain}; do
        start_prosody
        scenarios prosody 15222 $transport prosody=$PROSODY_PID
        kill $PROSODY; wait $PROSODY 2>/dev/null || true
    done; done
}

# ejabberdctl as the ejabberd user, with the open-files limit raised to the
# hard limit (run as root it switches user through su, which leaves 1024:
# too few for 1000 users, and logins beyond that hang).
ejctl() {
    local d=$EJABBERD_DIR
    runuser -u ejabberd -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec ejabberdctl "$@"' sh \
        --config-dir "$d" --config "$d/ejabberd.yml" --ctl-config "$d/ejabberdctl.cfg" \
        --logs "$d/logs" --spool "$d/db" --node bench@localhost "$@"
}

start_ejabberd() {
    local d="$W/ejabberd"
    rm -rf "$d"; mkdir -p "$d/db" "$d/logs"
    chown -R ejabberd: "$d" 2>/dev/null || true
    cat > "$d/ejabberd.yml" <<EOT
hosts: [$DOMAIN]
loglevel: warning
certfiles: ["$W/pki/server.pem"]
auth_password_format: scram
shaper: {}
shaper_rules: {}
listen:
  - port: 25222
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
    max_stanza_size: 262144
    backlog: 4096
acl:
  local:
    user_regexp: ""
access_rules:
  register:
    allow: all
  local:
    allow: local
modules:
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_register:
    ip_access: all
    access: register
registration_timeout: infinity
EOT
    touch "$d/ejabberdctl.cfg" # (Debian's would point back at /etc/ejabberd)
    chown -R ejabberd: "$d"
    EJABBERD_DIR=$d
    EJABBERD_CTL=ejctl
    $EJABBERD_CTL start
    $EJABBERD_CTL started
    wait_port 25222
    EJABBERD_PID=$(pgrep -f "beam.*bench@localhost" | head -1)
    $LOAD --server 127.0.0.1:25222 --domain $DOMAIN --transport plain --ca "$CA" \
        --prefix bench --password bench register --users "$((USERS + 2))"
}

run_ejabberd() {
    install ejabberd ejabberdctl
    for RUN in $(seq 1 "$REPEAT"); do for transport in ${OTHER_TRANSPORTS:-starttls plain}; do
        start_ejabberd
        scenarios ejabberd 25222 $transport ejabberd=$EJABBERD_PID
        $EJABBERD_CTL stop >/dev/null; $EJABBERD_CTL stopped >/dev/null 2>&1 || true; EJABBERD_CTL=""
    done; done
}

for s in $SERVERS; do "run_$s"; done
python3 bench/table.py "$OUT/results.jsonl"
