//! The HTTP client every outbound call shares: one agent per process, whose
//! connections the concurrent embeddings requests, the gate and the alerts reuse;
//! native TLS verified against the system's trust store (no bundled roots); a
//! timeout per request; our User-Agent; no redirects; every status returned as an
//! answer for the caller to classify; no proxy taken from the environment; and
//! Retry-After parsing.

use std::sync::OnceLock;
use std::time::Duration;

/// `ragspool/<version>`.
pub(crate) const USER_AGENT: &str = concat!("ragspool/", env!("CARGO_PKG_VERSION"));

/// Idle connections kept, per host and in all: enough for EMBED_CONCURRENCY's
/// largest useful value, so that concurrent requests reuse their connections.
const IDLE_CONNECTIONS: usize = 256;

/// The read buffer of a connection, which also caps a response's header (an answer
/// whose header does not fit is refused). ureq's default of 128 KiB for each of its
/// two buffers, kept by every pooled connection, came to 16 MiB at
/// EMBED_CONCURRENCY=64; headers are a few hundred bytes, and a body streams
/// through the buffer whatever its size.
const INPUT_BUFFER: usize = 32 << 10;

/// The write buffer of a connection: a request's body streams through it.
const OUTPUT_BUFFER: usize = 16 << 10;

/// An answer, whatever its status.
pub(crate) type Response = ureq::http::Response<ureq::Body>;

/// The process's agent. TLS is set up on the first https connection only
/// (loading the system's CA store costs tens of milliseconds of CPU).
pub(crate) fn agent() -> ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::NativeTls)
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build();
            ureq::Agent::config_builder()
                .tls_config(tls)
                // No proxy from HTTP_PROXY and the like: a token allowed over plain
                // http only to loopback must not reach a proxy elsewhere.
                .proxy(None)
                .timeout_connect(Some(Duration::from_secs(10)))
                .max_redirects(0)
                .max_redirects_will_error(false)
                .http_status_as_error(false)
                .user_agent(USER_AGENT)
                .input_buffer_size(INPUT_BUFFER)
                .max_response_header_size(INPUT_BUFFER)
                .output_buffer_size(OUTPUT_BUFFER)
                .max_idle_connections(IDLE_CONNECTIONS)
                .max_idle_connections_per_host(IDLE_CONNECTIONS)
                .build()
                .into()
        })
        .clone()
}

/// POSTs `body` to `url` with `headers`, within `timeout` for the whole exchange.
pub(crate) fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, ureq::Error> {
    let mut req = agent()
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send(body)
}

/// The Retry-After of a response, in seconds (HTTP dates are not honoured).
pub(crate) fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
}
