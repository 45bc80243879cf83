use super::*;
use proptest::prelude::*;
use rmp::encode as e;

/// A MessagePack value for building test inputs byte by byte.
#[derive(Debug, Clone)]
enum V {
    Nil,
    U(u64),
    I(i64),
    F(f64),
    S(String),
    Raw(Vec<u8>),
    Bin(Vec<u8>),
    A(Vec<V>),
    M(Vec<(V, V)>),
    Ts(i64, u32),
}

fn s(x: &str) -> V {
    V::S(x.to_string())
}

fn enc(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Nil => {
            let _ = e::write_nil(out);
        }
        V::U(n) => {
            let _ = e::write_uint(out, *n);
        }
        V::I(n) => {
            let _ = e::write_sint(out, *n);
        }
        V::F(f) => {
            let _ = e::write_f64(out, *f);
        }
        V::S(x) => {
            let _ = e::write_str(out, x);
        }
        V::Raw(b) => out.extend_from_slice(b),
        V::Bin(b) => {
            let _ = e::write_bin(out, b);
        }
        V::A(items) => {
            let _ = e::write_array_len(out, items.len() as u32);
            items.iter().for_each(|i| enc(i, out));
        }
        V::M(pairs) => {
            let _ = e::write_map_len(out, pairs.len() as u32);
            for (k, v) in pairs {
                enc(k, out);
                enc(v, out);
            }
        }
        V::Ts(secs, nanos) => {
            let _ = e::write_ext_meta(out, 12, -1);
            out.extend_from_slice(&nanos.to_be_bytes());
            out.extend_from_slice(&secs.to_be_bytes());
        }
    }
}

fn bytes(values: &[V]) -> Vec<u8> {
    let mut out = Vec::new();
    values.iter().for_each(|v| enc(v, &mut out));
    out
}

fn rec(extra: Vec<(V, V)>) -> V {
    let mut pairs = vec![
        (s("doc_id"), s("doc-1")),
        (s("chunk_index"), V::U(0)),
        (s("content"), s("héllo wörld ✓")),
    ];
    pairs.extend(extra);
    V::M(pairs)
}

/// A record that owns its text, so tests can keep decoded records past their buffer.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    doc_id: String,
    chunk_index: i32,
    content: String,
    embedding: Option<Vec<f32>>,
    metadata: Option<String>,
    source: Option<String>,
    created_at: Option<i64>,
}

impl From<Record<'_>> for Owned {
    fn from(r: Record<'_>) -> Owned {
        Owned {
            doc_id: r.doc_id.to_string(),
            chunk_index: r.chunk_index,
            content: r.content.to_string(),
            embedding: r.embedding.as_ref().map(Embedding::to_vec),
            metadata: r.metadata,
            source: r.source.map(str::to_string),
            created_at: r.created_at,
        }
    }
}

fn decode(buf: &[u8]) -> Result<Vec<Owned>, RecordError> {
    Decoder::new(buf, None)
        .map(|r| r.map(Owned::from))
        .collect()
}

fn error_of(buf: &[u8]) -> RecordError {
    match decode(buf) {
        Err(e) => e,
        Ok(r) => RecordError {
            record_index: u64::MAX,
            byte_offset: 0,
            message: format!("unexpectedly decoded {} records", r.len()),
        },
    }
}

#[test]
fn stream_and_array_forms_decode_alike() {
    let stream = bytes(&[rec(vec![]), rec(vec![])]);
    let array = bytes(&[V::A(vec![rec(vec![]), rec(vec![])])]);
    let a = decode(&stream);
    assert_eq!(a.as_ref().map(Vec::len), Ok(2));
    assert_eq!(a, decode(&array));
    assert_eq!(
        a.ok().map(|r| r[0].content.clone()),
        Some("héllo wörld ✓".to_string())
    );
}

#[test]
fn empty_array_is_zero_records() {
    assert_eq!(decode(&bytes(&[V::A(vec![])])), Ok(vec![]));
}

