#!/usr/bin/env bash
# `make test`: every test of the workspace, against the local PostgreSQL and RabbitMQ.
#
#   1. scripts/ensure-services.sh --test-tools (packages, the test-only ones included:
#      chromium, pgbouncer; PostgreSQL, RabbitMQ, role and database), then
#      scripts/validate-deploy.sh (k8s/, docker-compose.yml and the nginx template);
#   2. cargo build --workspace --bins (the end-to-end test starts the debug binaries);
#   3. cargo test --workspace, with any arguments given to this script passed on
#      (scripts/test.sh trigger  runs only tests whose name contains 'trigger';
#       make test ARGS='-- --nocapture').
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

section "cargo build --workspace --bins"
cargo build --workspace --bins

section "cargo test --workspace $*"
cargo test --workspace "$@"
