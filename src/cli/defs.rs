//! The one registry of commands and flags with their docs; `--help`, the man page
//! test and the parser all read it, so a flag exists exactly when it is listed here.

/// Checks a flag's or argument's value; the message says what was expected.
pub(crate) type Check = fn(&str) -> Result<(), String>;

/// A command-line flag.
#[derive(Debug)]
pub(crate) struct Flag {
    /// Long name without the leading `--`.
    pub(crate) long: &'static str,
    /// Optional one-letter alias.
    pub(crate) short: Option<char>,
    /// Name of the value it takes, or `None` for a switch.
    pub(crate) value: Option<&'static str>,
    /// One line for `--help` and the man page.
    pub(crate) doc: &'static str,
    /// The setting (SPEC §2) this flag overrides, if any; its value is checked by
    /// the setting's own rule, at parse time.
    pub(crate) setting: Option<&'static str>,
    /// The rule a value must follow, checked at parse time (before any setting is read).
    pub(crate) check: Option<Check>,
}

/// A word a command takes as its first argument (`cache get`, `notify gate.done`).
#[derive(Debug)]
pub(crate) struct Action {
    /// The word.
    pub(crate) name: &'static str,
    /// What follows the word, for help: `NS KEY JSON`.
    pub(crate) args: &'static str,
    /// How many arguments follow the word: at least, at most.
    pub(crate) arity: (usize, usize),
    /// One line for help.
    pub(crate) doc: &'static str,
    /// Flags it cannot do without.
    pub(crate) needs: &'static [&'static str],
}

/// A command and what it accepts.
#[derive(Debug)]
pub(crate) struct Command {
    /// The word on the command line.
    pub(crate) name: &'static str,
    /// One line for the command list.
    pub(crate) summary: &'static str,
    /// Everything after `ragspool <name>` in the usage line.
    pub(crate) usage: &'static str,
    /// A paragraph for `<name> --help`.
    pub(crate) doc: &'static str,
    /// Positional arguments: at least `min`, at most `max`.
    pub(crate) positionals: (usize, usize),
    /// Flags of this command (global flags are accepted everywhere).
    pub(crate) flags: &'static [Flag],
    /// The words its first argument may be; empty when it is free (a DOC_ID).
    pub(crate) actions: &'static [Action],
    /// What an action is called in help and errors: `action`, `event`, `shell`.
    pub(crate) action_kind: &'static str,
    /// A switch that stands instead of the first argument (`requeue --all`): the
    /// command needs one of the two, not both.
    pub(crate) or_switch: Option<&'static str>,
    /// The rule a free first argument must follow (a batch tag).
    pub(crate) arg_check: Option<Check>,
}

const fn switch(long: &'static str, doc: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value: None,
        doc,
        setting: None,
        check: None,
    }
}

const fn valued(long: &'static str, value: &'static str, doc: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value: Some(value),
        doc,
        setting: None,
        check: None,
    }
}

const fn typed(long: &'static str, value: &'static str, doc: &'static str, check: Check) -> Flag {
    Flag {
        long,
        short: None,
        value: Some(value),
        doc,
        setting: None,
        check: Some(check),
    }
}

const fn setting(
    long: &'static str,
    value: &'static str,
    name: &'static str,
    doc: &'static str,
) -> Flag {
    Flag {
        long,
        short: None,
        value: Some(value),
        doc,
        setting: Some(name),
        check: None,
    }
}

const fn action(
    name: &'static str,
    args: &'static str,
    arity: (usize, usize),
    doc: &'static str,
) -> Action {
    Action {
        name,
        args,
        arity,
        doc,
        needs: &[],
    }
}

/// `--json`, as every command that prints a report has it.
const JSON: Flag = switch("json", "print one JSON object instead of text");

/// A whole number (counts, seeds, seconds).
fn whole(raw: &str) -> Result<(), String> {
    raw.parse::<u64>()
        .map(|_| ())
        .map_err(|_| format!("must be a whole number, got `{raw}`"))
}

