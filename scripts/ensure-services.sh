#!/usr/bin/env bash
# Make sure this machine has what Thygon needs to build, run and test (`make services`):
#   - Debian packages: postgresql, rabbitmq-server, nginx, libpq-dev, pkg-config, libssl-dev,
#     curl, gettext-base (envsubst), make; with --test-tools (`make test`) also chromium (the
#     dashboard's browser test) and pgbouncer (the connection-budget tests start one); only
#     the missing ones are installed, and `make run` installs no test tool.
#   - a Rust toolchain (stable >= 1.85; not installed here, only checked);
#   - PostgreSQL and RabbitMQ running and accepting connections (started if they are not;
#     services that already run are never stopped or reconfigured);
#   - the role `thygon` (password `thygon`, LOGIN CREATEDB) and the database `thygon` it owns,
#     unless DATABASE_URL points somewhere else, in which case it is only checked.
# Idempotent: prints one line per thing it does, and one summary line when all is well.
# Works as root, or as a user with sudo. Waits are bounded: PG_WAIT_SECONDS (default 60),
# RABBITMQ_WAIT_SECONDS (default 120).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEST_TOOLS=0
[[ ${1:-} == --test-tools ]] && TEST_TOOLS=1

PG_WAIT_SECONDS="${PG_WAIT_SECONDS:-60}"
RABBITMQ_WAIT_SECONDS="${RABBITMQ_WAIT_SECONDS:-120}"

# The role and database that the default DATABASE_URL names.
DB_ROLE=thygon
DB_PASSWORD=thygon
DB_NAME=thygon

# ---------------------------------------------------------------------------------------------
# Packages

dpkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

have_postgres_server() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
have_rabbitmq_server() { command -v rabbitmq-server >/dev/null 2>&1 || [[ -x /usr/sbin/rabbitmq-server ]]; }
have_nginx() { nginx_bin >/dev/null; }
have_cmd() { command -v "$1" >/dev/null 2>&1; }

# Prints the Debian packages that are missing, one a line.
missing_packages() {
    { have_postgres_server && have_cmd psql; } || echo postgresql
    have_rabbitmq_server || echo rabbitmq-server
    have_nginx || echo nginx
    { dpkg_installed libpq-dev || [[ -e /usr/include/postgresql/libpq-fe.h ]]; } || echo libpq-dev
    have_cmd pkg-config || echo pkg-config
    { dpkg_installed libssl-dev || [[ -e /usr/include/openssl/ssl.h ]]; } || echo libssl-dev
    have_cmd curl || echo curl
    have_cmd openssl || echo openssl # e2e/tests/tls.rs makes its CA with it
    have_cmd envsubst || echo gettext-base
    have_cmd make || echo make
    if ((TEST_TOOLS)); then
        [[ -x /usr/bin/chromium ]] || echo chromium
        { have_cmd pgbouncer || [[ -x /usr/sbin/pgbouncer ]]; } || echo pgbouncer
    fi
}

install_missing_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0

    if ! have_cmd apt-get; then
        die "missing packages: ${missing[*]} (Debian names); this script installs them only with apt-get, please install them yourself"
    fi

    local log
    log="$(mktemp "${TMPDIR:-/tmp}/thygon-apt.XXXXXX.log")"
    say "installing ${missing[*]} with apt-get (log: $log)"

    # Without systemd (a container), the packages' init scripts would start their daemons in
    # the middle of the install, nginx on port 80 among them. Hold them back; this script
    # starts PostgreSQL and RabbitMQ itself below. An existing policy-rc.d is left alone.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [[ ! -d /run/systemd/system && ! -e $policy ]]; then
        printf '#!/bin/sh\n# added by thygon scripts/ensure-services.sh during apt-get install\nexit 101\n' |
            as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        added_policy=$policy
    fi

    local ok=1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${missing[@]}" >>"$log" 2>&1 || ok=0
    [[ -n $added_policy ]] && as_root rm -f "$added_policy"
    if ((!ok)); then
        tail -n 30 "$log" >&2
        die "apt-get failed; see $log"
    fi
    hash -r
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_accepting() {
    local host="$1" port="$2"
    if have_cmd pg_isready; then
        pg_isready -q -h "${host:-127.0.0.1}" -p "$port" -t 2
    else
        tcp_open "${host:-127.0.0.1}" "$port"
    fi
}

