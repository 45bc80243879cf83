//! The HTTP client every outbound call shares: native TLS (the system's CA store,
//! verified), timeouts, our User-Agent, and Retry-After parsing.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// `ragspool/<version>`.
pub(crate) const USER_AGENT: &str = concat!("ragspool/", env!("CARGO_PKG_VERSION"));

/// An agent with verified TLS and `timeout` per request.
pub(crate) fn agent(timeout: Duration) -> Result<ureq::Agent> {
    let tls = native_tls::TlsConnector::new()
        .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?;
    Ok(ureq::AgentBuilder::new()
        .tls_connector(Arc::new(tls))
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