/// A whole number from 1 (a count that cannot be zero).
fn whole_from_one(raw: &str) -> Result<(), String> {
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(()),
        _ => Err(format!("must be a whole number from 1, got `{raw}`")),
    }
}

/// A number above zero (a rate).
fn positive_number(raw: &str) -> Result<(), String> {
    match raw.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(()),
        _ => Err(format!("must be a number above 0, got `{raw}`")),
    }
}

/// A number of at least one (a bucket size).
fn at_least_one(raw: &str) -> Result<(), String> {
    match raw.parse::<f64>() {
        Ok(n) if n >= 1.0 && n.is_finite() => Ok(()),
        _ => Err(format!("must be a number of at least 1, got `{raw}`")),
    }
}

/// `HOST:PORT` to listen on.
fn listen_addr(raw: &str) -> Result<(), String> {
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "must be HOST:PORT, e.g. 127.0.0.1:8787, got `{raw}`"
        )),
    }
}

/// A batch tag as batch.rs makes them.
fn batch_tag(raw: &str) -> Result<(), String> {
    crate::batch::BatchTag::parse(raw)
        .map(|_| ())
        .ok_or_else(|| format!("must look like 20260101T000000Z-0a1b2c3d, got `{raw}`"))
}

/// A gate.done reason code.
fn reason(raw: &str) -> Result<(), String> {
    crate::batch::Reason::parse(raw).map(|_| ()).map_err(|_| {
        let valid: Vec<&str> = crate::batch::Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .collect();
        format!("must be one of {}, got `{raw}`", valid.join(", "))
    })
}

/// A user of this system (a name or a uid).
fn known_user(raw: &str) -> Result<(), String> {
    crate::privdrop::resolve(raw)
        .map(|_| ())
        .map_err(|_| format!("names unknown user `{raw}`"))
}

/// `USER[:GROUP]` of this system, which only root may hand files to.
fn owner(raw: &str) -> Result<(), String> {
    if crate::privdrop::euid() != 0 {
        return Err("needs root: run init with sudo, or leave --owner out".into());
    }
    crate::privdrop::resolve(raw)
        .map(|_| ())
        .map_err(|e| format!("names {e}"))
}

/// `KEY=VALUE`.
fn key_value(raw: &str) -> Result<(), String> {
    match raw.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(()),
        _ => Err(format!("takes KEY=VALUE, got `{raw}`")),
    }
}

/// Flags every command accepts, before or after the command word.
pub(crate) static GLOBAL_FLAGS: &[Flag] = &[
    valued(
        "env-file",
        "PATH",
        "read settings from PATH (systemd EnvironmentFile syntax); also RAGSPOOL_ENV_FILE",
    ),
    setting(
        "spool-dir",
        "DIR",
        "SPOOL_DIR",
        "spool root (overrides SPOOL_DIR)",
    ),
    setting(
        "log-file",
        "PATH",
        "RAG_LOG_FILE",
        "log file, `-` for stderr only (overrides RAG_LOG_FILE)",
    ),
    setting(
        "table",
        "NAME",
        "RAGSPOOL_TABLE",
        "target table (overrides RAGSPOOL_TABLE)",
    ),
    setting(
        "workers",
        "N",
        "WORKERS",
        "parallel file ingest within a batch (overrides WORKERS)",
    ),
    Flag {
        check: Some(known_user),
        ..setting(
            "user",
            "NAME",
            "RAGSPOOL_USER",
            "started as root: open the failure log, then drop to user NAME (overrides RAGSPOOL_USER)",
        )
    },
    Flag {
        long: "verbose",
        short: Some('v'),
        value: None,
        doc: "more output on stderr (repeat for trace); `check` also lists every setting",
        setting: None,
        check: None,
    },
    Flag {
        long: "quiet",
        short: Some('q'),
        value: None,
        doc: "only errors on stderr",
        setting: None,
        check: None,
    },
    Flag {
        long: "help",
        short: Some('h'),
        value: None,
        doc: "print help and exit",
        setting: None,
        check: None,
    },
    Flag {
        long: "version",
        short: Some('V'),
        value: None,
        doc: "print the version and exit",
        setting: None,
        check: None,
    },
];

