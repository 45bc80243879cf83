//! The reference gate (`ragspool gate serve`): accepts events POSTed to `/` with
//! the right bearer token (compared in constant time) and, when a secret is set, a
//! valid Standard Webhooks signature within a 5-minute window; rate-limits each
//! client with a token bucket; appends accepted events as JSON lines; answers a
//! repeated webhook-id as delivered without appending it twice.

use crate::error::{Error, Result};
use crate::notify::webhook;
use crate::redact::Secret;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::Instant;

/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 20;
/// Accepted clock skew for webhook-timestamp, in seconds.
const WINDOW_SECS: i64 = 300;
/// webhook-ids remembered for de-duplication.
const REMEMBERED_IDS: usize = 100_000;

/// How the gate checks and limits requests.
pub(crate) struct Policy {
    /// The bearer token clients must send.
    pub(crate) token: Secret,
    /// The signing key, when signatures are required.
    pub(crate) key: Option<Vec<u8>>,
    /// Requests per second per client.
    pub(crate) rate: f64,
    /// Bucket size per client.
    pub(crate) burst: f64,
}

/// The gate's state between requests.
pub(crate) struct Gate {
    policy: Policy,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    seen: HashSet<String>,
    order: VecDeque<String>,
    events: Box<dyn Write>,
}

/// A verdict on one request: status, extra header, body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// HTTP status.
    pub(crate) status: u16,
    /// Retry-After seconds, for 429.
    pub(crate) retry_after: Option<u64>,
    /// Short JSON body.
    pub(crate) body: String,
}

fn verdict(status: u16, message: &str) -> Verdict {
    Verdict {
        status,
        retry_after: None,
        body: serde_json::json!({"ok": status == 200, "message": message}).to_string(),
    }
}

/// Equal-time comparison: the time taken does not depend on where inputs differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..len {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// One incoming request, stripped to what the gate looks at.
pub(crate) struct Incoming<'a> {
    /// Method.
    pub(crate) method: &'a str,
    /// Path.
    pub(crate) path: &'a str,
    /// Client address.
    pub(crate) client: IpAddr,
    /// Looks up a header (case-insensitive).
    pub(crate) header: &'a dyn Fn(&str) -> Option<String>,
    /// The body, at most MAX_BODY + 1 bytes.
    pub(crate) body: &'a [u8],
}

