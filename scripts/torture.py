#!/usr/bin/env python3
"""make torture: a fault campaign against the real binary on throwaway servers.

A producer drops files into the spool at a steady rate (good files, bad files,
byte-identical duplicates, replacements and deletes of earlier documents) while
`ragspool watch` runs under a supervisor that restarts it as systemd would, and the
campaign injects faults one after another at random moments: SIGKILL of watch and
of a concurrent `process`, SIGTERM, PostgreSQL restarts (fast and immediate), a
PostgreSQL that refuses connections (max_connections taken), a gate that answers
503, times out or resets the connection, Redis down, the spool's filesystem full,
and a switchover to the streaming standby. After each fault, and at the end once
the spool has drained, it checks the invariants against the database and the
spool, and writes bench/results/torture.md.

TORTURE_SECS (default 600) and TORTURE_FAULTS (default 1000) bound the run,
whichever comes first; TORTURE_SEED reproduces the schedule of faults, holds and
files; TORTURE_RATE is the producer's files per second (default 50). PostgreSQL
runs with fsync, synchronous_commit and full_page_writes on. Exit 1 on any
violation, with the seed.
"""
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "scripts" / "servers.sh"
# wal_keep_size: a standby that fell behind (a restart, a rebuild) can always catch up.
DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_connections=40 -c wal_keep_size=8192"
TOKEN = "torture-token"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- MessagePack, the little the producer needs --------------------------------

def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        return bytes([v]) if 0 <= v < 128 else b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xa0 | len(b)]) if len(b) < 32 else b"\xda" + struct.pack(">H", len(b))) + b
    if isinstance(v, dict):
        out = bytes([0x80 | len(v)])
        for k, x in v.items():
            out += mp(k) + mp(x)
        return out
    raise TypeError(type(v))


# --- The gate: records what it accepts, misbehaves on request ------------------

