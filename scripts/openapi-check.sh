#!/usr/bin/env bash
# Check the API description with real tools from PyPI, against a whole stack (the e2e harness:
# the real binaries behind nginx, on PostgreSQL and RabbitMQ, as `make test` has them):
#
#   1. openapi-spec-validator validates the merged description served at /openapi.json;
#   2. schemathesis (SCHEMATHESIS=0 skips it) sends generated valid and invalid requests to
#      every operation with every check it has (`--checks all`: no 5xx; every status, content
#      type, header and body the described one; valid requests accepted and invalid ones
#      refused; a missing key a 401; a method a route does not serve a 405 with `Allow`)
#      (e2e/tests/openapi.rs, the ignored test), with SCHEMATHESIS_EXAMPLES examples per
#      operation (default 25; about 40 s in all). Two things the description cannot say are
#      given to it in a schemathesis.toml (`schemathesis_config` there says why): real
#      `cursor`s for the lists, and, for the three operations that take a workflow
#      definition, that a definition valid by its schema may still be a 400 (unique step
#      names, `dependsOn` naming steps that exist, no cycle, templates that compile: rules
#      JSON Schema cannot state). No check is left out.
#
# The tools go into a virtualenv under target/openapi/ (made once). Not part of `make test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="$PWD/target/openapi"
venv="$out/venv"
mkdir -p "$out"
if [[ ! -x "$venv/bin/openapi-spec-validator" || ! -x "$venv/bin/st" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    # The versions this was last run with (docs/TESTING.md, "Outside make test").
    "$venv/bin/pip" install --quiet 'openapi-spec-validator==0.9.0' 'schemathesis==4.32.5'
fi

cargo build --workspace --bins
THYGON_OPENAPI_OUT="$out/openapi.json" cargo test -p thygon-e2e --test openapi \
    the_description_and_its_docs_page_are_public_at_the_base_url
echo "==== openapi-spec-validator ===="
"$venv/bin/openapi-spec-validator" "$out/openapi.json"

if [[ "${SCHEMATHESIS:-1}" != 0 ]]; then
    echo "==== schemathesis ===="
    THYGON_SCHEMATHESIS="$venv/bin/st" \
        THYGON_SCHEMATHESIS_EXAMPLES="${SCHEMATHESIS_EXAMPLES:-25}" \
        cargo test -p thygon-e2e --test openapi -- --ignored --nocapture \
        schemathesis_finds_no_server_error_and_no_undescribed_answer
fi
