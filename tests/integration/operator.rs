//! What an operator sees: the progress line of `process` on a terminal (and none
//! on a pipe or with -q), and the Grafana dashboard's metrics.

use crate::support::{TestEnv, bin};
use std::process::Command;

/// Runs `ragspool ARGS` under a pseudo-terminal (util-linux `script`) with the
/// env's settings; returns what the terminal showed.
fn on_a_terminal(env: &TestEnv, args: &str) -> String {
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("{} {args}", bin().display()), "/dev/null"]);
    for (k, v) in &env.vars {
        cmd.env(k, v);
    }
    cmd.env_remove("JOURNAL_STREAM");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("`script` (util-linux) is needed: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn process_shows_one_progress_line_on_a_terminal_and_none_on_a_pipe() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(12, 200, 1);
    let screen = on_a_terminal(&env, "process");
    assert!(screen.contains("ingest: "), "{screen}");
    assert!(
        screen.contains("files") && screen.contains("rows/s"),
        "{screen}"
    );
    assert!(screen.contains("1 failed"), "{screen}");
    // The line is cleared before the summary, which stays as it is.
    let cleared = screen.rfind("\u{1b}[2K").unwrap_or(0);
    let summary = screen
        .find("1 batch(es): 12 file(s) ingested, 1 failed")
        .unwrap_or(0);
    assert!(summary > cleared && cleared > 0, "{screen:?}");
    // A pipe and -q get none of it.
    env.generate(3, 10, 0);
    let out = env.run(&["process"]).output();
    assert!(!out.stderr.contains("ingest: "), "{}", out.stderr);
    env.generate(3, 10, 0);
    let quiet = on_a_terminal(&env, "-q process");
    assert!(!quiet.contains("ingest: "), "{quiet}");
}

/// `init` as a user who may not create the default spool's directory: a
/// configuration error (78, never the retry-later 75) whose note names the
/// setting, its flag, and sudo.
#[test]
fn init_without_permission_exits_78_naming_spool_dir_and_sudo() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    // A root-owned parent that others may enter but not write, as /var/spool is.
    let parent = env.dir.path().join("var-spool");
    std::fs::create_dir(&parent).expect("parent");
    for dir in [env.dir.path(), parent.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let spool = parent.join("ragspool").display().to_string();
    let logs = env.dir.path().join("nobody-logs");
    std::fs::create_dir(&logs).expect("logs");
    std::os::unix::fs::chown(&logs, Some(65534), Some(65534)).expect("chown");
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "nobody", "--"])
        .arg(bin())
        .arg("init")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPOOL_DIR", &spool)
        .env("RAG_LOG_FILE", logs.join("rag.log"))
        .current_dir("/");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("`runuser` (util-linux) is needed: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for needle in [
        "Permission denied",
        "note:",
        "SPOOL_DIR (or --spool-dir)",
        "sudo ragspool init",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // Given as a flag, the note says how it was given.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin())
        .args(["init", "--spool-dir", &spool])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RAG_LOG_FILE", logs.join("rag.log"))
        .current_dir("/")
        .output()
        .expect("runuser");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("where `--spool-dir` points"), "{stderr}");
}

#[test]
fn check_ends_with_a_verdict_and_lists_settings_only_with_verbose() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let out = env.run(&["check"]).output().code(1);
    let last = out.stdout.lines().last().unwrap_or_default();
    let total = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("  ok") || l.starts_with("  FAIL"))
        .count();
    assert_eq!(
        last,
        format!("check: 1 of {total} checks failed (run with -v to see every setting)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("settings:"), "{}", out.stdout);
    // -v: every setting with the value in effect, the derived ones included.
    let out = env.run(&["-v", "check"]).output().code(1);
    let failure_log = env.dir.path().join("logs/rag_failures.jsonl");
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("FAILURE_LOG "))
        .unwrap_or_default();
    assert!(
        line.contains(&failure_log.display().to_string()) && line.contains("[default]"),
        "{line}"
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("check: ")
    );
    // All good: the verdict says so.
    let env = TestEnv::new().with_db();
    env.ready();
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("check: all ");
}

