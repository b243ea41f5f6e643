#!/usr/bin/env bash
# The storage work of one message in a cluster of cores, on PostgreSQL
# (docs/SCALING.md): the sender's core writes both users' archive entries,
# the recipient's core writes the message's live row (its durable copy
# until the recipient acknowledges it) and deletes it on the ack, each job
# behind its fence check, as the storage thread issues them. Measured with
# pgbench, one message per transaction and 20 per transaction (the core's
# group commit batches the jobs of many messages), with PostgreSQL's CPU
# per message read from /proc (its processes only).
# Usage: bench/message-storage.sh "host=127.0.0.1 port=5432 user=postgres"
# (a throwaway server: it creates and fills the database msgstore).
set -euo pipefail
cd "$(dirname "$0")"
conn=${1:?libpq connection string}
secs=${SECS:-15}
psql -q "$conn" -c "DROP DATABASE IF EXISTS msgstore" -c "CREATE DATABASE msgstore"
psql -q "$conn dbname=msgstore" -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE offline (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL,
    stamp TEXT NOT NULL, payload BYTEA NOT NULL);
CREATE INDEX offline_by_user ON offline(username, id);
CREATE TABLE archive (username TEXT NOT NULL, id BIGINT NOT NULL, peer TEXT NOT NULL,
    stamp BIGINT NOT NULL, payload BYTEA NOT NULL, PRIMARY KEY (username, id));
CREATE INDEX archive_by_peer ON archive(username, peer, id);
CREATE TABLE cores (core_id TEXT PRIMARY KEY, address TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL, draining BOOLEAN NOT NULL);
CREATE TABLE slots (slot INTEGER PRIMARY KEY, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0);
CREATE INDEX slots_by_owner ON slots(owner);
INSERT INTO cores VALUES ('core-1#1', '10.0.0.1:5000', now() + interval '1 day', false);
INSERT INTO slots SELECT s, 'core-1#1', 1 FROM generate_series(0, 4095) s;
ANALYZE;
SQL

# One message: $1 is its number within the transaction.
message() {
    local k=$1
    cat <<EOF
\\set s random(0, 999999)
\\set r random(0, 999999)
\\set id$k random(1, 9000000000000000000)
SAVEPOINT a$k;
SELECT 1 FROM slots s JOIN cores c ON c.core_id = s.owner WHERE s.slot = :s % 4096 AND s.owner = 'core-1#1' AND s.epoch = 1 AND c.expires_at > clock_timestamp() FOR SHARE OF s;
INSERT INTO archive VALUES ('u' || :s, :id$k, 'u' || :r || '@sim.test', 1, convert_to(repeat('x', 300), 'UTF8'));
INSERT INTO archive VALUES ('u' || :r, :id$k, 'u' || :s || '@sim.test', 1, convert_to(repeat('x', 300), 'UTF8'));
RELEASE SAVEPOINT a$k;
SAVEPOINT b$k;
SELECT 1 FROM slots s JOIN cores c ON c.core_id = s.owner WHERE s.slot = :r % 4096 AND s.owner = 'core-1#1' AND s.epoch = 1 AND c.expires_at > clock_timestamp() FOR SHARE OF s;
INSERT INTO offline (username, stamp, payload) VALUES ('u' || :r, '2026-12-01T00:00:00Z', convert_to(repeat('x', 300), 'UTF8')) RETURNING id AS row$k \\gset
RELEASE SAVEPOINT b$k;
EOF
}

# The recipient's ack of message $1: its live row goes.
ack() {
    local k=$1
    cat <<EOF
SAVEPOINT c$k;
SELECT 1 FROM slots s JOIN cores c ON c.core_id = s.owner WHERE s.slot = :r % 4096 AND s.owner = 'core-1#1' AND s.epoch = 1 AND c.expires_at > clock_timestamp() FOR SHARE OF s;
DELETE FROM offline WHERE username = 'u' || :r AND id = ANY(ARRAY[:row$k]::bigint[]);
RELEASE SAVEPOINT c$k;
EOF
}

script() {
    local per=$1
    echo "BEGIN;"
    for k in $(seq 1 "$per"); do message "$k"; done
    echo "COMMIT;"
    echo "BEGIN;"
    for k in $(seq 1 "$per"); do ack "$k"; done
    echo "COMMIT;"
}

# CPU seconds used so far by every postgres process (with the backends
# that exited, counted in the postmaster's children's time).
pg_cpu() {
    python3 - <<'PY'
import os
hz = os.sysconf("SC_CLK_TCK")
total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    if name.startswith("postgres"):
        fields = stat[stat.rindex(")") + 2 :].split()
        # its own time, and that of its exited children (backends)
        total += sum(int(x) for x in fields[11:15])
print(total / hz)
PY
}

for per in 1 20; do
    f=$(mktemp)
    script "$per" >"$f"
    echo "== $per message(s) per transaction, 4 clients, ${secs} s"
    before=$(pg_cpu)
    out=$(pgbench "$conn dbname=msgstore" -n -M prepared -c 4 -j 4 -T "$secs" -f "$f")
    after=$(pg_cpu)
    echo "$out" | grep -E "^(number of transactions actually processed|latency average|tps)"
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    python3 -c "m = $txns * $per; c = $after - $before; print(f'messages {m}, {m / $secs:.0f}/s, PostgreSQL CPU {c:.1f} s, {c / m * 1e6:.0f} us per message')"
    rm -f "$f"
done
echo "== floor: SELECT 1, 4 clients"
before=$(pg_cpu)
pgbench "$conn dbname=msgstore" -n -M prepared -c 4 -j 4 -T 10 -f <(echo "SELECT 1;") | grep -E "^tps"
after=$(pg_cpu)
python3 -c "print(f'PostgreSQL CPU {$after - $before:.1f} s over 10 s')"
