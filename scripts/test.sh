#!/usr/bin/env bash
# `make test`: every test of the workspace, against the local PostgreSQL and RabbitMQ.
#
#   1. scripts/ensure-services.sh --test-tools (packages, the test-only ones included:
#      chromium, pgbouncer; PostgreSQL, RabbitMQ, role and database), then
#      scripts/validate-deploy.sh (k8s/, docker-compose.yml and the nginx template), then the
#      API checkers (openapi-spec-validator and schemathesis, pinned, in .tools/api-venv);
#   2. scripts/check-tests.py: no test file copies a statement production owns;
#   3. cargo build --workspace --bins (the end-to-end tests start the debug binaries);
#   4. cargo test --workspace, with any arguments given to this script passed on
#      (scripts/test.sh trigger  runs only tests whose name contains 'trigger';
#       make test ARGS='-- --nocapture'); without arguments, a test binary that ran zero
#      tests fails the run (a target with nothing to test is switched off in its Cargo.toml).
#
# DATABASE_URL and AMQP_URL default to the local services; tests create a database (and
# queue names) of their own per test, so they run in parallel and leave the `thygon`
# database alone.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

export DATABASE_URL="${DATABASE_URL:-$THYGON_DEFAULT_DATABASE_URL}"
export AMQP_URL="${AMQP_URL:-$THYGON_DEFAULT_AMQP_URL}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

section "services"
bash "$REPO/scripts/ensure-services.sh" --test-tools

section "deployment files (scripts/validate-deploy.sh)"
bash "$REPO/scripts/validate-deploy.sh"

section "API checkers (openapi-spec-validator, schemathesis)"
ensure_api_tools

section "test files (scripts/check-tests.py)"
python3 "$REPO/scripts/check-tests.py"

section "cargo build --workspace --bins"
cargo build --workspace --bins

section "cargo test --workspace $*"
log="$(mktemp "${TMPDIR:-/tmp}/thygon-test.XXXXXX")"
trap 'rm -f "$log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$log"

# Every test binary must run something: one that runs nothing proves nothing. Only a whole
# run can tell (a filter leaves most binaries with nothing to run).
if [[ $# -eq 0 ]]; then
    empty="$(awk '
        /^ *Running / { target = $0; sub(/^ *Running /, "", target) }
        /^ *Doc-tests / { target = $0; sub(/^ *Doc-tests /, "doc-tests of ", target) }
        /^running 0 tests$/ { print "  " target }
    ' "$log")"
    if [[ -n $empty ]]; then
        printf '%s\n' "$empty" >&2
        die "these test binaries ran zero tests (above): give them tests, or set test = false (doctest = false) for the target in its Cargo.toml"
    fi
    say "every test binary ran at least one test"
fi
