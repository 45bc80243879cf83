//! MessagePack decoding into validated records (SPEC §4). Decodes one record at a
//! time from the file buffer; every length a header claims is checked against the
//! bytes that remain before anything is allocated, and errors carry the record
//! index and the byte offset where decoding stopped.

use std::fmt::Write as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Deepest nesting accepted inside metadata or an ignored value.
const MAX_DEPTH: usize = 32;
/// Longest doc_id in bytes.
const MAX_DOC_ID: usize = 1024;
/// created_at bounds: years 0001 to 9999, in microseconds since the Unix epoch.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// One validated record, ready for COPY.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record<'a> {
    /// Document id, 1..=1024 bytes (borrowed from the file buffer: no copy).
    pub(crate) doc_id: &'a str,
    /// Chunk index, below 2^31.
    pub(crate) chunk_index: i32,
    /// Chunk text (borrowed from the file buffer).
    pub(crate) content: &'a str,
    /// Embedding, if the record carried one (or the endpoint gave one).
    pub(crate) embedding: Option<Embedding<'a>>,
    /// Metadata as JSON text.
    pub(crate) metadata: Option<String>,
    /// Source, if given (borrowed from the file buffer).
    pub(crate) source: Option<&'a str>,
    /// created_at in microseconds since the Unix epoch, if given.
    pub(crate) created_at: Option<i64>,
    /// A delete record (`{"doc_id": X, "delete": true}`): removes the doc's rows, adds none.
    pub(crate) delete: bool,
    /// The number of chunks the whole document has, when the record declares it.
    pub(crate) chunk_count: Option<u32>,
}

/// Why a file failed to decode, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordError {
    /// Index of the record being decoded (0-based).
    pub(crate) record_index: u64,
    /// Offset in the file where the fault was found.
    pub(crate) byte_offset: u64,
    /// What is wrong.
    pub(crate) message: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record {} at byte {}: {}",
            self.record_index, self.byte_offset, self.message
        )
    }
}

/// An embedding as its record carried it, borrowed from the file so that decoding
/// allocates nothing; the COPY encoder reads the element bits straight from it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Embedding<'a> {
    /// A bin of little-endian float32s, each checked finite.
    Le(&'a [u8]),
    /// The elements of a MessagePack array of float32s only (5 bytes each: the
    /// 0xca marker and the big-endian bits), each checked finite.
    F32s(&'a [u8]),
    /// The elements of a MessagePack array of `len` numbers, each checked finite.
    Packed {
        /// The encoded elements.
        bytes: &'a [u8],
        /// How many.
        len: usize,
    },
    /// Values from the embeddings endpoint or reused from a stored row.
    Values(Vec<f32>),
}

impl Embedding<'_> {
    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        match self {
            Embedding::Le(b) => b.len() / 4,
            Embedding::F32s(b) => b.len() / 5,
            Embedding::Packed { len, .. } => *len,
            Embedding::Values(v) => v.len(),
        }
    }

    /// Calls `f` with each element's float32 bits, in order.
    #[inline]
    pub(crate) fn for_each_bits(&self, mut f: impl FnMut(u32)) {
        match self {
            Embedding::Le(b) => b
                .chunks_exact(4)
                .for_each(|c| f(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Embedding::F32s(b) => b
                .chunks_exact(5)
                .for_each(|c| f(u32::from_be_bytes([c[1], c[2], c[3], c[4]]))),
            // The decoder checked these elements: each is a finite number.
            Embedding::Packed { bytes, len } => {
                let mut d = Decoder::new(bytes, None);
                for _ in 0..*len {
                    f(d.head()
                        .ok()
                        .and_then(Head::number)
                        .unwrap_or(0.0)
                        .to_bits());
                }
            }
            Embedding::Values(v) => v.iter().for_each(|x| f(x.to_bits())),
        }
    }

    /// Whether every element is zero (either sign).
    pub(crate) fn all_zero(&self) -> bool {
        // Zero of either sign: every bit but the sign bit clear.
        let zero = |bits: u32| bits << 1 == 0;
        match self {
            // The common layouts stop at the first element that is not zero.
            Embedding::Le(b) => b
                .chunks_exact(4)
                .all(|c| zero(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Embedding::F32s(b) => b
                .chunks_exact(5)
                .all(|c| zero(u32::from_be_bytes([c[1], c[2], c[3], c[4]]))),
            Embedding::Packed { .. } | Embedding::Values(_) => {
                let mut all = true;
                self.for_each_bits(|b| all &= zero(b));
                all
            }
        }
    }

    /// The elements as floats.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.len());
        self.for_each_bits(|b| v.push(f32::from_bits(b)));
        v
    }
}

/// Whether float32 `bits` are a finite number (the exponent is not all ones).
fn finite_bits(bits: u32) -> bool {
    bits & 0x7f80_0000 != 0x7f80_0000
}

/// A MessagePack value header; strings, binaries and extensions borrow their bytes.
#[derive(Debug, Clone, Copy)]
enum Head<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Ext(i8, &'a [u8]),
    Array(u32),
    Map(u32),
}

impl Head<'_> {
    /// A number as an embedding element.
    fn number(self) -> Option<f32> {
        match self {
            Head::Float(f) => Some(f as f32),
            Head::UInt(u) => Some(u as f32),
            Head::Int(i) => Some(i as f32),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Head::Nil => "nil",
            Head::Bool(_) => "a boolean",
            Head::UInt(_) | Head::Int(_) => "an integer",
            Head::Float(_) => "a float",
            Head::Str(_) => "a string",
            Head::Bin(_) => "binary data",
            Head::Ext(..) => "an extension value",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
        }
    }
}

/// A fault at an offset; the decoder adds the record index. `more`: not a fault
/// but the end of a window whose file goes on (see [`Decoder::resume`]).
struct Fault {
    offset: usize,
    message: String,
    more: bool,
}

type Step<T> = Result<T, Fault>;

fn fault<T>(offset: usize, message: impl Into<String>) -> Step<T> {
    Err(Fault {
        offset,
        message: message.into(),
        more: false,
    })
}

/// Decodes the records of one file buffer, in order; stops at the first error.
/// The buffer may be a window of the file ([`Decoder::resume`]): a record cut by
/// its end stalls the decoder, and the next window resumes at that record.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    index: u64,
    array_left: u32,
    embed_dim: Option<usize>,
    done: bool,
    /// File offset of `buf[0]`.
    base: u64,
    /// Bytes of the file beyond `buf`.
    after: u64,
    stalled: bool,
}

