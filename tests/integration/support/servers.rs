//! Throwaway PostgreSQL and Redis servers for the whole test binary, started once by
//! scripts/servers.sh on free loopback ports (installing the Debian packages when
//! missing), or taken from RAGSPOOL_TEST_DATABASE_URL / RAGSPOOL_TEST_REDIS_URL. A
//! reaper process stops them when the test binary exits, however it exits. A
//! server that cannot be had fails the test with a hint; nothing is skipped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where the servers are.
pub struct Servers {
    /// A superuser URL for the maintenance database.
    pub pg_admin_url: String,
    /// Host and port of the Redis server.
    pub redis: (String, u16),
    /// Databases the Redis server has.
    pub redis_databases: u32,
    /// The PostgreSQL server we started, if we started one.
    pub pg: Option<LocalPg>,
}

/// A PostgreSQL server started by the harness.
pub struct LocalPg {
    /// Directory of the server binaries.
    pub bin: PathBuf,
    /// Data directory.
    pub data: PathBuf,
    /// Port.
    pub port: u16,
    /// Server log.
    pub log: PathBuf,
}

static SERVERS: OnceLock<Result<Servers, String>> = OnceLock::new();

/// The shared servers, started on first use.
#[track_caller]
pub fn servers() -> &'static Servers {
    match SERVERS.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("test servers unavailable: {e}"),
    }
}

fn start() -> Result<Servers, String> {
    let external_pg = std::env::var("RAGSPOOL_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let external_redis = std::env::var("RAGSPOOL_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let kind = match (&external_pg, &external_redis) {
        (Some(_), Some(_)) => None,
        (Some(_), None) => Some("redis"),
        (None, Some(_)) => Some("pg"),
        (None, None) => Some("all"),
    };
    let base =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("servers-{}", std::process::id()));
    let started = match kind {
        Some(kind) => {
            let vars = start_local(&base, kind, "")?;
            spawn_reaper(&base)?;
            vars
        }
        None => Vec::new(),
    };
    let var = |name: &str| {
        started
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let pg = match var("PG_PORT") {
        Some(port) => Some(LocalPg {
            bin: PathBuf::from(var("PG_BIN").unwrap_or_default()),
            data: base.join("pg"),
            port: port.parse().map_err(|_| format!("bad PG_PORT {port}"))?,
            log: base.join("pg.log"),
        }),
        None => None,
    };
    let pg_admin_url = match (&external_pg, &pg) {
        (Some(url), _) => url.clone(),
        (None, Some(pg)) => format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port),
        (None, None) => return Err("no PostgreSQL".into()),
    };
    let (redis, redis_databases) = match (&external_redis, var("REDIS_PORT")) {
        (Some(url), _) => (parse_redis_url(url)?, 16),
        (None, Some(port)) => (
            (
                "127.0.0.1".to_string(),
                port.parse().map_err(|_| format!("bad REDIS_PORT {port}"))?,
            ),
            1024,
        ),
        (None, None) => return Err("no Redis".into()),
    };
    Ok(Servers {
        pg_admin_url,
        redis,
        redis_databases,
        pg,
    })
}

/// The provisioning script shared with the demo and the benchmark.
pub fn servers_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/servers.sh")
}

/// Starts `kind` (pg, redis or all) under `dir` with extra postgres options;
/// returns the script's NAME=VALUE lines.
pub fn start_local(
    dir: &Path,
    kind: &str,
    pg_extra: &str,
) -> Result<Vec<(String, String)>, String> {
    let out = Command::new("bash")
        .arg(servers_script())
        .args(["start", &dir.display().to_string(), kind])
        .env("PG_EXTRA_OPTS", pg_extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/servers.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/servers.sh start failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Stops what `dir` holds once this test process has exited, however it exits.
pub fn spawn_reaper(dir: &Path) -> Result<(), String> {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; bash '{}' stop '{}'",
        std::process::id(),
        servers_script().display(),
        dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot start the reaper: {e}"))
}

/// Sends PING over RESP and expects +PONG.
pub fn redis_ping(addr: (&str, u16)) -> Result<(), String> {
    redis_command(addr, &["PING"]).and_then(|r| if r == "+PONG" { Ok(()) } else { Err(r) })
}

/// Sends one command and returns the first reply line.
pub fn redis_command(addr: (&str, u16), args: &[&str]) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_string())
}

