//! The command line of SPEC §1: help, version, usage errors, exit codes.

use crate::support::{TestEnv, ensure_command};

const COMMANDS: [&str; 17] = [
    "init",
    "migrate",
    "watch",
    "process",
    "notify",
    "maintain",
    "cache",
    "gate",
    "status",
    "check",
    "requeue",
    "trace",
    "gen",
    "help",
    "completions",
    "import",
    "validate",
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

#[test]
fn usage_errors_exit_2_before_any_setting_or_env_file_is_read() {
    let env = TestEnv::new();
    // A broken env file would exit 78 if it were read first.
    let broken = |args: &[&str]| {
        env.run(args)
            .env("RAGSPOOL_ENV_FILE", "/nonexistent/ragspool.env")
            .env_remove("REDIS_HOST")
            .output()
            .code(2)
    };
    broken(&["cache", "frob"])
        .stderr_has("unknown cache action `frob`")
        .stderr_has("did you mean `probe`");
    broken(&["cache", "get", "ns"]).stderr_has("usage: ragspool cache get NS KEY");
    broken(&["--workers", "0", "status"])
        .stderr_has("`--workers` must be a whole number from 1 to 256, got `0`");
    let out = broken(&["status", "--user", "nosuchuser"]).stderr_has("`--user` names unknown user");
    assert!(!out.stderr.contains("RAGSPOOL_USER`"), "{}", out.stderr);
    broken(&["gen", "--days", "soon"]).stderr_has("`--days` must be a whole number");
    broken(&["notify"]).stderr_has("gate.open, gate.done, alert");
    broken(&["requeue", "not-a-tag"]).stderr_has("must look like");
    broken(&["gate", "serve"]).stderr_has("needs `--listen`");
    // A user named in the environment is a setting: 78, named as the variable.
    env.run(&["status"])
        .env("RAGSPOOL_USER", "nosuchuser")
        .output()
        .code(78)
        .stderr_has("`RAGSPOOL_USER` names unknown user");
}

#[test]
fn help_texts_are_complete_and_help_command_matches_the_flag() {
    let env = TestEnv::new();
    let notify = env.run(&["notify", "--help"]).output().code(0);
    for event in ["gate.open", "gate.done", "alert"] {
        assert!(notify.stdout.contains(event), "{event}:\n{}", notify.stdout);
    }
    let migrate = env.run(&["migrate", "--help"]).output().code(0);
    for table in [
        "RAGSPOOL_TABLE",
        "ragspool_schema_version",
        "ragspool_manifest",
        "ragspool_maintenance_runs",
        "ragspool_docs",
        "ragspool_doc_events",
        "ragspool_failure_log_anchor",
    ] {
        assert!(
            migrate.stdout.contains(table),
            "{table}:\n{}",
            migrate.stdout
        );
    }
    env.run(&["--help"])
        .output()
        .code(0)
        .stdout_has("probe | get | set | del | key | publish | stats | deps");
    for c in COMMANDS {
        let flag = env.run(&[c, "--help"]).output().code(0).stdout;
        let word = env.run(&["help", c]).output().code(0).stdout;
        assert_eq!(flag, word, "ragspool help {c}");
    }
    let top = env.run(&["--help"]).output().code(0).stdout;
    assert_eq!(env.run(&["help"]).output().code(0).stdout, top);
    env.run(&["help", "proces"])
        .output()
        .code(2)
        .stderr_has("did you mean `process`");
}

/// The completion script for `shell`, written to the test's directory.
fn completion(env: &TestEnv, shell: &str) -> (std::path::PathBuf, String) {
    let text = env.run(&["completions", shell]).output().code(0).stdout;
    let path = env.dir.path().join(format!("ragspool.{shell}"));
    std::fs::write(&path, &text).expect("write the script");
    (path, text)
}

#[test]
fn completion_scripts_are_valid_and_name_every_command() {
    let env = TestEnv::new();
    for (shell, package, check) in [
        ("bash", "bash", vec!["-n"]),
        ("zsh", "zsh", vec!["-n"]),
        ("fish", "fish", vec!["--no-execute"]),
    ] {
        ensure_command(shell, package);
        let (path, text) = completion(&env, shell);
        for c in COMMANDS {
            assert!(text.contains(c), "{shell} script lacks {c}");
        }
        for flag in [
            "--spool-dir",
            "--workers",
            "--json",
            "--batch-tag",
            "--dry-run",
        ] {
            let bare = flag.trim_start_matches('-');
            assert!(text.contains(bare), "{shell} script lacks {flag}");
        }
        let out = std::process::Command::new(shell)
            .args(&check)
            .arg(&path)
            .output()
            .expect("run the shell");
        assert!(
            out.status.success(),
            "{shell} rejects its script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.run(&["completions", "tcsh"])
        .output()
        .code(2)
        .stderr_has("bash, zsh, fish");
}

#[test]
fn bash_completion_offers_commands_actions_and_flags() {
    let env = TestEnv::new();
    let (path, _) = completion(&env, "bash");
    // COMP_WORDS as bash would set them for the line typed so far.
    let complete = |line: &str| {
        let script = format!(
            "source '{}'; COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _ragspool; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(complete("ragspool pro").contains("process"));
    assert!(complete("ragspool cache ''").contains("deps"));
    assert!(complete("ragspool --spool-dir /tmp cache pr").contains("probe"));
    assert!(complete("ragspool maintain --").contains("--dry-run"));
    assert!(complete("ragspool notify ''").contains("gate.done"));
    assert!(complete("ragspool help ''").contains("completions"));
}