#[test]
fn check_with_logs_on_stderr_judges_the_failure_log_consistently() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    // RAG_LOG_FILE=- puts the failure log under ./logs of the working directory,
    // where init did not create it: one FAIL, and no "ok" for its chain.
    let elsewhere = env.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("a working directory");
    let out = env
        .run(&["check"])
        .env("RAG_LOG_FILE", "-")
        .current_dir(&elsewhere)
        .output()
        .code(1);
    assert!(
        out.stdout.contains("FAIL  failure log") && out.stdout.contains("missing"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("failure log chain"), "{}", out.stdout);
}

#[test]
fn process_and_maintain_print_json_reports() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(3, 5, 1);
    let out = env.run(&["process", "--json"]).output().code(1);
    let report = out.json();
    assert_eq!(report["files_ingested"], 3, "{report}");
    assert_eq!(report["files_failed"], 1, "{report}");
    assert_eq!(report["rows"], 15, "{report}");
    assert_eq!(report["undelivered"], 0, "{report}");
    let batch = &report["batches"][0];
    for key in [
        "batch_tag",
        "files",
        "bytes",
        "files_ingested",
        "files_failed",
        "rows",
        "rows_removed",
        "reason",
        "healed",
        "duration_ms",
        "error",
    ] {
        assert!(batch.get(key).is_some(), "{key}: {report}");
    }
    // The text summary stays as it was.
    env.generate(1, 2, 0);
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("1 batch(es): 1 file(s) ingested, 0 failed, 2 row(s)\n");
    let report = env.run(&["maintain", "--json"]).output().code(0).json();
    assert_eq!(report["table"], "rag_chunks", "{report}");
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["dry_run"], false, "{report}");
    for key in [
        "mode",
        "window",
        "missing",
        "created",
        "retired",
        "retired_by",
        "indexed",
        "error",
        "warnings",
    ] {
        assert!(report.get(key).is_some(), "{key}: {report}");
    }
    let dry = env
        .run(&["maintain", "--dry-run", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(dry["dry_run"], true, "{dry}");
}

#[test]
fn init_migrate_gen_requeue_and_notify_print_json_reports() {
    use crate::support::http::{HttpServer, Response};
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", format!("{}/hook", gate.url));
    env.set("GATE_TOKEN", "tok");
    let init = env.run(&["init", "--json"]).output().code(0).json();
    assert_eq!(init["created"].as_array().map(Vec::len), Some(10), "{init}");
    assert_eq!(init["unsafe"], serde_json::json!([]), "{init}");
    // The text report keeps its columns.
    env.run(&["init"]).output().code(0).stdout_has(&format!(
        "ok       {}\n",
        env.spool_dir("incoming").display()
    ));
    let migrate = env.run(&["migrate", "--json"]).output().code(0).json();
    assert_eq!(migrate["table"], "rag_chunks", "{migrate}");
    assert_eq!(migrate["schema_version_before"], 0, "{migrate}");
    assert!(migrate["schema_version"].as_i64() > Some(0), "{migrate}");
    let args = [
        "gen",
        "--files",
        "2",
        "--records",
        "3",
        "--bad",
        "1",
        "--json",
    ];
    let generated = env.run(&args).output().code(0).json();
    assert_eq!(
        (generated["files"].as_u64(), generated["bad"].as_u64()),
        (Some(2), Some(1)),
        "{generated}"
    );
    env.run(&["process"]).output().code(1);
    let requeue = env
        .run(&["requeue", "--all", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(
        requeue["requeued"].as_array().map(Vec::len),
        Some(1),
        "{requeue}"
    );
    assert_eq!(requeue["left"], serde_json::json!([]), "{requeue}");
    let tag = "20260101T000000Z-0a1b2c3d";
    let notify = env
        .run(&["notify", "gate.open", "--batch-tag", tag, "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(
        (
            notify["event"].as_str(),
            notify["batch_tag"].as_str(),
            notify["delivered"].as_u64()
        ),
        (Some("gate.open"), Some(tag), Some(1)),
        "{notify}"
    );
}
