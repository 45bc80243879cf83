//! README.md's first screen, run as a new user would: the six commands that load
//! one's own chunks, and the Python producer, so that neither can drift.

use crate::support::{TestEnv, bin, count};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    match std::fs::read_to_string(repo().join("README.md")) {
        Ok(text) => text,
        Err(e) => panic!("cannot read README.md: {e}"),
    }
}

/// The fenced block of `lang` that follows the marker comment `marker`.
fn block_after(text: &str, marker: &str, lang: &str) -> String {
    let Some(at) = text.find(marker) else {
        panic!("README.md lacks the marker {marker}")
    };
    let fence = format!("```{lang}\n");
    let Some(start) = text[at..].find(&fence).map(|i| at + i + fence.len()) else {
        panic!("README.md has no ```{lang} block after {marker}")
    };
    let Some(len) = text[start..].find("```") else {
        panic!("README.md's block after {marker} is not closed")
    };
    text[start..start + len].to_string()
}

/// PATH with the binary under test first, as an installed `ragspool` would be.
fn path_with_bin() -> String {
    let dir = bin().parent().map(Path::to_path_buf).unwrap_or_default();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_quickstart_loads_the_example_chunks_and_finds_the_nearest() {
    let env = TestEnv::new().with_db();
    let home = env.dir.path().join("home");
    let Ok(()) = std::fs::create_dir_all(&home) else {
        panic!("cannot create {}", home.display())
    };
    let block = block_after(&readme(), "<!-- quickstart", "sh");
    assert_eq!(
        block.lines().count(),
        6,
        "the quick start is six commands:\n{block}"
    );
    // The README's database is the local socket's `rag`; here, the test's own.
    assert!(block.contains("postgresql:///rag"), "{block}");
    let script = block.replace("postgresql:///rag", &env.db_url());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(repo())
        .env_clear()
        .env("PATH", path_with_bin())
        .env("HOME", &home)
        .env("LANG", "C.UTF-8")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run bash: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 5);
    // The nearest chunks of the query vector, nearest first.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" | "))
        .skip(1)
        .collect();
    assert!(
        rows.len() == 3
            && rows[0].contains("Refunds take 14 days")
            && rows[1].contains("Exchanges take 7 days"),
        "unexpected nearest neighbours:\n{stdout}"
    );
    assert!(
        stdout.contains("5 record(s)"),
        "import reports what it wrote:\n{stdout}"
    );
}

#[test]
fn the_python_producer_is_the_readme_block_and_its_file_lands() {
    let program = block_after(&readme(), "<!-- producer", "python");
    let file = repo().join("examples/producer.py");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_default(),
        program,
        "examples/producer.py differs from README.md's producer"
    );
    let env = TestEnv::new().with_db();
    env.ready();
    let ran = Command::new("python3").arg(&file).arg(env.spool()).output();
    let ran = match ran {
        Ok(out) => out,
        Err(e) => panic!("cannot run python3 (scripts/ensure-deps.sh installs it): {e}"),
    };
    assert!(
        ran.status.success(),
        "the producer failed (scripts/ensure-deps.sh installs msgpack): {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(env.files_in("tmp"), Vec::<String>::new());
    assert_eq!(env.count_files("incoming", ".msgpack"), 1);
    env.run(&["process"]).output().code(0);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM rag_chunks WHERE doc_id = 'handbook' AND metadata->>'lang' = 'en'"
        ),
        2
    );
}
