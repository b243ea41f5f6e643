#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for tests and benchmarks.
#   scripts/postgres.sh start DIR PORT [ADDR]
#                                        # installs Debian's postgresql if missing,
#                                        # creates a cluster in DIR, starts it and
#                                        # prints the libpq connection string
#   scripts/postgres.sh stop DIR         # stops it (by its PID file) and deletes DIR
#   scripts/postgres.sh halt DIR         # crash-stops it (-m immediate), keeps DIR
#   scripts/postgres.sh resume DIR PORT  # starts a halted server again (crash recovery)
# The server listens on 127.0.0.1 only (or on ADDR, trusting every client:
# for a test's own network namespace, never a shared network), trusts local
# connections (user postgres) and runs with fsync on, like a real deployment.
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:?directory}

bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}

as_owner() {
    # initdb and postgres refuse to run as root.
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    port=${3:?port}
    addr=${4:-127.0.0.1}
    if [ -z "$(bindir)" ]; then
        echo "installing PostgreSQL from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends postgresql >&2
    fi
    bin=$(bindir)
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
    if [ "$addr" != 127.0.0.1 ]; then
        echo "host all all 0.0.0.0/0 trust" >>"$dir/data/pg_hba.conf"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-c listen_addresses=$addr -p $port -k $dir -c max_connections=200" start >/dev/null
    echo "host=$addr port=$port user=postgres"
    ;;
halt)
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
resume)
    port=${3:?port}
    as_owner "$(bindir)/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null
    ;;
stop)
    bin=$(bindir)
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR PORT | stop DIR | halt DIR | resume DIR PORT" >&2
    exit 2
    ;;
esac
