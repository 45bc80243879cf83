#!/usr/bin/env python3
"""make bench: ragspool's ingest throughput, memory and latency, measured against
PostgreSQL's own binary COPY limit in the same run, on throwaway servers.

It reports; it never fails a build. Results go to stdout and bench/results/latest.md.
"""
import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTOR = {"EMBEDDING_TYPE": "vector", "EMBED_DIM": "384"}
HALFVEC = {"EMBEDDING_TYPE": "halfvec", "EMBED_DIM": "384"}
# SPEC 15's storage rows: each mode's process and COPY limit on the same rows.
STORAGE = (("vector", VECTOR), ("halfvec", HALFVEC),
           ("halfvec + TEXT_SEARCH=english", dict(HALFVEC, TEXT_SEARCH="english")))
# The endpoint's own capacity for a load (`Bench.endpoint_capacity`): a client that
# does nothing but send the load's requests, `cap` at a time over kept-alive
# connections, in a process of its own (the simulator's threads hold this one's GIL).
REFERENCE_CLIENT = r"""
import http.client, json, sys, threading, time
port, requests, cap, batch = map(int, sys.argv[1:5])
body = json.dumps({"model": "bench-model", "input": ["x" * 800] * batch}).encode()
left = [requests]
lock = threading.Lock()
def worker():
    conn = http.client.HTTPConnection("127.0.0.1", port)
    while True:
        with lock:
            if left[0] == 0:
                return
            left[0] -= 1
        while True:
            conn.request("POST", "/embeddings", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                break
            time.sleep(0.05)
start = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(cap)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(time.monotonic() - start)
"""


def stamp():
    """The report's time: UTC, to the minute."""
    return time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())


COLUMNS = "doc_id, chunk_index, content, embedding, metadata, source, created_at, batch_tag"


def sh(cmd, env=None, check=True, capture=False):
    r = subprocess.run(cmd, env=env, check=check, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE if capture else None)
    return r.stdout if capture else r.returncode


# GNU time reports its child's peak RSS. A child's own ru_maxrss, as wait4 gives it
# here, starts from this Python process's RSS at the fork (Linux carries the
# high-water mark across exec), which the endpoint simulator's threads grow past
# 50 MiB: without GNU time, a row's figure may be that floor rather than ragspool's.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def timed(cmd, env, cpu=None):
    """Runs cmd; returns (seconds, peak RSS in MiB) of that child alone, and appends
    its CPU seconds (user + system) to `cpu` when given."""
    with tempfile.NamedTemporaryFile("r") as peak:
        wrapped = [GNU_TIME, "-f", "%M", "-o", peak.name] + list(map(str, cmd)) if GNU_TIME else cmd
        start = time.monotonic()
        proc = subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - start
        kib = usage.ru_maxrss
        if GNU_TIME:
            lines = peak.read().split()
            kib = int(lines[-1]) if lines and lines[-1].isdigit() else kib
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {code}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed, kib / 1024.0


def summary(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, unit=""):
    med, lo, hi = summary(values)
    return f"{med:,.0f}{unit} ({lo:,.0f}–{hi:,.0f})"


class Gate(http.server.BaseHTTPRequestHandler):
    """A gate that timestamps each gate.done as it arrives."""
    arrivals = []
    cond = threading.Condition()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        now = time.monotonic()
        self.send_response(200)
        self.end_headers()
        event = json.loads(body or b"{}")
        if event.get("event") == "gate.done":
            with Gate.cond:
                Gate.arrivals.append(now)
                Gate.cond.notify_all()

    def log_message(self, *args):
        pass


