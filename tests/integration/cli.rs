//! The command line of SPEC §1: help, version, usage errors, exit codes.

use crate::support::TestEnv;

const COMMANDS: [&str; 12] = [
    "init", "migrate", "watch", "process", "notify", "maintain", "cache", "gate", "status",
    "check", "requeue", "gen",
];

#[test]
fn help_lists_every_command() {
    let env = TestEnv::new();
    let out = env.run(&["--help"]).output().code(0);
    for c in COMMANDS {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("  {c} "))),
            "{c} missing:\n{}",
            out.stdout
        );
    }
    for c in COMMANDS {
        env.run(&[c, "--help"])
            .output()
            .code(0)
            .stdout_has(&format!("Usage: ragspool [OPTIONS] {c}"));
    }
}

#[test]
fn help_works_with_a_broken_env_file() {
    let env = TestEnv::new();
    env.run(&["--env-file", "/nonexistent/env", "--help"])
        .output()
        .code(0);
    env.run(&["--version"])
        .output()
        .code(0)
        .stdout_has(concat!("ragspool ", env!("CARGO_PKG_VERSION")));
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let env = TestEnv::new();
    env.run(&["ingest"])
        .output()
        .code(2)
        .stderr_has("unknown command `ingest`");
    env.run(&["proces"])
        .output()
        .code(2)
        .stderr_has("did you mean `process`");
    env.run(&["status", "--jsno"])
        .output()
        .code(2)
        .stderr_has("did you mean `--json`");
    env.run(&["gen", "--files", "many"])
        .output()
        .code(2)
        .stderr_has("`--files` must be a whole number");
    env.run(&[]).output().code(2).stderr_has("no command given");
    env.run(&["init", "stray"])
        .output()
        .code(2)
        .stderr_has("takes 0 argument(s)");
}