fn parse_redis_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("RAGSPOOL_TEST_REDIS_URL must be redis://host:port")?;
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or("");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "6379"));
    Ok((
        host.to_string(),
        port.parse().map_err(|_| format!("bad port in {url}"))?,
    ))
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh database on the shared server; returns its URL.
#[track_caller]
pub fn new_database() -> String {
    let s = servers();
    let n = NEXT_DB.fetch_add(1, Ordering::SeqCst);
    let name = format!("ragspool_test_{}_{n}", std::process::id());
    let mut client = match postgres::Client::connect(&s.pg_admin_url, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to the test PostgreSQL: {e}"),
    };
    if let Err(e) = client.batch_execute(&format!("CREATE DATABASE {name}")) {
        panic!("cannot create database {name}: {e}");
    }
    match s.pg_admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("admin URL has no database part"),
    }
}

static NEXT_REDIS_DB: AtomicU32 = AtomicU32::new(1);

/// A Redis database index of its own, emptied.
#[track_caller]
pub fn new_redis_db() -> u32 {
    let s = servers();
    let db = NEXT_REDIS_DB.fetch_add(1, Ordering::SeqCst) % s.redis_databases;
    let addr = (s.redis.0.as_str(), s.redis.1);
    if let Err(e) = redis_command(addr, &["PING"]) {
        panic!("test Redis unavailable: {e}");
    }
    db
}

static NEXT_OWN: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL server of one test's own, for tests that stop, restart or
/// reconfigure it (outages, TLS).
pub struct OwnPg {
    /// Its directory (data, socket, log).
    pub dir: PathBuf,
    /// Its port.
    pub port: u16,
}

impl OwnPg {
    /// Starts one with the default options.
    #[track_caller]
    pub fn start() -> OwnPg {
        OwnPg::start_with(|_| {}, |_| String::new())
    }

    /// Starts one after `prepare` put files in its directory (certificates, say),
    /// with the extra `postgres -c` options `options` gives for that directory.
    #[track_caller]
    pub fn start_with(prepare: impl FnOnce(&Path), options: impl FnOnce(&Path) -> String) -> OwnPg {
        let n = NEXT_OWN.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("own-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        prepare(&dir);
        // Tests that crash this server need commits that survive a crash.
        let extra = format!("-c synchronous_commit=on {}", options(&dir));
        let vars = match start_local(&dir, "pg", &extra) {
            Ok(v) => v,
            Err(e) => panic!("cannot start a PostgreSQL of the test's own: {e}"),
        };
        if let Err(e) = spawn_reaper(&dir) {
            panic!("{e}");
        }
        let port = vars
            .iter()
            .find(|(k, _)| k == "PG_PORT")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no PG_PORT from scripts/servers.sh"));
        OwnPg { dir, port }
    }

    /// A URL for database `db` on host `host`.
    pub fn url(&self, host: &str, db: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}", self.port)
    }