/// Where decoding of a file stands between two windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Resume {
    /// File offset of the next record (or array header).
    pub(crate) offset: u64,
    index: u64,
    array_left: u32,
}

/// The keys that make a row; a delete record carries none of them.
const ROW_FIELDS: [&str; 7] = [
    "chunk_index",
    "content",
    "embedding",
    "metadata",
    "source",
    "created_at",
    "chunk_count",
];

impl<'a> Decoder<'a> {
    /// A decoder over `buf`; `embed_dim`, when set, is the required embedding length.
    pub(crate) fn new(buf: &'a [u8], embed_dim: Option<usize>) -> Decoder<'a> {
        Decoder::resume(buf, embed_dim, Resume::default(), 0)
    }

    /// A decoder over a window of a file: `buf` starts at `at.offset`, and `after`
    /// bytes of the file follow it.
    pub(crate) fn resume(
        buf: &'a [u8],
        embed_dim: Option<usize>,
        at: Resume,
        after: u64,
    ) -> Decoder<'a> {
        Decoder {
            buf,
            pos: 0,
            index: at.index,
            array_left: at.array_left,
            embed_dim,
            done: false,
            base: at.offset,
            after,
            stalled: false,
        }
    }

    /// After the iterator ended: `Some` when it stopped at the end of the window
    /// with the file going on, with where to resume.
    pub(crate) fn stalled(&self) -> Option<Resume> {
        self.stalled.then_some(Resume {
            offset: self.base + self.pos as u64,
            index: self.index,
            array_left: self.array_left,
        })
    }

    /// The next record with its index in the file.
    pub(crate) fn next_indexed(&mut self) -> Option<Result<(u64, Record<'a>), RecordError>> {
        let index = self.index;
        self.next().map(|r| r.map(|record| (index, record)))
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let start = self.pos;
        match start.checked_add(n).filter(|end| *end <= self.buf.len()) {
            Some(end) => {
                self.pos = end;
                Ok(&self.buf[start..end])
            }
            None if self.after > 0 => Err(Fault {
                offset: start,
                message: String::new(),
                more: true,
            }),
            None => fault(
                start,
                format!(
                    "truncated: needs {n} more byte(s), {} left",
                    self.buf.len() - start
                ),
            ),
        }
    }