impl Gate {
    /// A gate appending accepted events to `events`.
    pub(crate) fn new(policy: Policy, events: Box<dyn Write>) -> Gate {
        Gate {
            policy,
            buckets: HashMap::new(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            events,
        }
    }

    /// Takes a token from the client's bucket; the wait in seconds when empty.
    fn throttle(&mut self, client: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let (rate, burst) = (self.policy.rate, self.policy.burst);
        let (tokens, last) = self.buckets.entry(client).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    fn authorized(&self, req: &Incoming<'_>) -> std::result::Result<(), &'static str> {
        let auth = (req.header)("authorization").unwrap_or_default();
        let want = format!("Bearer {}", self.policy.token.expose());
        if !ct_eq(auth.as_bytes(), want.as_bytes()) {
            return Err("missing or wrong bearer token");
        }
        let Some(key) = &self.policy.key else {
            return Ok(());
        };
        let id = (req.header)("webhook-id").ok_or("missing webhook-id")?;
        let ts_text = (req.header)("webhook-timestamp").ok_or("missing webhook-timestamp")?;
        let ts: i64 = ts_text
            .trim()
            .parse()
            .map_err(|_| "bad webhook-timestamp")?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if (now - ts).abs() > WINDOW_SECS {
            return Err("webhook-timestamp outside the 5-minute window");
        }
        let body = std::str::from_utf8(req.body).map_err(|_| "body is not UTF-8")?;
        let expected = webhook::signature(key, &id, ts, body);
        let given = (req.header)("webhook-signature").ok_or("missing webhook-signature")?;
        // The header may carry several space-separated signatures (key rotation).
        if given
            .split(' ')
            .any(|s| ct_eq(s.as_bytes(), expected.as_bytes()))
        {
            Ok(())
        } else {
            Err("bad signature")
        }
    }

    /// Judges one request and records it when accepted.
    pub(crate) fn handle(&mut self, req: &Incoming<'_>) -> Verdict {
        if req.path != "/" {
            return verdict(404, "POST events to /");
        }
        if req.method != "POST" {
            return verdict(405, "only POST");
        }
        if let Some(wait) = self.throttle(req.client) {
            return Verdict {
                retry_after: Some(wait),
                ..verdict(429, "rate limited")
            };
        }
        if req.body.len() as u64 > MAX_BODY {
            return verdict(413, "body too large");
        }
        if let Err(why) = self.authorized(req) {
            log::info!("gate: refused a request from {}: {why}", req.client);
            return verdict(401, why);
        }
        let value: serde_json::Value = match serde_json::from_slice(req.body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => return verdict(400, "body must be a JSON object"),
        };
        if let Some(id) = (req.header)("webhook-id") {
            if self.seen.contains(&id) {
                return verdict(200, "duplicate webhook-id; already accepted");
            }
            self.remember(id);
        }
        let line = format!("{value}\n");
        if self
            .events
            .write_all(line.as_bytes())
            .and_then(|()| self.events.flush())
            .is_err()
        {
            return verdict(503, "cannot record the event");
        }
        verdict(200, "accepted")
    }

    fn remember(&mut self, id: String) {
        if self.order.len() >= REMEMBERED_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.clone());
        self.order.push_back(id);
    }
}

/// Serves the gate on `listen` until the process is stopped.
pub(crate) fn serve(listen: &str, mut gate: Gate) -> Result<()> {
    let server = tiny_http::Server::http(listen).map_err(|e| {
        Error::config(format!("cannot listen on `{listen}`: {e}"))
            .with_note("pass a free address to --listen")
    })?;
    log::info!("gate: listening on {listen}");
    for mut request in server.incoming_requests() {
        let client = request
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let mut body = Vec::new();
        let _ = request
            .as_reader()
            .take(MAX_BODY + 1)
            .read_to_end(&mut body);
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let method = request.method().as_str().to_string();
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let v = gate.handle(&Incoming {
            method: &method,
            path: &path,
            client,
            header: &lookup,
            body: &body,
        });
        let mut response = tiny_http::Response::from_string(v.body).with_status_code(v.status);
        if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
            response.add_header(h);
        }
        if let Some(wait) = v.retry_after
            && let Ok(h) = tiny_http::Header::from_bytes("Retry-After", wait.to_string())
        {
            response.add_header(h);
        }
        let _ = request.respond(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(key: Option<&str>) -> Gate {
        Gate::new(
            Policy {
                token: Secret::new("tok"),
                key: key.map(|k| k.as_bytes().to_vec()),
                rate: 1.0,
                burst: 2.0,
            },
            Box::new(Vec::new()),
        )
    }

    fn post<'a>(body: &'a [u8], header: &'a dyn Fn(&str) -> Option<String>) -> Incoming<'a> {
        Incoming {
            method: "POST",
            path: "/",
            client: IpAddr::from([127, 0, 0, 1]),
            header,
            body,
        }
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
    }

    #[test]
    fn token_signature_window_and_bucket() {
        let mut g = gate(Some("key"));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let body = br#"{"event":"gate.open"}"#;
        let sig = webhook::signature(
            b"key",
            "msg_1",
            now,
            std::str::from_utf8(body).unwrap_or(""),
        );
        let good = |n: &str| match n {
            "authorization" => Some("Bearer tok".to_string()),
            "webhook-id" => Some("msg_1".into()),
            "webhook-timestamp" => Some(now.to_string()),
            "webhook-signature" => Some(format!("v1,bogus {sig}")),
            _ => None,
        };
        assert_eq!(g.handle(&post(body, &good)).status, 200);
        let stale = |n: &str| match n {
            "webhook-timestamp" => Some((now - 301).to_string()),
            other => good(other),
        };
        assert_eq!(g.handle(&post(body, &stale)).status, 401);
        let ahead = |n: &str| match n {
            "webhook-timestamp" => Some((now + 301).to_string()),
            other => good(other),
        };
        assert_eq!(gate(Some("key")).handle(&post(body, &ahead)).status, 401);
        let v = g.handle(&post(body, &good));
        assert_eq!((v.status, v.retry_after), (429, Some(1)));
        let mut g = gate(None);
        let wrong = |n: &str| (n == "authorization").then(|| "Bearer nope".to_string());
        assert_eq!(g.handle(&post(body, &wrong)).status, 401);
    }
}
