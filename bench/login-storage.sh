#!/usr/bin/env bash
# The storage work of one login on PostgreSQL with 1 000 000 accounts of 50
# roster items each (docs/SCALING.md), measured with pgbench.
# Usage: bench/login-storage.sh "host=127.0.0.1 port=5432 user=postgres"
# (a throwaway server: it creates and fills the database login1m).
set -euo pipefail
cd "$(dirname "$0")"
conn=${1:?libpq connection string}
psql "$conn" -c "DROP DATABASE IF EXISTS login1m" -c "CREATE DATABASE login1m"
psql "$conn dbname=login1m" -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE users (
    username TEXT PRIMARY KEY, salt BYTEA NOT NULL, iterations INTEGER NOT NULL,
    sha1_stored BYTEA NOT NULL, sha1_server BYTEA NOT NULL,
    sha256_stored BYTEA NOT NULL, sha256_server BYTEA NOT NULL,
    roster_version BIGINT NOT NULL DEFAULT 0);
CREATE TABLE offline (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL,
    stamp TEXT NOT NULL, payload BYTEA NOT NULL);
CREATE INDEX offline_by_user ON offline(username, id);
CREATE TABLE roster (username TEXT NOT NULL, jid TEXT NOT NULL, name TEXT,
    groups TEXT NOT NULL, subscription TEXT NOT NULL, ask BOOLEAN NOT NULL,
    pending_in BOOLEAN NOT NULL, listed BOOLEAN NOT NULL);
\timing on
INSERT INTO users SELECT 'u' || i, decode(md5('s'), 'hex'), 4096,
    decode(md5('a' || i), 'hex'), decode(md5('b' || i), 'hex'),
    sha256(('c' || i)::bytea), sha256(('d' || i)::bytea), 1
    FROM generate_series(0, 999999) i;
INSERT INTO roster SELECT 'u' || i, 'u' || ((i + k) % 1000000) || '@sim.test',
    NULL, '[]', 'both', false, false, true
    FROM generate_series(0, 999999) i, generate_series(1, 50) k;
ALTER TABLE roster ADD PRIMARY KEY (username, jid);
ANALYZE;
SQL
for clients in 1 4; do
    echo "== one login's storage work, $clients clients"
    pgbench "$conn dbname=login1m" -n -M prepared -c "$clients" -j "$clients" -T 15 -f login-storage.pgb
done
echo "== floor: SELECT 1, 4 clients"
pgbench "$conn dbname=login1m" -n -M prepared -c 4 -j 4 -T 10 -f <(echo "SELECT 1;")