start_postgres() {
    if [[ -d /run/systemd/system ]] && have_cmd systemctl; then
        say "starting PostgreSQL (systemctl start postgresql)"
        as_root systemctl start postgresql && return 0
    fi
    local version=""
    if [[ -d /etc/postgresql ]]; then
        # the newest version that has a `main` cluster
        version="$(find /etc/postgresql -mindepth 2 -maxdepth 2 -type d -name main -printf '%h\n' 2>/dev/null |
            xargs -r -n1 basename | sort -V | tail -n 1)"
    fi
    if [[ -n $version ]] && have_cmd pg_ctlcluster; then
        say "starting PostgreSQL $version/main (pg_ctlcluster)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start && return 0
        warn "pg_ctlcluster $version main start failed; trying: service postgresql start"
    else
        say "starting PostgreSQL (service postgresql start)"
    fi
    as_root service postgresql start || die "could not start PostgreSQL"
}

# PG_SUPER: the command that runs psql as the postgres superuser, found by pg_find_superuser.
PG_SUPER=()

pg_find_superuser() {
    local port="$1"
    local -a tries=()
    if [[ $EUID -eq 0 ]] && have_cmd runuser; then
        tries+=("runuser -u postgres -- psql -p $port")
    elif have_cmd sudo; then
        tries+=("sudo -n -u postgres psql -p $port")
    fi
    tries+=("psql -h 127.0.0.1 -p $port -U postgres -w")
    local try
    for try in "${tries[@]}"; do
        read -r -a PG_SUPER <<<"$try"
        if pg_super -c 'select 1' >/dev/null 2>&1; then
            return 0
        fi
    done
    PG_SUPER=()
    return 1
}

