//! Integration tests: the real binary against real PostgreSQL, Redis and HTTP.

// Test support panics to fail the test, with a message saying why; and not every
// area uses every helper.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used, dead_code)]

mod support;

mod cache;
mod citus;
mod cli;
mod deps;
mod embed_pace;
mod embeddings;
mod failover;
mod gate;
mod harness;
mod ingest;
mod lineage;
mod maintain;
mod metrics;
mod operator;
mod producer;
mod rag;
mod readme;
mod recovery;
mod reliability;
mod settings;
mod spool_commands;
mod storage;
mod tls;
mod topology;
mod watch;