class Embeddings(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible embeddings endpoint with a fixed latency per request."""
    latency = 0.020
    requests = 0
    texts = 0
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        inputs = body.get("input", [])
        time.sleep(Embeddings.latency)
        with Embeddings.lock:
            Embeddings.requests += 1
            Embeddings.texts += len(inputs)
        data = [{"index": i, "embedding": [((len(t) + j) % 97 + 1) / 100.0 for j in range(384)]}
                for i, t in enumerate(inputs)]
        out = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


class Endpoint(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint as hosted ones behave: each answer takes
    `latency`; above `cap` requests at once, or past `tpm` tokens in the last
    minute, it answers 429 with Retry-After: 1. Usage counts a token per 4 bytes."""
    protocol_version = "HTTP/1.1"
    latency, cap, tpm = 0.3, 16, 0
    lock = threading.Lock()
    in_flight = peak = 0
    ok = 0
    refused = []  # monotonic times of 429s
    sent = []  # (monotonic, tokens)
    spans = []  # (start, end) of each answered request
    vector = json.dumps([round(((j * 37) % 97 + 1) / 100.0, 2) for j in range(384)])

    @classmethod
    def reset(cls, latency, cap, tpm=0):
        cls.latency, cls.cap, cls.tpm = latency, cap, tpm
        cls.in_flight = cls.peak = cls.ok = 0
        cls.refused, cls.sent, cls.spans = [], [], []

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        inputs = body.get("input", [])
        tokens = sum((len(t.encode()) + 3) // 4 for t in inputs)
        now = time.monotonic()
        cls = Endpoint
        with cls.lock:
            used = sum(n for t, n in cls.sent if now - t < 60) if cls.tpm else 0
            refuse = cls.in_flight >= cls.cap or (cls.tpm and used + tokens > cls.tpm)
            if refuse:
                cls.refused.append(now)
            else:
                cls.in_flight += 1
                cls.peak = max(cls.peak, cls.in_flight)
                cls.sent.append((now, tokens))
        if refuse:
            return self.answer(429, b'{"error":{"message":"rate limited"}}', [("Retry-After", "1")])
        time.sleep(cls.latency)
        data = ",".join(f'{{"index":{i},"embedding":{cls.vector}}}' for i in range(len(inputs)))
        out = f'{{"data":[{data}],"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}'.encode()
        with cls.lock:
            cls.in_flight -= 1
            cls.ok += 1
            cls.spans.append((now, time.monotonic()))
        self.answer(200, out, [("Content-Type", "application/json")])

    def log_message(self, *args):
        pass


class EndpointServer(http.server.ThreadingHTTPServer):
    """The simulator's server: a listen backlog for many connections at once (the
    default of 5 drops SYNs, and a dropped connect costs a 1 s retransmit), quiet
    about clients that close idle connections."""
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = ROOT / "target" / "bench" / "work"
        # RAGSPOOL_BENCH_BIN compares another build (say, the previous commit's) in the same harness.
        self.bin = os.environ.get("RAGSPOOL_BENCH_BIN") or str(ROOT / "target" / "release" / "ragspool")
        self.results = []
        # Set while the Citus rows run: every CHECKPOINT reaches the workers too.
        self.citus_workers = False

    def psql(self, sql, capture=False, db=None):
        return sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres",
                   "-d", db or self.db, "-At", "-c", sql], capture=capture)

    def setup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        # Checkpoints landing in one measurement and not another made the spread
        # larger than the differences; a large WAL keeps them out of every run alike.
        penv = dict(os.environ, PG_EXTRA_OPTS="-c max_wal_size=16GB -c checkpoint_timeout=1h")
        out = subprocess.run(["bash", str(ROOT / "scripts/servers.sh"), "start", str(self.work / "servers"), "pg"],
                             env=penv, check=True, text=True, stdout=subprocess.PIPE).stdout
        vals = dict(line.split("=", 1) for line in out.split())
        self.port, self.pg_bin = vals["PG_PORT"], vals["PG_BIN"]
        self.base_env = {
            "PATH": os.environ.get("PATH", ""),
            "SPOOL_DIR": str(self.work / "spool"),
            "RAG_LOG_FILE": str(self.work / "ragspool.log"),
            "WORKERS": str(self.args.workers),
        }
        self.use_db("bench", {})
        sh([self.bin, "init"], env=self.env)

    def use_db(self, name, extra):
        """A fresh database `name`, migrated with the settings `extra`, for what follows."""
        sh([f"{self.pg_bin}/dropdb", "--if-exists", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", name])
        sh([f"{self.pg_bin}/createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", name])
        self.db = name
        self.env = dict(self.base_env, DATABASE_URL=f"postgres://postgres@127.0.0.1:{self.port}/{name}", **extra)
        sh([self.bin, "-q", "migrate"], env=self.env)

    def stop(self):
        sh(["bash", str(ROOT / "scripts/servers.sh"), "stop", str(self.work / "servers")], check=False)

    def spool(self, sub):
        return self.work / "spool" / sub

    def empty(self, tables):
        """TRUNCATE `tables`, then a CHECKPOINT and the kernel's dirty pages written:
        every timed run starts from the same state. Without it a run paid for the
        writeback of the one before (hundreds of MB of heap and WAL), and the spread
        of one mode's runs (49,000-66,000 rows/s) was wider than the difference
        between modes it was to show. On a Citus coordinator the workers, which
        hold the rows, checkpoint too: a coordinator's CHECKPOINT is its own."""
        self.psql(f"TRUNCATE {tables}")
        self.psql("CHECKPOINT")
        if self.citus_workers:
            self.psql("SELECT run_command_on_workers('CHECKPOINT')", capture=True)
        os.sync()

    def reset(self, source):
        """Empties the table, the manifest, the documents and their lineage and the
        spool, then puts `source`'s files back in incoming/: each run starts alike."""
        self.empty("rag_chunks, ragspool_manifest, ragspool_docs, ragspool_doc_events")
        for sub in ("incoming", "processing", "archive", "failed", "outbox", "tmp"):
            d = self.spool(sub)
            shutil.rmtree(d)
            d.mkdir(mode=0o750)
        for f in sorted(source.iterdir()):
            tmp = self.spool("tmp") / f.name
            shutil.copyfile(f, tmp)
            os.rename(tmp, self.spool("incoming") / f.name)

    def generate(self, name, files, records, dim=384, days=1):
        """A pristine spool of sample files kept aside for every run."""
        sh([self.bin, "gen", "--files", str(files), "--records", str(records), "--dim", str(dim), "--days", str(days)],
           env=self.env)
        keep = self.work / name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(str(self.spool("incoming")), str(keep))
        self.spool("incoming").mkdir(mode=0o750)
        return keep

    def copy_in(self, path, fmt="binary"):
        return ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", self.db, "-c",
                f"\\copy rag_chunks ({COLUMNS}) FROM '{path}' WITH (FORMAT {fmt})"]

    def run(self):
        a = self.args
        self.setup()
        try:
            source = self.generate("big", a.files, a.records)
            self.spool_bytes = sum(f.stat().st_size for f in source.iterdir())
            self.rows = a.files * a.records
            self.modes = {}
            self.modes["array"] = self.throughput(a, source, "bench", {}, csv=True)
            self.modes["vector"] = self.throughput(a, source, "benchvec", VECTOR)
            self.modes["hnsw sealed"] = self.throughput(a, source, "benchhnsw", dict(VECTOR, VECTOR_INDEX="hnsw"),
                                                        limits=False)
            self.index_build(a)
            self.storage(a, source)
            self.replace(a, source)
            self.embeddings(a)
            self.embed_pace(a)
            self.latency(a)
            self.memory(a)
            self.citus(a, source)
        finally:
            self.stop()
        self.report()

    def pace_only(self):
        self.only("pace.md", lambda: [f"# ragspool embeddings pace, {stamp()}, {os.cpu_count()} CPUs"],
                  lambda a, _source: self.embed_pace(a), self.pace_lines, source=False)

    def only(self, result, title, measure, lines, source=True):
        """One part of the benchmark alone, on its own throwaway servers: `measure(args,
        source)`, then `title()` and `lines()` printed and written to bench/results/<result>."""
        a = self.args
        self.setup()
        try:
            files = None
            if source:
                files = self.generate("big", a.files, a.records)
                self.rows = a.files * a.records
            measure(a, files)
        finally:
            self.stop()
        text = "\n".join(title() + lines()) + "\n"
        print(text)
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "bench" / "results" / result).write_text(text)

    def compare(self, a):
        """--compare OTHER: client CPU per row of this build and OTHER, alternating, on
        the same files and table (no limits, no report file)."""
        self.setup()
        try:
            source = self.generate("big", a.files, a.records)
            rows = a.files * a.records
            for name, extra in (("array", {}), ("vector", VECTOR)):
                self.use_db(f"cmp{name}", extra)
                cpu = {self.bin: [], a.compare: []}
                for _ in range(a.runs):
                    for binary in cpu:
                        self.reset(source)
                        timed([binary, "-q", "process"], self.env, cpu[binary])
                for binary, secs in cpu.items():
                    us = [s * 1e6 / rows for s in secs]
                    print(f"{name:7} {binary}: client CPU {statistics.median(us):.2f} µs/row "
                          f"({min(us):.2f}–{max(us):.2f}), {statistics.median(secs) * 1e5 / rows:.3f} s per 100k rows")
        finally:
            self.stop()

    def process_runs(self, a, source, env, runs=None, warmup=True):
        """`ragspool process` over `source`, `runs` times: (rows/s list, peak RSS list, CPU s list).
        The first load into a database just created ran up to a third slower than
        the next ones, whichever build ran it; a warm-up run that is not counted
        keeps that out of the figures."""
        rates, rss, cpu = [], [], []
        if warmup:
            self.reset(source)
            timed([self.bin, "-q", "process"], env)
        for _ in range(runs or a.runs):
            self.reset(source)
            t, r = timed([self.bin, "-q", "process"], env, cpu)
            got = int(self.psql("SELECT count(*) FROM rag_chunks", capture=True))
            rows = a.files * a.records
            if got != rows:
                raise SystemExit(f"process ingested {got} rows, expected {rows}")
            rates.append(rows / t)
            rss.append(r)
        return rates, rss, cpu

    def throughput(self, a, source, db, extra, limits=True, csv=False, tables=("own", "default")):
        """One storage mode: process end to end, then PostgreSQL's binary COPY limit on
        the same rows into ragspool's own table (toast_tuple_target set) and into the
        table as PostgreSQL defaults its partitions, on 1 and WORKERS connections."""
        self.use_db(db, extra)
        gate_port = free_port()
        events = self.work / "gate-events.jsonl"
        genv = dict(self.env, GATE_TOKEN="bench-token")
        gate = subprocess.Popen([self.bin, "-q", "gate", "serve", "--listen", f"127.0.0.1:{gate_port}", "--events",
                                 str(events), "--rate", "1000", "--burst", "1000"], env=genv)
        penv = dict(self.env, GATE_URL=f"http://127.0.0.1:{gate_port}/", GATE_TOKEN="bench-token",
                    BATCH_MAX_FILES="50", BATCH_MAX_BYTES=str(1 << 40))
        try:
            rates, rss, cpu = self.process_runs(a, source, penv)
        finally:
            gate.terminate()
            gate.wait()
        out = {"process": rates, "rss": rss, "cpu": cpu, "bytes_per_row": self.bytes_per_row()}
        if not limits:
            return out
        # The limit: the same rows, dumped once and loaded back by psql.
        dump, csv_path = self.work / "dump.bin", self.work / "dump.csv"
        w = a.workers
        select = f"SELECT {COLUMNS} FROM rag_chunks"
        self.psql(f"\\copy ({select}) TO '{dump}' WITH (FORMAT binary)")
        parts = []
        for i in range(w):
            p = self.work / f"dump-{i}.bin"
            self.psql(f"\\copy ({select} WHERE abs(hashtext(doc_id)) % {w} = {i}) TO '{p}' WITH (FORMAT binary)")
            parts.append(p)
        partitions = self.psql("SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass",
                               capture=True).split()
        for table in tables:
            if table == "default":
                for part in partitions:
                    self.psql(f"ALTER TABLE {part} RESET (toast_tuple_target)")
            out[f"{table}1"], out[f"{table}N"] = self.copy_limits(a.runs, dump, parts)
        if csv:
            self.psql(f"\\copy ({select}) TO '{csv_path}' WITH (FORMAT csv)")
            c = []
            for _ in range(a.runs):
                self.empty("rag_chunks")
                c.append(self.rows / timed(self.copy_in(csv_path, "csv"), self.env)[0])
            out["csv"] = c
        return out

    def copy_limits(self, runs, dump, parts):
        """PostgreSQL's own limit, `runs` times into an emptied rag_chunks: rows/s of
        `dump` on one connection, and of `parts` (the same rows split) on one
        connection each at once."""
        one, par = [], []
        for _ in range(runs):
            self.empty("rag_chunks")
            one.append(self.rows / timed(self.copy_in(dump), self.env)[0])
            self.empty("rag_chunks")
            start = time.monotonic()
            procs = [subprocess.Popen(self.copy_in(p), env=self.env, stdout=subprocess.DEVNULL) for p in parts]
            for p in procs:
                p.wait()
            par.append(self.rows / (time.monotonic() - start))
        return one, par

    def bytes_per_row(self):
        """On-disk bytes (heap, TOAST and every index) of the partitions that hold rows,
        per row: the empty partitions made ahead are left out."""
        size, rows = self.psql(
            "SELECT (SELECT sum(pg_total_relation_size(p)) FROM (SELECT DISTINCT tableoid AS p FROM rag_chunks) s), "
            "(SELECT count(*) FROM rag_chunks)", capture=True).split("|")
        return int(size or 0) / max(1, int(rows))

    def storage(self, a, source):
        """SPEC 15: vector, halfvec and halfvec with TEXT_SEARCH=english on the same rows:
        process and the COPY limit of the same table (own partitions, 1 and WORKERS
        connections), bytes per row on disk, and the time `maintain` takes to build the
        indexes of one sealed partition in each."""
        self.storage_modes = {}
        for i, (name, extra) in enumerate(STORAGE):
            self.storage_modes[name] = self.throughput(a, source, f"benchstorage{i}", extra, tables=("own",))
        # Bytes per row where vectors outweigh the text: 1536 dimensions, as the common
        # hosted models give (loaded once, not timed).
        wide = self.generate("storage-wide", max(1, a.files // 20), a.records, dim=1536)
        self.storage_wide = {}
        for name, extra in (("vector", VECTOR), ("halfvec", HALFVEC)):
            self.use_db(f"benchstoragewide{name}", dict(extra, EMBED_DIM="1536"))
            self.reset(wide)
            sh([self.bin, "-q", "process"], env=self.env)
            self.storage_wide[name] = self.bytes_per_row()
        files = max(1, a.files // 10)
        sealed_source = self.generate("storage-seal", files, a.records, days=2)
        self.storage_seal = []
        for i, (name, extra) in enumerate((
                ("vector, HNSW", dict(VECTOR, VECTOR_INDEX="hnsw")),
                ("halfvec, HNSW", dict(HALFVEC, VECTOR_INDEX="hnsw")),
                ("halfvec, GIN on content_tsv (TEXT_SEARCH=english)", dict(HALFVEC, TEXT_SEARCH="english")))):
            self.storage_seal.append((name,) + self.seal_time(f"benchstorageseal{i}", sealed_source,
                                                               dict(extra, VECTOR_INDEX_QUIET_SECS="0")))

    def seal_time(self, db, source, extra):
        """(rows, seconds) of `maintain` indexing the sealed partition (yesterday's rows)."""
        self.use_db(db, extra)
        self.reset(source)
        sh([self.bin, "-q", "process"], env=self.env)
        self.psql("VACUUM ANALYZE rag_chunks")
        sealed = int(self.psql("SELECT count(*) FROM rag_chunks WHERE created_at < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                               capture=True))
        start = time.monotonic()
        sh([self.bin, "-q", "maintain"], env=self.env)
        return sealed, time.monotonic() - start

    def storage_lines(self):
        med = statistics.median
        a = self.args
        w = a.workers
        m = self.storage_modes
        vec = m["vector"]
        lines = [
            "",
            f"| storage (SPEC 15), same rows | process rows/s | ÷ own limit, {w} conn | limit, own table, 1 conn | "
            f"limit, own table, {w} conn | client CPU µs/row | bytes per row on disk | ÷ vector's rows/s | "
            "÷ vector's limit | ÷ vector's bytes per row |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, _ in STORAGE:
            r = m[name]
            p = r["process"]
            lines.append(f"| {name} | {fmt(p)} | **{med(p) / med(r['ownN']):.2f}** | {fmt(r['own1'])} | {fmt(r['ownN'])} | "
                         f"{med(r['cpu']) * 1e6 / self.rows:.1f} | {r['bytes_per_row']:,.0f} | "
                         f"**{med(p) / med(vec['process']):.2f}** | {med(r['ownN']) / med(vec['ownN']):.2f} | "
                         f"**{r['bytes_per_row'] / vec['bytes_per_row']:.2f}** |")
        plain, tsv = m["halfvec"], m["halfvec + TEXT_SEARCH=english"]
        lines += [
            "",
            f"TEXT_SEARCH=english costs halfvec ingest {1 - med(tsv['process']) / med(plain['process']):.0%} of its rows/s "
            f"(process {med(tsv['process']):,.0f} against {med(plain['process']):,.0f}) and PostgreSQL's own COPY "
            f"{1 - med(tsv['ownN']) / med(plain['ownN']):.0%} ({w} conn): the generated column is computed in the server.",
            "",
            f"With 1536-dim embeddings ({max(1, a.files // 20) * a.records:,} rows of the same texts): "
            f"{self.storage_wide['vector']:,.0f} bytes per row as vector, {self.storage_wide['halfvec']:,.0f} as halfvec "
            f"(**{self.storage_wide['halfvec'] / self.storage_wide['vector']:.2f}**).",
            "",
            "| `maintain` building the indexes of one sealed partition | rows | s |",
            "|---|---|---|",
        ]
        for name, rows, secs in self.storage_seal:
            lines.append(f"| {name} | {rows:,} | {secs:.1f} |")
        return lines

    def storage_only(self):
        a = self.args
        self.only("storage.md", lambda: [
            f"# ragspool storage formats, {stamp()}, {os.cpu_count()} CPUs",
            "",
            f"WORKERS={a.workers}, {self.rows:,} rows ({a.files} files × {a.records} records, 384-dim embeddings, "
            f"~800-byte texts), {a.runs} runs each: median (min–max). Limits are PostgreSQL's own binary COPY "
            "(`psql \\copy`) of the same rows replayed into the same table (its generated column computed by the server).",
        ], self.storage, self.storage_lines)

    def citus(self, a, source):
        """SPEC 16: `process` through a Citus coordinator into two workers (every node
        on this machine), and PostgreSQL's own binary COPY of the same rows through
        the same coordinator on 1 and WORKERS connections, in the same run; once per
        shard count of --citus-shards (Citus's default, 32, first)."""
        cdir = self.work / "citus"
        penv = dict(os.environ, PG_EXTRA_OPTS="-c max_wal_size=16GB -c checkpoint_timeout=1h")
        script = str(ROOT / "scripts/servers.sh")
        out = subprocess.run(["bash", script, "citus", str(cdir)], env=penv, check=True, text=True,
                             stdout=subprocess.PIPE).stdout
        vals = dict(line.split("=", 1) for line in out.split())
        saved = (self.port, self.db, self.env)
        self.citus_rates = []
        try:
            self.port, self.citus_workers = vals["COORDINATOR_PORT"], True
            for shards in a.citus_shards:
                self.citus_rates.append(self.citus_one(a, source, cdir, shards))
        finally:
            self.port, self.db, self.env = saved
            self.citus_workers = False
            sh(["bash", script, "stop", str(cdir)], check=False)

    def citus_one(self, a, source, cdir, shards):
        db = f"benchcitus{shards}"
        sh(["bash", str(ROOT / "scripts/servers.sh"), "citus-db", str(cdir), db])
        self.db = db
        self.psql(f"ALTER DATABASE {db} SET citus.shard_count = {shards}")
        # The limit's psql sessions take the session setting ragspool's take (one
        # connection per worker for a statement over many shards): it makes
        # PostgreSQL's own COPY faster too, so the ratio is against the better limit.
        self.env = dict(self.base_env, DATABASE_URL=f"postgres://postgres@127.0.0.1:{self.port}/{db}",
                        DISTRIBUTION="citus", BATCH_MAX_FILES="50", BATCH_MAX_BYTES=str(1 << 40),
                        PGOPTIONS="-c citus.max_adaptive_executor_pool_size=1", **VECTOR)
        sh([self.bin, "-q", "migrate"], env=self.env)
        # A warm-up and the first timed run, whose rows the limit's dumps are made of.
        rates, rss, cpu = self.process_runs(a, source, self.env, runs=1)
        dump, w = self.work / "citus-dump.bin", a.workers
        select = f"SELECT {COLUMNS} FROM rag_chunks"
        self.psql(f"\\copy ({select}) TO '{dump}' WITH (FORMAT binary)")
        parts = []
        for i in range(w):
            p = self.work / f"citus-dump-{i}.bin"
            self.psql(f"\\copy ({select} WHERE abs(hashtext(doc_id)) % {w} = {i}) TO '{p}' WITH (FORMAT binary)")
            parts.append(p)
        # Each process run followed by the limit's runs: three nodes on two shared
        # cores go through slower and faster spells (the two-session limit read
        # 84,000 in one run and 96,000 in the next), which runs made apart would
        # put on one side of the ratio only.
        one, par = self.copy_limits(1, dump, parts)
        for _ in range(a.runs - 1):
            more = self.process_runs(a, source, self.env, runs=1, warmup=False)
            for into, got in zip((rates, rss, cpu), more):
                into += got
            o, p = self.copy_limits(1, dump, parts)
            one, par = one + o, par + p
        return {"shards": shards, "process": rates, "rss": rss, "cpu": cpu, "copy1": one, "copyN": par}

    def citus_lines(self):
        med = statistics.median
        w = self.args.workers
        lines = [
            "",
            "| Citus: coordinator + 2 workers, all on this machine, vector | rows/s | "
            f"÷ COPY limit, 1 conn | ÷ COPY limit, {w} conn |",
            "|---|---|---|---|",
        ]
        for c in self.citus_rates:
            n = c["shards"]
            lines += [
                f"| {n} shards: limit, psql \\copy binary through the coordinator, 1 conn | {fmt(c['copy1'])} | "
                f"1.00 | {med(c['copy1']) / med(c['copyN']):.2f} |",
                f"| {n} shards: limit, psql \\copy binary through the coordinator, {w} conn | {fmt(c['copyN'])} | "
                f"{med(c['copyN']) / med(c['copy1']):.2f} | 1.00 |",
                f"| {n} shards: **ragspool process** through the coordinator (WORKERS={w}) | {fmt(c['process'])} | "
                f"{med(c['process']) / med(c['copy1']):.2f} | **{med(c['process']) / med(c['copyN']):.2f}** |",
            ]
        return lines

    def citus_only(self):
        a = self.args
        self.only("citus.md", lambda: [
            f"# ragspool on Citus, {stamp()}, {os.cpu_count()} CPUs, {self.rows:,} rows ({a.files} files × "
            f"{a.records} records, 384-dim embeddings), {a.runs} runs each: median (min–max)"
        ], self.citus, self.citus_lines)

    def index_build(self, a):
        """VECTOR_INDEX_BUILD=always on a smaller load (COPY into an indexed partition is
        slow), and the time `maintain` takes to index one sealed partition."""
        files = max(1, a.files // 10)
        source = self.generate("always", files, a.records, days=2)
        self.use_db("benchalways", dict(VECTOR, VECTOR_INDEX="hnsw", VECTOR_INDEX_BUILD="always"))
        saved = (a.files, a.runs)
        a.files, a.runs = files, 1
        try:
            rates, _, _ = self.process_runs(a, source, self.env, warmup=False)
        finally:
            a.files, a.runs = saved
        self.always = {"rows": files * a.records, "rate": rates[0]}
        # Sealed partitions: the rows dated before today, indexed by maintain.
        sealed, secs = self.seal_time("benchseal", source,
                                      dict(VECTOR, VECTOR_INDEX="hnsw", VECTOR_INDEX_QUIET_SECS="0"))
        self.seal = {"rows": sealed, "secs": secs}

    def replace(self, a, source):
        """DOC_MODE=replace: a first load (every document new) and a second load that
        replaces every document, against append mode in the same database."""
        self.use_db("benchreplace", dict(DOC_MODE="replace"))
        first, _, _ = self.process_runs(a, source, self.env)
        second = []
        for _ in range(a.runs):
            # The same documents again: a new file name and one byte of content each
            # make them new files (not duplicates) that replace every document.
            self.psql("TRUNCATE ragspool_manifest")
            for sub in ("archive", "incoming", "tmp"):
                d = self.spool(sub)
                shutil.rmtree(d)
                d.mkdir(mode=0o750)
            for f in sorted(source.iterdir()):
                tmp = self.spool("tmp") / ("again-" + f.name)
                shutil.copyfile(f, tmp)
                with open(tmp, "ab") as fh:
                    fh.write(b"\x90")  # an empty MessagePack array: no record, new sha256
                os.rename(tmp, self.spool("incoming") / tmp.name)
            t, _ = timed([self.bin, "-q", "process"], self.env)
            got = int(self.psql("SELECT count(*) FROM rag_chunks", capture=True))
            if got != self.rows:
                raise SystemExit(f"replace left {got} rows, expected {self.rows}")
            second.append(self.rows / t)
        self.replace_rates = {"first": first, "second": second}

    def embeddings(self, a):
        """Records without vectors, fetched from an endpoint of fixed latency (20 ms a
        request); then the same documents again in replace mode, every chunk
        unchanged, so that every vector is reused."""
        files = max(1, a.files // 5)
        source = self.generate("noembed", files, a.records, dim=0)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Embeddings)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        extra = dict(VECTOR, DOC_MODE="replace", EMBED_BASE_URL=f"http://127.0.0.1:{server.server_address[1]}",
                     EMBED_MODEL="bench-model")
        self.use_db("benchembed", extra)
        rows = files * a.records
        try:
            Embeddings.requests = Embeddings.texts = 0
            self.reset(source)
            t, rss = timed([self.bin, "-q", "process"], self.env)
            first = {"rate": rows / t, "requests": Embeddings.requests, "texts": Embeddings.texts, "rss": rss}
            Embeddings.requests = Embeddings.texts = 0
            self.psql("TRUNCATE ragspool_manifest")
            for f in sorted(source.iterdir()):
                tmp = self.spool("tmp") / ("again-" + f.name)
                shutil.copyfile(f, tmp)
                with open(tmp, "ab") as fh:
                    fh.write(b"\x90")
                os.rename(tmp, self.spool("incoming") / tmp.name)
            t, _ = timed([self.bin, "-q", "process"], self.env)
            second = {"rate": rows / t, "requests": Embeddings.requests, "texts": Embeddings.texts}
        finally:
            server.shutdown()
        self.embed = {"rows": rows, "first": first, "second": second}

    def embed_pace(self, a):
        """SPEC 13: rows/s ÷ what the endpoint can serve (cap × EMBED_BATCH ÷ latency
        texts a second), for one large file and for many small ones, at a latency
        of 300 ms and caps of 16 and 64, with EMBED_CONCURRENCY at the cap; then
        at twice the cap over a load of a minute or more, with the 429s counted."""
        server = EndpointServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        big = self.generate("pace-big", 1, 8000, dim=0)
        small = self.generate("pace-small", 8, 500, dim=0)
        self.pace = []
        try:
            for cap in (16, 64):
                for label, source, rows in (("1 file × 8,000 chunks", big, 8000),
                                            ("8 files × 500 chunks", small, 4000)):
                    self.pace.append(self.pace_row(url, source, rows, cap, cap, f"{label}, cap {cap}",
                                                   reference=True))
            texts_per_sec = 16 * 64 / 0.3
            files = max(8, int(texts_per_sec * 75 / 2000) + 1)
            long = self.generate("pace-long", files, 2000, dim=0)
            self.pace.append(self.pace_row(url, long, files * 2000, 16, 32,
                                           f"{files} files × 2,000 chunks, cap 16, EMBED_CONCURRENCY=32"))
        finally:
            server.shutdown()

    def pace_row(self, url, source, rows, cap, concurrency, label, latency=0.3, tpm=0, reference=False):
        Endpoint.reset(latency, cap, tpm)
        extra = dict(VECTOR, EMBED_BASE_URL=url, EMBED_MODEL="bench-model", EMBED_BATCH="64",
                     EMBED_CONCURRENCY=str(concurrency), WORKERS="2", BATCH_MAX_BYTES=str(1 << 40),
                     EMBED_MAX_TPM=str(tpm))
        self.use_db("benchpace", extra)
        self.reset(source)
        started = time.monotonic()
        # As the packaged units run it (ragspool.service sets MALLOC_ARENA_MAX=2).
        t, rss = timed([self.bin, "-q", "process"], dict(self.env, MALLOC_ARENA_MAX="2"))
        serves = cap * 64 / latency
        if tpm:
            # Rows a second that the tokens cap allows, at the tokens these rows cost.
            tokens = sum(n for _, n in Endpoint.sent)
            serves = min(serves, tpm / 60 / (tokens / rows))
        late = [r for r in Endpoint.refused if r - started > 10]
        answered = Endpoint.ok + len(Endpoint.refused)
        row = {"label": label, "rows": rows, "secs": t, "rate": rows / t, "ratio": rows / t / serves,
               "peak": Endpoint.peak, "refused_late": len(late), "requests": answered,
               "late_share": len(late) / max(1, answered), "rss": rss, "capacity": None}
        if reference:
            row["capacity"] = self.endpoint_capacity(url, rows, cap)
        return row

    def endpoint_capacity(self, url, rows, cap, batch=64):
        """Texts a second the endpoint serves for this load at best: the same
        requests (rows ÷ EMBED_BATCH, rounded up), `cap` at a time, from a client
        that does nothing else. Fewer requests than cap × a whole number of rounds
        leave the last round part empty, which no client can avoid, so this is the
        limit a load of this size meets, beside the nominal cap × batch ÷ latency."""
        Endpoint.reset(Endpoint.latency, cap)
        port = url.rsplit(":", 1)[1]
        out = subprocess.run([sys.executable, "-c", REFERENCE_CLIENT, port, str(-(-rows // batch)), str(cap),
                              str(batch)], check=True, text=True, stdout=subprocess.PIPE).stdout
        return rows / float(out.strip())

    def pace_lines(self):
        lines = [
            "",
            "| embeddings at the endpoint's pace (300 ms a request, EMBED_BATCH=64, WORKERS=2) | s | rows/s | "
            "÷ what the endpoint serves | ÷ its capacity for this load | most in flight | 429s after 10 s | "
            "peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.pace:
            cap = f"{r['rate'] / r['capacity']:.2f}" if r["capacity"] else "—"
            lines.append(f"| {r['label']} | {r['secs']:.1f} | {r['rate']:,.0f} | **{r['ratio']:.2f}** | {cap} | "
                         f"{r['peak']} | {r['refused_late']} of {r['requests']} ({100 * r['late_share']:.1f} %) | "
                         f"{r['rss']:.1f} |")
        lines += [
            "",
            "What the endpoint serves: cap × EMBED_BATCH ÷ latency texts a second. Its capacity for this load: "
            "texts a second that a client doing nothing but this load's requests, cap at a time, gets from it "
            "in the same run (the last round of requests is part empty whatever the client).",
        ]
        return lines

    def latency(self, a):
        Gate.arrivals = []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gate)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        source = self.generate("small", a.latency_files, 10)
        self.use_db("bench", {})
        env = dict(self.env, GATE_URL=f"http://127.0.0.1:{server.server_address[1]}/", BATCH_MAX_AGE_SECS="0")
        empty = self.work / "empty"
        empty.mkdir(exist_ok=True)
        self.reset(empty)
        watch = subprocess.Popen([self.bin, "-q", "watch"], env=env)
        time.sleep(1.0)
        samples = []
        try:
            for f in sorted(source.iterdir()):
                tmp = self.spool("tmp") / f.name
                shutil.copyfile(f, tmp)
                with Gate.cond:
                    seen = len(Gate.arrivals)
                    start = time.monotonic()
                    os.rename(tmp, self.spool("incoming") / f.name)
                    if not Gate.cond.wait_for(lambda: len(Gate.arrivals) > seen, timeout=30):
                        raise SystemExit("no gate.done within 30 s")
                    samples.append((Gate.arrivals[seen] - start) * 1000.0)
            self.idle_watch_rss = rss_of(watch.pid)
            before = cpu_ticks(watch.pid)
            time.sleep(3)
            self.idle_cpu = cpu_ticks(watch.pid) - before
        finally:
            watch.terminate()
            watch.wait()
            server.shutdown()
        samples.sort()
        self.latency_ms = samples

    def memory(self, a):
        self.rss_growth = []
        for files in (10, 100, 1000):
            source = self.generate(f"rss-{files}", files, 100)
            self.reset(source)
            t, rss = timed([self.bin, "-q", "process"], self.env)
            self.rss_growth.append((files, 100, rss))
        source = self.generate("rss-10000", 10000, 2, dim=16)
        self.reset(source)
        t, rss = timed([self.bin, "-q", "process"], self.env)
        self.rss_growth.append((10000, 2, rss))
        # Files near MAX_FILE_BYTES, one per worker, in one batch: each worker holds a
        # 16 MiB window of its file, not the file.
        records = 240_000
        source = self.generate("rss-large", 4, records, dim=0)
        self.large_mib = max(f.stat().st_size for f in source.iterdir()) / (1 << 20)
        self.reset(source)
        env = dict(self.env, WORKERS="4", BATCH_MAX_BYTES=str(1 << 40))
        t, self.large_rss = timed([self.bin, "-q", "process"], env)
        got = int(self.psql("SELECT count(*) FROM rag_chunks", capture=True))
        if got != 4 * records:
            raise SystemExit(f"process ingested {got} rows of the large files, expected {4 * records}")

    def report(self):
        med = statistics.median
        w = self.args.workers
        lines = [
            "# ragspool benchmark",
            "",
            f"{stamp()}, {os.cpu_count()} CPUs, WORKERS={w}, "
            f"{self.rows:,} rows ({self.args.files} files × {self.args.records} records, 384-dim embeddings, "
            f"~800-byte texts), spool {self.spool_bytes / 2**20:,.0f} MiB, {self.args.runs} runs each: median (min–max). "
            "Limits are PostgreSQL's own binary COPY (`psql \\copy`) of the same rows replayed into ragspool's table "
            "(partitions with toast_tuple_target=8160) and into the table as PostgreSQL defaults its partitions.",
            "",
            "| mode | measure | rows/s | ÷ own limit, 1 conn | ÷ own limit, "
            f"{w} conn | ÷ default-table limit, {w} conn |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("array", "vector"):
            m = self.modes[name]
            for key, label in (("default1", "limit, default table, 1 conn"), ("defaultN", f"limit, default table, {w} conn"),
                               ("own1", "limit, ragspool's table, 1 conn"), ("ownN", f"limit, ragspool's table, {w} conn")):
                lines.append(f"| {name} | {label} | {fmt(m[key])} | {med(m[key]) / med(m['own1']):.2f} | "
                             f"{med(m[key]) / med(m['ownN']):.2f} | {med(m[key]) / med(m['defaultN']):.2f} |")
            p = m["process"]
            lines.append(f"| {name} | **ragspool process** (end to end, gate events) | {fmt(p)} | "
                         f"{med(p) / med(m['own1']):.2f} | **{med(p) / med(m['ownN']):.2f}** | "
                         f"**{med(p) / med(m['defaultN']):.2f}** |")
            if "csv" in m:
                lines.append(f"| {name} | psql \\copy CSV, 1 conn (reference) | {fmt(m['csv'])} | "
                             f"{med(m['csv']) / med(m['own1']):.2f} | | |")
        vec, sealed = self.modes["vector"], self.modes["hnsw sealed"]
        lines += [
            "",
            "| client CPU (ragspool process, user + system) | s per 100k rows | µs per row |",
            "|---|---|---|",
        ]
        for name in ("array", "vector", "hnsw sealed"):
            cpu = med(self.modes[name]["cpu"])
            lines.append(f"| {name} | {cpu * 1e5 / self.rows:.2f} | {cpu * 1e6 / self.rows:.1f} |")
        r = self.replace_rates
        array = self.modes["array"]["process"]
        lines += [
            "",
            "| vector index and document replace | rows/s | ratio |",
            "|---|---|---|",
            f"| VECTOR_INDEX=hnsw, `sealed` (no index during ingest) | {fmt(sealed['process'])} | "
            f"{med(sealed['process']) / med(vec['process']):.2f} × vector without index |",
            f"| VECTOR_INDEX=hnsw, `always` ({self.always['rows']:,} rows, 1 run) | {self.always['rate']:,.0f} | "
            f"{self.always['rate'] / med(vec['process']):.3f} × vector without index |",
            f"| `maintain` indexing the sealed partition (yesterday's {self.seal['rows']:,} rows) | {self.seal['secs']:.1f} s | |",
            f"| DOC_MODE=replace, first load (every document new) | {fmt(r['first'])} | "
            f"{med(r['first']) / med(array):.2f} × append |",
            f"| DOC_MODE=replace, second load (every document replaced) | {fmt(r['second'])} | "
            f"{med(r['second']) / med(array):.2f} × append |",
            "",
            "| embeddings from an endpoint answering in 20 ms | rows/s | requests | texts sent |",
            "|---|---|---|---|",
            f"| first load, {self.embed['rows']:,} rows, every vector fetched (EMBED_BATCH=64) | "
            f"{self.embed['first']['rate']:,.0f} | {self.embed['first']['requests']} | {self.embed['first']['texts']:,} |",
            f"| second load, replace mode, every chunk unchanged (EMBED_REUSE) | "
            f"{self.embed['second']['rate']:,.0f} | {self.embed['second']['requests']} | {self.embed['second']['texts']:,} |",
            "",
        ] + self.pace_lines() + self.storage_lines() + self.citus_lines() + [
            "",
            "| latency, rename into incoming/ → gate.done received (BATCH_MAX_AGE_SECS=0) | ms |",
            "|---|---|",
            f"| p50 over {len(self.latency_ms)} single small files | {percentile(self.latency_ms, 50):.1f} |",
            f"| p99 | {percentile(self.latency_ms, 99):.1f} |",
            "",
            "| memory | peak RSS MiB |",
            "|---|---|",
        ]
        for name in ("array", "vector", "hnsw sealed"):
            lines.append(f"| process, {self.args.files} × {self.args.records} records, {name} | "
                         f"{fmt(self.modes[name]['rss'])} |")
        for files, records, rss in self.rss_growth:
            lines.append(f"| process, {files:,} files × {records} records | {rss:.1f} |")
        lines.append(f"| process, 4 files of {self.large_mib:.0f} MiB (small chunks, no vectors), WORKERS=4, one batch "
                     f"| {self.large_rss:.1f} (4 windows of 16 MiB, per-document bookkeeping and the process; "
                     f"the files read whole would take over {4 * self.large_mib:.0f}) |")
        lines += [
            f"| idle watcher after {len(self.latency_ms)} files (RSS) | {self.idle_watch_rss:.1f} |",
            "",
            f"Idle watcher CPU over 3 s: {self.idle_cpu} clock ticks.",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        (ROOT / "bench" / "results" / "latest.md").write_text(text)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def rss_of(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--latency-files", type=int, default=50)
    p.add_argument("--compare", metavar="OTHER_BINARY",
                   help="only compare client CPU per row of this build and OTHER_BINARY")
    p.add_argument("--pace-only", action="store_true",
                   help="only the embeddings-pace rows (bench/results/pace.md)")
    p.add_argument("--storage-only", action="store_true",
                   help="only the storage-format rows: vector, halfvec, TEXT_SEARCH (bench/results/storage.md)")
    p.add_argument("--citus-only", action="store_true",
                   help="only the Citus rows (bench/results/citus.md)")
    p.add_argument("--citus-shards", type=lambda v: [int(n) for n in v.split(",")], default=[32, 4],
                   help="shard counts of the Citus rows, comma-separated (default 32,4)")
    args = p.parse_args()
    if args.compare:
        Bench(args).compare(args)
    elif args.pace_only:
        Bench(args).pace_only()
    elif args.citus_only:
        Bench(args).citus_only()
    elif args.storage_only:
        Bench(args).storage_only()
    else:
        Bench(args).run()


if __name__ == "__main__":
    main()
