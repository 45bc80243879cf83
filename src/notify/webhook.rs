//! One webhook POST (SPEC §6): bearer token, User-Agent, the Standard Webhooks
//! headers and signature, and what the answer means (delivered, retry, permanent).

use crate::error::{Error, Result};
use crate::redact::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Where and how to send.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The URL.
    pub(crate) url: String,
    /// Bearer token.
    pub(crate) token: Option<Secret>,
    /// Signing key bytes (GATE_SECRET decoded); never printed.
    pub(crate) key: Option<Vec<u8>>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// 2xx.
    Delivered,
    /// Timeout, connection error, 408, 429 or 5xx: try again, after `hint` if given.
    Retry {
        /// Why, for logs.
        why: String,
        /// The server's Retry-After.
        hint: Option<Duration>,
    },
    /// Any other 4xx: the event goes to outbox/dead/.
    Permanent {
        /// The status code.
        status: u16,
    },
}

/// The signing key of a GATE_SECRET: the base64-decoded part after `whsec_` when it
/// has that prefix (as Standard Webhooks secrets do), else the secret's bytes.
pub(crate) fn signing_key(secret: &str) -> Result<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => B64.decode(b64).map_err(|_| {
            Error::config("`GATE_SECRET` starts with `whsec_` but the rest is not base64")
        }),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub(crate) fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return String::new(),
    };
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// Whether `url` points at a loopback host.
pub(crate) fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sends one event body once, within `timeout`.
pub(crate) fn post(to: &Endpoint, id: &str, body: &str, timeout: std::time::Duration) -> Attempt {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let timestamp = now.to_string();
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp),
    ];
    if let Some(token) = &to.token {
        // Never over plain http to another host: the settings check refuses that
        // at start, and this check keeps it true for any caller.
        if to.url.starts_with("https://") || is_loopback(&to.url) {
            headers.push(("Authorization", format!("Bearer {}", token.expose())));
        }
    }
    if let Some(key) = &to.key {
        headers.push(("webhook-signature", signature(key, id, now, body)));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match crate::http::post(&to.url, &headers, body.as_bytes(), timeout) {
        Ok(resp) => match resp.status().as_u16() {
            200..=299 => Attempt::Delivered,
            code @ (408 | 429 | 500..) => Attempt::Retry {
                why: format!("answered {code}"),
                hint: crate::http::retry_after(&resp),
            },
            code => Attempt::Permanent { status: code },
        },
        Err(e) => Attempt::Retry {
            why: e.to_string(),
            hint: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published test vector.
    #[test]
    fn signature_matches_the_standard_webhooks_vector() -> Result<()> {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(signing_key("plain")?, b"plain".to_vec());
        assert!(signing_key("whsec_!!!").is_err());
        Ok(())
    }

    #[test]
    fn loopback_hosts() {
        for u in [
            "http://127.0.0.1:8080/x",
            "http://localhost/",
            "http://[::1]:9/",
            "http://u:p@127.0.0.2",
        ] {
            assert!(is_loopback(u), "{u}");
        }
        for u in [
            "http://gate.example/",
            "http://10.0.0.1/",
            "http://127.0.0.1.evil.example/",
        ] {
            assert!(!is_loopback(u), "{u}");
        }
    }
}