    /// Creates database `name`.
    #[track_caller]
    pub fn create_db(&self, name: &str) -> String {
        let admin = self.url("127.0.0.1", "postgres");
        let mut c = postgres::Client::connect(&admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{admin}: {e}"));
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.url("127.0.0.1", name)
    }

    fn ctl(&self, what: &str) {
        let ok = Command::new("bash")
            .arg(servers_script())
            .args([what, &self.dir.display().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scripts/servers.sh {what} failed");
    }

    /// Stops the server at once (an outage).
    pub fn stop(&self) {
        self.ctl("pg-stop");
    }

    /// Stops the server cleanly: its standbys receive all of its WAL first.
    pub fn stop_fast(&self) {
        self.ctl("pg-stop-fast");
    }

    /// Promotes this standby to primary.
    pub fn promote(&self) {
        self.ctl("pg-promote");
    }

    /// A streaming standby of this server (pg_basebackup -R), started.
    #[track_caller]
    pub fn standby(&self) -> OwnPg {
        let n = NEXT_OWN.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("own-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("bash")
            .arg(servers_script())
            .args([
                "standby",
                &dir.display().to_string(),
                &self.port.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/servers.sh: {e}"));
        assert!(
            out.status.success(),
            "standby: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Err(e) = spawn_reaper(&dir) {
            panic!("{e}");
        }
        let port = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("PG_PORT="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no PG_PORT for the standby"));
        OwnPg { dir, port }
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.ctl("pg-start");
    }

    /// Sends `sig` (STOP, CONT) to the postmaster and every backend: STOP is a
    /// server that hangs outright, which no statement_timeout ends.
    pub fn signal_all(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.dir.join("pg/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
            .unwrap_or_default();
        assert!(!pid.is_empty(), "no postmaster.pid");
        let _ = Command::new("pkill")
            .args([&format!("-{sig}"), "-P", &pid])
            .status();
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
    }
}

/// A free loopback port (the listener closes before the caller binds it).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Installs Debian's pg_partman for the server's PostgreSQL when it is missing.
#[track_caller]
pub fn ensure_partman() {
    let version = servers()
        .pg
        .as_ref()
        .and_then(|pg| {
            pg.bin
                .parent()
                .and_then(|v| v.file_name())
                .map(|v| v.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "15".to_string());
    let control = format!("/usr/share/postgresql/{version}/extension/pg_partman.control");
    // Tests needing it run in parallel: one installs, the others wait for it
    // (two apt-get at once fight over dpkg's lock and one fails).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if Path::new(&control).exists() {
        return;
    }
    let package = format!("postgresql-{version}-partman");
    let script = format!(
        "export DEBIAN_FRONTEND=noninteractive; (apt-get install -y -qq {package} || (apt-get update -qq && apt-get install -y -qq {package})) >/dev/null 2>&1"
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && Path::new(&control).exists(),
        "pg_partman is needed: install {package} (apt-get install {package})"
    );
}

/// A redis-server of one test's own (passwords, ACL users, TLS, DEBUG).
pub struct OwnRedis {
    /// Its directory.
    pub dir: PathBuf,
    /// Its port (the TLS port when started with TLS).
    pub port: u16,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port with `extra` arguments; with `tls`,
    /// `prepare` must have put ca.pem, server.crt and server.key in the directory.
    #[track_caller]
    pub fn start(extra: &[&str], tls: bool, prepare: impl FnOnce(&Path)) -> OwnRedis {
        servers();
        let n = NEXT_OWN.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("own-redis-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        prepare(&dir);
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let d = dir.display().to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
        ];
        args.extend(["--appendonly", "no", "--daemonize", "yes", "--dir"].map(String::from));
        args.push(d.clone());
        args.extend([
            "--pidfile".to_string(),
            format!("{d}/redis.pid"),
            "--logfile".into(),
            format!("{d}/redis.log"),
        ]);
        if tls {
            args.extend(["--port", "0", "--tls-port"].map(String::from));
            args.push(port.to_string());
            args.extend([
                "--tls-cert-file".to_string(),
                format!("{d}/server.crt"),
                "--tls-key-file".into(),
                format!("{d}/server.key"),
                "--tls-ca-cert-file".into(),
                format!("{d}/ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        } else {
            args.extend(["--port".to_string(), port.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let ok = Command::new("redis-server")
            .args(&args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "redis-server {args:?} did not start");
        after_this_test_process(&format!(
            "kill $(cat {d}/redis.pid) 2>/dev/null; rm -rf {d}"
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on {port} never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { dir, port }
    }
}

/// Runs the shell `cleanup` once this test process has exited, however it exits.
fn after_this_test_process(cleanup: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        std::process::id()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// `redis-cli -p PORT ARGS...`'s output (redis-tools comes with redis-server).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A three-master Redis Cluster on loopback, created with `redis-cli --cluster`.
pub struct OwnCluster {
    /// Its masters.
    pub nodes: Vec<OwnRedis>,
}

impl OwnCluster {
    /// Starts three cluster-enabled servers (each with an explicit bus port, since
    /// port + 10000 may be taken) and joins them into one cluster.
    #[track_caller]
    pub fn start() -> OwnCluster {
        let nodes: Vec<OwnRedis> = (0..3)
            .map(|_| {
                let bus = free_port().unwrap_or_else(|e| panic!("{e}")).to_string();
                OwnRedis::start(
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        &bus,
                    ],
                    false,
                    |_| {},
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|e| panic!("redis-cli (redis-tools) is needed: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        OwnCluster { nodes }
    }

    /// `host:port,host:port,...` for REDIS_CLUSTER_NODES.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A master, its replica and a sentinel watching them as `mymaster`.
pub struct OwnSentinel {
    /// The master at start.
    pub master: OwnRedis,
    /// Its replica.
    pub replica: OwnRedis,
    /// The sentinel's port.
    pub port: u16,
}

impl OwnSentinel {
    /// Starts the three and waits until the sentinel sees the replica.
    #[track_caller]
    pub fn start() -> OwnSentinel {
        let master = OwnRedis::start(&[], false, |_| {});
        let mport = master.port.to_string();
        let replica = OwnRedis::start(&["--replicaof", "127.0.0.1", &mport], false, |_| {});
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let dir = master.dir.join("sentinel");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let d = dir.display();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize yes\npidfile {d}/sentinel.pid\nlogfile {d}/sentinel.log\n\
                 dir {d}\nsentinel monitor mymaster 127.0.0.1 {mport} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ok = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "redis-server --sentinel did not start");
        after_this_test_process(&format!("kill $(cat {d}/sentinel.pid) 2>/dev/null"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !redis_cli(port, &["SENTINEL", "REPLICAS", "mymaster"])
            .contains(&replica.port.to_string())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the sentinel never saw the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnSentinel {
            master,
            replica,
            port,
        }
    }

    /// The master's port as the sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        redis_cli(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        )
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
    }
}
