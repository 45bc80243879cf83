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
#   scripts/servers.sh citus DIR                  a Citus coordinator and two workers under DIR/coordinator,
#                                                  DIR/worker1, DIR/worker2; prints COORDINATOR_PORT=,
#                                                  WORKER1_PORT=, WORKER2_PORT=, PG_BIN= lines
#   scripts/servers.sh citus-db DIR NAME          database NAME on every node of that cluster, with the
#                                                  citus and vector extensions, the workers registered
#   scripts/servers.sh citus-install              only make sure Citus is installed (see ensure_citus)
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

# Citus for the server's PostgreSQL when it lacks it: built from source, once per
# machine (the installed extension is the cache). The source is CITUS_SRC (a tree),
# else the tarball and patch kept in ../shared/citus/ beside the repository (checked
# against its sha256), else the upstream release. Citus is in none of Debian's
# archives; on a machine that reaches Citus's own apt repository, installing
# postgresql-<version>-citus-13.2 first makes all of this a no-op.
CITUS_VERSION=13.2.2
CITUS_SHA256=9b0907650e8688465d616921004541a36ceb91a0acb62e9998a2f144e7b0f544
ensure_citus() {
  local bin=$1 version lock
  version=$(basename "$(dirname "$bin")")
  [ -f "/usr/share/postgresql/$version/extension/citus.control" ] && return 0
  is_root || die "Citus is missing for PostgreSQL $version; install postgresql-$version-citus-13.2 (https://docs.citusdata.com) or build it from source (CITUS_SRC, ../shared/citus/README.md)"
  # Test binaries start in parallel: one builds, the others wait and find it installed.
  lock=/tmp/ragspool-citus-build.lock
  exec 9>"$lock"
  flock 9
  if [ ! -f "/usr/share/postgresql/$version/extension/citus.control" ]; then
    build_citus "$version" || { flock -u 9; die "Citus did not build (see $CITUS_BUILD_LOG)"; }
  fi
  flock -u 9
  [ -f "/usr/share/postgresql/$version/extension/citus.control" ] || die "Citus did not install"
}

build_citus() {
  local version=$1 pgconfig here shared work tree
  pgconfig=/usr/lib/postgresql/$version/bin/pg_config
  [ -x "$pgconfig" ] && [ -d "/usr/include/postgresql/$version/server" ] || apt_install "postgresql-server-dev-$version"
  # PostgreSQL's server headers include GSSAPI's (Debian builds it with Kerberos);
  # lz4 and zstd are Citus's columnar compressors.
  dpkg -s libkrb5-dev liblz4-dev libzstd-dev >/dev/null 2>&1 || apt_install libkrb5-dev liblz4-dev libzstd-dev
  command -v make >/dev/null && command -v gcc >/dev/null || apt_install make gcc
  here=$(cd "$(dirname "$0")/.." && pwd)
  shared=$here/../shared/citus
  work=$(mktemp -d)
  CITUS_BUILD_LOG=$work/build.log
  if [ -n "${CITUS_SRC:-}" ]; then
    [ -x "$CITUS_SRC/configure" ] || die "CITUS_SRC=$CITUS_SRC holds no Citus source tree"
    cp -a "$CITUS_SRC" "$work/citus"
    tree=$work/citus
  elif [ -f "$shared/citus-$CITUS_VERSION.tar.gz" ]; then
    echo "$CITUS_SHA256  $shared/citus-$CITUS_VERSION.tar.gz" | sha256sum -c --quiet - >&2 \
      || die "$shared/citus-$CITUS_VERSION.tar.gz does not match its sha256"
    tar -xzf "$shared/citus-$CITUS_VERSION.tar.gz" -C "$work"
    tree=$work/citus-$CITUS_VERSION
    (cd "$tree" && patch -s -p1 < "$shared/pg15-minor.patch") || die "pg15-minor.patch does not apply"
  else
    command -v curl >/dev/null || apt_install curl ca-certificates
    curl -fsSL "https://github.com/citusdata/citus/archive/refs/tags/v$CITUS_VERSION.tar.gz" -o "$work/citus.tar.gz" \
      || die "cannot download Citus $CITUS_VERSION; set CITUS_SRC to a source tree"
    tar -xzf "$work/citus.tar.gz" -C "$work"
    tree=$work/citus-$CITUS_VERSION
    # The fix of pg15-minor.patch: PostgreSQL 15's later minors export the
    # have_createdb_privilege that Citus defines for itself.
    if grep -q have_createdb_privilege "/usr/include/postgresql/$version/server/commands/dbcommands.h"; then
      sed -i '/^have_createdb_privilege(void)$/i #define have_createdb_privilege citus_have_createdb_privilege' \
        "$tree/src/include/pg_version_compat.h"
    fi
  fi
  # --without-libcurl: no anonymous usage statistics sent from a test server.
  (cd "$tree" && ./configure --without-libcurl PG_CONFIG="$pgconfig" && make -j"$(nproc)" && make install) \
    >"$CITUS_BUILD_LOG" 2>&1 || { tail -30 "$CITUS_BUILD_LOG" >&2; return 1; }
  rm -rf "$work"
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

# A Citus coordinator and two workers, each a server of its own under DIR/<node>
# (so pg-stop/pg-start DIR/worker1 stop and restart one worker), started side by
# side. Two-phase commit across nodes needs max_prepared_transactions; Citus runs a
# maintenance daemon per database on every node, hence more background workers.
CITUS_NODES="coordinator worker1 worker2"
start_citus() {
  local dir=$1 bin node port
  bin=$(pg_bin)
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin); fi
  ensure_citus "$bin"
  ensure_pgvector "$bin"
  for node in $CITUS_NODES; do
    mkdir -p "$dir/$node"
    if is_root; then chown postgres "$dir/$node"; fi
    PG_EXTRA_OPTS="-c shared_preload_libraries=citus -c max_prepared_transactions=200 -c max_worker_processes=64 ${PG_EXTRA_OPTS:-}" \
      start_pg "$dir/$node" >"$dir/$node/start.out" 2>&1 &
  done
  wait
  for node in $CITUS_NODES; do
    port=$(sed -n 's/^PG_PORT=//p' "$dir/$node/start.out")
    [ -n "$port" ] || die "the Citus $node did not start: $(tail -5 "$dir/$node/start.out")"
    echo "$port" > "$dir/$node/port"
    echo "$(echo "$node" | tr a-z A-Z)_PORT=$port"
  done
  echo "PG_BIN=$bin"
}

