//! The two encodings of a namespaced cache value (SPEC §8): each names its key
//! and turns a value into the bytes stored under it and back, so that the JSON
//! and MessagePack twins of [`super::Cache`] share one body.

use super::{CacheError, json_key, msgpack_key};

/// How a namespaced value is keyed and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `rag:<ns>:<key>`, a JSON value.
    Json,
    /// `rag:<ns>:m:<md5 hex of ns + key>`, a MessagePack value.
    MessagePack,
}

impl Encoding {
    /// JSON, or MessagePack when `msgpack` (the `--msgpack` flag).
    pub(crate) fn of(msgpack: bool) -> Encoding {
        match msgpack {
            true => Encoding::MessagePack,
            false => Encoding::Json,
        }
    }

    /// The Redis key of `key` in namespace `ns`.
    pub(crate) fn key(self, ns: &str, key: &str) -> String {
        match self {
            Encoding::Json => json_key(ns, key),
            Encoding::MessagePack => msgpack_key(ns, key),
        }
    }

    /// The bytes stored for `value`: compact JSON text, or MessagePack with
    /// map keys as names.
    pub(crate) fn encode(self, value: &serde_json::Value) -> Result<Vec<u8>, CacheError> {
        match self {
            Encoding::Json => Ok(value.to_string().into_bytes()),
            Encoding::MessagePack => rmp_serde::to_vec_named(value)
                .map_err(|e| CacheError::Invalid(format!("cannot encode MessagePack: {e}"))),
        }
    }

    /// The value that `bytes` (as read from Redis) hold.
    pub(crate) fn decode(self, bytes: &[u8]) -> Result<serde_json::Value, CacheError> {
        let decoded = match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        decoded.map_err(|e| CacheError::Invalid(format!("cached value is not {self}: {e}")))
    }
}

impl std::fmt::Display for Encoding {
    /// The encoding's name as errors give it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Json => "JSON",
            Encoding::MessagePack => "MessagePack",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_round_trip_through_json_and_msgpack() {
        let value =
            serde_json::json!({"a": [1, 2.5, null, {"b": "ü"}], "c": true, "d": {"e": [[]]}});
        for enc in [Encoding::Json, Encoding::MessagePack] {
            let bytes = enc.encode(&value).unwrap_or_default();
            assert_eq!(enc.decode(&bytes).ok(), Some(value.clone()), "{enc}");
        }
        assert_eq!(
            Encoding::Json.encode(&value).ok(),
            Some(value.to_string().into_bytes())
        );
        assert_eq!(Encoding::of(false).key("ns", "k"), json_key("ns", "k"));
        assert_eq!(Encoding::of(true).key("ns", "k"), msgpack_key("ns", "k"));
        let err = Encoding::MessagePack
            .decode(b"\xc1")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.starts_with("cached value is not MessagePack: ")),
            "a bad value names its encoding"
        );
    }
}
