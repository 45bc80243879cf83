//! PostgreSQL's binary COPY format for the target table's rows, written straight
//! from decoded records: no text escaping, no per-row statements. The embedding
//! goes in as `real[]` or in pgvector's own binary format (SPEC §10), never as text.

use crate::record::{Embedding, Record};
use crate::storage::EmbeddingType;

/// Columns in the order rows are encoded.
pub(crate) const COLUMNS: &str = "doc_id, chunk_index, content, embedding, metadata, source, created_at, batch_tag, embedding_model, ragspool_seq";

/// Fields per row.
const FIELDS: i16 = 10;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// OID of `real` (float4), the element type of `real[]`.
const FLOAT4_OID: i32 = 700;
/// jsonb's binary format version.
const JSONB_VERSION: u8 = 1;

/// Encodes rows into a growing buffer; the caller drains it into the COPY stream.
pub(crate) struct CopyEncoder {
    buf: Vec<u8>,
    vector: bool,
}

/// What a row carries beside its record.
pub(crate) struct RowMeta<'a> {
    /// The record's or the ingest time (µs since the Unix epoch).
    pub(crate) created_at: i64,
    /// The batch.
    pub(crate) batch_tag: &'a str,
    /// EMBED_MODEL when ragspool fetched the vector.
    pub(crate) embedding_model: Option<&'a str>,
    /// The file's claim sequence.
    pub(crate) seq: i64,
}

impl CopyEncoder {
    /// A buffer that starts with the binary COPY header.
    pub(crate) fn new(embedding: EmbeddingType) -> CopyEncoder {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyEncoder {
            buf,
            vector: matches!(embedding, EmbeddingType::Vector(_)),
        }
    }

    /// Appends one row.
    pub(crate) fn row(&mut self, r: &Record<'_>, meta: &RowMeta<'_>) {
        let vector = self.vector;
        let b = &mut self.buf;
        let embedding = r.embedding.as_ref().map_or(0, |e| 24 + e.len() * 8);
        let metadata = r.metadata.as_ref().map_or(0, String::len);
        let model = meta.embedding_model.map_or(0, str::len);
        b.reserve(
            128 + r.doc_id.len()
                + r.content.len()
                + embedding
                + metadata
                + meta.batch_tag.len()
                + model,
        );
        b.extend_from_slice(&FIELDS.to_be_bytes());
        field(b, r.doc_id.as_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&r.chunk_index.to_be_bytes());
        field(b, r.content.as_bytes());
        match &r.embedding {
            Some(values) if vector => pgvector(b, values),
            Some(values) => float4_array(b, values),
            None => null(b),
        }
        match &r.metadata {
            Some(json) => {
                b.extend_from_slice(&(json.len() as i32 + 1).to_be_bytes());
                b.push(JSONB_VERSION);
                b.extend_from_slice(json.as_bytes());
            }
            None => null(b),
        }
        match &r.source {
            Some(s) => field(b, s.as_bytes()),
            None => null(b),
        }
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&(meta.created_at - PG_EPOCH_MICROS).to_be_bytes());
        field(b, meta.batch_tag.as_bytes());
        match meta.embedding_model {
            Some(m) => field(b, m.as_bytes()),
            None => null(b),
        }
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&meta.seq.to_be_bytes());
    }

    /// Appends the end-of-data trailer.
    pub(crate) fn finish(&mut self) {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
    }

    /// Bytes waiting to be sent.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes waiting to be sent; [`CopyEncoder::clear`] after sending them.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets the bytes already sent.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }
}

fn field(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    b.extend_from_slice(bytes);
}

fn null(b: &mut Vec<u8>) {
    b.extend_from_slice(&(-1i32).to_be_bytes());
}

/// pgvector's binary format: dimension (int16), unused (int16), big-endian float4s.
fn pgvector(b: &mut Vec<u8>, values: &Embedding<'_>) {
    let len = 4 + values.len() * 4;
    b.reserve(len + 4);
    b.extend_from_slice(&(len as i32).to_be_bytes());
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    values.for_each_bits(|bits| b.extend_from_slice(&bits.to_be_bytes()));
}

fn float4_array(b: &mut Vec<u8>, values: &Embedding<'_>) {
    if values.len() == 0 {
        b.extend_from_slice(&12i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes()); // ndim
        b.extend_from_slice(&0i32.to_be_bytes()); // has nulls
        b.extend_from_slice(&FLOAT4_OID.to_be_bytes());
        return;
    }
    let len = 20 + values.len() * 8;
    b.reserve(len + 4);
    b.extend_from_slice(&(len as i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes()); // ndim
    b.extend_from_slice(&0i32.to_be_bytes()); // has nulls
    b.extend_from_slice(&FLOAT4_OID.to_be_bytes());
    b.extend_from_slice(&(values.len() as i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    // Each element is its length (4) and its big-endian bits: 8 bytes at a time.
    values.for_each_bits(|bits| {
        let bits = bits.to_be_bytes();
        b.extend_from_slice(&[0, 0, 0, 4, bits[0], bits[1], bits[2], bits[3]]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_use_pgvectors_binary_layout() {
        let mut b = Vec::new();
        pgvector(&mut b, &Embedding::Values(vec![1.0, -2.5]));
        let mut want = 12i32.to_be_bytes().to_vec();
        want.extend_from_slice(&2i16.to_be_bytes());
        want.extend_from_slice(&0i16.to_be_bytes());
        want.extend_from_slice(&1.0f32.to_be_bytes());
        want.extend_from_slice(&(-2.5f32).to_be_bytes());
        assert_eq!(b, want);
    }
}
