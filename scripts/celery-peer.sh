#!/usr/bin/env bash
# The peer of `make bench`: the same job done by Celery 5 on the same
# PostgreSQL and RabbitMQ (e2e/benches/celery/peer.py says what the job is), measured with
# Celery's pools at concurrency 2; prints a JSON line per figure and writes them all to
# PEER_OUT (default target/bench/celery.json), which `make bench` prints beside Thygon's.
#
#   PEER_SCALE=1.0       scales the run counts (3,000 one-step runs, 600 ten-step runs; for the
#                        latencies 200 runs at 10/s, 500 at 100/s, 1,000 at 500/s, and 200
#                        ten-step runs at 20/s: the counts of Thygon's bench)
#   PEER_POOLS=prefork   the pools to measure (prefork,threads). The threads pool is far the
#                        slower here (300 one-step runs at 9 runs/s: it takes its next tasks on
#                        the event loop's timer ticks; without the heartbeat it stops after its
#                        prefetch), so prefork is the better of the two and the default.
#
# Celery and psycopg are pinned (PEER_TOOLS below) in their own virtualenv, .tools/peer-venv.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

PEER_TOOLS=(celery==5.5.3 'psycopg[binary]==3.2.9')
venv="$REPO/.tools/peer-venv"
out="${PEER_OUT:-$REPO/target/bench/celery.json}"
scale="${PEER_SCALE:-1.0}"
n() { python3 -c "import sys; print(max(1, round($1 * float(sys.argv[1]))))" "$scale"; }

bash "$REPO/scripts/ensure-services.sh"
ensure_venv "$venv" "${PEER_TOOLS[@]}"
py="$venv/bin/python"
peer=(env PEER_DATABASE_URL="${PEER_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/thygon_celery_peer}"
    PEER_AMQP_URL="${PEER_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"
    "$py" "$REPO/e2e/benches/celery/peer.py")

mkdir -p "$(dirname "$out")"
: >"$out.tmp"
worker=""
trap '[[ -n $worker ]] && kill "$worker" 2>/dev/null; rm -f "$out.tmp"' EXIT

IFS=, read -r -a pools <<<"${PEER_POOLS:-prefork}"
for pool in "${pools[@]}"; do
    queue="celery_peer_${pool}_$$"
    "${peer[@]}" setup
    "${peer[@]}" worker --queue "$queue" --pool "$pool" --concurrency 2 &
    worker=$!
    sleep 3
    {
        "${peer[@]}" throughput --queue "$queue" --steps 1 --runs "$(n 3000)"
        "${peer[@]}" throughput --queue "$queue" --steps 10 --runs "$(n 600)"
        for rate_runs in 10:200 100:500 500:1000; do
            "${peer[@]}" latency --queue "$queue" --steps 1 --rate "${rate_runs%:*}" --runs "$(n "${rate_runs#*:}")"
        done
        "${peer[@]}" latency --queue "$queue" --steps 10 --rate 20 --runs "$(n 200)"
    } | while read -r line; do
        printf '{"pool": "%s", %s\n' "$pool" "${line#\{}" | tee -a "$out.tmp"
    done
    kill -TERM "$worker"
    wait "$worker" 2>/dev/null || true
    worker=""
    "${peer[@]}" cleanup --queue "$queue"
done
"$py" -c 'import json, sys; json.dump([json.loads(l) for l in open(sys.argv[1])], open(sys.argv[2], "w"), indent=2)' "$out.tmp" "$out"
say "wrote $out"
