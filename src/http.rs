//! The HTTP client every outbound call shares: native TLS (the system's CA store,
//! verified), timeouts, our User-Agent, and Retry-After parsing.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// `ragspool/<version>`.
pub(crate) const USER_AGENT: &str = concat!("ragspool/", env!("CARGO_PKG_VERSION"));

/// An agent for `urls` with `timeout` per request, and verified TLS when one of
/// them is https. Setting TLS up loads the system's CA store, which cost every
/// run of `process` tens of milliseconds of CPU when no endpoint needed it.
pub(crate) fn agent<'a>(
    timeout: Duration,
    urls: impl IntoIterator<Item = &'a str>,
) -> Result<ureq::Agent> {
    let mut builder = ureq::AgentBuilder::new();
    if urls.into_iter().any(|u| u.starts_with("https:")) {
        let tls = native_tls::TlsConnector::new()
            .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
        builder = builder.tls_connector(Arc::new(tls));
    }
    Ok(builder
        .timeout_connect(Duration::from_secs(10))
        .timeout(timeout)
        .redirects(0)
        .build())
}

/// The Retry-After of a response, in seconds (HTTP dates are not honoured).
pub(crate) fn retry_after(resp: &ureq::Response) -> Option<Duration> {
    resp.header("Retry-After")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)))
}
