#!/usr/bin/env bash
# make demo: the main job end to end on throwaway servers under target/demo,
# cleaned up on exit, whatever happens.
set -euo pipefail
bin=$(readlink -f "${1:-target/debug/ragspool}")
root=$(pwd)/target/demo
bash scripts/servers.sh stop "$root" 2>/dev/null || true
mkdir -p "$root"
trap 'bash scripts/servers.sh stop "$root"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "starting throwaway PostgreSQL and Redis"
eval "$(bash scripts/servers.sh start "$root/servers" all)"
echo "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo

export SPOOL_DIR=$root/spool
export RAG_LOG_FILE=$root/logs/rag_ingestion.log
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/ragdemo
export REDIS_HOST=127.0.0.1 REDIS_PORT=$REDIS_PORT

step "ragspool init"
"$bin" init
step "ragspool gen --files 20 --records 200 --bad 2"
"$bin" gen --files 20 --records 200 --bad 2
step "ragspool status"
"$bin" status
step "ragspool check"
"$bin" check
