#!/usr/bin/env bash
# `make run`: the whole system on this machine, behind one base URL.
#
#   1. scripts/ensure-services.sh (packages, PostgreSQL, RabbitMQ, role and database);
#   2. cargo build --release --workspace --bins;
#   3. workflow-service migrate;
#   4. support-agent (the example agent; SUPPORT_AGENT=0 skips it), workflow-service,
#      runtime-service, WORKER_PROCESSES executor-workers and the nginx gateway, each logging
#      to .run/logs/<name>.log;
#   5. waits until every one answers its readiness probe, prints where everything is, and
#      then watches them: Ctrl-C / SIGTERM, or any process dying, stops them all.
#
# Every variable already set in the environment is kept; the rest get the defaults below.
# HTTP_ADDR is per process, so it is set here for each one from the *_ADDR variables.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

# ---- configuration ---------------------------------------------------------------------------
export DATABASE_URL="${DATABASE_URL:-$THYGON_DEFAULT_DATABASE_URL}"
export AMQP_URL="${AMQP_URL:-$THYGON_DEFAULT_AMQP_URL}"
export AGENTS_FILE="${AGENTS_FILE:-$REPO/examples/agents.toml}"
export RUST_LOG="${RUST_LOG:-info}"
export QUEUE_PREFIX="${QUEUE_PREFIX:-thygon}"
# The org `make run` makes a ready key for (the curl examples of the README and docs/ use it).
DEV_ORG="${DEV_ORG:-org_dev}"
# Passed through when set, left to the binaries' own defaults otherwise:
#   AGENT_BASE_URL, WORKER_CONCURRENCY, DB_POOL_SIZE, ...

GATEWAY_PORT="${GATEWAY_PORT:-8080}"
# The gateway listens on loopback only; GATEWAY_BIND=0.0.0.0 opens it to the network.
GATEWAY_BIND="${GATEWAY_BIND:-127.0.0.1}"
WORKFLOW_SERVICE_ADDR="${WORKFLOW_SERVICE_ADDR:-127.0.0.1:8081}"
RUNTIME_SERVICE_ADDR="${RUNTIME_SERVICE_ADDR:-127.0.0.1:8082}"
WORKER_PROCESSES="${WORKER_PROCESSES:-2}"
# Worker i (from 0) listens on WORKER_HOST:(WORKER_BASE_PORT + i).
WORKER_HOST="${WORKER_HOST:-127.0.0.1}"
WORKER_BASE_PORT="${WORKER_BASE_PORT:-8083}"
SUPPORT_AGENT="${SUPPORT_AGENT:-1}"
export SUPPORT_AGENT_ADDR="${SUPPORT_AGENT_ADDR:-127.0.0.1:9000}"
# What `http` steps may reach inside the network (docs/SECURITY.md, "Egress"): only the
# example agent's address, whose POST /webhook the branching example of docs/WORKFLOWS.md calls.
# Set EGRESS_ALLOW (even to nothing) to change it.
if [[ $SUPPORT_AGENT != 0 ]]; then
    export EGRESS_ALLOW="${EGRESS_ALLOW-$SUPPORT_AGENT_ADDR}"
fi
# The key the workers send the example triage model (agents.toml `triage-model`, served by the
# example agent), which takes any key: not a secret.
export THYGON_EXAMPLE_MODEL_KEY="${THYGON_EXAMPLE_MODEL_KEY:-example-key-not-secret}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"

RUN_DIR="$REPO/.run"
LOG_DIR="$RUN_DIR/logs"
# The operator key and the dev org's key, kept between runs (mode 600, git-ignored).
ADMIN_KEY_FILE="$RUN_DIR/admin-api-key"
DEV_KEY_FILE="$RUN_DIR/dev-api-key"
NGINX_PREFIX="$RUN_DIR/nginx"
BIN_DIR="$REPO/target/release"

[[ $WORKER_PROCESSES =~ ^[0-9]+$ ]] || die "WORKER_PROCESSES must be a number, not '$WORKER_PROCESSES'"
[[ $GATEWAY_PORT =~ ^[0-9]+$ ]] || die "GATEWAY_PORT must be a port number, not '$GATEWAY_PORT'"
case "$GATEWAY_BIND" in
    0.0.0.0 | '*' | '') GATEWAY_HOST=127.0.0.1 ;;
    *) GATEWAY_HOST="$GATEWAY_BIND" ;;
