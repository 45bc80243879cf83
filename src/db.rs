//! Database connections: DATABASE_URL with libpq's sslmode meanings (disable,
//! prefer, require, verify-ca, verify-full, sslrootcert) over native TLS, and the
//! line between transient errors (retried, then exit 75) and permanent ones.

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pgtls::Tls;
use native_tls::Certificate;
use postgres::Client;
use std::str::FromStr;
use std::time::Duration;

/// How to reach the database.
#[derive(Clone)]
pub(crate) struct Db {
    config: postgres::Config,
    tls: Option<Tls>,
    retry_budget: Duration,
}

/// Connections a batch's workers left, for the next batch's: a new connection
/// costs a backend start and a TLS handshake, and on a Citus coordinator that
/// backend's own connections to every worker. Kept a short while only, so that a
/// server that failed over or restarted between batches is reached anew.
#[derive(Default)]
pub(crate) struct Idle {
    kept: std::sync::Mutex<Vec<(Client, std::time::Instant)>>,
}

/// How long an idle connection is kept.
const IDLE_KEPT: Duration = Duration::from_secs(30);

impl Idle {
    /// A kept connection that still answers, else a new one from `db`.
    pub(crate) fn take(&self, db: &Db) -> Result<Client> {
        loop {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some((mut client, since)) = kept else {
                return db.connect();
            };
            if since.elapsed() < IDLE_KEPT && client.is_valid(Duration::from_secs(5)).is_ok() {
                return Ok(client);
            }
        }
    }

    /// Closes the connections kept longer than they may be: an idle `watch` holds
    /// no backend (nor, on Citus, its connections to the workers) for long.
    pub(crate) fn expire(&self) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|(_, since)| since.elapsed() < IDLE_KEPT);
    }

    /// Keeps `client` (outside any transaction) for the next [`Idle::take`].
    pub(crate) fn keep(&self, client: Client) {
        if !client.is_closed() {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.push((client, std::time::Instant::now()));
        }
    }
}

/// sslmode as libpq means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Db {
    /// From DATABASE_URL (else SUPABASE_DB_URL); a missing URL is a config error.
    pub(crate) fn from_config(config: &Config) -> Result<Db> {
        let url = config.database_url.as_ref().ok_or_else(|| {
            Error::config("`DATABASE_URL` (or `SUPABASE_DB_URL`) is not set").with_note(
                "set DATABASE_URL=postgres://user@host/db in the environment or the env file",
            )
        })?;
        // libpq's defaults for a URL that leaves out the host or port (the local
        // socket: postgresql://user@/db).
        let user = config.pg_user.clone().or_else(crate::privdrop::login_name);
        let url = crate::pgurl::with_defaults(
            url.expose(),
            &config.pg_host,
            config.pg_port.as_deref(),
            user.as_deref(),
        );
        let mut db = Db::from_url(&url, Duration::from_secs(config.retry_max_secs))?;
        // A PostgreSQL that hangs (a stopped server, a held lock) must not block a
        // COPY for ever: every statement and lock wait is bounded, and the expiry is
        // retried as transient.
        let (statement, lock) = config.db_timeouts;
        // On a Citus coordinator a transaction's SET LOCAL (the change set's planner
        // hint, ingest's one connection per worker) reaches the workers' shards too.
        let citus = match config.distribution {
            crate::config::Distribution::Citus => " -c citus.propagate_set_commands=local",
            crate::config::Distribution::None => "",
        };
        db.config.options(&format!(
            "-c TimeZone=UTC -c statement_timeout={statement} -c lock_timeout={lock}{citus}"
        ));
        Ok(db)
    }

    /// From a postgres:// URL.
    pub(crate) fn from_url(url: &str, retry_budget: Duration) -> Result<Db> {
        let (rest, mode, rootcert) = split_ssl_params(url)?;
        let mut config = postgres::Config::from_str(&rest).map_err(|e| {
            Error::config(format!("`DATABASE_URL` cannot be read: {}", describe(&e)))
                .with_note(crate::pgurl::FORM)
        })?;
        config.application_name("ragspool");
        // Partition bounds are read back as text; UTC keeps them day-aligned.
        config.options("-c TimeZone=UTC");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(connector(mode, rootcert.as_deref())?),
        };
        Ok(Db {
            config,
            tls,
            retry_budget,
        })
    }

    /// One connection attempt.
    pub(crate) fn connect_once(&self) -> std::result::Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
    }

    /// RETRY_MAX_SECS: how long transient failures are retried.
    pub(crate) fn retry_budget(&self) -> Duration {
        self.retry_budget
    }

    /// Connects, retrying transient failures within the retry budget (then exit 75).
    pub(crate) fn connect(&self) -> Result<Client> {
        self.retry("connecting to the database", |db| db.connect_once())
    }

    /// Runs `op`, retrying it while it fails transiently, within the retry budget.
    pub(crate) fn retry<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&Db) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut backoff = Backoff::new(self.retry_budget);
        loop {
            match op(self) {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) => {
                    log::warn!("{what}: {} (transient; retrying)", describe(&e));
                    if !backoff.wait(None) {
                        return Err(classify(e, what).with_note(
                            "the database stayed unavailable for RETRY_MAX_SECS; nothing was lost, run again later",
                        ));
                    }
                }
                Err(e) => return Err(classify(e, what)),
            }
        }
    }
}

