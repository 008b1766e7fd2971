#!/usr/bin/env bash
# A private PostgreSQL for vnet: Debian's server binaries, a data directory of
# its own, listening on 127.0.0.1 only, on a free port. It never touches the
# system's clusters.
#
#   scripts/postgres.sh [start]   install if missing, start, create the vnet
#                                 database and user; print the URL on stdout
#   scripts/postgres.sh url       print the URL of the running server
#   scripts/postgres.sh stop      stop what start started
#   scripts/postgres.sh purge     stop and delete the data directory
#
# Safe to run again: start on a running server only prints the URL.
# VNET_PG_DIR picks the directory (default /tmp/vnet-postgres); use one per
# test session to keep sessions apart. As root the server runs as the
# `postgres` user; otherwise as the caller.
# Exit codes: 0 done, 2 usage, 3 PostgreSQL is missing and cannot be
# installed (not root, or apt failed), 1 anything else.
set -euo pipefail

action=${1:-start}
base=${VNET_PG_DIR:-/tmp/vnet-postgres}
data=$base/data
db=vnet
user=vnet

say() { echo "postgres.sh: $*" >&2; }

find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    return 1
}

install_postgres() {
    find_bindir >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        say "PostgreSQL is not installed and installing it needs root"
        exit 3
    fi
    say "installing Debian's postgresql"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }; then
        say "apt-get install postgresql failed"
        exit 3
    fi
    find_bindir >/dev/null || { say "postgresql installed but no initdb found"; exit 3; }
}

# Run a command as the server's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() {
    local bindir=$1
    [ -f "$data/PG_VERSION" ] && as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1
}

print_url() {
    [ -f "$base/port" ] && [ -f "$base/password" ] || { say "no server set up in $base"; exit 1; }
    echo "postgresql+psycopg://$user:$(cat "$base/password")@127.0.0.1:$(cat "$base/port")/$db"
}

psql_admin() {
    local bindir=$1; shift
    as_owner "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$base/sock" -p "$(cat "$base/port")" \
        -U postgres -d postgres "$@"
}

start() {
    install_postgres
    local bindir
    bindir=$(find_bindir)
    mkdir -p "$base"
    exec 9>"$base/lock"
    flock -w 120 9 || { say "timed out waiting for $base/lock"; exit 1; }
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$base"
        chown postgres: "$base/lock"
    fi
    chmod 700 "$base"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "creating a cluster in $data"
        as_owner mkdir -p "$data" "$base/sock"
        as_owner "$bindir/initdb" -D "$data" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --no-instructions >"$base/initdb.log" 2>&1 \
            || { cat "$base/initdb.log" >&2; exit 1; }
    fi
    [ -f "$base/password" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' >"$base/password")
    if ! running "$bindir"; then
        free_port >"$base/port"
        say "starting on 127.0.0.1:$(cat "$base/port")"
        # 9>&-: the server must not inherit the lock, or it holds it forever.
        as_owner "$bindir/pg_ctl" start -D "$data" -w -t 60 -l "$base/server.log" \
            -o "-c listen_addresses=127.0.0.1 -c port=$(cat "$base/port") -c unix_socket_directories=$base/sock" \
            >/dev/null 9>&- || { tail -n 20 "$base/server.log" >&2; exit 1; }
    fi
    local pw
    pw=$(cat "$base/password")
    if [ -z "$(psql_admin "$bindir" -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" ]; then
        psql_admin "$bindir" -c "CREATE ROLE $user LOGIN PASSWORD '$pw'"
    fi
    if [ -z "$(psql_admin "$bindir" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
        psql_admin "$bindir" -c "CREATE DATABASE $db OWNER $user"
    fi
    print_url
}

stop() {
    local bindir
    bindir=$(find_bindir) || return 0
    if running "$bindir"; then
        say "stopping the server in $data"
        as_owner "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null
    fi
}

case "$action" in
    start) start ;;
    url) print_url ;;
    stop) stop ;;
    purge)
        stop
        case "$base" in
            /|/tmp|"") say "refusing to delete $base"; exit 1 ;;
        esac
        rm -rf "$base"
        ;;
    *) echo "usage: $0 [start|url|stop|purge]" >&2; exit 2 ;;
esac
