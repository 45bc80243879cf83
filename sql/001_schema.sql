-- ragspool schema, version 1. Placeholders: {schema} is "name." or empty,
-- {table} the schema-qualified target table. Every statement is idempotent.

{create_schema}

CREATE TABLE IF NOT EXISTS {schema}ragspool_schema_version (
    version    integer     NOT NULL PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {table} (
    doc_id      text        NOT NULL,
    chunk_index integer     NOT NULL,
    content     text        NOT NULL,
    embedding   {embedding_type},
    metadata    jsonb,
    source      text,
    created_at  timestamptz NOT NULL,
    batch_tag   text        NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);

CREATE TABLE IF NOT EXISTS {schema}ragspool_manifest (
    id          bigserial   PRIMARY KEY,
    batch_tag   text        NOT NULL,
    file_name   text        NOT NULL,
    sha256      text        NOT NULL,
    bytes       bigint      NOT NULL,
    rows        bigint      NOT NULL DEFAULT 0,
    status      text        NOT NULL CHECK (status IN ('open', 'done', 'failed')),
    reason      text,
    healed      boolean     NOT NULL DEFAULT false,
    duplicate   boolean     NOT NULL DEFAULT false,
    attempts    integer     NOT NULL DEFAULT 1,
    host        text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (batch_tag, file_name)
);

-- The file is the unit of exactly-once: at most one ingested (not duplicate) row per content.
CREATE UNIQUE INDEX IF NOT EXISTS ragspool_manifest_ingested_sha256
    ON {schema}ragspool_manifest (sha256) WHERE status = 'done' AND NOT duplicate;
CREATE INDEX IF NOT EXISTS ragspool_manifest_started_at ON {schema}ragspool_manifest (started_at);

CREATE OR REPLACE FUNCTION {schema}ragspool_manifest_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ragspool_manifest', json_build_object(
        'batch_tag', NEW.batch_tag, 'file_name', NEW.file_name, 'sha256', NEW.sha256,
        'bytes', NEW.bytes, 'rows', NEW.rows, 'status', NEW.status, 'reason', NEW.reason,
        'healed', NEW.healed, 'duplicate', NEW.duplicate, 'attempts', NEW.attempts,
        'host', NEW.host)::text);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER ragspool_manifest_notify
    AFTER INSERT OR UPDATE ON {schema}ragspool_manifest
    FOR EACH ROW EXECUTE FUNCTION {schema}ragspool_manifest_notify();

CREATE TABLE IF NOT EXISTS {schema}ragspool_maintenance_runs (
    id                 bigserial   PRIMARY KEY,
    target_table       text        NOT NULL,
    mode               text        NOT NULL CHECK (mode IN ('pg_partman', 'native')),
    expected           integer     NOT NULL DEFAULT 0,
    created_partitions integer     NOT NULL DEFAULT 0,
    outcome            text        NOT NULL,
    detail             text,
    host               text        NOT NULL,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);

INSERT INTO {schema}ragspool_schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
