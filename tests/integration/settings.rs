//! Settings of SPEC §2 through the real binary: precedence and exit 78.

use crate::support::TestEnv;

#[test]
fn invalid_values_exit_78_naming_each_variable() {
    let env = TestEnv::new();
    let out = env
        .run(&["status"])
        .env("WORKERS", "lots")
        .env("REDIS_PORT", "99999")
        .env("REDIS_SSL", "maybe")
        .env("BATCH_MAX_FILES", "-3")
        .output()
        .code(78);
    for name in [
        "`WORKERS`",
        "`REDIS_PORT`",
        "`REDIS_SSL`",
        "`BATCH_MAX_FILES`",
    ] {
        assert!(
            out.stderr.contains(name),
            "{name} not named:\n{}",
            out.stderr
        );
    }
}

#[test]
fn unreadable_env_file_exits_78() {
    let env = TestEnv::new();
    env.run(&["--env-file", "/nonexistent/ragspool.env", "status"])
        .output()
        .code(78)
        .stderr_has("/nonexistent/ragspool.env");
    env.run(&["status"])
        .env("RAGSPOOL_ENV_FILE", "/nonexistent/other.env")
        .output()
        .code(78)
        .stderr_has("/nonexistent/other.env");
}

#[test]
fn env_file_syntax_error_names_file_and_line() {
    let env = TestEnv::new();
    let path = env.dir.path().join("bad.env");
    let _ = std::fs::write(&path, "# ok\nSPOOL_DIR=/x\nexport WORKERS=2\n");
    env.run(&["--env-file", path.to_str().unwrap_or_default(), "status"])
        .output()
        .code(78)
        .stderr_has("line 3");
}

#[test]
fn precedence_flag_env_file_default() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let path = env.dir.path().join("ragspool.env");
    let check_with = |file_text: &str| {
        let _ = std::fs::write(&path, file_text);
        let args = [
            "--env-file",
            path.to_str().unwrap_or_default(),
            "--workers",
            "9",
            "check",
            "--json",
        ];
        env.run(&args).env("BATCH_MAX_AGE_SECS", "11").output()
    };
    // `MAX_FILE_BYTES=1000 # ...` is one value in EnvironmentFile syntax, hence invalid.
    let out = check_with("BATCH_MAX_FILES=7\nWORKERS=\"3\"\nMAX_FILE_BYTES=1000 # not a comment\n")
        .code(78)
        .stderr_has("`MAX_FILE_BYTES`");
    assert!(out.stderr.contains("ragspool.env:3"), "{}", out.stderr);
    let out = check_with("BATCH_MAX_FILES=7\nWORKERS=\"3\"\nBATCH_MAX_AGE_SECS=1\n").code(1); // no database configured: check is unhealthy, settings still shown
    let json = out.json();
    let find = |name: &str| {
        json["settings"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(find("WORKERS")["value"], "9");
    assert_eq!(find("WORKERS")["origin"], "flag");
    assert_eq!(find("BATCH_MAX_AGE_SECS")["value"], "11");
    assert_eq!(
        find("BATCH_MAX_AGE_SECS")["origin"],
        "environment BATCH_MAX_AGE_SECS"
    );
    assert_eq!(find("BATCH_MAX_FILES")["value"], "7");
    assert_eq!(find("BATCH_MAX_BYTES")["origin"], "default");
}

#[test]
fn secrets_never_reach_output_or_errors() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let out = env
        .run(&["check"])
        .env(
            "DATABASE_URL",
            "postgres://app:Sup3rSecretPw@db.example/rag",
        )
        .env("GATE_TOKEN", "tok-Sup3rSecret")
        .output()
        .code(1);
    assert!(
        !out.stdout.contains("Sup3rSecret") && !out.stderr.contains("Sup3rSecret"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("postgres://app:***@db.example/rag"),
        "{}",
        out.stdout
    );
    let out = env
        .run(&["check"])
        .env(
            "DATABASE_URL",
            "postgres://app:Sup3rSecretPw@db.example/rag?sslmode=sometimes",
        )
        .output()
        .code(78);
    assert!(!out.stderr.contains("Sup3rSecret"), "{}", out.stderr);
}
