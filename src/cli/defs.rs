//! The one registry of commands and flags with their docs; `--help`, the man page
//! test and the parser all read it, so a flag exists exactly when it is listed here.

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
    /// The setting (SPEC §2) this flag overrides, if any.
    pub(crate) setting: Option<&'static str>,
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
}

const fn switch(long: &'static str, doc: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value: None,
        doc,
        setting: None,
    }
}

const fn valued(long: &'static str, value: &'static str, doc: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value: Some(value),
        doc,
        setting: None,
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
    setting(
        "user",
        "NAME",
        "RAGSPOOL_USER",
        "started as root: open the failure log, then drop to user NAME (overrides RAGSPOOL_USER)",
    ),
    Flag {
        long: "verbose",
        short: Some('v'),
        value: None,
        doc: "more output on stderr (repeat for trace)",
        setting: None,
    },
    Flag {
        long: "quiet",
        short: Some('q'),
        value: None,
        doc: "only errors on stderr",
        setting: None,
    },
    Flag {
        long: "help",
        short: Some('h'),
        value: None,
        doc: "print help and exit",
        setting: None,
    },
    Flag {
        long: "version",
        short: Some('V'),
        value: None,
        doc: "print the version and exit",
        setting: None,
    },
];

/// Every command, in the order `--help` lists them (SPEC §1).
pub(crate) static COMMANDS: &[Command] = &[
    Command {
        name: "init",
        summary: "create the spool tree, log dir and failure log with safe modes",
        usage: "[--owner USER[:GROUP]]",
        doc: "Creates tmp/, incoming/, processing/, archive/, failed/ and outbox/ under SPOOL_DIR with mode 0750, the log directory, and the failure log with mode 0600. Safe to run again. Existing paths with unsafe modes or owners are reported and make the exit status 1.",
        positionals: (0, 0),
        flags: &[valued(
            "owner",
            "USER[:GROUP]",
            "chown what it creates to USER (and GROUP); needs root",
        )],
    },
    Command {
        name: "migrate",
        summary: "create or upgrade the database schema (idempotent)",
        usage: "[--distribute]",
        doc: "Creates the partitioned target table, ragspool_manifest, ragspool_maintenance_runs and the schema version table under an advisory lock. Safe to run again. With DISTRIBUTION=citus it distributes the target table, ragspool_docs and ragspool_doc_events by doc_id on the Citus coordinator; tables that already exist undistributed only with --distribute.",
        positionals: (0, 0),
        flags: &[switch(
            "distribute",
            "DISTRIBUTION=citus: distribute existing tables too, printing first how many rows Citus moves",
        )],
    },
    Command {
        name: "watch",
        summary: "daemon: inotify on incoming/, run batches on thresholds",
        usage: "[--exec CMD]",
        doc: "Recovers processing/, flushes the outbox, then watches incoming/ and runs a batch when BATCH_MAX_FILES, BATCH_MAX_BYTES or BATCH_MAX_AGE_SECS is reached.",
        positionals: (0, 0),
        flags: &[valued(
            "exec",
            "CMD",
            "run CMD on a threshold instead of ingesting in-process",
        )],
    },
    Command {
        name: "process",
        summary: "one shot: recover, ingest everything waiting, flush outbox, exit",
        usage: "",
        doc: "Recovers processing/, ingests every file waiting in incoming/ in batches, flushes the outbox and exits 0, 1 when some file failed, or 75 when a server stayed unreachable.",
        positionals: (0, 0),
        flags: &[],
    },
    Command {
        name: "notify",
        summary: "send one gate event from its template; --check-templates",
        usage: "<EVENT> --batch-tag TAG [--reason REASON] [--var KEY=VALUE]... | --check-templates",
        doc: "Sends gate.open or gate.done for a batch through the outbox, as scripts did with the old notifier. --check-templates renders every template for every reason code and names the file and placeholder of any fault.",
        positionals: (0, 1),
        flags: &[
            valued("batch-tag", "TAG", "the batch the event is about"),
            valued("reason", "REASON", "gate.done reason code"),
            valued("var", "KEY=VALUE", "extra template value (repeatable)"),
            switch(
                "check-templates",
                "render every template for every reason code and exit",
            ),
        ],
    },
    Command {
        name: "maintain",
        summary: "partition maintenance (cron / systemd timer)",
        usage: "[--dry-run]",
        doc: "Under an advisory lock, runs pg_partman maintenance for the target table or creates the missing daily partitions from today to today + PARTITION_PREMAKE_DAYS, records the run and alerts on stalls.",
        positionals: (0, 0),
        flags: &[switch(
            "dry-run",
            "show what would be created, change nothing",
        )],
    },
    Command {
        name: "cache",
        summary: "probe | get | set | del | key | publish | stats  (Redis)",
        usage: "probe | get NS KEY [--msgpack] | set NS KEY JSON [--ttl SECS] [--msgpack] | del NS KEY | key QUERY TOP_K | publish JSON | stats | deps DOC_ID",
        doc: "Works the Redis query cache: health probe (naming the topology), namespaced JSON and MessagePack values, legacy query keys, build-update publishing, hit/miss statistics, and the cached keys recorded as computed from a document (deps), which go when the document is replaced or deleted.",
        positionals: (1, 4),
        flags: &[
            valued(
                "ttl",
                "SECS",
                "expiry for set; 0 = none (default DEFAULT_TTL_SECONDS)",
            ),
            switch(
                "msgpack",
                "use the MessagePack variant of the key and value",
            ),
        ],
    },
    Command {
        name: "gate",
        summary: "serve: a reference gate endpoint (token, signature, rate limit)",
        usage: "serve --listen ADDR [--events FILE] [--rate N] [--burst B]",
        doc: "Serves a reference gate: accepts POSTed events with the right bearer token (GATE_TOKEN) and, when GATE_SECRET is set, a valid signature within 5 minutes; rate-limits per client; appends accepted events as JSON lines.",
        positionals: (1, 1),
        flags: &[
            valued(
                "listen",
                "ADDR",
                "address to listen on, e.g. 127.0.0.1:8787",
            ),
            valued(
                "events",
                "FILE",
                "append accepted events here (default stdout)",
            ),
            valued("rate", "N", "requests per second per client"),
            valued("burst", "B", "token bucket size per client"),
        ],
    },
    Command {
        name: "status",
        summary: "spool, outbox, recent batches, last maintenance; --json",
        usage: "[--json]",
        doc: "Shows files and bytes per spool directory and the age of the oldest waiting file; with a database, the embeddings tokens of the last 24 hours, recent batches and the last maintenance run.",
        positionals: (0, 0),
        flags: &[switch("json", "print one JSON object instead of text")],
    },
    Command {
        name: "check",
        summary: "validate config, permissions, DB, Redis, gate, templates",
        usage: "[--json]",
        doc: "Prints every effective setting with its origin (secrets as ***), checks the spool directories and the failure log, and exits 1 when something is unhealthy.",
        positionals: (0, 0),
        flags: &[switch("json", "print one JSON object instead of text")],
    },
    Command {
        name: "requeue",
        summary: "move failed/<batch_tag> (or --all) back to incoming/",
        usage: "<BATCH_TAG> | --all",
        doc: "Moves the files of failed/<BATCH_TAG> (or of every failed batch) back to incoming/, keeping their reason files aside.",
        positionals: (0, 1),
        flags: &[switch("all", "requeue every failed batch")],
    },
    Command {
        name: "trace",
        summary: "a document's history: every file that changed it, and its rows now",
        usage: "<DOC_ID> [--json]",
        doc: "Prints, in claim order, every committed file that changed the document (action, rows added and removed, batch, file, sha256, when it committed, and whether its batch's gate.done was delivered, is waiting or dead), then what the table holds for it now (rows, partitions, embedding models). Exits 1 when the document was never seen.",
        positionals: (1, 1),
        flags: &[switch("json", "print one JSON object")],
    },
    Command {
        name: "gen",
        summary: "write sample .msgpack files into incoming/ (--bad N for broken ones)",
        usage: "[--files N] [--records M] [--dim D] [--days K] [--seed S] [--bad B]",
        doc: "Writes deterministic sample files to tmp/ and renames them into incoming/: realistic text with non-ASCII, metadata, embeddings and created_at over the last K days. --bad adds broken files of assorted kinds.",
        positionals: (0, 0),
        flags: &[
            valued("files", "N", "number of good files (default 10)"),
            valued("records", "M", "records per file (default 100)"),
            valued("dim", "D", "embedding length, 0 for none (default 384)"),
            valued(
                "days",
                "K",
                "spread created_at over the last K days (default 3)",
            ),
            valued("seed", "S", "random seed (default 1)"),
            valued("bad", "B", "also write B broken files (default 0)"),
        ],
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
}
