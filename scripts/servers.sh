#!/usr/bin/env bash
# Throwaway PostgreSQL and Redis for tests, the demo and the benchmark: the one
# place that installs (Debian packages, when missing and root), starts and stops them.
#
#   scripts/servers.sh start DIR [pg|redis|all]   start under DIR on free loopback ports;
#                                                  prints PG_PORT=, PG_BIN=, REDIS_PORT= lines
#   scripts/servers.sh stop DIR                   stop what DIR holds and remove it
#   scripts/servers.sh pg-stop DIR | pg-start DIR  stop / restart PostgreSQL on the same port
#   scripts/servers.sh standby DIR PRIMARY_PORT    a streaming standby (pg_basebackup -R)
#   scripts/servers.sh pg-promote DIR | pg-stop-fast DIR   promote it; stop a primary cleanly
#
# PG_EXTRA_OPTS adds postgres -c options (e.g. "-c ssl=on -c ssl_cert_file=..."); they
# come last, so "-c fsync=on" gives a durable server (the fault campaign's).
set -euo pipefail

die() { echo "servers.sh: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  is_root || die "missing $*; install with: sudo apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq "$@" || { apt-get update -qq && apt-get install -y -qq "$@"; }; } >/dev/null \
    || die "could not install $*"
}

pg_bin() {
  local best="" v
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/postgres" ] || continue
    v=$(basename "$(dirname "$d")")
    # Prefer 15, the version the project targets; else the newest.
    if [ "$v" = 15 ]; then best=$d; break; fi
    best=$d
  done
  echo "$best"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $(( 20000 + RANDOM % 20000 ))
}

# pgvector for the server's PostgreSQL when it lacks it. Debian bookworm ships no
# binary package; the source package of a newer release builds against PostgreSQL 15
# in seconds. A private apt configuration under target/ fetches it, so the system's
# sources list is never touched.
ensure_pgvector() {
  local bin=$1 version pgconfig apt src
  version=$(basename "$(dirname "$bin")")
  [ -f "/usr/share/postgresql/$version/extension/vector.control" ] && return 0
  is_root || die "pgvector is missing for PostgreSQL $version; install postgresql-$version-pgvector or build it from source (https://github.com/pgvector/pgvector)"
  pgconfig=/usr/lib/postgresql/$version/bin/pg_config
  [ -x "$pgconfig" ] && [ -d "/usr/include/postgresql/$version/server" ] || apt_install "postgresql-server-dev-$version"
  command -v make >/dev/null && command -v gcc >/dev/null || apt_install make gcc
  apt=$(mktemp -d); src=$apt/src
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$src"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq >/dev/null 2>&1 || die "cannot read Debian's pgvector source index"
  (cd "$src" && apt-get "${opts[@]}" source --download-only pgvector >/dev/null 2>&1) || die "cannot download pgvector's source"
  tar -xzf "$src"/pgvector_*.orig.tar.gz -C "$src"
  # OPTFLAGS= keeps -march=native out: the build must run on any x86-64 machine.
  (cd "$src"/pgvector-*/ && make -s PG_CONFIG="$pgconfig" OPTFLAGS= >/dev/null 2>&1 \
    && make -s install PG_CONFIG="$pgconfig" >/dev/null) || die "pgvector did not build"
  rm -rf "$apt"
  [ -f "/usr/share/postgresql/$version/extension/vector.control" ] || die "pgvector did not install"
}

# Runs a command as the postgres user when we are root (PostgreSQL refuses root).
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_pg() {
  local dir=$1 bin
  bin=$(pg_bin)
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin); fi
  [ -n "$bin" ] || die "no initdb under /usr/lib/postgresql"
  ensure_pgvector "$bin"
  mkdir -p "$dir/pgsock"
  if is_root; then chown postgres "$dir" "$dir/pgsock"; fi
  as_pg "$bin/initdb" -D "$dir/pg" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  run_pg "$dir" "$bin" "-c synchronous_commit=off -c full_page_writes=off" || die "PostgreSQL did not start"
}

# Starts the data directory DIR/pg on a free loopback port (PG_FIXED_PORT when
# set: a standby rebuilt where the old primary was) with `extra` options (then
# PG_EXTRA_OPTS) and prints PG_PORT= and PG_BIN=; fails after three ports.
run_pg() {
  local dir=$1 bin=$2 extra=$3 port opts
  for _ in 1 2 3; do
    port=${PG_FIXED_PORT:-$(free_port)}
    opts="-p $port -k $dir/pgsock -c listen_addresses=127.0.0.1 -c fsync=off $extra"
    opts="$opts -c max_connections=300 ${PG_EXTRA_OPTS:-}"
    if as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 60 -o "$opts" start >/dev/null; then
      printf '%s\n' "$opts" > "$dir/pg.opts"
      echo "PG_PORT=$port"
      echo "PG_BIN=$bin"
      return 0
    fi
  done
  tail -20 "$dir/pg.log" >&2 || true
  return 1
}

start_redis() {
  local dir=$1 port
  command -v redis-server >/dev/null || apt_install redis-server
  for _ in 1 2 3; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --databases 1024 \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null
    for _ in $(seq 100); do
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
        echo "REDIS_PORT=$port"
        return 0
      fi
      sleep 0.05
    done
  done
  die "redis-server did not start"
}

# A streaming standby of the PostgreSQL on PRIMARY_PORT, made by pg_basebackup -R
# into DIR and started on a free port with the same options.
start_standby() {
  local dir=$1 primary=$2 bin
  bin=$(pg_bin)
  mkdir -p "$dir/pgsock"
  if is_root; then chown postgres "$dir" "$dir/pgsock"; fi
  as_pg "$bin/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/pg" -R -X stream -c fast >/dev/null
  run_pg "$dir" "$bin" "-c synchronous_commit=on" || die "the standby did not start"
}

pg_stop() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/pg" stop -m immediate >/dev/null
}

pg_start() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/pg" -l "$1/pg.log" -w -t 60 -o "$(cat "$1/pg.opts")" start >/dev/null
}

stop() {
  local dir=$1 bin
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pg/postmaster.pid" ]; then
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$dir/pg" stop -m immediate >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/redis.pid" ]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
  rm -rf "$dir"
}

cmd=${1:-}; dir=${2:-}
[ -n "$dir" ] || die "usage: servers.sh start|stop DIR [pg|redis|all]"
case "$cmd" in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    case "${3:-all}" in
      pg) start_pg "$dir" ;;
      redis) start_redis "$dir" ;;
      all) start_pg "$dir"; start_redis "$dir" ;;
      *) die "unknown server kind ${3}" ;;
    esac
    ;;
  stop) stop "$dir" ;;
  pg-stop) pg_stop "$dir" ;;
  pg-stop-fast) as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg" stop -m fast >/dev/null ;;
  pg-promote) as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg" promote -w >/dev/null ;;
  standby) mkdir -p "$dir"; dir=$(cd "$dir" && pwd); start_standby "$dir" "${3:?primary port}" ;;
  pg-start) pg_start "$dir" ;;
  *) die "usage: servers.sh start|stop DIR [pg|redis|all]" ;;
esac
