#!/usr/bin/env bash
# A deeper run of the API checks `make test` runs (e2e/tests/openapi.rs), against a whole
# stack (the real binaries behind nginx, on PostgreSQL and RabbitMQ):
#
#   openapi-spec-validator validates the merged description served at /openapi.json, and
#   schemathesis sends generated valid and invalid requests to every operation with every
#   check it has (`--checks all`: no 5xx; every status, content type, header and body the
#   described one; valid requests accepted and invalid ones refused; a missing key a 401; a
#   method a route does not serve a 405 with `Allow`), with SCHEMATHESIS_EXAMPLES examples per
#   operation: 10 in `make test`, 25 here by default. Two things the description cannot say
#   are given to it in a schemathesis.toml (`schemathesis_config` there says why): real
#   `cursor`s for the lists, and, for the three operations that take a workflow definition,
#   that a definition valid by its schema may still be a 400 (unique step names, `dependsOn`
#   naming steps that exist, no cycle, templates that compile: rules JSON Schema cannot
#   state). No check is left out.
#
# The tools are pinned in scripts/lib.sh (API_TOOLS) and live in .tools/api-venv (made once).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

ensure_api_tools
cargo build --workspace --bins
THYGON_SCHEMATHESIS_EXAMPLES="${SCHEMATHESIS_EXAMPLES:-25}" \
    cargo test -p thygon-e2e --test openapi -- --nocapture \
    the_description_is_valid_and_schemathesis_finds_no_undescribed_answer