/// Removes sslmode and sslrootcert from the URL (the driver knows neither
/// verify-ca nor verify-full) and returns them parsed.
fn split_ssl_params(url: &str) -> Result<(String, SslMode, Option<String>)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Prefer;
    let mut rootcert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", m)) => {
                mode = match m {
                    "disable" => SslMode::Disable,
                    "prefer" | "allow" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(Error::config(format!(
                            "`DATABASE_URL` has unknown sslmode `{other}`"
                        )));
                    }
                }
            }
            Some(("sslrootcert", path)) => rootcert = Some(percent_decode(path)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, rootcert))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let (b'%', Some(v)) = (bytes[i], hex) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// TLS with libpq's verification rules for `mode`; sslrootcert is read now, the
/// connector built at the first handshake (see `pgtls`).
fn connector(mode: SslMode, rootcert: Option<&str>) -> Result<Tls> {
    let roots = match rootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "cannot read sslrootcert `{path}` from `DATABASE_URL`: {e}"
                ))
            })?;
            let certs = pem_certificates(&pem);
            if certs.is_empty() {
                return Err(Error::config(format!(
                    "sslrootcert `{path}` holds no PEM certificate"
                )));
            }
            Some(certs)
        }
        None => None,
    };
    // libpq: prefer and require do not verify (require does verify the chain when a
    // root certificate is given); verify-ca checks the chain; verify-full also the host.
    let verify_chain = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => rootcert.is_some(),
        _ => false,
    };
    Ok(Tls::new(verify_chain, mode == SslMode::VerifyFull, roots))
}

fn pem_certificates(pem: &[u8]) -> Vec<Certificate> {
    let text = String::from_utf8_lossy(pem);
    let end = "-----END CERTIFICATE-----";
    text.split_inclusive(end)
        .filter(|block| block.contains("-----BEGIN CERTIFICATE-----"))
        .filter_map(|block| Certificate::from_pem(block.trim_start().as_bytes()).ok())
        .collect()
}

/// SQLSTATEs that mean "try again": connection exceptions, admin or crash
/// shutdown, cannot connect now, serialization failure, deadlock, too many connections.
const TRANSIENT_STATES: [&str; 9] = [
    "57P01", "57P02", "57P03", "40001", "40P01", "53300", "53400", "57014", "55P03",
];

/// libpq's words for a connection lost mid-statement. A Citus coordinator relays
/// them, when its connection to a worker breaks (a worker restarting), as XX000:
/// its code for a worker's answer that carries no SQLSTATE.
const LOST_CONNECTION: [&str; 8] = [
    "server closed the connection unexpectedly",
    "failure on connection marked as essential",
    "SSL SYSCALL error",
    "SSL error",
    "could not receive data from",
    "could not send data to",
    "connection to server was lost",
    "connection to the remote node",
];

/// What a TLS handshake cut by the network says (lowercase): the connection's
/// fault, retried as an outage, not the settings'.
const HANDSHAKE_CUT: [&str; 5] = [
    "reset by peer",
    "broken pipe",
    "unexpected eof",
    "timed out",
    "connection refused",
];