# pg_super ARGS...: psql as the superuser, unaligned, tuples only, stopping at the first error.
# Runs from / so that `runuser -u postgres` does not complain about an unreadable cwd.
pg_super() {
    (cd / && PGCONNECT_TIMEOUT=5 "${PG_SUPER[@]}" -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@")
}

ensure_role_and_database() {
    local port="$1"
    pg_find_superuser "$port" ||
        die "cannot run psql as the postgres superuser (tried runuser/sudo -u postgres over the socket, then psql -h 127.0.0.1 -U postgres); create role '$DB_ROLE' (password '$DB_PASSWORD', LOGIN CREATEDB) and database '$DB_NAME' owned by it yourself"

    local attrs
    attrs="$(pg_super -c "select rolcanlogin::int::text || rolcreatedb::int::text from pg_roles where rolname = '$DB_ROLE'")"
    if [[ -z $attrs ]]; then
        say "creating PostgreSQL role $DB_ROLE (LOGIN CREATEDB)"
        pg_super -c "create role $DB_ROLE login createdb password '$DB_PASSWORD'" >/dev/null
    elif [[ $attrs != 11 ]]; then
        say "granting LOGIN CREATEDB to PostgreSQL role $DB_ROLE"
        pg_super -c "alter role $DB_ROLE login createdb" >/dev/null
    fi

    local owner
    owner="$(pg_super -c "select pg_get_userbyid(datdba) from pg_database where datname = '$DB_NAME'")"
    if [[ -z $owner ]]; then
        say "creating database $DB_NAME owned by $DB_ROLE"
        pg_super -c "create database $DB_NAME owner $DB_ROLE" >/dev/null
    elif [[ $owner != "$DB_ROLE" ]]; then
        say "making $DB_ROLE the owner of database $DB_NAME (was $owner)"
        pg_super -c "alter database $DB_NAME owner to $DB_ROLE" >/dev/null
    fi

    # The role may exist with another password (when the server checks passwords at all).
    if ! db_connects "$THYGON_DEFAULT_DATABASE_URL"; then
        say "setting the password of PostgreSQL role $DB_ROLE"
        pg_super -c "alter role $DB_ROLE password '$DB_PASSWORD'" >/dev/null
    fi
}

db_connects() {
    PGCONNECT_TIMEOUT=5 psql "$1" -X -q -A -t -w -c 'select 1' >/dev/null 2>&1
}

ensure_postgres() {
    local url="${DATABASE_URL:-}" manage=0
    if [[ -z $url || $url == "$THYGON_DEFAULT_DATABASE_URL" ]]; then
        url="$THYGON_DEFAULT_DATABASE_URL"
        manage=1
    fi
    local host port
    host="$(url_host "$url")"
    port="$(url_port "$url" 5432)"

    if ! pg_accepting "$host" "$port"; then
        if is_local_host "$host"; then
            start_postgres
            wait_until "$PG_WAIT_SECONDS" "PostgreSQL on ${host:-127.0.0.1}:$port" pg_accepting "$host" "$port" ||
                die "PostgreSQL does not accept connections on ${host:-127.0.0.1}:$port (see /var/log/postgresql/)"
        else
            die "PostgreSQL at $host:$port (DATABASE_URL) does not accept connections; this script starts only a local one"
        fi
    fi

    if ((manage)); then
        ensure_role_and_database "$port"
    fi
    if ! db_connects "$url"; then
        PGCONNECT_TIMEOUT=5 psql "$url" -X -q -w -c 'select 1' >/dev/null || true
        if ((manage)); then
            die "cannot connect as $DB_ROLE to $url; check pg_hba.conf allows password (or trust) logins on 127.0.0.1"
        fi
        die "cannot connect to DATABASE_URL ($(redact_url "$url")); it is set in the environment, so this script only checks it"
    fi
    PG_SUMMARY="PostgreSQL $host:$port"
    ((manage)) || PG_SUMMARY+=" (DATABASE_URL from the environment: connection OK, role/database not managed)"
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

rabbitmq_node_running() {
    have_cmd rabbitmqctl && as_root rabbitmqctl -q status >/dev/null 2>&1
}

start_rabbitmq() {
    if [[ -d /run/systemd/system ]] && have_cmd systemctl; then
        say "starting RabbitMQ (systemctl start rabbitmq-server)"
        as_root systemctl start rabbitmq-server && return 0
    fi
    local out
    say "starting RabbitMQ (rabbitmq-server -detached)"
    if ! out="$(as_root rabbitmq-server -detached 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
    fi
}

ensure_rabbitmq() {
    local url="${AMQP_URL:-$THYGON_DEFAULT_AMQP_URL}" host port default_port=5672
    [[ $url == amqps://* ]] && default_port=5671
    host="$(url_host "$url")"
    host="${host:-127.0.0.1}"
    port="$(url_port "$url" "$default_port")"

    if ! tcp_open "$host" "$port"; then
        is_local_host "$host" ||
            die "RabbitMQ at $host:$port (AMQP_URL) does not accept connections; this script starts only a local one"
        # A node that is still booting answers `status` before it opens its AMQP port.
        rabbitmq_node_running || start_rabbitmq
        wait_until "$RABBITMQ_WAIT_SECONDS" "RabbitMQ on $host:$port" tcp_open "$host" "$port" ||
            die "RabbitMQ does not accept connections on $host:$port (see /var/log/rabbitmq/)"
        if have_cmd rabbitmqctl; then
            as_root rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 ||
                warn "rabbitmqctl await_startup did not confirm the node is fully booted"
        fi
    fi
    MQ_SUMMARY="RabbitMQ $host:$port"
}

# ---------------------------------------------------------------------------------------------

main() {
    require_rust
    install_missing_packages
    ensure_postgres
    ensure_rabbitmq
    say "ok: $PG_SUMMARY, $MQ_SUMMARY, $(cargo --version 2>/dev/null | awk '{print $1, $2}')"
}

main "$@"
