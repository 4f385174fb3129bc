# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it; it does nothing by itself.
#
#   REPO            the repository root (absolute)
#   say/warn/die    one-line messages on stderr, prefixed with the calling script's name
#   ...             see each function below

# The defaults every process uses when a variable is unset (shared-models/src/config.rs).
THYGON_DEFAULT_DATABASE_URL="postgres://thygon:thygon@127.0.0.1:5432/thygon?sslmode=disable"
THYGON_DEFAULT_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export THYGON_DEFAULT_DATABASE_URL THYGON_DEFAULT_AMQP_URL

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO

THYGON_SCRIPT="${THYGON_SCRIPT:-$(basename "$0" .sh)}"

say() { printf '%s: %s\n' "$THYGON_SCRIPT" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$THYGON_SCRIPT" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$THYGON_SCRIPT" "$*" >&2
    exit 1
}

# A section header, for scripts whose output should read in blocks.
section() { printf '\n==> %s\n' "$*" >&2; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# rustup installs cargo into ~/.cargo/bin, which a non-login shell may not have on PATH.
ensure_cargo_on_path() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${CARGO_HOME:-${HOME:-}/.cargo}/bin/cargo" ]]; then
        PATH="${CARGO_HOME:-${HOME:-}/.cargo}/bin:$PATH"
        export PATH
    fi
}

# Fail with a clear message unless a Rust toolchain >= 1.85 is available.
require_rust() {
    ensure_cargo_on_path
    if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
        printf '%s\n' \
            "$THYGON_SCRIPT: error: no Rust toolchain found (cargo and rustc are not on PATH)." \
            "  Thygon needs stable Rust >= 1.85. Install it with rustup (https://rustup.rs):" \
            "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" \
            "  then open a new shell (or: source \"\$HOME/.cargo/env\") and run this again." >&2
        exit 1
    fi
    local version major minor
    version="$(rustc --version | awk '{print $2}')"
    IFS=. read -r major minor _ <<<"$version"
    if ((major < 1 || (major == 1 && minor < 85))); then
        die "Rust $version is too old: Thygon needs stable >= 1.85 (rustup update stable)"
    fi
}

# Parts of a URL like scheme://user:pass@host:port/path?query. IPv6 hosts in brackets are kept
# without the brackets.
url_host() {
    local rest="${1#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    rest="${rest##*@}"
    if [[ $rest == \[* ]]; then
        rest="${rest#\[}"
        printf '%s\n' "${rest%%\]*}"
    else
        printf '%s\n' "${rest%%:*}"
    fi
}

url_port() {
    local url="$1" default="$2" rest
    rest="${url#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    rest="${rest##*@}"
    rest="${rest##*\]}"
    if [[ $rest == *:* && -n "${rest##*:}" ]]; then
        printf '%s\n' "${rest##*:}"
    else
        printf '%s\n' "$default"
    fi
}

is_local_host() {
    case "$1" in
        127.* | localhost | ::1 | "") return 0 ;;
        *) return 1 ;;
    esac
}

# True when something accepts TCP connections on host:port (no nc or ss needed).
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
    timeout 2 bash -c ': >"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_until SECONDS DESCRIPTION COMMAND...: run COMMAND every half second until it succeeds;
# return 1 after SECONDS.
wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            warn "gave up waiting for $what after ${seconds}s"
            return 1
        fi
        sleep 0.5
    done
}

# True when GET url answers 2xx within 2 seconds.
http_ok() {
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
}

# render_nginx_conf OUT GATEWAY_LISTEN WORKFLOW_UPSTREAM RUNTIME_UPSTREAM NGINX_PREFIX
# Writes deploy/nginx/thygon.conf.template to OUT with exactly its four placeholders
# substituted; nginx's own $variables are left alone.
render_nginx_conf() {
    local out="$1"
    command -v envsubst >/dev/null 2>&1 || die "envsubst not found (Debian package gettext-base; make services installs it)"
    # shellcheck disable=SC2016 # the single quotes are the point: envsubst gets the names
    GATEWAY_PORT="$2" WORKFLOW_UPSTREAM="$3" RUNTIME_UPSTREAM="$4" NGINX_PREFIX="$5" \
        envsubst '${GATEWAY_PORT} ${WORKFLOW_UPSTREAM} ${RUNTIME_UPSTREAM} ${NGINX_PREFIX}' \
        <"$REPO/deploy/nginx/thygon.conf.template" >"$out"
}

# A URL with its password replaced, for messages.
redact_url() {
    sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"
}

# Find nginx even when /usr/sbin is not on PATH (a non-root user's shell).
nginx_bin() {
    if command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        printf '%s\n' /usr/sbin/nginx
    else
        return 1
    fi
}

# python3 with venv and ensurepip (Debian splits them out into python3-venv), installed with
# apt-get when missing.
ensure_python_venv() {
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "python3 with the venv module is needed (Debian: python3-venv); install it and run this again"
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/thygon-apt.XXXXXX")"
    say "installing python3 python3-venv with apt-get (log: $log)"
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv >>"$log" 2>&1; }; then
        tail -n 30 "$log" >&2
        die "apt-get install python3-venv failed"
    fi
    hash -r
    python3 -c 'import venv, ensurepip' 2>/dev/null || die "python3 still has no venv module"
}

# ensure_venv DIR REQUIREMENT...: a Python virtualenv at DIR with exactly these pinned packages
# from PyPI, made once and reused while the list is the same (a changed list rebuilds it).
ensure_venv() {
    local venv="$1"
    shift
    local stamp="$venv/.thygon-requirements" want
    want="$(printf '%s\n' "$@")"
    if [[ -x $venv/bin/python && -f $stamp && "$(<"$stamp")" == "$want" ]]; then
        say "tools: reusing ${venv#"$REPO"/} ($*)"
        return 0
    fi
    ensure_python_venv
    say "tools: creating ${venv#"$REPO"/} with $* (from PyPI, once)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/thygon-pip.XXXXXX")"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf "$venv" "$log"
        die "pip install $* failed"
    fi
    rm -f "$log"
    printf '%s\n' "$want" >"$stamp"
}

# The API checkers `make test` runs against a whole stack (e2e/tests/openapi.rs): pinned, in
# their own virtualenv (git-ignored), exported as THYGON_OPENAPI_VALIDATOR and THYGON_SCHEMATHESIS.
API_TOOLS_VENV="${API_TOOLS_VENV:-$REPO/.tools/api-venv}"
API_TOOLS=(openapi-spec-validator==0.9.0 schemathesis==4.32.5)
ensure_api_tools() {
    ensure_venv "$API_TOOLS_VENV" "${API_TOOLS[@]}"
    export THYGON_OPENAPI_VALIDATOR="$API_TOOLS_VENV/bin/openapi-spec-validator"
    export THYGON_SCHEMATHESIS="$API_TOOLS_VENV/bin/st"
}
