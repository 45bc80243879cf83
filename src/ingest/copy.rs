//! PostgreSQL's binary COPY format for the target table's rows, written straight
//! from decoded records: no text escaping, no per-row statements. The embedding
//! goes in as `real[]` or in pgvector's own binary formats (`vector`, SPEC §10;
//! `halfvec`, each f32 rounded to the nearest f16 here, SPEC §15), never as text.

use crate::binary16;
use crate::record::{Embedding, Record};
use crate::storage::{EmbeddingType, Storage};

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
    embedding: EmbeddingType,
    /// Whether a vector must keep a direction (cosine distance): a halfvec whose
    /// every element rounds to zero is refused.
    direction: bool,
}

/// A record's vector that the column cannot hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Unstorable {
    /// An element beyond ±65504, or not finite.
    Beyond {
        /// Its index in the vector.
        element: usize,
        /// Its value.
        value: f32,
    },
    /// Every element rounds to zero in f16, under cosine distance.
    Vanishes,
}

impl std::fmt::Display for Unstorable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unstorable::Beyond { element, value } => write!(
                f,
                "embedding[{element}] is {value}, beyond halfvec's range (magnitudes up to {})",
                binary16::MAX
            ),
            Unstorable::Vanishes => f.write_str(
                "embedding rounds to all zeros in halfvec, which has no cosine distance (VECTOR_METRIC=cosine)",
            ),
        }
    }
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

/// Bytes buffered before they are written to the COPY stream: the client's
/// PostgreSQL driver copies each chunk twice more on its way to the socket, so a
/// chunk costs a worker about four times its size.
pub(crate) const CHUNK: usize = 256 << 10;

/// Room past [`CHUNK`] for the row that crosses it, allocated at once: the buffer
/// of a chunk alone would grow, by doubling, to twice the chunk.
const HEADROOM: usize = 64 << 10;

impl CopyEncoder {
    /// A buffer that starts with the binary COPY header.
    pub(crate) fn new(storage: &Storage) -> CopyEncoder {
        let mut buf = Vec::with_capacity(CHUNK + HEADROOM);
        header(&mut buf);
        CopyEncoder {
            buf,
            embedding: storage.embedding,
            direction: storage.needs_direction(),
        }
    }