# Database NAME on every node of the cluster under DIR (the nodes side by side):
# Citus propagates neither CREATE DATABASE nor the extensions, and keeps its node
# list per database.
citus_db() {
  local dir=$1 name=$2 bin node coord failed=""
  bin=$(pg_bin)
  coord=$(cat "$dir/coordinator/port")
  # One output file per database: tests create databases on one cluster at once.
  for node in $CITUS_NODES; do
    citus_db_node "$bin" "$(cat "$dir/$node/port")" "$name" >"$dir/$node/db-$name.out" 2>&1 &
  done
  wait
  for node in $CITUS_NODES; do
    grep -q '^ok$' "$dir/$node/db-$name.out" || failed="$failed $node: $(tail -3 "$dir/$node/db-$name.out")"
  done
  [ -z "$failed" ] || die "cannot create $name with its extensions on$failed"
  as_pg "$bin/psql" -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$coord" -U postgres -d "$name" \
    -c "SET client_min_messages = warning" \
    -c "SELECT citus_set_coordinator_host('127.0.0.1', $coord)" \
    -c "SELECT citus_add_node('127.0.0.1', $(cat "$dir/worker1/port"))" \
    -c "SELECT citus_add_node('127.0.0.1', $(cat "$dir/worker2/port"))" >/dev/null \
    || die "cannot register the workers in $name"
}

citus_db_node() {
  local bin=$1 port=$2 name=$3
  as_pg "$bin/psql" -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE \"$name\"" >/dev/null \
  && as_pg "$bin/psql" -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$name" \
    -c "SET client_min_messages = warning; CREATE EXTENSION citus; CREATE EXTENSION vector" >/dev/null \
  && echo ok
}

pg_stop() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/pg" stop -m immediate >/dev/null
}

pg_start() {
  as_pg "$(pg_bin)/pg_ctl" -D "$1/pg" -l "$1/pg.log" -w -t 60 -o "$(cat "$1/pg.opts")" start >/dev/null
}

stop() {
  local dir=$1 bin node
  [ -d "$dir" ] || return 0
  for node in "$dir"/*/pg/postmaster.pid; do
    [ -f "$node" ] || continue
    as_pg "$(pg_bin)/pg_ctl" -D "$(dirname "$node")" stop -m immediate >/dev/null 2>&1 || true
  done
  if [ -f "$dir/pg/postmaster.pid" ]; then
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$dir/pg" stop -m immediate >/dev/null 2>&1 || true
  fi
  if [ -f "$dir/redis.pid" ]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
  rm -rf "$dir"
}

cmd=${1:-}; dir=${2:-}
if [ "$cmd" = citus-install ]; then
  bin=$(pg_bin); [ -n "$bin" ] || die "no PostgreSQL under /usr/lib/postgresql"
  ensure_citus "$bin"; exit 0
fi
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
  citus) mkdir -p "$dir"; dir=$(cd "$dir" && pwd); start_citus "$dir" ;;
  citus-db) citus_db "$dir" "${3:?database name}" ;;
  *) die "usage: servers.sh start|stop DIR [pg|redis|all]" ;;
esac