/// Whether `e` is a TLS verification failure (wrong CA, wrong host name, a server
/// without TLS under sslmode=require): a configuration problem that retrying
/// cannot fix. A handshake the network cut is not one.
pub(crate) fn is_tls_failure(e: &postgres::Error) -> bool {
    e.as_db_error().is_none() && {
        let text = describe(e);
        let cut = {
            let lower = text.to_lowercase();
            HANDSHAKE_CUT.iter().any(|m| lower.contains(m))
        };
        text.contains("certificate verify failed") || (text.contains("TLS handshake") && !cut)
    }
}

/// Whether `e` says the settings are wrong, so that retrying cannot help: the
/// driver refused the configuration (no user, mismatched hosts and ports), the
/// server wants a password the URL lacks, the role or database does not exist,
/// or the password is wrong.
pub(crate) fn is_config_failure(e: &postgres::Error) -> bool {
    if is_tls_failure(e) {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("28") || code == "3D000"
        }
        None => {
            let text = e.to_string();
            e.as_db_error().is_none()
                && [
                    "invalid configuration",
                    "invalid connection string",
                    "authentication error",
                ]
                .iter()
                .any(|k| text.starts_with(k))
        }
    }
}

/// Whether `e` is worth retrying.
pub(crate) fn is_transient(e: &postgres::Error) -> bool {
    if is_config_failure(e) {
        return false;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            let says = |words: &[&str]| {
                e.as_db_error()
                    .is_some_and(|db| words.iter().any(|m| db.message().contains(m)))
            };
            TRANSIENT_STATES.contains(&code)
                || code.starts_with("08")
                || (code == "XX000" && says(&LOST_CONNECTION))
                // A Citus coordinator whose connection to a worker broke in the
                // middle of a COPY (the worker stopped): the worker's outage, not
                // the file's fault.
                || (code == "58030" && says(&["failed to COPY to shard"]))
        }
        // No SQLSTATE: an I/O error, a closed connection or a failed connect.
        None => e.as_db_error().is_none(),
    }
}

/// `e` as an [`Error`]: transient ones are TempFail (exit 75).
pub(crate) fn classify(e: postgres::Error, what: &str) -> Error {
    let message = describe(&e);
    if is_tls_failure(&e) {
        Error::config(message).context(what.to_string()).with_note(
            "check sslmode and sslrootcert in DATABASE_URL (verify-full also checks the host name)",
        )
    } else if is_config_failure(&e) {
        Error::config(message)
            .context(what.to_string())
            .with_note(format!(
                "check the user, password, host and database name in DATABASE_URL; {}",
                crate::pgurl::FORM
            ))
    } else if is_transient(&e) {
        Error::temp(message).context(what.to_string())
    } else {
        Error::failed(message).context(what.to_string())
    }
}

/// The error with its SQLSTATE and the server's message (never a password).
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let text = inner.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = inner.source();
            }
            s
        }
    }
}

/// A database connection as a file's preparation reaches it: a worker's own, or
/// one that a batch's prefetch threads share (their statements are few and short,
/// their waits on the embeddings endpoint long, so one connection serves them all).
pub(crate) trait Conn {
    /// Runs `f` on the connection.
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T;
}

/// A worker's own connection, lent for a while.
pub(crate) struct Own<'c>(std::cell::RefCell<&'c mut Client>);

impl<'c> Own<'c> {
    /// Lends `client`.
    pub(crate) fn new(client: &'c mut Client) -> Own<'c> {
        Own(std::cell::RefCell::new(client))
    }
}

impl Conn for Own<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }
}

/// One connection shared by threads, one statement at a time.
pub(crate) struct Shared(std::sync::Mutex<Client>);

impl Shared {
    /// Shares `client`.
    pub(crate) fn new(client: Client) -> Shared {
        Shared(std::sync::Mutex::new(client))
    }
}

impl Conn for Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_split_off() -> Result<()> {
        let (rest, mode, root) = split_ssl_params(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&x=1",
        )?;
        assert_eq!(rest, "postgres://u@h/db?x=1");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, _) = split_ssl_params("postgres://u@h/db")?;
        assert_eq!(
            (rest.as_str(), mode),
            ("postgres://u@h/db", SslMode::Prefer)
        );
        Ok(())
    }
}