esac
BASE_URL="http://$GATEWAY_HOST:$GATEWAY_PORT"

# ---- the processes this script started -------------------------------------------------------
PIDS=()   # process ids, in start order
NAMES=()  # name of each, for messages and log file names
ADDRS=()  # host:port it serves HTTP on
PROBES=() # URL that answers 2xx once it is ready
STOPPING=0

# setsid(1) from util-linux; without it the children simply share our process group.
SETSID=""
command -v setsid >/dev/null 2>&1 && SETSID=setsid

log_file() { printf '%s/%s.log\n' "$LOG_DIR" "$1"; }

# alive PID: running and not a zombie waiting to be reaped.
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ ${stat:0:1} != Z ]]
}

# start NAME ADDR PROBE_URL COMMAND...: start COMMAND in the background, output to its log.
start() {
    local name="$1" addr="$2" probe="$3" log
    shift 3
    log="$(log_file "$name")"
    : >"$log"
    # In a session of its own, so that Ctrl-C reaches only this script, which then stops
    # everything in order (nginx, for one, would otherwise quit on the terminal's SIGINT).
    $SETSID "$@" </dev/null >>"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    ADDRS+=("$addr")
    PROBES+=("$probe")
    say "started $name (pid $!) on $addr, log: ${log#"$REPO"/}"
}

show_log_tail() {
    local name="$1" log
    log="$(log_file "$name")"
    printf '%s: ---- last lines of %s ----\n' "$THYGON_SCRIPT" "${log#"$REPO"/}" >&2
    tail -n 40 "$log" >&2 || true
    printf '%s: ----\n' "$THYGON_SCRIPT" >&2
}

# Stop everything this script started: SIGTERM in reverse start order (gateway first, so no
# new requests come in), up to STOP_TIMEOUT seconds to finish, then SIGKILL; reap them all.
stop_all() {
    ((STOPPING)) && return 0
    STOPPING=1
    local i pid any=0
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[i]}"
        if alive "$pid"; then
            ((any)) || say "stopping everything ..."
            any=1
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid="${PIDS[i]}"
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if alive "$pid"; then
            warn "${NAMES[i]} (pid $pid) did not stop within ${STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    ((any)) && say "stopped; logs are in ${LOG_DIR#"$REPO"/}/"
    return 0
}

on_signal() {
    local sig="$1" code="$2"
    trap - INT TERM HUP
    printf '\n' >&2
    say "got SIG$sig"
    stop_all
    trap - EXIT
    exit "$code"
}

on_exit() {
    local rc=$?
    stop_all
    exit "$rc"
}

trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
trap on_exit EXIT

# An exited process: say so, show its log, and fail (the EXIT trap stops the rest).
died() {
    local i="$1" status=0
    wait "${PIDS[i]}" 2>/dev/null || status=$?
    warn "${NAMES[i]} (pid ${PIDS[i]}) exited with status $status"
    show_log_tail "${NAMES[i]}"
    exit 1
}

