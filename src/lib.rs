//! ragspool: ingest MessagePack RAG chunks from a spool directory into a
//! range-partitioned PostgreSQL table, notify a downstream gate, keep partitions
//! ahead of time, and wrap Redis as the query cache.
//!
//! The binary is the product; the library exists so `main.rs` stays a one-liner.

#[doc(hidden)]
pub mod app;

pub mod cache;

/// Entry points for the fuzz targets under fuzz/; not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes every record of `data`; returns how many decoded before the first error.
    pub fn decode_records(data: &[u8]) -> usize {
        crate::record::Decoder::new(data, None)
            .take_while(Result::is_ok)
            .count()
    }

    /// Parses `text` as an env file; returns the number of assignments.
    pub fn parse_env_file(text: &str) -> usize {
        crate::config::envfile::parse(text).entries.len()
    }
}

pub(crate) mod backoff;
pub(crate) mod batch;
pub(crate) mod binary16;
pub(crate) mod cli;
pub(crate) mod clock;
pub(crate) mod cmd;
pub(crate) mod config;
pub(crate) mod db;
pub(crate) mod digest;
pub(crate) mod distribution;
pub(crate) mod error;
pub(crate) mod failpoint;
pub(crate) mod failure_log;
pub(crate) mod fs;
pub(crate) mod gate_server;
pub(crate) mod gauges;
pub(crate) mod handoff;
pub(crate) mod heartbeat;
pub(crate) mod host;
pub(crate) mod http;
pub(crate) mod import;
pub(crate) mod ingest;
pub(crate) mod inspect;
pub(crate) mod log;
pub(crate) mod maintenance;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod partition;
pub(crate) mod pgtls;
pub(crate) mod pgurl;
pub(crate) mod privdrop;
pub(crate) mod progress;
pub(crate) mod record;
pub(crate) mod redact;
pub(crate) mod runner;
pub(crate) mod sample;
pub(crate) mod schema;
pub(crate) mod sdnotify;
pub(crate) mod sequence;
pub(crate) mod signal;
pub(crate) mod spool;
pub(crate) mod storage;
pub(crate) mod suggest;
pub(crate) mod text_search;
pub(crate) mod watch;

#[cfg(test)]
mod docs_test;
#[cfg(test)]
mod layers_test;
