//! JSON Lines in, MessagePack records out: lines read through a cap (a line
//! longer than the cap is skipped without being held, however long it is), and
//! one JSON object turned into the record map a producer would have written.
//! Nothing here judges a record: the bytes it makes go through `process`'s own
//! decoder, which says what is wrong with them.

use rmp::encode as mp;
use serde_json::{Map, Value};
use std::io::{self, BufRead, Read};

/// What [`Lines::next`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// Line `number` (1-based) is in the buffer, without its line ending.
    Text(u64),
    /// Line `number` is longer than the cap; it was skipped, never held.
    TooLong(u64),
    /// The input ended.
    End,
}

/// The lines of an input, none held past `cap` bytes.
pub(crate) struct Lines<R> {
    reader: R,
    cap: u64,
    number: u64,
    consumed: u64,
}

impl<R: BufRead> Lines<R> {
    /// Lines of `reader`, each at most `cap` bytes.
    pub(crate) fn new(reader: R, cap: u64) -> Lines<R> {
        Lines {
            reader,
            cap,
            number: 0,
            consumed: 0,
        }
    }

    /// The longest line held.
    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    /// The number of the last line read.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// Bytes read so far, line endings included.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads the next line into `buf` (cleared first). The buffer grows by
    /// doubling, never past `cap` + 1 bytes: a line of any length costs at most
    /// that much memory.
    pub(crate) fn next(&mut self, buf: &mut Vec<u8>) -> io::Result<Line> {
        buf.clear();
        // One byte past the cap tells a line of exactly `cap` bytes (its newline
        // then follows) from a longer one.
        let limit = self.cap.saturating_add(1);
        let mut n = 0u64;
        loop {
            let len = buf.len() as u64;
            let want = (len * 2).max(64 << 10).min(limit);
            let room = want.saturating_sub(len).max(1);
            buf.reserve_exact(usize::try_from(room).unwrap_or(usize::MAX));
            // Within the reserved room, so read_until (which finds the newline
            // with std's optimised memchr) never grows the buffer itself.
            let got = (&mut self.reader).take(room).read_until(b'\n', buf)? as u64;
            n += got;
            if got < room || buf.last() == Some(&b'\n') || n >= limit {
                break;
            }
        }
        self.consumed += n;
        if n == 0 {
            return Ok(Line::End);
        }
        self.number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if n > self.cap {
            // The rest of the line is discarded as it is read, never stored.
            self.consumed += self.reader.skip_until(b'\n')? as u64;
            buf.clear();
            return Ok(Line::TooLong(self.number));
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Line::Text(self.number))
    }
}

/// Line `line` as a MessagePack record map in `out`, or why it is not a JSON object.
pub(crate) fn to_msgpack(line: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    if simdutf8::basic::from_utf8(line).is_err() {
        // The fast check says only yes or no; std's says where, for the message.
        let at = std::str::from_utf8(line)
            .err()
            .map_or(0, |e| e.valid_up_to());
        return Err(format!("not valid UTF-8 (at byte {} of the line)", at + 1));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| json_error(line, &e))?;
    let Value::Object(map) = value else {
        return Err(format!(
            "a line must hold one JSON object (a record), found {}",
            kind(&value)
        ));
    };
    record(&map, out);
    Ok(())
}

/// The doc_id of a line that is a JSON object whose record is bad, when it
/// has a string one.
pub(crate) fn doc_id(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        doc_id: Option<Value>,
    }
    match serde_json::from_slice::<Id>(line).ok()?.doc_id? {
        Value::String(id) => Some(id),
        _ => None,
    }
}

