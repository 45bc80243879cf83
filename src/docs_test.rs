//! Docs that cannot drift: README.md and man/ragspool.1 are checked against the
//! command and settings registries, both ways, and the README's usage block must
//! equal `ragspool --help` byte for byte (`make readme` refreshes it).

use crate::batch::Reason;
use crate::cli::defs::{COMMANDS, GLOBAL_FLAGS};
use crate::cli::help;
use crate::config::defs::SETTINGS;
use std::collections::BTreeSet;

/// Variables the docs may name that are not settings of the registry.
const OTHER_VARIABLES: [&str; 4] = [
    "SUPABASE_DB_URL",
    "RAGSPOOL_ENV_FILE",
    "RAGSPOOL_TEST_DATABASE_URL",
    "RAGSPOOL_TEST_REDIS_URL",
];

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_default()
}

/// The man page as plain text: groff escapes for `-` and `\` undone.
fn man() -> String {
    read("man/ragspool.1")
        .replace("\\-", "-")
        .replace("\\e", "\\")
        .replace("\\&", "")
}

fn all_flags() -> BTreeSet<&'static str> {
    GLOBAL_FLAGS
        .iter()
        .chain(COMMANDS.iter().flat_map(|c| c.flags.iter()))
        .map(|f| f.long)
        .collect()
}

/// Every `--word` in `text`.
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("--") {
        let rest = &text[i + 2..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        let before = text[..i].chars().last();
        let word = word.trim_end_matches('-');
        if !word.is_empty() && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-') {
            found.insert(word.to_string());
        }
    }
    found
}

#[test]
fn readme_usage_block_is_the_help_text() {
    let readme = read("README.md");
    let block = format!("```text\n{}```", help::global());
    assert!(
        readme.contains(&block),
        "README usage block differs from `ragspool --help`; run `make readme`"
    );
}

#[test]
fn every_command_and_flag_is_documented() {
    let readme = read("README.md");
    let man = man();
    for c in COMMANDS {
        assert!(
            readme.contains(&format!("`ragspool {}", c.name)),
            "README lacks command {}",
            c.name
        );
        assert!(
            man.contains(&format!(".TP\n.B {}\n", c.name)),
            "man page lacks command {}",
            c.name
        );
    }
    for flag in all_flags() {
        assert!(
            readme.contains(&format!("--{flag}")),
            "README lacks --{flag}"
        );
        assert!(
            man.contains(&format!("--{flag}")),
            "man page lacks --{flag}"
        );
    }
}

#[test]
fn docs_name_no_flag_the_program_lacks() {
    let known = all_flags();
    for (name, text) in [("README.md", read("README.md")), ("man/ragspool.1", man())] {
        for flag in flags_in(&text) {
            assert!(
                known.contains(flag.as_str()),
                "{name} mentions --{flag}, which ragspool does not have"
            );
        }
    }
}

#[test]
fn every_setting_is_documented_with_its_default() {
    let readme = read("README.md");
    let man = man();
    for s in SETTINGS {
        let row = format!("| `{}` | {} |", s.name, s.default_text());
        assert!(
            readme.contains(&row),
            "README settings table lacks the row starting {row}"
        );
        let entry = format!(".TP\n.B {}\n", s.name);
        let Some(at) = man.find(&entry) else {
            unreachable!("man page ENVIRONMENT lacks {}", s.name)
        };
        let paragraph: String = man[at + entry.len()..]
            .split(".TP\n")
            .next()
            .unwrap_or("")
            .to_string();
        assert!(
            paragraph.contains(&format!("Default: {}", s.default_text())),
            "man page entry for {} lacks `Default: {}`",
            s.name,
            s.default_text()
        );
    }
}

#[test]
fn docs_name_no_setting_the_program_lacks() {
    let known: BTreeSet<&str> = SETTINGS
        .iter()
        .map(|s| s.name)
        .chain(OTHER_VARIABLES)
        .collect();
    for line in read("README.md").lines().filter(|l| l.starts_with("| `")) {
        let name = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .unwrap_or("");
        let is_var = name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
        assert!(
            !is_var || known.contains(name),
            "README documents {name}, which is no setting"
        );
    }
    let man = man();
    let env = man
        .split(".SH ENVIRONMENT")
        .nth(1)
        .and_then(|s| s.split(".SH ").next())
        .unwrap_or("");
    for entry in env.split(".TP\n.B ").skip(1) {
        let name = entry.lines().next().unwrap_or("");
        assert!(
            known.contains(name),
            "man page documents {name}, which is no setting"
        );
    }
}

#[test]
fn exit_and_reason_codes_are_documented() {
    let readme = read("README.md");
    let man = man();
    for code in ["0", "1", "2", "75", "78"] {
        assert!(
            readme.contains(&format!("| {code} |")),
            "README lacks exit code {code}"
        );
        assert!(
            man.contains(&format!(".TP\n.B {code}\n")),
            "man page lacks exit code {code}"
        );
    }
    for r in Reason::ALL {
        assert!(
            readme.contains(&format!("`{}`", r.as_str())),
            "README lacks reason {r}"
        );
        assert!(man.contains(r.as_str()), "man page lacks reason {r}");
    }
}

#[test]
fn man_page_carries_the_crate_version() {
    let th = man()
        .lines()
        .find(|l| l.starts_with(".TH"))
        .unwrap_or("")
        .to_string();
    assert!(
        th.contains(&format!("\"ragspool {}\"", env!("CARGO_PKG_VERSION"))),
        "{th}"
    );
}

#[test]
fn packaged_env_file_names_every_setting_and_parses() {
    let text = read("packaging/ragspool.env");
    for s in SETTINGS {
        let listed = text.lines().any(|l| {
            l.trim_start_matches('#')
                .starts_with(&format!("{}=", s.name))
        });
        assert!(listed, "packaging/ragspool.env lacks {}", s.name);
    }
    let parsed = crate::config::envfile::parse(&text);
    assert!(
        parsed.errors.is_empty(),
        "packaging/ragspool.env does not parse: {:?}",
        parsed.errors
    );
}

#[test]
fn readme_cache_example_is_the_compiled_doc_test() {
    let readme = read("README.md");
    let source = read("src/cache/mod.rs");
    let block = source
        .split("//! ```no_run\n")
        .nth(2)
        .and_then(|b| b.split("//! ```").next())
        .unwrap_or("");
    for line in block.lines() {
        let line = line.trim_start_matches("//!").trim_start();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        assert!(
            readme.contains(line),
            "README lacks the doc test's line: {line}"
        );
    }
}