    /// Appends one row; `Err` when its vector cannot be stored (the row is then
    /// partly written: the file fails and its COPY is abandoned).
    pub(crate) fn row(&mut self, r: &Record<'_>, meta: &RowMeta<'_>) -> Result<(), Unstorable> {
        let kind = self.embedding;
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
        match (&r.embedding, kind) {
            (Some(values), EmbeddingType::Vector(_)) => pgvector(b, values),
            (Some(values), EmbeddingType::Halfvec(_)) => {
                let nonzero = halfvec(b, values)?;
                if self.direction && !nonzero {
                    return Err(Unstorable::Vanishes);
                }
            }
            (Some(values), EmbeddingType::Array) => float4_array(b, values),
            (None, _) => null(b),
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
        int8(b, meta.created_at - PG_EPOCH_MICROS);
        field(b, meta.batch_tag.as_bytes());
        match meta.embedding_model {
            Some(m) => field(b, m.as_bytes()),
            None => null(b),
        }
        int8(b, meta.seq);
        Ok(())
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

/// A whole binary COPY stream of narrow bookkeeping rows (documents, lineage),
/// built in memory and sent at once.
pub(crate) struct Rows {
    buf: Vec<u8>,
}

impl Rows {
    /// An empty stream with room for `bytes` of rows.
    pub(crate) fn with_capacity(bytes: usize) -> Rows {
        let mut buf = Vec::with_capacity(bytes + 32);
        header(&mut buf);
        Rows { buf }
    }

    /// Starts a row of `fields` fields.
    pub(crate) fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// A text field.
    pub(crate) fn text(&mut self, s: &str) {
        field(&mut self.buf, s.as_bytes());
    }

    /// A bigint field.
    pub(crate) fn int8(&mut self, v: i64) {
        int8(&mut self.buf, v);
    }

    /// The stream, with its trailer.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// The binary COPY signature, flags and header extension length.
fn header(b: &mut Vec<u8>) {
    b.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
}

/// A field of 8 bytes: bigint, or a timestamp's microseconds.
fn int8(b: &mut Vec<u8>, v: i64) {
    b.extend_from_slice(&8i32.to_be_bytes());
    b.extend_from_slice(&v.to_be_bytes());
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
    let start = b.len();
    b.resize(start + values.len() * 4, 0);
    let out = &mut b[start..];
    match values {
        // MessagePack's float32s are big-endian, as pgvector's are: each element's
        // four bytes after its marker, copied into place (element by element
        // through for_each_bits, this row's largest field cost the client a
        // tenth of its CPU).
        Embedding::F32s(src) => out
            .chunks_exact_mut(4)
            .zip(src.chunks_exact(5))
            .for_each(|(to, from)| to.copy_from_slice(&from[1..])),
        _ => {
            let mut slots = out.chunks_exact_mut(4);
            values.for_each_bits(|bits| {
                if let Some(slot) = slots.next() {
                    slot.copy_from_slice(&bits.to_be_bytes());
                }
            });
        }
    }
}

/// pgvector's halfvec binary format (halfvec_recv): dimension (int16), unused
/// (int16), then each element's f16 bits as a big-endian int16. Returns whether
/// some element is not zero; `Err` for the first element beyond f16's range.
fn halfvec(b: &mut Vec<u8>, values: &Embedding<'_>) -> Result<bool, Unstorable> {
    let n = values.len();
    let len = 4 + n * 2;
    b.reserve(len + 4);
    b.extend_from_slice(&(len as i32).to_be_bytes());
    b.extend_from_slice(&(n as i16).to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    // Written in place: growing the buffer element by element cost more than the
    // conversion itself.
    let start = b.len();
    b.resize(start + n * 2, 0);
    let out = &mut b[start..];
    let (mut at, mut beyond, mut any) = (0usize, None, 0u16);
    // One pass: the check rides along with the conversion.
    values.for_each_bits(|bits| {
        let h = binary16::from_f32(f32::from_bits(bits));
        if binary16::beyond(bits) && beyond.is_none() {
            beyond = Some(Unstorable::Beyond {
                element: at,
                value: f32::from_bits(bits),
            });
        }
        any |= h & 0x7fff;
        if let Some(slot) = out.get_mut(at * 2..at * 2 + 2) {
            slot.copy_from_slice(&h.to_be_bytes());
        }
        at += 1;
    });
    match beyond {
        Some(e) => Err(e),
        None => Ok(any != 0),
    }
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
        // The same from a MessagePack array of float32s, copied as they are.
        let mut packed = Vec::new();
        for x in [1.0f32, -2.5] {
            packed.push(0xca);
            packed.extend_from_slice(&x.to_be_bytes());
        }
        let mut b = Vec::new();
        pgvector(&mut b, &Embedding::F32s(&packed));
        assert_eq!(b, want);
    }

    #[test]
    fn halfvecs_use_halfvec_recvs_layout_and_refuse_what_f16_cannot_hold() {
        let mut b = Vec::new();
        let nonzero = halfvec(&mut b, &Embedding::Values(vec![1.0, -2.5, 65504.0]));
        assert_eq!(nonzero, Ok(true));
        let mut want = 10i32.to_be_bytes().to_vec();
        want.extend_from_slice(&3i16.to_be_bytes());
        want.extend_from_slice(&0i16.to_be_bytes());
        for h in [0x3c00u16, 0xc100, 0x7bff] {
            want.extend_from_slice(&h.to_be_bytes());
        }
        assert_eq!(b, want);
        let beyond = halfvec(&mut Vec::new(), &Embedding::Values(vec![0.5, -65505.0]));
        assert_eq!(
            beyond,
            Err(Unstorable::Beyond {
                element: 1,
                value: -65505.0
            })
        );
        let tiny = halfvec(&mut Vec::new(), &Embedding::Values(vec![1e-9, -1e-10]));
        assert_eq!(tiny, Ok(false));
    }
}
