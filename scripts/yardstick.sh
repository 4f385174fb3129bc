#!/usr/bin/env bash
# The machine's yardstick for `make bench`: how many small insert+update transactions per
# second PostgreSQL commits here at 8 clients (pgbench, 10 s). The issue's targets are set on a
# reference machine that does about 5,600; this figure says how much faster or slower this
# machine is, so the bench's rates can be compared with the targets (figures from different
# days differ with the machine, not only with the code).
#
# Prints the transactions per second as the last line of stdout. Uses its own database
# (thygon_yardstick), dropped at the end.
#
#   YARDSTICK_SECONDS=10   how long pgbench runs
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seconds="${YARDSTICK_SECONDS:-10}"
pgbench_bin="$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -1 || true)"
if [ -z "$pgbench_bin" ]; then
    echo "yardstick: pgbench not found (Debian: package postgresql-15); skipped" >&2
    exit 1
fi
# Host, port and user of DATABASE_URL (or the local defaults), as the bench uses them.
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/thygon}"
authority="${url#*://}"
authority="${authority%%/*}"
user="${authority%%@*}"
user="${user%%:*}"
hostport="${authority##*@}"
host="${hostport%%:*}"
port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5432
psql_() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U "$user" "$@"; }

db=thygon_yardstick
psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
trap 'psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
psql_ -d "$db" \
    -c "CREATE TABLE items (id int PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, touched_at timestamptz)" \
    -c "INSERT INTO items (id) SELECT generate_series(1, 10000)" \
    -c "CREATE TABLE log (id bigserial PRIMARY KEY, item int NOT NULL, at timestamptz NOT NULL)" \
    -c "VACUUM ANALYZE" >/dev/null
script="$(mktemp)"
trap 'rm -f "$script"; psql_ -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
cat >"$script" <<'SQL'
\set n random(1, 10000)
BEGIN;
INSERT INTO log (item, at) VALUES (:n, now());
UPDATE items SET hits = hits + 1, touched_at = now() WHERE id = :n;
COMMIT;
SQL
tps="$("$pgbench_bin" -n -M simple -c 8 -j 2 -T "$seconds" -h "$host" -p "$port" -U "$user" \
    -f "$script" "$db" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)"
if [ -z "$tps" ]; then
    echo "yardstick: pgbench gave no figure" >&2
    exit 1
fi
printf '%.0f\n' "$tps"
