//! Connections to Redis through the `redis` crate, in the three topologies of
//! SPEC §8 and §11: one server, a Cluster (slots, MOVED and ASK followed by the
//! crate), or the master that Sentinels name. Every connection has REDIS_TIMEOUT_MS
//! as its connect, read and write timeout, TLS verified with the system's roots
//! plus REDIS_CA_CERT, and ACL credentials.

use super::{CacheConfig, CacheError, Topology};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates, Value,
};

/// One open connection.
pub(crate) enum Conn {
    /// A standalone server or a Sentinel-named master.
    Single(redis::Connection),
    /// A Redis Cluster.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    /// Runs one command.
    pub(crate) fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }
}

/// What a connection reached, for `cache probe`.
pub(crate) fn describe(config: &CacheConfig, master: Option<&str>, masters: usize) -> String {
    match &config.topology {
        Topology::Standalone => "standalone".to_string(),
        Topology::Cluster(_) => format!("cluster {masters} masters"),
        Topology::Sentinel { .. } => format!("sentinel master {}", master.unwrap_or("?")),
    }
}

fn tls_certs(config: &CacheConfig) -> Result<TlsCertificates, CacheError> {
    let root_cert = match &config.ca_cert {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            CacheError::Invalid(format!(
                "cannot read REDIS_CA_CERT `{}`: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    Ok(TlsCertificates {
        client_tls: None,
        root_cert,
    })
}

fn addr(config: &CacheConfig, host: &str, port: u16) -> ConnectionAddr {
    if config.ssl {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    }
}

fn redis_info(db: i64, username: Option<&str>, password: Option<&str>) -> RedisConnectionInfo {
    // CLIENT SETINFO is skipped: servers before 7.2 answer it with an error.
    let mut info = RedisConnectionInfo::default()
        .set_db(db)
        .set_skip_set_lib_name();
    if let Some(u) = username {
        info = info.set_username(u);
    }
    if let Some(p) = password {
        info = info.set_password(p);
    }
    info
}

/// A client for one server; TLS through native-tls with REDIS_CA_CERT added.
fn client(config: &CacheConfig, info: ConnectionInfo) -> Result<Client, CacheError> {
    let built = if config.ssl {
        Client::build_with_tls(info, tls_certs(config)?)
    } else {
        Client::open(info)
    };
    built.map_err(map_error)
}

fn single(
    config: &CacheConfig,
    host: &str,
    port: u16,
    redis: RedisConnectionInfo,
) -> Result<redis::Connection, CacheError> {
    let info = addr(config, host, port)
        .into_connection_info()
        .map_err(map_error)?
        .set_redis_settings(redis);
    let conn = client(config, info)?
        .get_connection_with_timeout(config.timeout)
        .map_err(map_error)?;
    conn.set_read_timeout(Some(config.timeout))
        .and_then(|()| conn.set_write_timeout(Some(config.timeout)))
        .map_err(map_error)?;
    Ok(conn)
}

/// Opens a connection in the configured topology; for Sentinel, also the
/// master's `host:port` the sentinels named.
pub(crate) fn open(config: &CacheConfig) -> Result<(Conn, Option<String>), CacheError> {
    let data = || {
        redis_info(
            config.db,
            config.username.as_deref(),
            config.password.as_deref(),
        )
    };
    match &config.topology {
        Topology::Standalone => Ok((
            Conn::Single(single(config, &config.host, config.port, data())?),
            None,
        )),
        Topology::Cluster(nodes) => {
            let seeds: Vec<ConnectionAddr> =
                nodes.iter().map(|(h, p)| addr(config, h, *p)).collect();
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout);
            if let Some(u) = &config.username {
                builder = builder.username(u);
            }
            if let Some(p) = &config.password {
                builder = builder.password(p);
            }
            if config.ssl {
                // The crate's cluster client takes a CA certificate only with rustls;
                // over native-tls (this binary's one TLS stack) it verifies against
                // the system's roots, so a private CA must be installed there.
                if config.ca_cert.is_some() {
                    return Err(CacheError::Invalid(
                        "REDIS_CA_CERT cannot be used with REDIS_CLUSTER_NODES: install the CA \
                         in the system's trust store (update-ca-certificates) and unset REDIS_CA_CERT"
                            .into(),
                    ));
                }
                builder = builder.tls(redis::TlsMode::Secure);
            }
            let conn = builder
                .build()
                .and_then(|c| c.get_connection())
                .map_err(map_error)?;
            conn.set_read_timeout(Some(config.timeout))
                .and_then(|()| conn.set_write_timeout(Some(config.timeout)))
                .map_err(map_error)?;
            Ok((Conn::Cluster(Box::new(conn)), None))
        }
        Topology::Sentinel {
            sentinels,
            master,
            username,
            password,
        } => {
            let (host, port) = ask_sentinels(config, sentinels, master, username, password)?;
            let conn = single(config, &host, port, data())?;
            Ok((Conn::Single(conn), Some(format!("{host}:{port}"))))
        }
    }
}

