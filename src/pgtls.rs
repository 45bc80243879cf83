//! TLS for PostgreSQL connections, set up at the first handshake.
//!
//! Building a native TLS connector loads the system's trust store: about 60 ms of
//! CPU, paid by every command at its start, before its first statement. Under
//! sslmode=prefer (libpq's default, and so ragspool's) a server that declines TLS
//! never needs it, and embeddings at the endpoint's pace wait those 60 ms before
//! their first request. `postgres_native_tls::MakeTlsConnector` takes a connector
//! already built, so this wraps it: the connector is built once, when a server
//! first agrees to TLS, and shared by every connection of the process after that.
//! What can be wrong in the settings (an unreadable or empty sslrootcert) is still
//! found at once: `db` reads sslrootcert before it makes a [`Tls`].

use native_tls::{Certificate, TlsConnector};
use postgres::Socket;
use postgres::tls::{MakeTlsConnect, TlsConnect};
use postgres_native_tls::TlsStream;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// What a handshake may fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// libpq's verification rules for one sslmode, and the connector once built.
#[derive(Clone)]
pub(crate) struct Tls {
    shared: Arc<Shared>,
}

struct Shared {
    verify_chain: bool,
    verify_host: bool,
    /// sslrootcert's certificates; `None`: the system's trust store.
    roots: Option<Vec<Certificate>>,
    built: OnceLock<Result<TlsConnector, String>>,
}

impl Tls {
    /// Verifies the server's chain when `verify_chain`, its host name when
    /// `verify_host`, against `roots` (else the system's trust store).
    pub(crate) fn new(
        verify_chain: bool,
        verify_host: bool,
        roots: Option<Vec<Certificate>>,
    ) -> Tls {
        Tls {
            shared: Arc::new(Shared {
                verify_chain,
                verify_host,
                roots,
                built: OnceLock::new(),
            }),
        }
    }
}

impl Shared {
    fn connector(&self) -> Result<TlsConnector, String> {
        self.built
            .get_or_init(|| {
                let mut builder = TlsConnector::builder();
                if let Some(roots) = &self.roots {
                    builder.disable_built_in_roots(true);
                    for cert in roots {
                        builder.add_root_certificate(cert.clone());
                    }
                }
                builder.danger_accept_invalid_certs(!self.verify_chain);
                builder.danger_accept_invalid_hostnames(!self.verify_host);
                builder
                    .build()
                    .map_err(|e| format!("cannot set up TLS for `DATABASE_URL`: {e}"))
            })
            .clone()
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = TlsStream<Socket>;
    type TlsConnect = Handshake;
    type Error = Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Handshake, Infallible> {
        Ok(Handshake {
            shared: Arc::clone(&self.shared),
            domain: domain.to_string(),
        })
    }
}

/// One connection's handshake, with the host name it verifies.
pub(crate) struct Handshake {
    shared: Arc<Shared>,
    domain: String,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = TlsStream<Socket>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<Socket>, BoxError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        match self.shared.connector() {
            Ok(connector) => {
                let handshake =
                    postgres_native_tls::TlsConnector::new(connector, &self.domain).connect(stream);
                Box::pin(async move { handshake.await.map_err(BoxError::from) })
            }
            Err(e) => Box::pin(std::future::ready(Err(BoxError::from(e)))),
        }
    }
}