/// serde_json's message without its "line 1" (a line is one line), with a word
/// on the literals that JSON lacks.
fn json_error(line: &[u8], e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    // The column is where serde_json stopped: on the literal, or just past its
    // minus sign.
    let at = e.column().saturating_sub(1);
    let literal = [at.saturating_sub(1), at]
        .into_iter()
        .filter_map(|i| line.get(i..))
        .find_map(|rest| {
            ["NaN", "-Infinity", "Infinity", "-inf", "inf", "nan"]
                .into_iter()
                .find(|l| rest.starts_with(l.as_bytes()))
        });
    match literal {
        Some(l) => format!(
            "invalid JSON at column {}: `{l}` is not a JSON number (embeddings must be finite numbers)",
            e.column()
        ),
        None => format!("invalid JSON at column {}: {message}", e.column()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The record map, keys in the order the line gave them. An `embedding` array's
/// numbers go as float32, as producers write them, or as float64 when f32 cannot
/// hold them, so that the decoder names the element beyond its range.
fn record(map: &Map<String, Value>, out: &mut Vec<u8>) {
    // Writes to a Vec cannot fail; lengths fit u32, since a line is capped at u32::MAX bytes.
    let _ = mp::write_map_len(out, map.len() as u32);
    for (key, value) in map {
        let _ = mp::write_str(out, key);
        match (key.as_str(), value) {
            ("embedding", Value::Array(items)) => {
                let _ = mp::write_array_len(out, items.len() as u32);
                for item in items {
                    match item.as_f64() {
                        Some(f) if (f as f32).is_finite() => {
                            let _ = mp::write_f32(out, f as f32);
                        }
                        Some(f) => {
                            let _ = mp::write_f64(out, f);
                        }
                        None => value_of(item, out),
                    }
                }
            }
            _ => value_of(value, out),
        }
    }
}

/// A JSON value as the MessagePack value of the same meaning. serde_json bounds
/// nesting at 128 levels, which bounds this recursion.
fn value_of(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => {
            let _ = mp::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = mp::write_bool(out, *b);
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = mp::write_uint(out, u);
            } else if let Some(i) = n.as_i64() {
                let _ = mp::write_sint(out, i);
            } else {
                let _ = mp::write_f64(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => {
            let _ = mp::write_str(out, s);
        }
        Value::Array(items) => {
            let _ = mp::write_array_len(out, items.len() as u32);
            items.iter().for_each(|v| value_of(v, out));
        }
        Value::Object(map) => {
            let _ = mp::write_map_len(out, map.len() as u32);
            for (k, v) in map {
                let _ = mp::write_str(out, k);
                value_of(v, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Decoder, Embedding};

    fn lines(input: &[u8], cap: u64) -> Vec<(Line, Vec<u8>)> {
        let mut lines = Lines::new(input, cap);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match lines.next(&mut buf) {
                Ok(Line::End) | Err(_) => return out,
                Ok(line) => out.push((line, buf.clone())),
            }
        }
    }

    #[test]
    fn lines_are_numbered_and_capped_without_being_held() {
        let got = lines(b"ab\r\n\nabcdef\nabcd\nxyz", 4);
        let want: Vec<(Line, Vec<u8>)> = vec![
            (Line::Text(1), b"ab".to_vec()),
            (Line::Text(2), Vec::new()),
            (Line::TooLong(3), Vec::new()),
            (Line::Text(4), b"abcd".to_vec()),
            (Line::Text(5), b"xyz".to_vec()),
        ];
        assert_eq!(got, want);
        // A long last line without its newline is skipped to the end.
        assert_eq!(lines(b"abcdefgh", 4), vec![(Line::TooLong(1), Vec::new())]);
        let mut l = Lines::new(&b"abcdefgh\nab\n"[..], 4);
        let mut buf = Vec::new();
        assert_eq!(l.next(&mut buf).ok(), Some(Line::TooLong(1)));
        assert!(buf.capacity() <= 16, "held {} bytes", buf.capacity());
        assert_eq!(l.next(&mut buf).ok(), Some(Line::Text(2)));
        assert_eq!(l.consumed(), 12);
        // A line of megabytes under a cap of 100 kB: the buffer stops at the cap.
        let mut long = vec![b'x'; 3 << 20];
        long.extend_from_slice(b"\n{}\n");
        let mut l = Lines::new(&long[..], 100_000);
        assert_eq!(l.next(&mut buf).ok(), Some(Line::TooLong(1)));
        assert!(buf.capacity() <= 100_001, "held {} bytes", buf.capacity());
        assert_eq!(l.next(&mut buf).ok(), Some(Line::Text(2)));
        assert_eq!(buf, b"{}");
    }

    fn record(json: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        to_msgpack(json.as_bytes(), &mut out).map(|()| out)
    }

    #[test]
    fn a_json_record_becomes_the_map_a_producer_writes() -> Result<(), String> {
        let bytes = record(
            r#"{"doc_id":"d","chunk_index":3,"content":"é","embedding":[0.5,1,-2e-3],"metadata":{"k":[1,"x",null,true]},"created_at":1733400000.5,"extra":{}}"#,
        )?;
        let mut decoder = Decoder::new(&bytes, Some(3));
        let r = decoder
            .next()
            .ok_or("no record")?
            .map_err(|e| e.to_string())?;
        assert_eq!((r.doc_id, r.chunk_index, r.content), ("d", 3, "é"));
        assert!(matches!(r.embedding, Some(Embedding::F32s(_))));
        assert_eq!(r.embedding.map(|e| e.to_vec()), Some(vec![0.5, 1.0, -2e-3]));
        assert_eq!(r.metadata.as_deref(), Some(r#"{"k":[1,"x",null,true]}"#));
        assert_eq!(r.created_at, Some(1_733_400_000_500_000));
        assert!(decoder.next().is_none());
        Ok(())
    }

    #[test]
    fn what_is_not_a_record_says_why() {
        let why = |text: &[u8]| to_msgpack(text, &mut Vec::new()).err().unwrap_or_default();
        assert_eq!(
            why(b"{\"a\":\"x\xffy\"}"),
            "not valid UTF-8 (at byte 8 of the line)"
        );
        assert!(why(br#"{"embedding":[1,NaN]}"#).contains("`NaN` is not a JSON number"));
        assert!(why(br#"{"embedding":[-Infinity]}"#).contains("`-Infinity`"));
        assert_eq!(
            why(br#"{"a":1,}"#),
            "invalid JSON at column 8: trailing comma"
        );
        assert!(why(b"[{}]").contains("found an array"));
        assert!(why(b"\"x\"").contains("found a string"));
    }

    #[test]
    fn the_decoder_names_what_json_cannot_say_wrong() -> Result<(), String> {
        let first_error = |json: &str| -> Result<String, String> {
            let bytes = record(json)?;
            Ok(Decoder::new(&bytes, Some(2))
                .find_map(|r| r.err())
                .map(|e| e.message)
                .unwrap_or_default())
        };
        let base = r#""doc_id":"d","chunk_index":0,"content":"x""#;
        let cases = [
            (
                r#""embedding":[1,1e39]"#,
                "embedding[1] is beyond the range of f32",
            ),
            (
                r#""embedding":[1,"2"]"#,
                "embedding[1] must be a number, found a string",
            ),
            (
                r#""embedding":[1]"#,
                "embedding has 1 values, EMBED_DIM is 2",
            ),
            (
                r#""created_at":"soon""#,
                "created_at is not an RFC 3339 timestamp",
            ),
        ];
        for (field, want) in cases {
            let got = first_error(&format!("{{{base},{field}}}"))?;
            assert!(got.starts_with(want), "{field}: {got}");
        }
        assert!(
            first_error(r#"{"doc_id":"d","chunk_index":1.0,"content":"x"}"#)?
                .contains("chunk_index must be an unsigned integer, found a float")
        );
        Ok(())
    }

    #[test]
    fn doc_id_is_read_from_a_bad_record() {
        assert_eq!(
            doc_id(br#"{"doc_id":"a","chunk_index":"x"}"#),
            Some("a".into())
        );
        assert_eq!(doc_id(br#"{"doc_id":7}"#), None);
        assert_eq!(doc_id(br#"{"content":"x"}"#), None);
    }
}