#[test]
fn every_created_at_form() {
    let forms = [
        V::Ts(1_700_000_000, 500_000_000),
        V::U(1_700_000_000),
        V::I(1_700_000_000),
        V::F(1_700_000_000.5),
        s("2023-11-14T22:13:20.5Z"),
        s("2023-11-15T00:13:20.5+02:00"),
    ];
    for (i, form) in forms.iter().enumerate() {
        let r = decode(&bytes(&[rec(vec![(s("created_at"), form.clone())])]));
        let want = if i == 1 || i == 2 {
            1_700_000_000_000_000
        } else {
            1_700_000_000_500_000
        };
        assert_eq!(r.map(|r| r[0].created_at), Ok(Some(want)), "form {i}");
    }
    // 32- and 64-bit timestamp extension forms.
    let ts32 = [0xd6, 0xff, 0x65, 0x53, 0xf1, 0x00];
    let mut buf = bytes(&[V::M(vec![
        (s("doc_id"), s("d")),
        (s("chunk_index"), V::U(1)),
        (s("content"), s("c")),
        (s("created_at"), V::Raw(ts32.to_vec())),
    ])]);
    assert_eq!(
        decode(&buf).map(|r| r[0].created_at),
        Ok(Some(1_700_000_000_000_000))
    );
    let v64: u64 = (500_000_000u64 << 34) | 1_700_000_000;
    let mut ts64 = vec![0xd7, 0xff];
    ts64.extend_from_slice(&v64.to_be_bytes());
    buf = bytes(&[rec(vec![(s("created_at"), V::Raw(ts64))])]);
    assert_eq!(
        decode(&buf).map(|r| r[0].created_at),
        Ok(Some(1_700_000_000_500_000))
    );
}

#[test]
fn embeddings_as_array_or_le_bin() {
    let arr = decode(&bytes(&[rec(vec![(
        s("embedding"),
        V::A(vec![
            V::F(0.5),
            V::U(1),
            V::I(-2),
            V::U(300),
            V::I(-40000),
            V::U(1 << 40),
            V::I(-100),
            V::U(200),
            V::Raw([&[0xca][..], &(-0.75f32).to_be_bytes()].concat()),
        ]),
    )])]));
    assert_eq!(
        arr.map(|r| r[0].embedding.clone()),
        Ok(Some(vec![
            0.5,
            1.0,
            -2.0,
            300.0,
            -40000.0,
            (1u64 << 40) as f32,
            -100.0,
            200.0,
            -0.75
        ]))
    );
    let bin: Vec<u8> = [0.25f32, -1.5]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    let b = decode(&bytes(&[rec(vec![(s("embedding"), V::Bin(bin))])]));
    assert_eq!(
        b.map(|r| r[0].embedding.clone()),
        Ok(Some(vec![0.25, -1.5]))
    );
    let none = decode(&bytes(&[rec(vec![(s("embedding"), V::Nil)])]));
    assert_eq!(none.map(|r| r[0].embedding.clone()), Ok(None));
}

#[test]
fn only_zeros_of_either_sign_are_zero_in_every_layout() {
    let tiny = f32::from_bits(0x80); // a denormal whose low byte is 0x80
    for values in [vec![0.0f32, -0.0], vec![0.0, tiny]] {
        let le: Vec<u8> = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        let f32s: Vec<u8> = values
            .iter()
            .flat_map(|f| [&[0xca][..], &f.to_be_bytes()].concat())
            .collect();
        let want = values.iter().all(|x| *x == 0.0);
        assert_eq!(Embedding::Le(&le).all_zero(), want, "{values:?}");
        assert_eq!(Embedding::F32s(&f32s).all_zero(), want, "{values:?}");
        assert_eq!(Embedding::Values(values.clone()).all_zero(), want);
    }
}

#[test]
fn embed_dim_mismatch_is_a_bad_record() {
    let buf = bytes(&[rec(vec![(s("embedding"), V::A(vec![V::F(0.5)]))])]);
    let r: Result<Vec<_>, _> = Decoder::new(&buf, Some(2)).collect();
    assert!(
        r.err()
            .is_some_and(|e| e.message.contains("EMBED_DIM is 2"))
    );
}

