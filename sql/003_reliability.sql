-- ragspool schema, version 3: bounded retries of a poison file, and the failure
-- log's anchor.

-- Tries of a file that ended in a fault of its own making rather than an outage
-- (the embeddings endpoint answering the wrong count or length, a statement
-- timeout on its COPY). At FILE_MAX_FAULTS the file fails instead of stalling the
-- spool; a server that is down or a lost connection never counts.
ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS faults integer NOT NULL DEFAULT 0;

-- The failure log's head outside the file: per log path, how many records it held
-- and the SHA-256 of the last one when ragspool last anchored it. `check` proves
-- the file still holds that record at that place, so a cut anywhere is caught,
-- also one that leaves a well-formed chain behind.
CREATE TABLE IF NOT EXISTS {schema}ragspool_failure_log_anchor (
    path        text        NOT NULL PRIMARY KEY,
    host        text        NOT NULL,
    records     bigint      NOT NULL,
    head        text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO {schema}ragspool_schema_version (version) VALUES (3) ON CONFLICT DO NOTHING;
