#!/usr/bin/env bash
# make demo: the main job end to end on throwaway PostgreSQL, Redis and a reference
# gate under target/demo, all stopped and removed on exit, whatever happens.
set -euo pipefail
bin=$(readlink -f "${1:-target/debug/ragspool}")
root=$(pwd)/target/demo
bash scripts/servers.sh stop "$root/servers" 2>/dev/null || true
rm -rf "$root"
mkdir -p "$root"
gate_pid=
watch_pid=
cleanup() {
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null || true
  [ -n "$gate_pid" ] && kill "$gate_pid" 2>/dev/null || true
  bash scripts/servers.sh stop "$root/servers"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "starting throwaway PostgreSQL and Redis"
eval "$(bash scripts/servers.sh start "$root/servers" all)"
echo "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo

export SPOOL_DIR=$root/spool
export RAG_LOG_FILE=$root/logs/rag_ingestion.log
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/ragdemo
export REDIS_HOST=127.0.0.1 REDIS_PORT=$REDIS_PORT
export GATE_TOKEN=demo-gate-token GATE_SECRET=whsec_ZGVtby1zaWduaW5nLXNlY3JldA==
gate_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export GATE_URL=http://127.0.0.1:$gate_port/

step "ragspool gate serve --listen 127.0.0.1:$gate_port (the reference gate)"
"$bin" -q gate serve --listen "127.0.0.1:$gate_port" --events "$root/gate-events.jsonl" &
gate_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$gate_port") 2>/dev/null && break; sleep 0.05; done

step "ragspool init"
"$bin" init
step "ragspool migrate"
"$bin" migrate
step "ragspool gen --files 20 --records 200 --bad 2"
"$bin" gen --files 20 --records 200 --bad 2
step "ragspool watch (until the spool is drained)"
BATCH_MAX_AGE_SECS=1 "$bin" watch &
watch_pid=$!
for _ in $(seq 600); do
  left=$(find "$SPOOL_DIR/incoming" "$SPOOL_DIR/processing" -type f -name '*.msgpack' | wc -l)
  [ "$left" = 0 ] && break
  sleep 0.2
done
sleep 1
kill -TERM "$watch_pid"
wait "$watch_pid" && echo "watch stopped cleanly (exit 0)"
step "Redis: build generation (one build update per batch)"
redis-cli -p "$REDIS_PORT" get rag:build_generation | sed 's/^/build generation: /'
step "ragspool status"
"$bin" status
step "rows in the table"
psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo -c \
  "SELECT count(*) AS rows, count(DISTINCT batch_tag) AS batches, min(created_at)::date AS oldest, max(created_at)::date AS newest FROM rag_chunks"
step "events the gate received"
cat "$root/gate-events.jsonl"
step "quarantined files and their reasons"
for reason in "$SPOOL_DIR"/failed/*/*.reason.json; do
  echo "$(basename "$reason" .reason.json):"
  echo "  $(cat "$reason")"
done
step "failure log (hash-chained)"
cat "$root/logs/rag_failures.jsonl"
