-- ragspool schema, version 2 (SPEC §10, §12): document lifecycle and provenance.

-- Which embedding model made a row's vector (NULL: the record brought it), and the
-- claim sequence of the file that wrote the row. A later file's replace or delete
-- removes only rows of lower sequence, so files applied out of order (parallel
-- workers, a recovered batch) still end as if applied one at a time in claim order.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS embedding_model text;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS ragspool_seq bigint NOT NULL DEFAULT 0;

-- Serves a document's replace and delete: one index probe per partition, never a
-- scan. It leads with doc_id, so the table stays distributable by doc_id.
CREATE INDEX IF NOT EXISTS {table_name}_doc_seq ON {table} (doc_id, ragspool_seq);

-- Per document, the highest claim sequence of a file that removed its rows (a
-- replace or a delete record). A file whose sequence is lower adds no row for it.
-- Its row lock serialises the files that touch one document.
CREATE TABLE IF NOT EXISTS {schema}ragspool_docs (
    doc_id      text        NOT NULL PRIMARY KEY,
    removed_seq bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Lineage (SPEC §12): one row per committed file and document it changed, written
-- in the file's transaction, so it never disagrees with the table and a deletion
-- stays provable after the rows are gone. `trace` reads it by (doc_id, seq).
CREATE TABLE IF NOT EXISTS {schema}ragspool_doc_events (
    doc_id       text        NOT NULL,
    seq          bigint      NOT NULL,
    sha256       text        NOT NULL,
    batch_tag    text        NOT NULL,
    file_name    text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('upsert', 'delete')),
    rows_added   bigint      NOT NULL,
    rows_removed bigint      NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (doc_id, seq)
);

ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS deleted bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS embedded bigint NOT NULL DEFAULT 0;
ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS reused bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION {schema}ragspool_manifest_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ragspool_manifest', json_build_object(
        'batch_tag', NEW.batch_tag, 'file_name', NEW.file_name, 'sha256', NEW.sha256,
        'bytes', NEW.bytes, 'rows', NEW.rows, 'deleted', NEW.deleted, 'status', NEW.status,
        'reason', NEW.reason, 'healed', NEW.healed, 'duplicate', NEW.duplicate,
        'attempts', NEW.attempts, 'host', NEW.host)::text);
    RETURN NEW;
END
$$;

INSERT INTO {schema}ragspool_schema_version (version) VALUES (2) ON CONFLICT DO NOTHING;