/// Every command, in the order `--help` lists them (SPEC §1).
pub(crate) static COMMANDS: &[Command] = &[
    Command {
        name: "init",
        summary: "create the spool tree, log dir and failure log with safe modes",
        usage: "[--owner USER[:GROUP]] [--json]",
        doc: "Creates tmp/, incoming/, processing/, archive/, failed/ and outbox/ under SPOOL_DIR with mode 0750, the log directory, RAG_LOG_FILE, and the failure log with mode 0600. Safe to run again. Existing paths with unsafe modes or owners are reported and make the exit status 1; a path this user may not create exits 78 naming the setting to change.",
        positionals: (0, 0),
        flags: &[
            typed(
                "owner",
                "USER[:GROUP]",
                "chown what it creates to USER (and GROUP); needs root",
                owner,
            ),
            JSON,
        ],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "migrate",
        summary: "create or upgrade the database schema (idempotent)",
        usage: "[--distribute] [--json]",
        doc: "Under an advisory lock, creates or upgrades the seven tables: the partitioned target table (RAGSPOOL_TABLE), ragspool_schema_version, ragspool_manifest, ragspool_maintenance_runs, ragspool_docs, ragspool_doc_events and ragspool_failure_log_anchor; then the partitions from today to today + PARTITION_PREMAKE_DAYS. Safe to run again. With DISTRIBUTION=citus it distributes the target table, ragspool_docs and ragspool_doc_events by doc_id on the Citus coordinator; tables that already exist undistributed only with --distribute.",
        positionals: (0, 0),
        flags: &[
            switch(
                "distribute",
                "DISTRIBUTION=citus: distribute existing tables too, printing first how many rows Citus moves",
            ),
            JSON,
        ],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "watch",
        summary: "daemon: inotify on incoming/, run batches on thresholds",
        usage: "[--exec CMD]",
        doc: "Recovers processing/, flushes the outbox, then watches incoming/ and runs a batch when BATCH_MAX_FILES, BATCH_MAX_BYTES or BATCH_MAX_AGE_SECS is reached; SIGTERM finishes the batch in flight, SIGHUP reopens the log file.",
        positionals: (0, 0),
        flags: &[valued(
            "exec",
            "CMD",
            "run CMD on a threshold instead of ingesting in-process",
        )],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "process",
        summary: "one shot: recover, ingest everything waiting, flush outbox, exit",
        usage: "[--json]",
        doc: "Recovers processing/, ingests every file waiting in incoming/ in batches, flushes the outbox, prints a summary (batches, files ingested and failed, rows) and exits 0, 1 when some file failed, or 75 when a server stayed unreachable.",
        positionals: (0, 0),
        flags: &[JSON],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "notify",
        summary: "send one gate event from its template; --check-templates",
        usage: "<EVENT> --batch-tag TAG [--reason REASON] [--var KEY=VALUE]... [--json] | --check-templates",
        doc: "Sends gate.open or gate.done for a batch (to GATE_URL), or an alert (to ALERT_URL), through the outbox, as scripts did with the old notifier. --check-templates renders every template for every reason code and names the file and placeholder of any fault.",
        positionals: (0, 1),
        flags: &[
            typed(
                "batch-tag",
                "TAG",
                "the batch the event is about",
                batch_tag,
            ),
            typed("reason", "REASON", "gate.done reason code", reason),
            typed(
                "var",
                "KEY=VALUE",
                "extra template value (repeatable)",
                key_value,
            ),
            switch(
                "check-templates",
                "render every template for every reason code and exit",
            ),
            JSON,
        ],
        actions: &[
            Action {
                needs: &["batch-tag"],
                ..action("gate.open", "--batch-tag TAG", (0, 0), "a batch was opened")
            },
            Action {
                needs: &["batch-tag", "reason"],
                ..action(
                    "gate.done",
                    "--batch-tag TAG --reason REASON",
                    (0, 0),
                    "a batch is done, with its reason code",
                )
            },
            Action {
                needs: &["batch-tag"],
                ..action(
                    "alert",
                    "--batch-tag TAG [--reason REASON]",
                    (0, 0),
                    "an alert to the dev dashboard (ALERT_URL)",
                )
            },
        ],
        action_kind: "event",
        or_switch: Some("check-templates"),
        arg_check: None,
    },
    Command {
        name: "maintain",
        summary: "partition maintenance (cron / systemd timer)",
        usage: "[--dry-run] [--json]",
        doc: "Under an advisory lock, runs pg_partman maintenance for the target table or creates the missing partitions from today to today + PARTITION_PREMAKE_DAYS, detaches (or drops) those past PARTITION_RETENTION_DAYS, builds the HNSW index of sealed partitions, records the run and alerts on stalls.",
        positionals: (0, 0),
        flags: &[
            switch("dry-run", "show what would be created, change nothing"),
            JSON,
        ],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "cache",
        summary: "probe | get | set | del | key | publish | stats | deps  (Redis)",
        usage: "probe | get NS KEY [--msgpack] | set NS KEY JSON [--ttl SECS] [--msgpack] | del NS KEY | key QUERY TOP_K | publish JSON | stats | deps DOC_ID",
        doc: "Works the Redis query cache: health probe (naming the topology), namespaced JSON and MessagePack values, legacy query keys, build-update publishing, hit/miss statistics, and the cached keys recorded as computed from a document (deps), which go when the document is replaced or deleted.",
        positionals: (1, 4),
        flags: &[
            typed(
                "ttl",
                "SECS",
                "expiry for set; 0 = none (default DEFAULT_TTL_SECONDS)",
                whole,
            ),
            switch(
                "msgpack",
                "use the MessagePack variant of the key and value",
            ),
        ],
        actions: &[
            action(
                "probe",
                "",
                (0, 0),
                "connect, authenticate and PING; exit 0 healthy, 75 unreachable",
            ),
            action(
                "get",
                "NS KEY",
                (2, 2),
                "print a namespaced value; exit 1 on a miss",
            ),
            action("set", "NS KEY JSON", (3, 3), "store a namespaced value"),
            action("del", "NS KEY", (2, 2), "delete a namespaced value"),
            action(
                "key",
                "QUERY TOP_K",
                (2, 2),
                "print the legacy query key (no Redis needed)",
            ),
            action("publish", "JSON", (1, 1), "publish a build update"),
            action("stats", "", (0, 0), "hits, misses and hit ratio"),
            action(
                "deps",
                "DOC_ID",
                (1, 1),
                "the cached keys computed from a document",
            ),
        ],
        action_kind: "action",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "gate",
        summary: "serve: a reference gate endpoint (token, signature, rate limit)",
        usage: "serve --listen ADDR [--events FILE] [--rate N] [--burst B]",
        doc: "Serves a reference gate: accepts POSTed events with the right bearer token (GATE_TOKEN) and, when GATE_SECRET is set, a valid signature within 5 minutes; rate-limits per client; appends accepted events as JSON lines.",
        positionals: (1, 1),
        flags: &[
            typed(
                "listen",
                "ADDR",
                "address to listen on, e.g. 127.0.0.1:8787",
                listen_addr,
            ),
            valued(
                "events",
                "FILE",
                "append accepted events here (default stdout)",
            ),
            typed(
                "rate",
                "N",
                "requests per second per client (default 50)",
                positive_number,
            ),
            typed(
                "burst",
                "B",
                "token bucket size per client (default 100)",
                at_least_one,
            ),
        ],
        actions: &[Action {
            needs: &["listen"],
            ..action("serve", "--listen ADDR", (0, 0), "serve until stopped")
        }],
        action_kind: "action",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "status",
        summary: "spool, outbox, recent batches, last maintenance; --json",
        usage: "[--json]",
        doc: "Shows files and bytes per spool directory and the age of the oldest waiting file, the outbox; with a database, the embeddings tokens of the last 24 hours, recent batches, partitions lacking their index or storage parameter, and the last maintenance run.",
        positionals: (0, 0),
        flags: &[JSON],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "check",
        summary: "validate config, permissions, DB, Redis, gate, templates",
        usage: "[--json]",
        doc: "Checks the spool directories, the failure log and its hash chain, the database and its schema, Redis, the gate and alert endpoints and the templates, then ends with a one-line verdict; exits 1 when something is unhealthy. With -v (--verbose) it first lists every effective setting with its origin (secrets as ***); --json gives both.",
        positionals: (0, 0),
        flags: &[JSON],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "requeue",
        summary: "move failed/<batch_tag> (or --all) back to incoming/",
        usage: "<BATCH_TAG> | --all [--json]",
        doc: "Moves the files of failed/<BATCH_TAG> (or of every failed batch) back to incoming/, keeping their reason files aside.",
        positionals: (0, 1),
        flags: &[switch("all", "requeue every failed batch"), JSON],
        actions: &[],
        action_kind: "",
        or_switch: Some("all"),
        arg_check: Some(batch_tag),
    },
    Command {
        name: "trace",
        summary: "a document's history: every file that changed it, and its rows now",
        usage: "<DOC_ID> [--json]",
        doc: "Prints, in claim order, every committed file that changed the document (action, rows added and removed, batch, file, sha256, when it committed, and whether its batch's gate.done was delivered, is waiting or dead), then what the table holds for it now (rows, partitions, embedding models). Exits 1 when the document was never seen.",
        positionals: (1, 1),
        flags: &[JSON],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "gen",
        summary: "write sample .msgpack files into incoming/ (--bad N for broken ones)",
        usage: "[--files N] [--records M] [--dim D] [--days K] [--seed S] [--bad B] [--json]",
        doc: "Writes deterministic sample files to tmp/ and renames them into incoming/: realistic text with non-ASCII, metadata, embeddings and created_at over the last K days. --bad adds broken files of assorted kinds.",
        positionals: (0, 0),
        flags: &[
            typed("files", "N", "number of good files (default 10)", whole),
            typed("records", "M", "records per file (default 100)", whole),
            typed(
                "dim",
                "D",
                "embedding length, 0 for none (default 384)",
                whole,
            ),
            typed(
                "days",
                "K",
                "spread created_at over the last K days (default 3)",
                whole,
            ),
            typed("seed", "S", "random seed (default 1)", whole),
            typed("bad", "B", "also write B broken files (default 0)", whole),
            JSON,
        ],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "help",
        summary: "print the help of ragspool or of one command",
        usage: "[COMMAND]",
        doc: "Prints the same text as `ragspool --help`, or with a COMMAND as `ragspool COMMAND --help`.",
        positionals: (0, 1),
        flags: &[],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "completions",
        summary: "print a shell completion script: bash, zsh or fish",
        usage: "bash | zsh | fish",
        doc: "Prints a completion script for the shell, generated from the same registry as this help: every command, its flags and actions, the global flags. The packages install them; by hand: `ragspool completions bash > ~/.local/share/bash-completion/completions/ragspool`.",
        positionals: (1, 1),
        flags: &[],
        actions: &[
            action("bash", "", (0, 0), "for bash-completion"),
            action(
                "zsh",
                "",
                (0, 0),
                "for zsh's compsys (a file named _ragspool on $fpath)",
            ),
            action("fish", "", (0, 0), "for fish (vendor_completions.d)"),
        ],
        action_kind: "shell",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "import",
        summary: "JSON Lines of chunks into spool files, checked as process would",
        usage: "[--max-records N] [--max-bytes B] FILE...",
        doc: "Reads JSON Lines (FILE `-` is standard input), one record per line with the keys of a spool record (embedding a JSON array of numbers, created_at an RFC 3339 string or unix seconds, {\"doc_id\": ..., \"delete\": true} to delete a document), checks every record with the rules process applies, and writes MessagePack spool files to tmp/, renamed into incoming/ once the whole input is good. A bad line is reported as FILE:LINE (up to 100 per input); an input with any bad line places nothing, and the other inputs go on. A document's records must be contiguous and stay in one spool file. No database, Redis or endpoint is needed.",
        positionals: (1, usize::MAX),
        flags: &[
            typed(
                "max-records",
                "N",
                "most records in one spool file (default 2000)",
                whole_from_one,
            ),
            // Its upper bound, MAX_FILE_BYTES, is a setting: checked once settings are read.
            typed(
                "max-bytes",
                "B",
                "most bytes in one spool file (default 67108864); a larger document gets a file of its own",
                whole_from_one,
            ),
        ],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
    Command {
        name: "validate",
        summary: "check spool files offline with process's own rules",
        usage: "[--json] FILE...",
        doc: "Decodes each spool file as process would and prints `ok` with its counts (records, documents, delete records, records with and without vectors, bytes), or the error, record_index and byte_offset that process would write in its reason.json. Exits 0 when every file is good, 1 otherwise. No database is needed.",
        positionals: (1, usize::MAX),
        flags: &[switch(
            "json",
            "print one JSON object per file (JSON Lines)",
        )],
        actions: &[],
        action_kind: "",
        or_switch: None,
        arg_check: None,
    },
];

/// The command named `name`.
pub(crate) fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique() {
        let mut seen = HashSet::new();
        for c in COMMANDS {
            assert!(seen.insert(c.name), "duplicate command {}", c.name);
            let mut flags = HashSet::new();
            for f in GLOBAL_FLAGS.iter().chain(c.flags) {
                assert!(
                    flags.insert(f.long),
                    "{}: duplicate flag --{}",
                    c.name,
                    f.long
                );
            }
        }
    }

    #[test]
    fn spec_commands_are_all_present() {
        for name in [
            "init", "migrate", "watch", "process", "notify", "maintain", "cache", "gate", "status",
            "check", "requeue", "gen",
        ] {
            assert!(command(name).is_some(), "{name}");
        }
    }

    #[test]
    fn every_action_is_in_the_usage_and_a_listed_summary() {
        for c in COMMANDS {
            for a in c.actions {
                // A summary that lists actions (`probe | get | ...`) lists them all.
                if c.summary.contains(" | ") {
                    assert!(
                        c.summary.contains(a.name),
                        "{}: summary lacks {}",
                        c.name,
                        a.name
                    );
                }
                for need in a.needs {
                    assert!(
                        c.flags.iter().any(|f| f.long == *need),
                        "{} {} needs unknown --{need}",
                        c.name,
                        a.name
                    );
                }
            }
            if let Some(switch) = c.or_switch {
                assert!(c.flags.iter().any(|f| f.long == switch), "{}", c.name);
            }
        }
    }

    #[test]
    fn notify_events_are_the_templates_events() {
        let events: Vec<&str> = command("notify")
            .map(|c| c.actions.iter().map(|a| a.name).collect())
            .unwrap_or_default();
        let known: Vec<&str> = crate::notify::template::Event::ALL
            .iter()
            .map(|e| e.name())
            .collect();
        assert_eq!(events, known);
    }

    #[test]
    fn migrate_help_names_every_table_it_creates() {
        let doc = command("migrate").map_or("", |c| c.doc);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
        let mut tables = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let sql = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for part in sql.split("CREATE TABLE IF NOT EXISTS ").skip(1) {
                let name = part.split([' ', '(']).next().unwrap_or("");
                let name = name.trim_start_matches("{schema}");
                let shown = if name == "{table}" {
                    "RAGSPOOL_TABLE"
                } else {
                    name
                };
                assert!(doc.contains(shown), "migrate --help lacks {shown}");
                tables += 1;
            }
        }
        assert!(tables >= 7, "found {tables} tables in sql/");
    }
}