# Wait until every process answers its probe, at most READY_TIMEOUT seconds in all.
wait_all_ready() {
    local -a ready=()
    local i n=${#PIDS[@]} left deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        left=0
        for ((i = 0; i < n; i++)); do
            [[ ${ready[i]:-0} == 1 ]] && continue
            alive "${PIDS[i]}" || died "$i"
            if http_ok "${PROBES[i]}"; then
                ready[i]=1
            else
                left=$((left + 1))
            fi
        done
        ((left == 0)) && return 0
        if ((SECONDS >= deadline)); then
            for ((i = 0; i < n; i++)); do
                if [[ ${ready[i]:-0} != 1 ]]; then
                    warn "${NAMES[i]} is not ready after ${READY_TIMEOUT}s (${PROBES[i]} does not answer 2xx)"
                    show_log_tail "${NAMES[i]}"
                fi
            done
            exit 1
        fi
        sleep 0.5
    done
}

# ADMIN_API_KEY from the environment when set; else the one an earlier run generated; else
# a new random one. Both services get it.
ensure_admin_key() {
    if [[ -z ${ADMIN_API_KEY:-} ]]; then
        if [[ -s $ADMIN_KEY_FILE ]]; then
            ADMIN_API_KEY="$(<"$ADMIN_KEY_FILE")"
        else
            ADMIN_API_KEY="thygon-admin-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
            (umask 077 && printf '%s\n' "$ADMIN_API_KEY" >"$ADMIN_KEY_FILE")
        fi
    fi
    export ADMIN_API_KEY
}

# A request to the gateway with a bearer key; prints "<status> <body>".
api() {
    local key="$1" method="$2" path="$3" body="${4:-}" out
    local args=(-sS --max-time 10 -w '\n%{http_code}' -X "$method" -H "Authorization: Bearer $key")
    if [[ -n $body ]]; then
        args+=(-H 'Content-Type: application/json' --data "$body")
    fi
    out="$(curl "${args[@]}" "$BASE_URL$path")" || return 1
    printf '%s %s\n' "${out##*$'\n'}" "${out%$'\n'*}"
}

# A ready key for DEV_ORG: the one an earlier run made if it still works, else a new one
# made through the /admin routes (the org is created the first time).
ensure_dev_key() {
    local answer status key
    if [[ -s $DEV_KEY_FILE ]]; then
        key="$(<"$DEV_KEY_FILE")"
        answer="$(api "$key" GET '/workflows?limit=1')" || true
        if [[ ${answer%% *} == 200 ]]; then
            DEV_API_KEY="$key"
            return
        fi
    fi
    answer="$(api "$ADMIN_API_KEY" POST /admin/orgs "{\"id\":\"$DEV_ORG\",\"name\":\"Development\"}")" ||
        die "cannot reach $BASE_URL/admin/orgs"
    status="${answer%% *}"
    [[ $status == 201 || $status == 409 ]] || die "creating org $DEV_ORG answered: $answer"
    answer="$(api "$ADMIN_API_KEY" POST "/admin/orgs/$DEV_ORG/keys" '{"name":"make run"}')" ||
        die "cannot reach $BASE_URL/admin/orgs/$DEV_ORG/keys"
    [[ ${answer%% *} == 201 ]] || die "creating a key for $DEV_ORG answered: $answer"
    key="$(printf '%s' "$answer" | grep -o '"key":"[^"]*"' | head -n 1 | cut -d'"' -f4)"
    [[ -n $key ]] || die "no key in the answer: $answer"
    (umask 077 && printf '%s\n' "$key" >"$DEV_KEY_FILE")
    DEV_API_KEY="$key"
}

print_api_key() {
    cat <<EOF
  API key ($DEV_ORG): $DEV_API_KEY
  Admin key:         $ADMIN_API_KEY (the /admin and /ops routes only)
  Dashboard:         $BASE_URL/ui/#key=$DEV_API_KEY&admin=$ADMIN_API_KEY
EOF
}

print_summary() {
    local i workers=()
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        [[ ${NAMES[i]} == executor-worker-* ]] && workers+=("http://${ADDRS[i]}")
    done
    cat <<EOF

Thygon is running.
  Base URL:          $BASE_URL
  workflow-service:  http://$WORKFLOW_SERVICE_ADDR
  runtime-service:   http://$RUNTIME_SERVICE_ADDR
  executor-worker:   ${workers[*]:-(none)}
EOF
    if [[ $SUPPORT_AGENT != 0 ]]; then
        echo "  support-agent:     http://$SUPPORT_AGENT_ADDR (example agent)"
    fi
    cat <<EOF
  Logs:              $LOG_DIR/<name>.log
  Agents file:       $AGENTS_FILE
  Egress allowed:    ${EGRESS_ALLOW:-(nothing inside; see docs/SECURITY.md, "Egress")}
  Database:          $(redact_url "$DATABASE_URL")
  Broker:            $(redact_url "$AMQP_URL") (queue prefix $QUEUE_PREFIX)
EOF
    print_api_key
    cat <<EOF

  Try:  export THYGON_API_KEY=$DEV_API_KEY
        curl -s -H "Authorization: Bearer \$THYGON_API_KEY" $BASE_URL/workflows
Press Ctrl-C to stop everything.
EOF
}

# Refuse to start when a port is taken: most likely another `make run`.
check_port_free() {
    local name="$1" addr="$2" host port
    host="${addr%:*}"
    port="${addr##*:}"
    case "$host" in 0.0.0.0 | '*' | '') host=127.0.0.1 ;; esac
    if tcp_open "$host" "$port"; then
        die "$addr (for $name) is already in use; is another 'make run' running? (set ${3:-its address variable} to move it)"
    fi
}

# ---- 1. services and build ------------------------------------------------------------------
bash "$REPO/scripts/ensure-services.sh"

say "building (cargo build --release --workspace --bins) ..."
cargo build --release --workspace --bins

for bin in workflow-service runtime-service executor-worker support-agent; do
    [[ -x "$BIN_DIR/$bin" ]] || die "$BIN_DIR/$bin was not built"
done
NGINX="$(nginx_bin)" || die "nginx not found (make services installs it)"

mkdir -p "$LOG_DIR" "$NGINX_PREFIX"
ensure_admin_key
if [[ ! -f $AGENTS_FILE ]]; then
    warn "AGENTS_FILE $AGENTS_FILE does not exist; agent steps will fail"
fi

# ---- 2. free ports (another `make run` may hold them), migrations, gateway config ------
worker_addrs=()
for ((i = 0; i < WORKER_PROCESSES; i++)); do
    worker_addrs+=("$WORKER_HOST:$((WORKER_BASE_PORT + i))")
done

check_port_free workflow-service "$WORKFLOW_SERVICE_ADDR" WORKFLOW_SERVICE_ADDR
check_port_free runtime-service "$RUNTIME_SERVICE_ADDR" RUNTIME_SERVICE_ADDR
for addr in "${worker_addrs[@]}"; do
    check_port_free executor-worker "$addr" WORKER_BASE_PORT
done
check_port_free gateway "$GATEWAY_HOST:$GATEWAY_PORT" GATEWAY_PORT
if [[ $SUPPORT_AGENT != 0 ]]; then
    check_port_free support-agent "$SUPPORT_AGENT_ADDR" SUPPORT_AGENT_ADDR
fi

say "applying database migrations (workflow-service migrate) ..."
if ! "$BIN_DIR/workflow-service" migrate </dev/null >"$(log_file migrate)" 2>&1; then
    show_log_tail migrate
    die "migrations failed"
fi

nginx_conf="$NGINX_PREFIX/nginx.conf"
case "$GATEWAY_BIND" in
    '*' | '') gateway_listen="$GATEWAY_PORT" ;;
    *) gateway_listen="$GATEWAY_BIND:$GATEWAY_PORT" ;;
