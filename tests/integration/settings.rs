//! Settings of SPEC §2 through the real binary: precedence and exit 78.

use crate::support::TestEnv;
use crate::support::servers::OwnPg;

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
        .stderr_has("bad.env:3:");
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
    assert_eq!(find("WORKERS")["origin"], "flag --workers");
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
    // -v lists the settings, and logs at debug level: neither shows a secret.
    let out = env
        .run(&["-v", "check"])
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

#[test]
fn env_file_errors_come_all_at_once_and_unknown_keys_get_a_suggestion() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let path = env.dir.path().join("ragspool.env");
    let file = path.to_str().unwrap_or_default().to_string();
    std::fs::write(
        &path,
        "DATABSE_URL=postgres://u@db/rag\njunk line\nWORKERS=many\nexport SPOOL_DIR=/x\nREDIS_PORT=0\n",
    )
    .expect("write env file");
    let out = env
        .run(&["--env-file", &file, "status"])
        .env_remove("WORKERS")
        .output()
        .code(78)
        .stderr_has(&format!("{file}:2: expected KEY=VALUE"))
        .stderr_has(&format!("{file}:4: `export`"))
        .stderr_has("`WORKERS`")
        .stderr_has("`REDIS_PORT`")
        .stderr_has("did you mean `DATABASE_URL`?");
    assert!(out.stderr.contains("EnvironmentFile"), "{}", out.stderr);
    // A file that is otherwise good runs, with the warning on stderr.
    std::fs::write(
        &path,
        "DATABSE_URL=postgres://u@db/rag\nBATCH_MAX_FILES=5\n",
    )
    .expect("write");
    env.run(&["--env-file", &file, "status"])
        .output()
        .code(0)
        .stderr_has(&format!(
            "{file}:1: `DATABSE_URL` is not a ragspool setting and is ignored; did you mean `DATABASE_URL`?"
        ));
}

#[test]
fn an_unreadable_database_url_exits_78_naming_the_part_never_75() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let started = std::time::Instant::now();
    let out = env
        .run(&["migrate"])
        .env("DATABASE_URL", "postgres://u:Sup3rSecret@host:notaport/db")
        .output()
        .code(78)
        .stderr_has("port `notaport`")
        .stderr_has("note: write DATABASE_URL as postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME");
    assert!(!out.stderr.contains("Sup3rSecret"), "{}", out.stderr);
    assert!(
        started.elapsed().as_secs() < 10,
        "never retried as an outage"
    );
    env.run(&["process"])
        .env("DATABASE_URL", "postgres://h/db?connect_timeout=soon")
        .output()
        .code(78)
        .stderr_has("connect_timeout");
}

#[test]
fn a_url_without_a_host_connects_over_the_local_socket_as_libpq_does() {
    let own = OwnPg::start();
    own.create_db("sockdb");
    let sock = own.dir.join("pgsock").display().to_string();
    let port = own.port.to_string();
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    // libpq's form for the local socket: no host, PGHOST names the directory.
    env.run(&["migrate"])
        .env("DATABASE_URL", "postgresql://postgres:pw@/sockdb")
        .env("PGHOST", sock.as_str())
        .env("PGPORT", port.as_str())
        .output()
        .code(0)
        .stdout_has("schema for rag_chunks");
    // A socket directory in the URL's query, as the driver reads it.
    env.run(&["check"])
        .env(
            "DATABASE_URL",
            format!("postgresql://postgres@/sockdb?host={sock}&port={port}"),
        )
        .output()
        .code(0)
        .stdout_has("ok    database local socket");
    // A database that does not exist is the settings' fault: 78 at once, not 75.
    let started = std::time::Instant::now();
    env.run(&["migrate"])
        .env("DATABASE_URL", "postgresql://postgres@/nosuchdb")
        .env("PGHOST", sock.as_str())
        .env("PGPORT", port.as_str())
        .output()
        .code(78)
        .stderr_has("nosuchdb")
        .stderr_has("note: check the user, password, host and database name in DATABASE_URL");
    assert!(
        started.elapsed().as_secs() < 30,
        "never retried as an outage"
    );
}
