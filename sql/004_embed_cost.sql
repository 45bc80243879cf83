-- ragspool schema, version 4: what embeddings cost (SPEC §13), and the open rows
-- by content for claim order.

-- The tokens of the texts ragspool sent to the embeddings endpoint for a file,
-- retries included, as the endpoint's usage counts them (else ceil(bytes / 4)
-- per text); 0 when none were sent.
ALTER TABLE {schema}ragspool_manifest ADD COLUMN IF NOT EXISTS tokens bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS ragspool_manifest_finished_at ON {schema}ragspool_manifest (finished_at);

-- Claim order among byte-identical files (SPEC 3): every commit asks whether an
-- earlier-claimed copy of its content is still open; the few open rows answer it.
CREATE INDEX IF NOT EXISTS ragspool_manifest_open_sha256 ON {schema}ragspool_manifest (sha256, seq)
    WHERE status = 'open';

INSERT INTO {schema}ragspool_schema_version (version) VALUES (4) ON CONFLICT DO NOTHING;