#[test]
fn metadata_becomes_json_and_unknown_keys_are_ignored() {
    let meta = V::M(vec![
        (s("lang"), s("de \"quoted\"\n")),
        (s("n"), V::I(-3)),
        (V::U(7), V::A(vec![V::F(1.5), V::Nil])),
        (s("when"), V::Ts(0, 0)),
    ]);
    let r = decode(&bytes(&[rec(vec![
        (s("metadata"), meta),
        (s("extra"), V::M(vec![(s("x"), V::A(vec![]))])),
    ])]));
    let json = r
        .ok()
        .and_then(|r| r[0].metadata.clone())
        .unwrap_or_default();
    assert_eq!(
        json,
        r#"{"lang":"de \"quoted\"\n","n":-3,"7":[1.5,null],"when":"1970-01-01T00:00:00Z"}"#
    );
    assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
}

#[test]
fn broken_inputs_name_record_and_offset() {
    let good = bytes(&[rec(vec![])]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            bytes(&[V::M(vec![
                (s("chunk_index"), V::U(0)),
                (s("content"), s("x")),
            ])]),
            "`doc_id` is missing",
        ),
        (
            bytes(&[rec(vec![]), V::M(vec![(s("doc_id"), V::U(1))])]),
            "doc_id must be a string",
        ),
        (
            bytes(&[V::M(vec![
                (s("doc_id"), s("")),
                (s("chunk_index"), V::U(0)),
                (s("content"), s("c")),
            ])]),
            "doc_id must be 1 to 1024",
        ),
        (
            bytes(&[V::M(vec![
                (s("doc_id"), s("d")),
                (s("chunk_index"), V::I(-1)),
                (s("content"), s("c")),
            ])]),
            "below 2^31",
        ),
        (
            bytes(&[V::M(vec![
                (s("doc_id"), s("d")),
                (s("chunk_index"), V::U(1 << 31)),
                (s("content"), s("c")),
            ])]),
            "below 2^31",
        ),
        (
            bytes(&[V::M(vec![
                (s("doc_id"), s("d")),
                (s("chunk_index"), V::U(0)),
                (s("content"), V::Raw(vec![0xa2, 0xff, 0xfe])),
            ])]),
            "not valid UTF-8",
        ),
        (
            bytes(&[V::M(vec![
                (s("doc_id"), s("d")),
                (s("chunk_index"), V::U(0)),
                (s("content"), s("a\0b")),
            ])]),
            "NUL",
        ),
        (
            bytes(&[rec(vec![(s("created_at"), s("yesterday"))])]),
            "not an RFC 3339",
        ),
        (
            bytes(&[rec(vec![(s("created_at"), V::U(u64::MAX))])]),
            "not a valid timestamp",
        ),
        (
            bytes(&[rec(vec![(s("embedding"), V::A(vec![s("x")]))])]),
            "embedding[0] must be a number",
        ),
        (
            bytes(&[rec(vec![(s("embedding"), V::Bin(vec![1, 2, 3]))])]),
            "not a multiple of 4",
        ),
        (
            bytes(&[rec(vec![(s("embedding"), V::A(vec![V::F(f64::NAN)]))])]),
            "not a finite number",
        ),
        (
            bytes(&[rec(vec![(s("embedding"), V::A(vec![V::F(1e39)]))])]),
            "embedding[0] is beyond the range of f32",
        ),
        (
            bytes(&[rec(vec![(s("metadata"), s("x"))])]),
            "metadata must be a map",
        ),
        (
            bytes(&[rec(vec![(
                s("metadata"),
                V::M(vec![(s("b"), V::Bin(vec![1]))]),
            )])]),
            "binary",
        ),
        (bytes(&[V::U(5)]), "expected a record map"),
        (bytes(&[V::A(vec![V::U(5)])]), "a record must be a map"),
        (vec![0xc1], "0xc1"),
        (good[..good.len() - 2].to_vec(), "truncated"),
        (vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'], "truncated"),
        (
            vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x80],
            "header claims 4294967295 elements",
        ),
        (vec![0xdf, 0x7f, 0xff, 0xff, 0xff], "header claims"),
    ];
    for (buf, want) in cases {
        let err = error_of(&buf);
        assert!(err.message.contains(want), "want {want:?}, got {err:?}");
        assert!(err.byte_offset <= buf.len() as u64);
    }
    let second = error_of(&bytes(&[rec(vec![]), V::M(vec![(s("doc_id"), V::U(1))])]));
    assert_eq!(
        (second.record_index, second.byte_offset),
        (1, good.len() as u64 + 8)
    );
}