    fn be(&mut self, n: usize) -> Step<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// A count of elements that each need at least one byte: more than remain is a lie.
    fn count(&mut self, n: usize, at: usize) -> Step<u32> {
        let count = self.be(n)?;
        let left = (self.buf.len() - self.pos) as u64 + self.after;
        if count > left {
            return fault(
                at,
                format!("header claims {count} elements but only {left} bytes remain"),
            );
        }
        Ok(count as u32)
    }

    fn sized(&mut self, len_bytes: usize) -> Step<&'a [u8]> {
        let len = self.be(len_bytes)? as usize;
        self.take(len)
    }

    fn head(&mut self) -> Step<Head<'a>> {
        let at = self.pos;
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Head::UInt(u64::from(marker)),
            0x80..=0x8f => Head::Map(u32::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(u32::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(self.sized(1)?),
            0xc5 => Head::Bin(self.sized(2)?),
            0xc6 => Head::Bin(self.sized(4)?),
            0xc7..=0xc9 => {
                let len = self.be(1 << (marker - 0xc7))? as usize;
                let ty = self.take(1)?[0] as i8;
                Head::Ext(ty, self.take(len)?)
            }
            0xca => Head::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Head::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Head::UInt(self.be(1 << (marker - 0xcc))?),
            0xd0 => Head::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Head::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Head::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Head::Int(self.be(8)? as i64),
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                Head::Ext(ty, self.take(1 << (marker - 0xd4))?)
            }
            0xd9 => Head::Str(self.sized(1)?),
            0xda => Head::Str(self.sized(2)?),
            0xdb => Head::Str(self.sized(4)?),
            0xdc => Head::Array(self.count(2, at)?),
            0xdd => Head::Array(self.count(4, at)?),
            0xde => Head::Map(self.count(2, at)?),
            0xdf => Head::Map(self.count(4, at)?),
            0xe0..=0xff => Head::Int(i64::from(marker as i8)),
            0xc1 => return fault(at, "byte 0xc1 is never used in MessagePack"),
        })
    }

    /// Skips one value of any type, nested at most [`MAX_DEPTH`] deep.
    fn skip(&mut self, depth: usize) -> Step<()> {
        let at = self.pos;
        if depth > MAX_DEPTH {
            return fault(at, format!("nested deeper than {MAX_DEPTH} levels"));
        }
        match self.head()? {
            Head::Array(n) => (0..n).try_for_each(|_| self.skip(depth + 1)),
            Head::Map(n) => (0..u64::from(n) * 2).try_for_each(|_| self.skip(depth + 1)),
            _ => Ok(()),
        }
    }

    fn record(&mut self) -> Step<Record<'a>> {
        let start = self.pos;
        let fields = match self.head()? {
            Head::Map(n) => n,
            other => {
                return fault(
                    start,
                    format!("a record must be a map, found {}", other.kind()),
                );
            }
        };
        let mut doc_id = None;
        let mut chunk_index = None;
        let mut content = None;
        let mut rec = Record {
            doc_id: "",
            chunk_index: 0,
            content: "",
            embedding: None,
            metadata: None,
            source: None,
            created_at: None,
            delete: false,
            chunk_count: None,
        };
        // The first row field seen, to refuse a delete record that also carries one.
        let mut row_field: Option<&'static str> = None;
        for _ in 0..fields {
            let key_at = self.pos;
            let key = match self.head()? {
                Head::Str(k) => k,
                other => {
                    return fault(
                        key_at,
                        format!("record keys must be strings, found {}", other.kind()),
                    );
                }
            };
            let field = ROW_FIELDS.iter().find(|f| f.as_bytes() == key);
            if row_field.is_none() {
                row_field = field.copied();
            }
            match key {
                b"doc_id" => doc_id = Some(self.text("doc_id")?),
                b"delete" => rec.delete = self.delete_flag()?,
                b"chunk_index" => chunk_index = Some(self.chunk_index()?),
                b"chunk_count" => rec.chunk_count = Some(self.chunk_count()?),
                b"content" => content = Some(self.text("content")?),
                b"embedding" => rec.embedding = self.embedding()?,
                b"metadata" => rec.metadata = self.metadata()?,
                b"source" => rec.source = self.optional_text("source")?,
                b"created_at" => rec.created_at = self.created_at()?,
                _ => self.skip(1)?,
            }
        }
        rec.doc_id = doc_id.ok_or_else(|| missing(start, "doc_id"))?;
        if rec.doc_id.is_empty() || rec.doc_id.len() > MAX_DOC_ID {
            return fault(
                start,
                format!(
                    "doc_id must be 1 to {MAX_DOC_ID} bytes, got {}",
                    rec.doc_id.len()
                ),
            );
        }
        if rec.delete {
            if let Some(field) = row_field {
                return fault(
                    start,
                    format!(
                        "a delete record carries only doc_id and delete, but this one also has {field}"
                    ),
                );
            }
            return Ok(rec);
        }
        rec.chunk_index = chunk_index.ok_or_else(|| missing(start, "chunk_index"))?;
        rec.content = content.ok_or_else(|| missing(start, "content"))?;
        Ok(rec)
    }

    fn chunk_count(&mut self) -> Step<u32> {
        let n = self.below_2_31("chunk_count", 1, "a whole number from 1 to 2^31-1")?;
        Ok(n as u32)
    }

    fn delete_flag(&mut self) -> Step<bool> {
        let at = self.pos;
        match self.head()? {
            Head::Bool(b) => Ok(b),
            other => fault(
                at,
                format!("delete must be true or false, found {}", other.kind()),
            ),
        }
    }

    fn utf8(&self, bytes: &'a [u8], at: usize, field: &str) -> Step<&'a str> {
        // The fast check says only yes or no; std's says where, for the message.
        let text = simdutf8::basic::from_utf8(bytes).map_err(|_| {
            let valid = std::str::from_utf8(bytes)
                .err()
                .map_or(0, |e| e.valid_up_to());
            Fault {
                more: false,
                offset: at,
                message: format!("{field} is not valid UTF-8 (at byte {valid} of the string)"),
            }
        })?;
        if text.contains('\0') {
            return fault(
                at,
                format!("{field} contains a NUL character, which PostgreSQL text cannot store"),
            );
        }
        Ok(text)
    }

    fn text(&mut self, field: &str) -> Step<&'a str> {
        let at = self.pos;
        match self.head()? {
            Head::Str(b) => self.utf8(b, at, field),
            other => fault(
                at,
                format!("{field} must be a string, found {}", other.kind()),
            ),
        }
    }

    fn optional_text(&mut self, field: &str) -> Step<Option<&'a str>> {
        if self.peek_nil() {
            return Ok(None);
        }
        self.text(field).map(Some)
    }

    fn peek_nil(&mut self) -> bool {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn chunk_index(&mut self) -> Step<i32> {
        self.below_2_31("chunk_index", 0, "an unsigned integer below 2^31")
    }

    /// An unsigned integer from `min` to 2^31-1 for `field`; `expected` says what
    /// the error message asks for.
    fn below_2_31(&mut self, field: &str, min: i32, expected: &str) -> Step<i32> {
        let at = self.pos;
        let value = match self.head()? {
            Head::UInt(n) => Some(n),
            Head::Int(n) => u64::try_from(n).ok(),
            other => {
                return fault(
                    at,
                    format!(
                        "{field} must be an unsigned integer, found {}",
                        other.kind()
                    ),
                );
            }
        };
        match value
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= min)
        {
            Some(n) => Ok(n),
            None => fault(at, format!("{field} must be {expected}")),
        }
    }

    fn embedding(&mut self) -> Step<Option<Embedding<'a>>> {
        let at = self.pos;
        let embedding = match self.head()? {
            Head::Nil => return Ok(None),
            Head::Bin(b) => {
                if b.len() % 4 != 0 {
                    return fault(
                        at,
                        format!("embedding bin is {} bytes, not a multiple of 4", b.len()),
                    );
                }
                if let Some(i) = b
                    .chunks_exact(4)
                    .position(|c| !finite_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                {
                    return fault(at, format!("embedding[{i}] is not a finite number"));
                }
                Embedding::Le(b)
            }
            Head::Array(n) => match self.f32s(n as usize) {
                Some(Ok(f32s)) => {
                    self.pos += f32s.len();
                    Embedding::F32s(f32s)
                }
                Some(Err(i)) => {
                    return fault(at, format!("embedding[{i}] is not a finite number"));
                }
                None => self.packed(at, n)?,
            },
            other => {
                return fault(
                    at,
                    format!(
                        "embedding must be an array of numbers or bin of f32, found {}",
                        other.kind()
                    ),
                );
            }
        };
        if let Some(dim) = self.embed_dim
            && embedding.len() != dim
        {
            return fault(
                at,
                format!(
                    "embedding has {} values, EMBED_DIM is {dim}",
                    embedding.len()
                ),
            );
        }
        Ok(Some(embedding))
    }

    /// The next `n` array elements when every one is a float32 (0xca), the common
    /// case, checked in one pass without decoding each header: `Err(i)` when
    /// element `i` is not finite, `None` when some element is another kind.
    fn f32s(&self, n: usize) -> Option<std::result::Result<&'a [u8], usize>> {
        let bytes = self
            .buf
            .get(self.pos..self.pos.checked_add(n.checked_mul(5)?)?)?;
        let mut first_bad = None;
        for (i, c) in bytes.chunks_exact(5).enumerate() {
            if c[0] != 0xca {
                return None;
            }
            if first_bad.is_none() && !finite_bits(u32::from_be_bytes([c[1], c[2], c[3], c[4]])) {
                first_bad = Some(i);
            }
        }
        Some(first_bad.map_or(Ok(bytes), Err))
    }

    /// An array of numbers of any MessagePack width, each checked.
    fn packed(&mut self, at: usize, n: u32) -> Step<Embedding<'a>> {
        let start = self.pos;
        for i in 0..n {
            let el_at = self.pos;
            let head = self.head()?;
            let Some(value) = head.number() else {
                return fault(
                    el_at,
                    format!("embedding[{i}] must be a number, found {}", head.kind()),
                );
            };
            if !value.is_finite() {
                // A finite double past f32's range is named as such: the producer
                // sent a real number, just one a float4 cannot hold.
                let why = match head {
                    Head::Float(f) if f.is_finite() => "is beyond the range of f32",
                    _ => "is not a finite number",
                };
                return fault(at, format!("embedding[{i}] {why}"));
            }
        }
        Ok(Embedding::Packed {
            bytes: &self.buf[start..self.pos],
            len: n as usize,
        })
    }

    fn metadata(&mut self) -> Step<Option<String>> {
        let at = self.pos;
        if self.peek_nil() {
            return Ok(None);
        }
        if !matches!(self.buf.get(at), Some(0x80..=0x8f | 0xde | 0xdf)) {
            let kind = self.head()?.kind();
            return fault(at, format!("metadata must be a map, found {kind}"));
        }
        let mut out = String::new();
        self.json(&mut out, 1)?;
        Ok(Some(out))
    }

    /// Writes one value as JSON text.
    fn json(&mut self, out: &mut String, depth: usize) -> Step<()> {
        let at = self.pos;
        if depth > MAX_DEPTH {
            return fault(
                at,
                format!("metadata nested deeper than {MAX_DEPTH} levels"),
            );
        }
        match self.head()? {
            Head::Nil => out.push_str("null"),
            Head::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Head::UInt(n) => {
                let _ = write!(out, "{n}");
            }
            Head::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Head::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => out.push_str(&n.to_string()),
                None => {
                    return fault(
                        at,
                        "metadata holds a NaN or infinite number, which JSON cannot store",
                    );
                }
            },
            Head::Str(b) => json_string(out, self.utf8(b, at, "metadata string")?),
            Head::Ext(-1, data) => {
                let micros = timestamp_ext(data).ok_or_else(|| bad_timestamp(at))?;
                json_string(out, &rfc3339(micros));
            }
            Head::Bin(_) | Head::Ext(..) => {
                return fault(
                    at,
                    "metadata holds binary or extension data, which JSON cannot store",
                );
            }
            Head::Array(n) => {
                out.push('[');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    self.json(out, depth + 1)?;
                }
                out.push(']');
            }
            Head::Map(n) => {
                out.push('{');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    let key_at = self.pos;
                    match self.head()? {
                        Head::Str(k) => json_string(out, self.utf8(k, key_at, "metadata key")?),
                        Head::UInt(k) => json_string(out, &k.to_string()),
                        Head::Int(k) => json_string(out, &k.to_string()),
                        other => {
                            return fault(
                                key_at,
                                format!(
                                    "metadata keys must be strings or integers, found {}",
                                    other.kind()
                                ),
                            );
                        }
                    }
                    out.push(':');
                    self.json(out, depth + 1)?;
                }
                out.push('}');
            }
        }
        Ok(())
    }

    fn created_at(&mut self) -> Step<Option<i64>> {
        let at = self.pos;
        let micros = match self.head()? {
            Head::Nil => return Ok(None),
            Head::Ext(-1, data) => timestamp_ext(data),
            Head::UInt(s) => i64::try_from(s).ok().and_then(|s| s.checked_mul(1_000_000)),
            Head::Int(s) => s.checked_mul(1_000_000),
            Head::Float(f) => {
                let m = (f * 1e6).round();
                (m.is_finite() && m.abs() < 9.2e18).then_some(m as i64)
            }
            Head::Str(b) => {
                let text = self.utf8(b, at, "created_at")?;
                match OffsetDateTime::parse(text, &Rfc3339) {
                    Ok(t) => i64::try_from(t.unix_timestamp_nanos() / 1000).ok(),
                    // The value itself stays out of the message: record data never reaches a log.
                    Err(e) => {
                        return fault(at, format!("created_at is not an RFC 3339 timestamp: {e}"));
                    }
                }
            }
            other => {
                return fault(
                    at,
                    format!(
                        "created_at must be a timestamp, number or RFC 3339 string, found {}",
                        other.kind()
                    ),
                );
            }
        };
        match micros.filter(|m| (MIN_MICROS..=MAX_MICROS).contains(m)) {
            Some(m) => Ok(Some(m)),
            None => Err(bad_timestamp(at)),
        }
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (start, array_left) = (self.pos, self.array_left);
        let step = (|| -> Step<Option<Record<'a>>> {
            while self.array_left == 0 {
                if self.pos == self.buf.len() && self.after > 0 {
                    return Err(Fault {
                        offset: self.pos,
                        message: String::new(),
                        more: true,
                    });
                }
                if self.pos == self.buf.len() {
                    return Ok(None);
                }
                let at = self.pos;
                match self.buf[at] {
                    0x90..=0x9f | 0xdc | 0xdd => match self.head()? {
                        Head::Array(n) => self.array_left = n,
                        _ => return fault(at, "expected an array"),
                    },
                    0x80..=0x8f | 0xde | 0xdf => return self.record().map(Some),
                    _ => {
                        let kind = self.head()?.kind();
                        return fault(
                            at,
                            format!(
                                "expected a record map or an array of record maps, found {kind}"
                            ),
                        );
                    }
                }
            }
            self.array_left -= 1;
            self.record().map(Some)
        })();
        match step {
            Ok(Some(record)) => {
                self.index += 1;
                Some(Ok(record))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(f) if f.more => {
                // The record goes on in the next window: start it again there.
                (self.pos, self.array_left) = (start, array_left);
                self.done = true;
                self.stalled = true;
                None
            }
            Err(f) => {
                self.done = true;
                Some(Err(RecordError {
                    record_index: self.index,
                    byte_offset: self.base + f.offset as u64,
                    message: f.message,
                }))
            }
        }
    }
}

fn missing(at: usize, field: &str) -> Fault {
    Fault {
        offset: at,
        message: format!("required key `{field}` is missing"),
        more: false,
    }
}

fn bad_timestamp(at: usize) -> Fault {
    Fault {
        offset: at,
        message: "created_at is not a valid timestamp between years 0001 and 9999".into(),
        more: false,
    }
}

/// The MessagePack timestamp extension (type -1) in microseconds.
fn timestamp_ext(data: &[u8]) -> Option<i64> {
    let be = |b: &[u8]| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
    let (secs, nanos) = match data.len() {
        4 => (be(data) as i64, 0),
        8 => {
            let v = be(data);
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => (be(&data[4..]) as i64, be(&data[..4]) as u32),
        _ => return None,
    };
    if nanos >= 1_000_000_000 {
        return None;
    }
    secs.checked_mul(1_000_000)?
        .checked_add(i64::from(nanos / 1000))
}

/// RFC 3339 UTC text for microseconds since the epoch.
pub(crate) fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
