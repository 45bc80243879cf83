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
# RAG storage (SPEC §10, §15): pgvector's halfvec column, a full-text column, HNSW and
# GIN on sealed partitions, documents replaced.
export EMBEDDING_TYPE=halfvec EMBED_DIM=384 VECTOR_INDEX=hnsw VECTOR_INDEX_QUIET_SECS=0 DOC_MODE=replace
export TEXT_SEARCH=english
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
step "nearest neighbours of one chunk (pgvector halfvec, cosine distance)"
psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo -c \
  "SELECT doc_id, chunk_index, round((embedding <=> (SELECT embedding FROM rag_chunks ORDER BY doc_id, chunk_index LIMIT 1))::numeric, 4) AS distance
   FROM rag_chunks ORDER BY embedding <=> (SELECT embedding FROM rag_chunks ORDER BY doc_id, chunk_index LIMIT 1) LIMIT 5"
step "one document replaced, one deleted (DOC_MODE=replace, a delete record)"
q() { psql -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo -c "$1"; }
replaced=$(q "SELECT doc_id FROM rag_chunks ORDER BY doc_id LIMIT 1")
deleted=$(q "SELECT doc_id FROM rag_chunks ORDER BY doc_id DESC LIMIT 1")
echo "before: $replaced has $(q "SELECT count(*) FROM rag_chunks WHERE doc_id = '$replaced'") chunk(s), $deleted has $(q "SELECT count(*) FROM rag_chunks WHERE doc_id = '$deleted'")"
python3 - "$SPOOL_DIR" "$replaced" "$deleted" <<'PY'
import os, struct, sys
spool, replaced, deleted = sys.argv[1:]
def s(x):
    b = x.encode(); return bytes([0xda]) + struct.pack(">H", len(b)) + b
def m(d):
    out = bytes([0x80 | len(d)])
    for k, v in d.items():
        out += s(k)
        if isinstance(v, bool): out += b"\xc3" if v else b"\xc2"
        elif isinstance(v, int): out += bytes([0xce]) + struct.pack(">I", v)
        elif isinstance(v, list): out += bytes([0xdc]) + struct.pack(">H", len(v)) + b"".join(b"\xca" + struct.pack(">f", f) for f in v)
        else: out += s(v)
    return out
body = b"".join(m({"doc_id": replaced, "chunk_index": i, "content": f"version 2, chunk {i}",
                   "embedding": [1.0 if j == i else 0.0 for j in range(384)]}) for i in range(2))
body += m({"doc_id": deleted, "delete": True})
tmp = os.path.join(spool, "tmp", "update.msgpack")
open(tmp, "wb").write(body)
os.rename(tmp, os.path.join(spool, "incoming", "update.msgpack"))
PY
"$bin" process
echo "after: $replaced has $(q "SELECT count(*) FROM rag_chunks WHERE doc_id = '$replaced'") chunk(s) ($(q "SELECT string_agg(content, ' | ') FROM rag_chunks WHERE doc_id = '$replaced'")), $deleted has $(q "SELECT count(*) FROM rag_chunks WHERE doc_id = '$deleted'")"
q "SELECT 'manifest: ' || file_name || ' rows=' || rows || ' deleted=' || deleted FROM ragspool_manifest WHERE file_name = 'update.msgpack'"
step "ragspool maintain (builds the HNSW and GIN indexes on sealed partitions)"
"$bin" maintain
step "hybrid search: nearest by meaning and best by words, fused by reciprocal rank (examples/hybrid_search.sql)"
query_embedding=$(q "SELECT embedding::text FROM rag_chunks ORDER BY doc_id, chunk_index OFFSET 1 LIMIT 1")
echo "query: the embedding of one chunk, and the words 'partition latency'"
psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres ragdemo -v ON_ERROR_STOP=1 \
  -v query_embedding="$query_embedding" -v query_text="partition latency" -f examples/hybrid_search.sql
step "events the gate received"
cat "$root/gate-events.jsonl"
step "quarantined files and their reasons"
for reason in "$SPOOL_DIR"/failed/*/*.reason.json; do
  echo "$(basename "$reason" .reason.json):"
  echo "  $(cat "$reason")"
done
step "failure log (hash-chained)"
cat "$root/logs/rag_failures.jsonl"