#[test]
fn deep_nesting_is_refused_not_recursed() {
    let mut nested = vec![0x91; 100_000];
    nested.push(0xc0);
    let mut buf = vec![0x84];
    for (k, v) in [("doc_id", "d"), ("content", "c")] {
        enc(&s(k), &mut buf);
        enc(&s(v), &mut buf);
    }
    enc(&s("chunk_index"), &mut buf);
    enc(&V::U(0), &mut buf);
    enc(&s("deep"), &mut buf);
    buf.extend_from_slice(&nested);
    assert!(error_of(&buf).message.contains("nested deeper"));
    let meta = bytes(&[rec(vec![(
        s("metadata"),
        V::Raw([0x81u8, 0xa1, b'k'].repeat(50)),
    )])]);
    assert!(error_of(&meta).message.contains("nested deeper"));
}

#[test]
fn every_truncation_of_a_good_file_fails_cleanly() {
    let good = bytes(&[rec(vec![
        (
            s("metadata"),
            V::M(vec![(s("a"), V::A(vec![V::U(1), V::F(2.5)]))]),
        ),
        (s("embedding"), V::A(vec![V::F(0.1); 8])),
        (s("created_at"), V::Ts(1_700_000_000, 1)),
        (s("source"), s("wiki")),
    ])]);
    for cut in 1..good.len() {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
    }
}

fn arb_record() -> impl Strategy<Value = Owned> {
    (
        "[a-zA-Z0-9é✓ -]{1,40}",
        0..i32::MAX,
        "\\PC{0,200}",
        proptest::option::of(proptest::collection::vec(-1.0e6f32..1.0e6, 0..20)),
        proptest::option::of("[a-z]{0,10}"),
        proptest::option::of(0i64..4_000_000_000),
    )
        .prop_map(
            |(doc_id, chunk_index, content, embedding, source, secs)| Owned {
                doc_id,
                chunk_index,
                content: content.replace('\0', ""),
                embedding,
                metadata: None,
                source,
                created_at: secs.map(|s| s * 1_000_000),
            },
        )
}

fn encode(r: &Owned) -> V {
    let mut pairs = vec![
        (s("doc_id"), s(&r.doc_id)),
        (s("chunk_index"), V::U(r.chunk_index as u64)),
        (s("content"), s(&r.content)),
    ];
    if let Some(emb) = &r.embedding {
        pairs.push((
            s("embedding"),
            V::Bin(emb.iter().flat_map(|f| f.to_le_bytes()).collect()),
        ));
    }
    if let Some(src) = &r.source {
        pairs.push((s("source"), s(src)));
    }
    if let Some(us) = r.created_at {
        pairs.push((s("created_at"), V::I(us / 1_000_000)));
    }
    V::M(pairs)
}

proptest! {
    #[test]
    fn valid_records_round_trip(records in proptest::collection::vec(arb_record(), 0..8)) {
        let buf = bytes(&[V::A(records.iter().map(encode).collect())]);
        prop_assert_eq!(decode(&buf), Ok(records));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let n = Decoder::new(&buf, None).count();
        prop_assert!(n <= buf.len() + 1);
    }

    #[test]
    fn mutated_good_files_never_panic(idx in 0usize..200, byte in any::<u8>()) {
        let mut buf = bytes(&[rec(vec![(s("metadata"), V::M(vec![(s("k"), V::A(vec![V::U(1)]))])), (s("embedding"), V::A(vec![V::F(0.5); 4]))])]);
        let i = idx % buf.len();
        buf[i] = byte;
        let _ = decode(&buf);
    }
}

/// Every seed and every input a fuzzer ever crashed on decodes without panicking.
#[test]
fn fuzz_corpus_and_regressions_decode_without_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    for dir in ["corpus/record", "regressions/record"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            let _ = Decoder::new(&bytes, None).count();
            seen += 1;
        }
    }
    assert!(seen >= 5, "the committed seed corpus is missing");
}