esac
render_nginx_conf "$nginx_conf" "$gateway_listen" "$WORKFLOW_SERVICE_ADDR" "$RUNTIME_SERVICE_ADDR" "$NGINX_PREFIX"
if ! nginx_check="$("$NGINX" -t -q -p "$NGINX_PREFIX" -c "$nginx_conf" -e stderr 2>&1)"; then
    printf '%s\n' "$nginx_check" >&2
    die "the rendered gateway config $nginx_conf does not pass nginx -t"
fi

# ---- 3. the processes ------------------------------------------------------------------------
if [[ $SUPPORT_AGENT != 0 ]]; then
    start support-agent "$SUPPORT_AGENT_ADDR" "http://$SUPPORT_AGENT_ADDR/healthz" \
        "$BIN_DIR/support-agent"
fi
start workflow-service "$WORKFLOW_SERVICE_ADDR" "http://$WORKFLOW_SERVICE_ADDR/readyz" \
    env HTTP_ADDR="$WORKFLOW_SERVICE_ADDR" "$BIN_DIR/workflow-service"
start runtime-service "$RUNTIME_SERVICE_ADDR" "http://$RUNTIME_SERVICE_ADDR/readyz" \
    env HTTP_ADDR="$RUNTIME_SERVICE_ADDR" "$BIN_DIR/runtime-service"
for ((i = 0; i < WORKER_PROCESSES; i++)); do
    start "executor-worker-$((i + 1))" "${worker_addrs[i]}" "http://${worker_addrs[i]}/readyz" \
        env HTTP_ADDR="${worker_addrs[i]}" "$BIN_DIR/executor-worker"
done
# /healthz through the gateway reaches workflow-service, so it proves nginx routes.
start gateway "$GATEWAY_HOST:$GATEWAY_PORT" "$BASE_URL/healthz" \
    "$NGINX" -p "$NGINX_PREFIX" -c "$nginx_conf" -e stderr -g 'daemon off;'

say "waiting up to ${READY_TIMEOUT}s for every process to be ready ..."
wait_all_ready
ensure_dev_key
print_summary

# ---- 4. watch --------------------------------------------------------------------------------
# `wait -n` returns when any child exits (or a trapped signal arrives); then find which.
while :; do
    wait -n 2>/dev/null || true
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        alive "${PIDS[i]}" || died "$i"
    done
done
