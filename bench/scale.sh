#!/usr/bin/env bash
# A hundred thousand phones on one CM: the load tool's `scale` scenario
# against longlink (core, one CM, the balancer; release processes on
# loopback), over QUIC through the balancer (or STARTTLS to the CM).
#   - USERS log in (the ramp is timed), settle, and are measured idle:
#     memory per session of each process, idle CPU and wakeups per second;
#   - ACTIVE of them chat at SCALE_RATE msg/s for STEP seconds while the
#     rest idle; then, for STEP more seconds, each active client also moves
#     to a new UDP socket once (QUIC only). Lost and duplicated are counted.
# Results: JSON lines in $OUT/results.jsonl and the tables on stderr.
#   bench/scale.sh                                  # 100 000 users over QUIC
#   LONGLINK_TRANSPORTS=starttls bench/scale.sh      # 100 000 over STARTTLS
#       # (TCP: one loopback address pair has ~28 000 ephemeral ports, so the
#       # tool's connections leave from 127.0.0.1 … 127.0.0.4 in turn)
#   USERS=20000 LONGLINK_TRANSPORTS=quic bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export USERS=${USERS:-100000} ACTIVE=${ACTIVE:-1000} SCALE_RATE=${SCALE_RATE:-1000} STEP=${STEP:-20}
export LONGLINK_TRANSPORTS=${LONGLINK_TRANSPORTS:-quic} OUT=${OUT:-target/scale}
export TCP_SOURCES=${TCP_SOURCES:-127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4}
SERVERS=longlink SCENARIOS=scale exec bench/compare.sh
