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
COLUMNS = "doc_id, chunk_index, content, embedding, metadata, source, created_at, batch_tag"


def sh(cmd, env=None, check=True, capture=False):
    r = subprocess.run(cmd, env=env, check=check, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE if capture else None)
    return r.stdout if capture else r.returncode


def timed(cmd, env):
    """Runs cmd; returns (seconds, peak RSS in MiB) of that child alone."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {code}")
    return elapsed, usage.ru_maxrss / 1024.0


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


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = ROOT / "target" / "bench" / "work"
        # RAGSPOOL_BENCH_BIN compares another build (say, the previous commit's) in the same harness.
        self.bin = os.environ.get("RAGSPOOL_BENCH_BIN") or str(ROOT / "target" / "release" / "ragspool")
        self.results = []

    def psql(self, sql, capture=False):
        return sh(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres",
                   "-d", "bench", "-At", "-c", sql], capture=capture)

    def setup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        # Checkpoints landing in one measurement and not another made the spread
        # larger than the differences; a large WAL keeps them out of every run alike.
        penv = dict(os.environ, PG_EXTRA_OPTS="-c max_wal_size=16GB -c checkpoint_timeout=1h")
        out = subprocess.run(["bash", str(ROOT / "scripts/servers.sh"), "start", str(self.work / "servers"), "pg"],
                             env=penv, check=True, text=True, stdout=subprocess.PIPE).stdout
        vals = dict(line.split("=", 1) for line in out.split())
        self.port, pg_bin = vals["PG_PORT"], vals["PG_BIN"]
        sh([f"{pg_bin}/createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "bench"])
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "SPOOL_DIR": str(self.work / "spool"),
            "RAG_LOG_FILE": str(self.work / "ragspool.log"),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.port}/bench",
            "WORKERS": str(self.args.workers),
        }
        sh([self.bin, "init"], env=self.env)
        sh([self.bin, "-q", "migrate"], env=self.env)

    def stop(self):
        sh(["bash", str(ROOT / "scripts/servers.sh"), "stop", str(self.work / "servers")], check=False)

    def spool(self, sub):
        return self.work / "spool" / sub

    def reset(self, source):
        """Empties the table, the manifest and the spool, then puts `source`'s files back in incoming/."""
        self.psql("TRUNCATE rag_chunks, ragspool_manifest")
        for sub in ("incoming", "processing", "archive", "failed", "outbox", "tmp"):
            d = self.spool(sub)
            shutil.rmtree(d)
            d.mkdir(mode=0o750)
        for f in sorted(source.iterdir()):
            tmp = self.spool("tmp") / f.name
            shutil.copyfile(f, tmp)
            os.rename(tmp, self.spool("incoming") / f.name)

    def generate(self, name, files, records, dim=384):
        """A pristine spool of sample files kept aside for every run."""
        sh([self.bin, "gen", "--files", str(files), "--records", str(records), "--dim", str(dim), "--days", "1"],
           env=self.env)
        keep = self.work / name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(str(self.spool("incoming")), str(keep))
        self.spool("incoming").mkdir(mode=0o750)
        return keep

    def copy_in(self, path, fmt="binary"):
        return ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", "bench", "-c",
                f"\\copy rag_chunks ({COLUMNS}) FROM '{path}' WITH (FORMAT {fmt})"]

    def run(self):
        a = self.args
        self.setup()
        try:
            self.throughput(a)
            self.latency(a)
            self.memory(a)
        finally:
            self.stop()
        self.report()

    def throughput(self, a):
        source = self.generate("big", a.files, a.records)
        rows = a.files * a.records
        spool_bytes = sum(f.stat().st_size for f in source.iterdir())
        gate_port = free_port()
        events = self.work / "gate-events.jsonl"
        genv = dict(self.env, GATE_TOKEN="bench-token")
        gate = subprocess.Popen([self.bin, "-q", "gate", "serve", "--listen", f"127.0.0.1:{gate_port}", "--events",
                                 str(events), "--rate", "1000", "--burst", "1000"], env=genv)
        penv = dict(self.env, GATE_URL=f"http://127.0.0.1:{gate_port}/", GATE_TOKEN="bench-token",
                    BATCH_MAX_FILES="50", BATCH_MAX_BYTES=str(1 << 40))
        proc_t, proc_rss = [], []
        try:
            for _ in range(a.runs):
                self.reset(source)
                t, rss = timed([self.bin, "-q", "process"], penv)
                got = int(self.psql("SELECT count(*) FROM rag_chunks", capture=True))
                if got != rows:
                    raise SystemExit(f"process ingested {got} rows, expected {rows}")
                proc_t.append(t)
                proc_rss.append(rss)
        finally:
            gate.terminate()
            gate.wait()
        # The limit: the same rows, dumped once and loaded back by psql.
        dump, csv = self.work / "dump.bin", self.work / "dump.csv"
        w = a.workers
        select = f"SELECT {COLUMNS} FROM rag_chunks"
        self.psql(f"\\copy ({select}) TO '{dump}' WITH (FORMAT binary)")
        self.psql(f"\\copy ({select}) TO '{csv}' WITH (FORMAT csv)")
        parts = []
        for i in range(w):
            p = self.work / f"dump-{i}.bin"
            self.psql(f"\\copy ({select} WHERE abs(hashtext(doc_id)) % {w} = {i}) TO '{p}' WITH (FORMAT binary)")
            parts.append(p)
        one, par, csv_t = [], [], []
        for _ in range(a.runs):
            self.psql("TRUNCATE rag_chunks")
            one.append(timed(self.copy_in(dump), self.env)[0])
            self.psql("TRUNCATE rag_chunks")
            start = time.monotonic()
            procs = [subprocess.Popen(self.copy_in(p), stdout=subprocess.DEVNULL) for p in parts]
            for p in procs:
                p.wait()
            par.append(time.monotonic() - start)
            self.psql("TRUNCATE rag_chunks")
            csv_t.append(timed(self.copy_in(csv, "csv"), self.env)[0])
        rate = lambda ts: [rows / t for t in ts]
        self.rows, self.spool_bytes = rows, spool_bytes
        self.rates = {"process": rate(proc_t), "limit1": rate(one), "limitN": rate(par), "csv": rate(csv_t)}
        self.proc_rss = proc_rss

    def latency(self, a):
        Gate.arrivals = []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gate)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        source = self.generate("small", a.latency_files, 10)
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

    def report(self):
        r = self.rates
        med = lambda k: statistics.median(r[k])
        lines = [
            "# ragspool benchmark",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, WORKERS={self.args.workers}, "
            f"{self.rows:,} rows ({self.args.files} files × {self.args.records} records, 384-dim embeddings, "
            f"~800-byte texts), spool {self.spool_bytes / 2**20:,.0f} MiB, {self.args.runs} runs each: median (min–max).",
            "",
            "| measure | rows/s | ratio to limit-1-conn |",
            "|---|---|---|",
            f"| limit: psql \\copy binary, 1 connection | {fmt(r['limit1'])} | 1.00 |",
            f"| limit: psql \\copy binary, {self.args.workers} connections | {fmt(r['limitN'])} | {med('limitN') / med('limit1'):.2f} |",
            f"| psql \\copy CSV, 1 connection (reference) | {fmt(r['csv'])} | {med('csv') / med('limit1'):.2f} |",
            f"| **ragspool process** (end to end, gate events to `gate serve`) | {fmt(r['process'])} | **{med('process') / med('limit1'):.2f}** |",
            "",
            f"process / limit-1-conn = **{med('process') / med('limit1'):.2f}**, "
            f"process / limit-parallel = **{med('process') / med('limitN'):.2f}**",
            "",
            "| latency, rename into incoming/ → gate.done received (BATCH_MAX_AGE_SECS=0) | ms |",
            "|---|---|",
            f"| p50 over {len(self.latency_ms)} single small files | {percentile(self.latency_ms, 50):.1f} |",
            f"| p99 | {percentile(self.latency_ms, 99):.1f} |",
            "",
            "| memory | peak RSS MiB |",
            "|---|---|",
            f"| process, {self.args.files} × {self.args.records} records | {fmt(self.proc_rss)} |",
        ]
        for files, records, rss in self.rss_growth:
            lines.append(f"| process, {files:,} files × {records} records | {rss:.1f} |")
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
    Bench(p.parse_args()).run()


if __name__ == "__main__":
    main()
