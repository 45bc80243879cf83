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
