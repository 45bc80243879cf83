//! A Citus coordinator with two workers on loopback ports, provisioned by
//! scripts/servers.sh (Citus from the installed package, else built from source
//! once per machine). One cluster serves the whole test binary; a test that stops a
//! worker starts a cluster of its own. A cluster that cannot be had fails the test
//! with the script's message; nothing is skipped.

use super::servers::{servers_script, spawn_reaper};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// A coordinator and its workers.
pub struct Citus {
    /// The cluster's directory (DIR/coordinator, DIR/worker1, DIR/worker2).
    pub dir: PathBuf,
    /// The coordinator's port.
    pub coordinator: u16,
    /// The workers' ports.
    pub workers: [u16; 2],
}

static SHARED: OnceLock<Result<Citus, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cluster shared by the test binary, started on first use.
#[track_caller]
pub fn citus() -> &'static Citus {
    match SHARED.get_or_init(|| Citus::start_in("citus-shared")) {
        Ok(c) => c,
        Err(e) => panic!("Citus cluster unavailable: {e}"),
    }
}

impl Citus {
    /// A cluster of the test's own (for tests that stop and start its workers).
    #[track_caller]
    pub fn own() -> Citus {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        Citus::start_in(&format!("citus-own-{n}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn start_in(name: &str) -> Result<Citus, String> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("bash")
            .arg(servers_script())
            .args(["citus", &dir.display().to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/servers.sh: {e}"))?;
        spawn_reaper(&dir)?;
        if !out.status.success() {
            return Err(format!(
                "scripts/servers.sh citus failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let port = |key: &str| -> Result<u16, String> {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("scripts/servers.sh citus printed no {key}: {stdout}"))
        };
        Ok(Citus {
            coordinator: port("COORDINATOR_PORT=")?,
            workers: [port("WORKER1_PORT=")?, port("WORKER2_PORT=")?],
            dir,
        })
    }

    /// A fresh database on every node (citus and vector extensions created, the
    /// workers registered); returns the coordinator's URL for it.
    #[track_caller]
    pub fn new_database(&self) -> String {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("ragspool_citus_{}_{n}", std::process::id());
        let out = Command::new("bash")
            .arg(servers_script())
            .args(["citus-db", &self.dir.display().to_string(), &name])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/servers.sh: {e}"));
        assert!(
            out.status.success(),
            "scripts/servers.sh citus-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(self.coordinator, &name)
    }

    /// The URL of database `db` on the node listening on `port`.
    pub fn url(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }

    /// URLs of the database of `coordinator_url` on every node, coordinator first.
    pub fn node_urls(&self, coordinator_url: &str) -> Vec<String> {
        let db = coordinator_url.rsplit('/').next().unwrap_or_default();
        std::iter::once(self.coordinator)
            .chain(self.workers)
            .map(|p| self.url(p, db))
            .collect()
    }

    fn worker_dir(&self, worker: usize) -> String {
        self.dir
            .join(format!("worker{}", worker + 1))
            .display()
            .to_string()
    }

    fn ctl(&self, what: &str, worker: usize) {
        let ok = Command::new("bash")
            .arg(servers_script())
            .args([what, &self.worker_dir(worker)])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "scripts/servers.sh {what} worker{} failed", worker + 1);
    }

    /// Stops worker `worker` (0 or 1) at once, as a crash would.
    pub fn stop_worker(&self, worker: usize) {
        self.ctl("pg-stop", worker);
    }

    /// Starts worker `worker` again on its port.
    pub fn start_worker(&self, worker: usize) {
        self.ctl("pg-start", worker);
    }
}
