#!/usr/bin/env bash
# The worker's overhead per step transition: the median time between one step ending and
# the next starting, on a 10-step workflow of transform steps (which cost nothing outside
# the engine). Runs against a stack started with `make run`; reads the recorded step times
# from PostgreSQL.
#
#   scripts/step-overhead.sh [RUNS]      (default 20 runs, one after another)
set -euo pipefail
BASE="${BASE_URL:-http://127.0.0.1:8080}"
RUNS="${1:-20}"
# The key `make run` printed (and keeps in .run/dev-api-key).
KEY="${THYGON_API_KEY:-$(cat "$(dirname "$0")/../.run/dev-api-key")}"
AUTH="Authorization: Bearer $KEY"
DB="${DATABASE_URL:-postgres://thygon:thygon@127.0.0.1:5432/thygon?sslmode=disable}"
name="overhead_$(date +%s)"
steps=$(python3 -c 'import json; print(json.dumps([{"name": f"s{i}", "type": "transform", "value": {"i": i}} for i in range(10)]))')
curl -sf -X POST "$BASE/workflows" -H "$AUTH" -H 'Content-Type: application/json' \
    -d "{\"name\": \"$name\", \"definition\": {\"steps\": $steps}}" >/dev/null
ids=()
for _ in $(seq "$RUNS"); do
    id=$(curl -sf -X POST "$BASE/workflows/wf_$name/trigger" -H "$AUTH" -H 'Content-Type: application/json' -d '{}' |
        python3 -c 'import sys, json; print(json.load(sys.stdin)["data"]["id"])')
    # one at a time, so runs do not compete for the worker
    for _ in $(seq 200); do
        status=$(curl -sf -H "$AUTH" "$BASE/workflows/runs/$id" | python3 -c 'import sys, json; print(json.load(sys.stdin)["data"]["status"])')
        [[ $status == COMPLETED || $status == FAILED ]] && break
        sleep 0.02
    done
    [[ $status == COMPLETED ]] || { echo "run $id ended $status" >&2; exit 1; }
    ids+=("'$id'")
done
in_list=$(IFS=,; echo "${ids[*]}")
psql "$DB" -At -F ' ' <<SQL
WITH gaps AS (
    SELECT extract(epoch FROM (s.started_at - p.completed_at)) * 1000 AS ms
    FROM step_runs s JOIN step_runs p ON p.run_id = s.run_id AND p.position = s.position - 1
    WHERE s.run_id IN ($in_list)
), runs_ms AS (
    SELECT extract(epoch FROM (completed_at - created_at)) * 1000 AS ms FROM runs WHERE id IN ($in_list)
)
SELECT 'transitions', count(*),
       'median_ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
       'p90_ms', round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 2) FROM gaps
UNION ALL
SELECT 'runs', count(*),
       'median_ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2),
       'p90_ms', round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 2) FROM runs_ms;
SQL