class Gate(http.server.BaseHTTPRequestHandler):
    mode = "ok"
    events = []  # (arrival, event, batch_tag, webhook-id)
    lock = threading.Lock()
    hold = 2.0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        mode = Gate.mode
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        if mode == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "timeout":
            time.sleep(Gate.hold)
        try:
            ev = json.loads(body)
        except ValueError:
            ev = {}
        with Gate.lock:
            Gate.events.append((len(Gate.events), ev.get("event"), ev.get("batch_tag"),
                                self.headers.get("webhook-id")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def stopped(pid, timeout=2.0):
    """Waits until every thread of `pid` is stopped: SIGSTOP is delivered
    asynchronously, and a thread in a system call may finish a rename first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                      for t in os.listdir(f"/proc/{pid}/task")]
        except (OSError, IndexError):
            return
        if all(s in ("T", "t", "Z", "X") for s in states):
            return
        time.sleep(0.001)


class Campaign:
    def __init__(self):
        self.secs = int(os.environ.get("TORTURE_SECS", "600"))
        self.max_faults = int(os.environ.get("TORTURE_FAULTS", "1000"))
        self.seed = int(os.environ.get("TORTURE_SEED") or random.SystemRandom().randrange(1, 2**31))
        self.rate = float(os.environ.get("TORTURE_RATE", "50"))
        self.rng = random.Random(self.seed)
        self.prng = random.Random(self.seed * 7919 + 1)
        self.bin = os.environ.get("RAGSPOOL_BIN") or str(ROOT / "target" / "release" / "ragspool")
        self.work = ROOT / "target" / "torture"
        self.faults = Counter()
        self.violations = Counter()
        self.examples = defaultdict(list)
        self.checks = 0
        self.check_secs = 0.0
        self.slowest_check = 0.0
        self.dir_cache = {}  # spool-relative directory -> (mtime_ns, listed at ns, files, subdirs)
        self.chain = (b"", [])  # failure-log bytes verified, each record's hash
        self.dup_from = 0  # transactions before this one were checked for duplicated rows
        self.kills_mid_batch = 0
        self.produced = {}  # name -> dict(kind, sha, ops)
        self.produced_lock = threading.Lock()
        self.docs = []  # doc ids that exist (for replace / delete)
        self.good_bytes = []  # bytes of good files, for duplicates
        self.versions = defaultdict(list)  # doc -> (bytes, ops) of each one-document file that wrote it
        self.liveness = int(os.environ.get("TORTURE_LIVENESS_SECS", "180"))
        self.drain_secs = 0.0
        self.failpoints = Counter()
        self.stop_producer = threading.Event()
        self.watch = None
        self.watch_lock = threading.Lock()
        self.supervise = True
        self.restarts = 0
        self.tmpfs = False
        self.elapsed = 0.0
        self.refused = 0
        self.abandoned = 0

    # --- servers ---------------------------------------------------------------

    def sh(self, *args, env=None, check=True, capture=False):
        r = subprocess.run(list(map(str, args)), env=env, check=check, text=True,
                           stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                           stderr=subprocess.PIPE if capture else subprocess.DEVNULL)
        return r.stdout if capture else r.returncode

    def servers(self, *args, extra=None, capture=False):
        env = dict(os.environ, PG_EXTRA_OPTS=DURABLE, **(extra or {}))
        return self.sh("bash", SERVERS, *args, env=env, capture=capture)

    def psql(self, sql, port=None):
        out = subprocess.run(["psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(port or self.primary[1]),
                              "-U", "postgres", "-d", "torture", "-c", sql],
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip())
        return out.stdout

    def setup(self):
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        vals = dict(l.split("=", 1) for l in self.servers("start", self.work / "pg-a", "pg", capture=True).split())
        self.primary = (self.work / "pg-a", int(vals["PG_PORT"]))
        self.pg_bin = vals["PG_BIN"]
        self.sh(f"{self.pg_bin}/createdb", "-h", "127.0.0.1", "-p", self.primary[1], "-U", "postgres", "torture")
        vals = dict(l.split("=", 1) for l in self.servers("standby", self.work / "pg-b", self.primary[1],
                                                           capture=True).split())
        self.standby = (self.work / "pg-b", int(vals["PG_PORT"]))
        vals = dict(l.split("=", 1) for l in self.servers("start", self.work / "redis", "redis", capture=True).split())
        self.redis_port = int(vals["REDIS_PORT"])
        spool = self.work / "spool"
        spool.mkdir()
        # The spool on a small filesystem of its own, so that "disk full" is real.
        if os.geteuid() == 0 and self.sh("mount", "-t", "tmpfs", "-o", "size=1g,mode=0750", "tmpfs", spool,
                                          check=False) == 0:
            self.tmpfs = True
        self.gate = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gate)
        threading.Thread(target=self.gate.serve_forever, daemon=True).start()
        hosts = f"127.0.0.1:{self.primary[1]},127.0.0.1:{self.standby[1]}"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "SPOOL_DIR": str(spool),
            "RAG_LOG_FILE": str(self.work / "logs" / "ragspool.log"),
            "DATABASE_URL": f"postgres://postgres@{hosts}/torture?target_session_attrs=read-write",
            "GATE_URL": f"http://127.0.0.1:{self.gate.server_address[1]}/",
            "GATE_TOKEN": TOKEN,
            "GATE_TIMEOUT_MS": "1000",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DOC_MODE": "replace",
            "WORKERS": "2",
            "BATCH_MAX_FILES": "25",
            "BATCH_MAX_AGE_SECS": "0",
            "RETRY_MAX_SECS": "20",
        }
        self.sh(self.bin, "init", env=self.env)
        self.sh(self.bin, "-q", "migrate", env=self.env)
        self.spool = spool
        self.failure_log = self.work / "logs" / "rag_failures.jsonl"

    def teardown(self):
        self.supervise = False
        self.kill_watch(signal.SIGKILL)
        if os.environ.get("TORTURE_KEEP"):
            log(f"kept for inspection: {self.work}, PostgreSQL on {self.primary[1]}")
            return
        if self.tmpfs:
            self.sh("umount", "-l", self.spool, check=False)
        for d in ("pg-a", "pg-b", "redis"):
            self.servers("stop", self.work / d)
        self.gate.shutdown()

    # --- the producer ----------------------------------------------------------

    def produce(self):
        n = 0
        next_at = time.monotonic()
        while not self.stop_producer.is_set():
            next_at += 1.0 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
            n += 1
            r = self.prng.random()
            stale = [d for d, v in self.versions.items() if len(v) >= 2]
            kind = ("bad" if r < 0.05 else "dup" if r < 0.10 and self.good_bytes
                    else "stale" if r < 0.13 and stale
                    else "delete" if r < 0.17 and self.docs
                    else "replace" if r < 0.32 and self.docs else "good")
            name = f"p{n:08d}-{kind}.msgpack"
            ops = []
            if kind == "bad":
                data = b"\x81\xa6doc_id\xda\xff\xff trunc"
            elif kind == "dup":
                data, ops = self.prng.choice(self.good_bytes)
            elif kind == "stale":
                # An older version of a document again, after a newer one: by claim
                # order it is a duplicate of the older file and changes nothing.
                data, ops = self.prng.choice(self.versions[self.prng.choice(stale)][:-1])
            elif kind == "delete":
                doc = self.prng.choice(self.docs)
                data = mp({"doc_id": doc, "delete": True})
                ops.append((doc, "delete", []))
            else:
                docs = ([f"d{n}-{i}" for i in range(self.prng.randint(1, 3))] if kind == "good"
                        else [self.prng.choice(self.docs)])
                data = b""
                for doc in docs:
                    chunks = []
                    for i in range(self.prng.randint(1, 5)):
                        content = f"{name} {doc} chunk {i} " + "lorem ipsum " * self.prng.randint(1, 20)
                        data += mp({"doc_id": doc, "chunk_index": i, "content": content})
                        chunks.append((i, hashlib.md5(content.encode()).hexdigest()))
                    ops.append((doc, "upsert", chunks))
            if not self.drop(name, data):
                self.refused += 1
                continue
            with self.produced_lock:
                self.produced[name] = {"kind": kind, "sha": hashlib.sha256(data).hexdigest(), "ops": ops}
            if kind == "good":
                self.good_bytes.append((data, ops))
                self.docs.extend(d for d, _, _ in ops)
            if kind in ("good", "replace") and len(ops) == 1:
                self.versions[ops[0][0]].append((data, ops))

    def drop(self, name, data):
        """tmp/ then rename, as producers do; False when the disk is full."""
        tmp = self.spool / "tmp" / f".t-{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, self.spool / "incoming" / name)
            return True
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
            return False

    # --- watch under a supervisor ----------------------------------------------

    def start_watch(self):
        logf = open(self.work / "watch.out", "ab")
        self.watch = subprocess.Popen([self.bin, "-q", "watch"], env=self.env, stdout=logf, stderr=logf)

    def supervisor(self):
        while self.supervise:
            with self.watch_lock:
                if self.watch is None or self.watch.poll() is not None:
                    if self.watch is not None:
                        self.restarts += 1
                    self.start_watch()
            time.sleep(0.05)

    def kill_watch(self, sig):
        with self.watch_lock:
            w = self.watch
            if w is None or w.poll() is not None:
                return
            if sig == signal.SIGKILL and self.batch_in_flight():
                self.kills_mid_batch += 1
            w.send_signal(sig)
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()

    def batch_in_flight(self):
        return any(p.is_dir() for p in (self.spool / "processing").iterdir())

    # --- faults ----------------------------------------------------------------

    KINDS = [
        ("sigkill watch", 14), ("sigkill process", 8), ("sigterm watch", 8),
        ("postgres restart fast", 7), ("postgres restart immediate", 7),
        ("postgres max_connections", 6), ("gate 503", 9), ("gate timeout", 7), ("gate reset", 9),
        ("redis down", 8), ("disk full", 7), ("standby switchover", 2), ("failpoint process", 8),
    ]

    # The steps of RAGSPOOL_FAILPOINT (src/failpoint.rs): between two durable writes.
    STEPS = ["file-committed", "batch-settled", "gate-done-queued", "batch-closed"]

    def fault(self, kind, hold):
        if kind == "sigkill watch":
            time.sleep(hold)
            self.kill_watch(signal.SIGKILL)
        elif kind == "sigkill process":
            p = subprocess.Popen([self.bin, "-q", "process"], env=self.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(hold)
            if p.poll() is None and self.batch_in_flight():
                self.kills_mid_batch += 1
            p.kill()
            p.wait()
        elif kind == "sigterm watch":
            time.sleep(hold)
            self.kill_watch(signal.SIGTERM)
        elif kind == "failpoint process":
            # A `process` that aborts at a named step (the n-th time it gets there),
            # as a SIGKILL at exactly that instant would leave it.
            step = self.rng.choice(self.STEPS)
            env = dict(self.env, RAGSPOOL_FAILPOINT=f"{step}:{self.rng.randint(1, 3)}")
            p = subprocess.Popen([self.bin, "-q", "process"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                code = p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait()
            if code == -signal.SIGABRT:
                self.failpoints[step] += 1
        elif kind.startswith("postgres restart"):
            stop = "pg-stop-fast" if kind.endswith("fast") else "pg-stop"
            self.servers(stop, self.primary[0])
            time.sleep(hold)
            self.servers("pg-start", self.primary[0])
        elif kind == "postgres max_connections":
            sleepers = [subprocess.Popen(["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.primary[1]), "-U",
                                          "postgres", "-d", "torture", "-c", f"SELECT pg_sleep({hold + 0.5})"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for _ in range(40)]
            time.sleep(hold)
            for s in sleepers:
                s.wait()
        elif kind.startswith("gate"):
            Gate.mode = kind.split()[1]
            time.sleep(hold)
            Gate.mode = "ok"
        elif kind == "redis down":
            pid = int((self.work / "redis" / "redis.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            time.sleep(hold)
            self.sh("redis-server", "--port", self.redis_port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
                    "no", "--databases", "1024", "--daemonize", "yes", "--pidfile", self.work / "redis" / "redis.pid",
                    "--logfile", self.work / "redis" / "redis.log", "--dir", self.work / "redis")
            time.sleep(0.1)
        elif kind == "disk full":
            filler = self.spool / ".filler"
            try:
                with open(filler, "wb") as f:
                    while True:
                        f.write(b"\0" * (1 << 20))
                        f.flush()
            except OSError:
                pass
            time.sleep(hold)
            filler.unlink()
        elif kind == "standby switchover":
            self.switchover(hold)

    def switchover(self, hold):
        """The old primary stops cleanly; the standby is promoted once it has
        received the old primary's shutdown checkpoint, as a switchover tool checks
        (with asynchronous replication, promoting a standby that is behind loses
        commits the old primary acknowledged); a new standby is then built where
        the old primary was. A standby that does not catch up within 120 s is not
        promoted: the old primary starts again."""
        old, new = self.primary, self.standby
        for _ in range(300):
            if self.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").strip() == "1":
                break
            time.sleep(0.1)
        self.servers("pg-stop-fast", old[0])
        control = self.sh(f"{self.pg_bin}/pg_controldata", "-D", old[0] / "pg", capture=True)
        checkpoint = next(l.split(":", 1)[1].strip() for l in control.splitlines()
                          if l.startswith("Latest checkpoint location"))
        for _ in range(1200):
            try:
                if self.psql(f"SELECT pg_last_wal_receive_lsn() > '{checkpoint}'::pg_lsn", port=new[1]).strip() == "t":
                    break
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.1)
        else:
            log(f"standby never received {checkpoint}; switchover abandoned")
            self.abandoned += 1
            self.servers("pg-start", old[0])
            return
        self.servers("pg-promote", new[0])
        time.sleep(hold)
        self.servers("stop", old[0])
        self.servers("standby", old[0], new[1], extra={"PG_FIXED_PORT": str(old[1])})
        self.primary, self.standby = new, old

    # --- invariants ------------------------------------------------------------

    def violation(self, name, detail):
        self.violations[name] += 1
        if len(self.examples[name]) < 5:
            self.examples[name].append(detail)
        log(f"VIOLATION {name}: {detail}")

    def where(self):
        """Each spool file's places: name -> list of directories, read while watch
        is stopped (SIGSTOP), so that no file moves during the walk."""
        with self.watch_lock:
            frozen = self.watch if self.watch is not None and self.watch.poll() is None else None
            if frozen:
                frozen.send_signal(signal.SIGSTOP)
                stopped(frozen.pid)
            try:
                places = defaultdict(list)
                for top in ("incoming", "processing", "archive", "failed"):
                    for rel, files in self.listing(top):
                        for f in files:
                            places[f].append(rel)
            finally:
                if frozen:
                    frozen.send_signal(signal.SIGCONT)
        return places

    def listing(self, rel):
        """(directory, its spool files) for `rel` and every directory under it.
        archive/ and failed/ grow by a directory per batch and their old ones never
        change, so a directory whose mtime is what it was at an earlier listing is
        not read again; only when that mtime was over a second old by then, as a
        directory's mtime ticks coarsely and two changes within one tick leave it
        equal."""
        path = self.spool / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        now = time.time_ns()
        cached = self.dir_cache.get(rel)
        if cached and cached[0] == st.st_mtime_ns and cached[1] - st.st_mtime_ns > 1_000_000_000:
            files, subdirs = cached[2], cached[3]
        else:
            files, subdirs = [], []
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif entry.name.endswith(".msgpack") and not entry.name.startswith("."):
                    files.append(entry.name)
            self.dir_cache[rel] = (st.st_mtime_ns, now, files, subdirs)
        yield rel, files
        for d in subdirs:
            yield from self.listing(f"{rel}/{d}")

    def check_live(self, final=False):
        started = time.monotonic()
        self.checks += 1
        if final:
            self.dir_cache.clear()
        with self.produced_lock:
            produced = dict(self.produced)
        places = self.where()
        for name, info in produced.items():
            got = places.get(name, [])
            if len(got) != 1:
                self.violation("every file accounted for exactly once", f"{name} ({info['kind']}) in {got}")
            elif final and info["kind"] == "bad" and not got[0].startswith("failed"):
                self.violation("every file accounted for exactly once", f"bad {name} in {got[0]}")
            elif final and info["kind"] != "bad" and not got[0].startswith("archive"):
                self.violation("every file accounted for exactly once", f"{name} ({info['kind']}) in {got[0]}")
            elif final and info["kind"] == "bad" and not (self.spool / got[0] / f"{name}.reason.json").exists():
                self.violation("every file accounted for exactly once", f"bad {name} has no reason.json")
        self.check_duplicates(final)
        self.check_chain(final)
        self.check_gate(final)
        if final:
            self.check_rows()
        took = time.monotonic() - started
        self.check_secs += took
        self.slowest_check = max(self.slowest_check, took)

    def check_duplicates(self, final):
        """No (doc_id, chunk_index) twice. Between faults only the documents that
        rows of transactions since the last check touch: every transaction older
        than the oldest one running when that check began had ended before it, so
        its rows were checked then. The final check reads the whole table."""
        since = "" if final else (f"WHERE doc_id IN (SELECT doc_id FROM rag_chunks "
                                  f"WHERE xmin::text::bigint >= {self.dup_from})")
        out = self.psql("SELECT pg_snapshot_xmin(pg_current_snapshot());"
                        "SELECT count(*) FROM (SELECT doc_id, chunk_index FROM rag_chunks "
                        f"{since} GROUP BY 1, 2 HAVING count(*) > 1) d").split()
        self.dup_from, dup = int(out[0]), out[1]
        if dup != "0":
            self.violation("no duplicated row", f"{dup} (doc_id, chunk_index) pairs twice")

    def check_chain(self, final):
        """Each failure-log record names its predecessor's hash, and the anchor in
        the database names a record the file holds. Between faults the records
        verified before are compared as bytes (a cut or a rewrite changes them) and
        only the new ones are hashed."""
        # The anchor first: read after the file, it could count a record appended
        # in between.
        anchor = self.psql("SELECT records || ' ' || head FROM ragspool_failure_log_anchor").split()
        text = self.failure_log.read_bytes() if self.failure_log.exists() else b""
        whole = text[: text.rfind(b"\n") + 1]
        done, hashes = self.chain
        if final or not whole.startswith(done):
            done, hashes = b"", []
        hashes = list(hashes)
        for line in whole[len(done):].split(b"\n"):
            if not line:
                continue
            try:
                rec_prev = json.loads(line).get("prev")
            except ValueError:
                rec_prev = None
            if rec_prev != (hashes[-1] if hashes else hashlib.sha256(b"").hexdigest()):
                self.violation("failure-log chain intact", f"record {len(hashes) + 1}")
                return
            hashes.append(hashlib.sha256(line).hexdigest())
        self.chain = (whole, hashes)
        if anchor:
            n, head = int(anchor[0]), anchor[1]
            if n > len(hashes) or (n and hashes[n - 1] != head):
                self.violation("failure-log chain intact", f"anchor {n} records, file {len(hashes)}")

    def check_gate(self, final):
        with Gate.lock:
            events = list(Gate.events)
        opened = set()
        for _, ev, tag, _ in events:
            if ev == "gate.open":
                opened.add(tag)
            elif ev == "gate.done" and tag not in opened:
                self.violation("gate.open before gate.done", f"batch {tag}")
                opened.add(tag)
        if not final:
            return
        done = {tag for _, ev, tag, _ in events if ev == "gate.done"}
        waiting = [p for p in (self.spool / "outbox").glob("*.json")]
        tags = set(self.psql("SELECT DISTINCT batch_tag FROM ragspool_manifest").split())
        for tag in tags:
            if tag not in opened or tag not in done:
                self.violation("no gate event lost", f"batch {tag}: open {tag in opened}, done {tag in done}, "
                               f"{len(waiting)} event(s) waiting in outbox/")

    def check_rows(self):
        """Each file's rows, and each document as the file of its highest claim
        sequence left it."""
        manifest = {}
        for line in self.psql("SELECT file_name, status, duplicate, rows, coalesce(seq, 0), sha256 "
                              "FROM ragspool_manifest").splitlines():
            name, status, duplicate, rows, seq, sha = line.split("|")
            manifest[name] = (status, duplicate == "t", int(rows), int(seq), sha)
        by_sha = defaultdict(list)
        winner = {}  # doc -> (seq, op, chunks)
        for name, info in self.produced.items():
            m = manifest.get(name)
            if info["kind"] == "bad":
                if m and m[0] == "done":
                    self.violation("each file's rows exact", f"bad {name} is done")
                continue
            if not m or m[0] != "done":
                self.violation("each file's rows exact", f"{name} not done in the manifest: {m}")
                continue
            by_sha[info["sha"]].append(name)
            if m[1]:
                continue
            for doc, op, chunks in info["ops"]:
                if doc not in winner or winner[doc][0] < m[3]:
                    winner[doc] = (m[3], op, chunks)
        for sha, names in by_sha.items():
            live = [n for n in names if not manifest[n][1]]
            if len(live) != 1:
                self.violation("each file's rows exact", f"content {sha[:12]}: {len(live)} non-duplicate of {names}")
            elif any(manifest[n][3] < manifest[live[0]][3] for n in names):
                first = min(names, key=lambda n: manifest[n][3])
                self.violation("duplicates in claim order", f"content {sha[:12]}: {live[0]} is the original, "
                               f"{first} was claimed before it")
            for n in names:
                if manifest[n][1] and manifest[n][2] != 0:
                    self.violation("each file's rows exact", f"duplicate {n} has {manifest[n][2]} rows")
        for name, info in self.produced.items():
            m = manifest.get(name)
            if info["kind"] == "bad" or not m or m[1]:
                continue
            adds = sum(len(c) for _, op, c in info["ops"] if op == "upsert")
            later = any(winner.get(doc, (0,))[0] > m[3] for doc, _, _ in info["ops"])
            if m[2] > adds or (not later and m[2] != adds):
                self.violation("each file's rows exact", f"{name}: manifest rows {m[2]}, file adds {adds}")
        table = defaultdict(dict)
        for line in self.psql("SELECT doc_id, chunk_index, md5(content) FROM rag_chunks").splitlines():
            doc, idx, h = line.split("|")
            table[doc][int(idx)] = h
        self.rows = sum(len(c) for c in table.values())
        for doc, (seq, op, chunks) in winner.items():
            want = {} if op == "delete" else dict(chunks)
            if table.get(doc, {}) != want:
                self.violation("each file's rows exact", f"document {doc}: table {table.get(doc)}, want {want}")
        for doc in set(table) - set(winner):
            self.violation("no duplicated row", f"document {doc} in the table, from no produced file")

    # --- the run ---------------------------------------------------------------

    def run(self):
        log(f"seed {self.seed} (rerun with TORTURE_SEED={self.seed}); up to {self.secs} s or {self.max_faults} faults")
        self.setup()
        ok = False
        try:
            threading.Thread(target=self.supervisor, daemon=True).start()
            producer = threading.Thread(target=self.produce, daemon=True)
            producer.start()
            started = time.monotonic()
            kinds = [k for k in self.KINDS if self.tmpfs or k[0] != "disk full"]
            names, weights = zip(*kinds)
            n = 0
            while n < self.max_faults and time.monotonic() - started < self.secs:
                kind = self.rng.choices(names, weights)[0]
                hold = self.rng.uniform(0.05, 0.8)
                time.sleep(self.rng.uniform(0.0, 0.3))
                self.fault(kind, hold)
                self.faults[kind] += 1
                n += 1
                self.wait_for_db()
                self.check_live()
                if n % 50 == 0:
                    log(f"{n} faults, {len(self.produced)} files produced ({self.refused} refused by a full disk), "
                        f"{sum(self.violations.values())} violation(s), checks {1000 * self.check_secs / self.checks:.0f} ms "
                        f"on average")
            self.elapsed = time.monotonic() - started
            self.stop_producer.set()
            producer.join()
            self.drain()
            self.check_live(final=True)
            ok = True
        finally:
            if not ok:
                log(f"campaign broke off; seed {self.seed}")
            self.teardown()
        self.report()
        total = sum(self.violations.values())
        if total:
            log(f"{total} violation(s); seed {self.seed} (TORTURE_SEED={self.seed} reruns this schedule)")
            return 1
        log(f"0 violations over {sum(self.faults.values())} faults; seed {self.seed}")
        return 0

    def wait_for_db(self):
        for _ in range(600):
            try:
                self.psql("SELECT 1")
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.1)
        raise SystemExit("the database did not come back")

    def drain(self):
        """Every fault healed: the running watch alone, with no fresh process to
        help, must settle every file and deliver every event within the liveness
        bound (orphaned batches included: SPEC 3's ORPHAN_RECOVER_SECS)."""
        Gate.mode = "ok"
        started = time.monotonic()
        waiting = (0, 0, 0)
        while time.monotonic() - started < self.liveness:
            waiting = (len(list((self.spool / "incoming").glob("*.msgpack"))),
                       len(list((self.spool / "processing").rglob("*.msgpack"))),
                       len(list((self.spool / "outbox").glob("*.json"))))
            if not any(waiting):
                break
            if int(time.monotonic() - started) % 10 == 0:
                log(f"draining: {waiting[0]} in incoming/, {waiting[1]} in processing/, {waiting[2]} in outbox/")
            time.sleep(0.5)
        self.drain_secs = time.monotonic() - started
        if any(waiting):
            self.violation("liveness: every file settles while watch runs",
                           f"after {self.liveness} s: {waiting[0]} in incoming/, {waiting[1]} in processing/, "
                           f"{waiting[2]} in outbox/")
        log(f"drained in {self.drain_secs:.0f} s")
        self.supervise = False
        self.kill_watch(signal.SIGTERM)
        # Only for the final checks, should liveness have failed: a fresh process
        # recovers what is left.
        self.sh(self.bin, "-q", "process", env=self.env, check=False)

    def report(self):
        total_faults = sum(self.faults.values())
        kinds = Counter(i["kind"] for i in self.produced.values())
        lines = [
            "# ragspool fault campaign",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, seed {self.seed} "
            f"(`TORTURE_SEED={self.seed} make torture` reruns this schedule), {self.elapsed:.0f} s, "
            f"producer at {self.rate:g} files/s, PostgreSQL with fsync on, a streaming standby, "
            f"spool on a {'1 GiB tmpfs' if self.tmpfs else 'plain directory (not root: no disk-full faults)'}.",
            "",
            "| fault | count |",
            "|---|---|",
        ]
        lines += [f"| {k} | {self.faults[k]} |" for k, _ in self.KINDS if self.faults[k]]
        lines += [f"| **total** | **{total_faults}** |", "",
                  f"Kills that landed while a batch was in processing/: {self.kills_mid_batch}. "
                  f"watch restarted by the supervisor: {self.restarts} times. Invariant checks: {self.checks} "
                  f"({self.check_secs:.0f} s in all, the slowest {self.slowest_check:.2f} s). "
                  f"Switchovers abandoned because the standby did not catch up: {self.abandoned}. "
                  f"Files the producer could not write (disk full): {self.refused}. "
                  f"Processes aborted at a named step: "
                  f"{', '.join(f'{s} {self.failpoints[s]}' for s in self.STEPS) or 'none'}. "
                  f"After the last fault the running watch alone drained the spool and the outbox in "
                  f"{self.drain_secs:.0f} s (bound {self.liveness} s).", "",
                  "| files produced | count |", "|---|---|"]
        lines += [f"| {k} | {kinds[k]} |" for k in ("good", "bad", "dup", "stale", "replace", "delete") if kinds[k]]
        lines += [f"| **total** | **{len(self.produced)}** |", "",
                  f"Rows in the table at the end: {getattr(self, 'rows', 0):,}.", "",
                  "| invariant | violations |", "|---|---|"]
        for name in ("every file accounted for exactly once", "no duplicated row", "each file's rows exact",
                     "duplicates in claim order", "gate.open before gate.done", "no gate event lost",
                     "failure-log chain intact", "liveness: every file settles while watch runs"):
            lines.append(f"| {name} | {self.violations[name]} |")
        for name, ex in self.examples.items():
            lines += ["", f"{name}, first examples:"] + [f"- {e}" for e in ex]
        text = "\n".join(lines) + "\n"
        out = ROOT / "bench" / "results" / "torture.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)


if __name__ == "__main__":
    sys.exit(Campaign().run())