/// The master's `host:port` the sentinels name now (Sentinel topology only).
pub(crate) fn current_master(config: &CacheConfig) -> Result<String, CacheError> {
    match &config.topology {
        Topology::Sentinel {
            sentinels,
            master,
            username,
            password,
        } => ask_sentinels(config, sentinels, master, username, password)
            .map(|(h, p)| format!("{h}:{p}")),
        _ => Err(CacheError::Invalid("not a sentinel topology".into())),
    }
}

/// Asks the sentinels, in order, for the current master of `master`. The crate's
/// own SentinelClientBuilder takes a CA certificate only with rustls, and this
/// binary's one TLS stack is native-tls (which PostgreSQL and the webhooks use
/// too), so the question goes through plain crate connections to each sentinel:
/// `SENTINEL get-master-addr-by-name`.
fn ask_sentinels(
    config: &CacheConfig,
    sentinels: &[(String, u16)],
    master: &str,
    username: &Option<String>,
    password: &Option<String>,
) -> Result<(String, u16), CacheError> {
    let mut last = String::from("no sentinel configured");
    for (host, port) in sentinels {
        let info = redis_info(0, username.as_deref(), password.as_deref());
        let answer = single(config, host, *port, info).and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query::<Option<(String, u16)>>(&mut c)
                .map_err(map_error)
        });
        match answer {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => last = format!("sentinel {host}:{port} knows no master `{master}`"),
            Err(e) => last = format!("sentinel {host}:{port}: {e}"),
        }
    }
    Err(CacheError::Unavailable(last))
}

/// How many masters a cluster has (`CLUSTER INFO`'s cluster_size).
pub(crate) fn cluster_masters(conn: &mut Conn) -> usize {
    conn.query(redis::cmd("CLUSTER").arg("INFO"))
        .ok()
        .and_then(|info| info_field(info, "cluster_size"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// One `field:value` line of an INFO-style reply (a bulk or verbatim string).
pub(crate) fn info_field(reply: Value, field: &str) -> Option<String> {
    let text = match super::Reply::from(reply) {
        super::Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => return None,
    };
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
}

/// The crate's errors as the cache's: refused credentials, unusable TLS or
/// settings, server errors, and everything that means "not reachable now".
pub(crate) fn map_error(e: redis::RedisError) -> CacheError {
    let text = e.to_string();
    let code = e.code().unwrap_or("");
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || code == "NOAUTH"
        || code == "WRONGPASS"
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        return CacheError::Auth(text);
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
        return CacheError::Invalid(format!("TLS to redis failed: {text}"));
    }
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return CacheError::Invalid(text);
    }
    if e.is_timeout() {
        return CacheError::Unavailable(format!("timed out (REDIS_TIMEOUT_MS): {text}"));
    }
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Io
                | redis::ErrorKind::ClusterConnectionNotFound
                | redis::ErrorKind::MasterNameNotFoundBySentinel
        )
    {
        return CacheError::Unavailable(text);
    }
    CacheError::Server(text)
}

/// Whether a failed command calls for asking the sentinels again (SPEC §11): the
/// connection failed, or a demoted master answered READONLY.
pub(crate) fn needs_new_master(e: &CacheError) -> bool {
    match e {
        CacheError::Unavailable(_) => true,
        CacheError::Server(m) => m.contains("READONLY"),
        _ => false,
    }
}
