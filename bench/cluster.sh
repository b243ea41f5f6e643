# Sourced by the bench scripts: builds longlink and EXAMPLE, and starts a
# core and CMS CM nodes as separate release processes on loopback with users
# u0..u{USERS-1} (password "pw"). Sets BIN, W, CORE, CM_PIDS; ports
# CORE_PORT (core), CORE_PORT+10 (admin), CORE_PORT+30+i (cm-i).
# Everything stops and W is removed when the script exits.
# BIN set by the caller: that longlink binary is used and nothing is built
# (to run an older build side by side with this one).
if [ -z "${BIN:-}" ]; then
    cargo build --release -p longlink --bin longlink 2>/dev/null
    cargo build --release -p longlink-bench --example "$EXAMPLE" 2>/dev/null
    BIN=target/release/longlink
fi
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
$BIN certs init --dir "$W/pki" --domain bench.test --cm "$CMS" >/dev/null 2>&1
cat > "$W/core.toml" <<EOT
domain = "bench.test"
listen = "127.0.0.1:$CORE_PORT"
admin_listen = "127.0.0.1:$((CORE_PORT + 10))"
data_dir = "$W/data"
pki_dir = "$W/pki"
EOT
# accounts straight into the database while the core is stopped
for i in $(seq 0 $((USERS - 1))); do $BIN adduser "u$i" --password pw --dir "$W" >/dev/null; done
$BIN core --config "$W/core.toml" 2>"$W/core.log" &
CORE=$!
CM_PIDS=""
for i in $(seq 1 "$CMS"); do
cat > "$W/cm$i.toml" <<EOT
node = "cm-$i"
domain = "bench.test"
listen = "127.0.0.1:$((CORE_PORT + 30 + i))"
core = "127.0.0.1:$CORE_PORT"
pki_dir = "$W/pki"
EOT
$BIN cm --config "$W/cm$i.toml" 2>"$W/cm$i.log" &
CM_PIDS="$CM_PIDS $!"
done
sleep 2
