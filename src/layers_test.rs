//! The house rule of docs/architecture.md, checked: every module has a layer, a module
//! names items only of its own layer or lower ones, nothing but `app` names a
//! command, and no two files import each other, directly or through others. A new
//! module must be given its layer here (the test names it when it is missing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's layer, lowest first; a folder's files may be listed one by one
/// (`notify::webhook`) where they sit lower than the folder's others.
const LAYERS: &[(u8, &[&str])] = &[
    // Leaves: errors, files, time, names, formats; they use nothing above them.
    (
        0,
        &[
            "error",
            "failpoint",
            "fs",
            "clock",
            "host",
            "digest",
            "redact",
            "storage",
            "binary16",
            "progress",
            "sdnotify",
            "record",
            "http",
            "privdrop",
            "cli",
            "suggest",
            "pgurl",
            "pgtls",
            "config::defs",
            "heartbeat",
            "log",
            "sequence",
            "handoff",
            "batch",
            "backoff",
            "signal",
            "notify::webhook",
            "notify::alert",
            "notify::template",
            "cache",
            "cache::conn",
        ],
    ),
    // Settings and the stores every path reads and writes.
    (
        1,
        &[
            "config",
            "spool",
            "db",
            "schema",
            "text_search",
            "distribution",
            "partition",
            "metrics",
            "failure_log",
            "maintenance",
        ],
    ),
    // One batch's way and what stands beside it.
    (
        2,
        &[
            "ingest",
            "ingest::changeset",
            "ingest::copy",
            "ingest::embed",
            "ingest::lineage",
            "ingest::manifest",
            "ingest::vectors",
            "ingest::verify",
            "ingest::window",
            "notify",
            "notify::gate",
            "notify::outbox",
            "cache::invalidation",
            "sample",
            "gate_server",
        ],
    ),
    (3, &["runner", "gauges", "inspect", "import"]),
    (4, &["watch"]),
    (5, &["cmd"]),
    (6, &["app", "lib", "main"]),
];

/// Files that are test code through and through.
const TEST_FILES: &[&str] = &["docs_test", "layers_test", "record::tests"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the crate (`ingest::window`), mapped to its file.
fn modules() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src()).unwrap_or(&path).with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.len() > 1 && parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    out
}

/// A file's code without its tests and comments (tests may import anything).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths that `text` names through `crate::`, `super::` or a child
/// module's name, each cut to the longest prefix that is a module.
fn named(module: &str, text: &str, all: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let own: Vec<&str> = module.split("::").collect();
    let owner = |path: Vec<String>| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| all.contains_key(m))
    };
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1]) && bytes[i - 1] != b':') {
            let start = i;
            let mut end = i;
            // A path: words joined by `::`.
            loop {
                while end < bytes.len() && word(bytes[end]) {
                    end += 1;
                }
                if bytes[end..].starts_with(b"::") && bytes.get(end + 2).is_some_and(|&c| word(c)) {
                    end += 2;
                } else {
                    break;
                }
            }
            let segs: Vec<String> = text[start..end].split("::").map(str::to_string).collect();
            let head = segs[0].as_str();
            let path = match head {
                "crate" => Some(segs[1..].to_vec()),
                "super" if segs.len() > 1 => {
                    // `super` of `a::b` is `a`, of a top-level module the crate.
                    let base: Vec<String> =
                        own[..own.len() - 1].iter().map(|s| s.to_string()).collect();
                    Some(base.into_iter().chain(segs[1..].iter().cloned()).collect())
                }
                _ if segs.len() > 1 && module != "lib" => {
                    let child = format!("{module}::{head}");
                    all.contains_key(&child).then(|| {
                        own.iter()
                            .map(|s| s.to_string())
                            .chain(segs.iter().cloned())
                            .collect()
                    })
                }
                _ => None,
            };
            if let Some(m) = path.and_then(owner) {
                found.insert(m);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found.remove(module);
    // A child naming its own folder's items does not count as an import.
    found.retain(|m| !module.starts_with(&format!("{m}::")));
    found
}

fn layer(module: &str) -> Option<u8> {
    let top = module.split("::").next().unwrap_or(module);
    let of = |name: &str| {
        LAYERS
            .iter()
            .find(|(_, names)| names.contains(&name))
            .map(|(n, _)| *n)
    };
    of(module).or_else(|| of(top))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let all = modules();
    all.iter()
        .filter(|(m, _)| !TEST_FILES.contains(&m.as_str()))
        .map(|(m, p)| (m.clone(), named(m, &code(p), &all)))
        .collect()
}

#[test]
fn every_module_has_a_layer_and_imports_only_downward() {
    let mut wrong = Vec::new();
    for (module, imports) in graph() {
        let Some(mine) = layer(&module) else {
            wrong.push(format!("{module}: no layer in src/layers_test.rs"));
            continue;
        };
        for import in imports {
            let theirs = layer(&import).unwrap_or(u8::MAX);
            let command = import.split("::").next() == Some("cmd");
            let allowed = if command {
                module.starts_with("cmd") || module == "app"
            } else {
                theirs <= mine
            };
            if !allowed {
                wrong.push(format!(
                    "{module} (layer {mine}) imports {import} (layer {theirs})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against docs/architecture.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let g = graph();
    // Depth-first search for a back edge; reports the first circle found.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for n in g.get(m).into_iter().flatten() {
            match state.get(n.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == n).unwrap_or(0);
                    let mut circle = stack[from..].to_vec();
                    circle.push(n.clone());
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(n, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str()) {
            let circle = visit(m, &g, &mut state, &mut Vec::new());
            assert!(
                circle.is_none(),
                "import circle: {}",
                circle.unwrap_or_default().join(" -> ")
            );
        }
    }
}
