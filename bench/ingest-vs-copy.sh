#!/usr/bin/env bash
# Ingest throughput of `ragspool process` next to psql's binary \copy of the
# same rows, on one throwaway PostgreSQL, in one run.
#   bench/ingest-vs-copy.sh [FILES] [RECORDS]     (default 100 x 2000 = 200,000 rows)
set -euo pipefail
files=${1:-100}; records=${2:-2000}
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$(pwd)/target/release/ragspool
work=$(pwd)/target/bench/ingest-vs-copy
bash scripts/servers.sh stop "$work/servers" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work"
trap 'bash scripts/servers.sh stop "$work/servers"' EXIT
eval "$(bash scripts/servers.sh start "$work/servers" pg)"
psql_() { psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench "$@"; }
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
export SPOOL_DIR=$work/spool RAG_LOG_FILE=$work/ragspool.log DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/bench
"$bin" init >/dev/null
"$bin" -q migrate >/dev/null
"$bin" gen --files "$files" --records "$records" --dim 384 --days 1 >/dev/null
bytes=$(du -sb "$SPOOL_DIR/incoming" | cut -f1)
now() { date +%s.%N; }
t0=$(now); "$bin" -q process >/dev/null; t1=$(now)
rows=$(psql_ -At -c "SELECT count(*) FROM rag_chunks")
psql_ -c "\\copy (SELECT * FROM rag_chunks) TO '$work/dump.bin' WITH (FORMAT binary)"
psql_ -c "TRUNCATE rag_chunks"
t2=$(now); psql_ -c "\\copy rag_chunks FROM '$work/dump.bin' WITH (FORMAT binary)"; t3=$(now)
python3 - "$rows" "$bytes" "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
rows, size = int(sys.argv[1]), int(sys.argv[2])
t0, t1, t2, t3 = map(float, sys.argv[3:])
p, c = t1 - t0, t3 - t2
print(f"rows: {rows}, spool bytes: {size}")
print(f"ragspool process (WORKERS default): {p:.2f} s, {rows/p:,.0f} rows/s")
print(f"psql \\copy binary (1 connection):   {c:.2f} s, {rows/c:,.0f} rows/s")
print(f"ratio process / psql \\copy: {c/p:.2f}")
PY
