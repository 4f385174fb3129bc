#!/usr/bin/env bash
# `make bench`: build the release binaries, then run the benchmark harness (e2e/benches/
# thygon.rs) against a stack of its own: fresh database, fresh queues, free ports, so it
# does not disturb (nor is disturbed by) a `make run` on the same machine.
#
#   BENCH_WORKERS=1,2   worker-process counts to measure (default 1,2)
#   BENCH_SCALE=1.0     scales every run count (0.2 for a quick look)
#   BENCH_OUT=path      where the JSON goes (default target/bench/results.json)
#   BENCH_CONCURRENCY=64          each worker's WORKER_CONCURRENCY (default: the worker's, 64)
#   BENCH_MAX_RUNNING_PER_ORG=0   the workers' running cap (default 0: none; deployments: 100)
#   BENCH_ONLY=fan_out  measure only the fairness row (another org's p99 with and without a
#                       fan-out attack; the other rows print empty)
#   BENCH_PEER=1        first run the same job on Celery (scripts/celery-peer.sh; PEER_SCALE
#                       follows BENCH_SCALE) and print Thygon's figures beside it (0: skip)
#   BENCH_BIN_DIR=dir   run the binaries of dir instead of target/release (a saved build of
#                       another commit: before and after, back to back, on one machine)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

bash "$REPO/scripts/ensure-services.sh"
say "building the release binaries (cargo build --release --workspace --bins) ..."
cargo build --release --workspace --bins
rm -f "$REPO/target/bench/celery.json"
if [ "${BENCH_PEER:-1}" != "0" ]; then
    say "measuring the peer: the same job on Celery (scripts/celery-peer.sh) ..."
    PEER_SCALE="${BENCH_SCALE:-1.0}" bash "$REPO/scripts/celery-peer.sh" ||
        warn "the Celery peer failed (above); the table will have no Celery column"
fi
say "running the benchmark (cargo bench -p thygon-e2e --bench thygon) ..."
THYGON_BIN_DIR="${BENCH_BIN_DIR:-}" cargo bench -p thygon-e2e --bench thygon
