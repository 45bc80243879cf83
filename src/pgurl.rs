//! DATABASE_URL as libpq reads it: a missing host is the local socket directory
//! (PGHOST, whose default is Debian's /var/run/postgresql), a missing port PGPORT
//! (else 5432), and a URL that cannot be read is refused naming the part that is
//! wrong, never with the password.
//!
//! The driver (tokio-postgres) reads `host=/dir` in the query and a
//! percent-encoded path as the host (`postgresql://u@%2Fvar%2Frun%2Fpostgresql/db`)
//! as a socket directory; what it lacks is libpq's defaults, added here by
//! rewriting the URL before the driver sees it.

/// How a URL is written, for notes.
pub(crate) const FORM: &str = "write DATABASE_URL as postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME, \
     or postgresql:///DBNAME for the local socket as your own user (PGHOST names its directory)";

/// A postgres:// URL cut where the driver cuts it.
struct Parts<'a> {
    /// `postgres://` or `postgresql://`, with any `user:password@`.
    head: &'a str,
    /// The comma-separated `host[:port]` list, possibly empty.
    hosts: &'a str,
    /// `/dbname` and `?query`, as given.
    tail: &'a str,
}

fn split(url: &str) -> Option<Parts<'_>> {
    let scheme = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| url.starts_with(p))?;
    let rest = &url[scheme.len()..];
    // Like the driver: the credentials end at the first `@`, if there is one.
    let creds = rest.find('@').map_or(0, |at| at + 1);
    let after = &rest[creds..];
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let head_len = scheme.len() + creds;
    Some(Parts {
        head: &url[..head_len],
        hosts: &after[..end],
        tail: &after[end..],
    })
}

/// The `key=value` pairs of the URL's query.
fn query(tail: &str) -> Vec<(&str, &str)> {
    tail.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect()
}

/// A `host[:port]` chunk as (host, port); `[v6]:port` kept whole as the host.
fn host_port(chunk: &str) -> (&str, Option<&str>) {
    if chunk.starts_with('[') {
        return match chunk.rfind("]:") {
            Some(i) => (&chunk[..=i], Some(&chunk[i + 2..])),
            None => (chunk, None),
        };
    }
    match chunk.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (chunk, None),
    }
}

/// `url` with libpq's defaults for what it leaves out: `host` (a socket directory
/// or host names, comma-separated) when it names no host, `port` when it names
/// no port, `user` when it names no user. A URL that is not postgres:// comes
/// back unchanged.
pub(crate) fn with_defaults(
    url: &str,
    host: &str,
    port: Option<&str>,
    user: Option<&str>,
) -> String {
    let Some(p) = split(url) else {
        return url.to_string();
    };
    let q = query(p.tail);
    let head = match user {
        Some(user) if !p.head.contains('@') && !q.iter().any(|(k, _)| *k == "user") => {
            format!("{}{}@", p.head, encode(user))
        }
        _ => p.head.to_string(),
    };
    let chunks: Vec<(&str, Option<&str>)> = p.hosts.split(',').map(host_port).collect();
    let named = |key: &str| q.iter().any(|(k, v)| *k == key && !v.is_empty());
    let url_hosts = chunks.iter().any(|(h, _)| !h.is_empty());
    let url_port = chunks.iter().any(|(_, p)| p.is_some_and(|p| !p.is_empty()));
    let query_hosts = named("host") || named("hostaddr");
    let port = if url_port || named("port") {
        None
    } else {
        port
    };
    let mut extra = Vec::new();
    let hosts = if url_hosts {
        with_port(&chunks, port)
    } else if query_hosts {
        // libpq: the query's host wins; a port given beside an empty host goes with it.
        let given = chunks.iter().find_map(|(_, p)| p.filter(|p| !p.is_empty()));
        if let Some(p) = given.or(port) {
            extra.push(format!("port={p}"));
        }
        String::new()
    } else {
        let given = chunks.iter().find_map(|(_, p)| p.filter(|p| !p.is_empty()));
        let defaults: Vec<(String, Option<&str>)> = host
            .split(',')
            .map(|h| (encode(h), given.or(port)))
            .collect();
        let refs: Vec<(&str, Option<&str>)> =
            defaults.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        with_port(&refs, None)
    };
    let mut tail = p.tail.to_string();
    for pair in extra {
        tail.push(if tail.contains('?') { '&' } else { '?' });
        tail.push_str(&pair);
    }
    format!("{head}{hosts}{tail}")
}

/// `host[:port],...` with `port` added to chunks that have none.
fn with_port(chunks: &[(&str, Option<&str>)], port: Option<&str>) -> String {
    chunks
        .iter()
        .map(|(h, p)| match p.or(port) {
            Some(p) => format!("{h}:{p}"),
            None => h.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Percent-encodes what the URL's host part cannot hold (a socket path's `/`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `raw` is a port number.
fn valid_port(raw: &str) -> bool {
    raw.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Checks a DATABASE_URL as the driver will read it; the message names the part
/// that is wrong and never holds the password.
pub(crate) fn check(raw: &str) -> Result<(), String> {
    let Some(p) = split(raw) else {
        return Err(format!(
            "must be a postgres:// or postgresql:// URL, got `{}`",
            crate::redact::url(raw)
        ));
    };
    for (host, port) in p.hosts.split(',').map(host_port) {
        if let Some(port) = port.filter(|p| !p.is_empty() && !valid_port(p)) {
            return Err(format!(
                "has port `{port}`{}, which is not a number from 1 to 65535",
                if host.is_empty() {
                    String::new()
                } else {
                    format!(" after host `{host}`")
                }
            ));
        }
    }
    let mut kept = Vec::new();
    for (key, value) in query(p.tail) {
        match key {
            "sslmode"
                if ![
                    "disable",
                    "allow",
                    "prefer",
                    "require",
                    "verify-ca",
                    "verify-full",
                ]
                .contains(&value) =>
            {
                return Err(format!(
                    "has sslmode `{value}`; expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
            "port" if value.split(',').any(|v| !v.is_empty() && !valid_port(v)) => {
                return Err(format!(
                    "has port=`{value}` in its query, which is not a number from 1 to 65535"
                ));
            }
            "sslmode" | "sslrootcert" => {}
            _ => kept.push(format!("{key}={value}")),
        }
    }
    // The driver's own reading, for what is left (an unknown parameter, a bad
    // timeout, bad percent-encoding): its inner message names the option.
    let path = p.tail.split('?').next().unwrap_or("");
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let stripped = format!("{}{}{path}{query}", p.head, p.hosts);
    let parsed = stripped.parse::<postgres::Config>();
    match parsed {
        Ok(_) => Ok(()),
        Err(e) => {
            let inner = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            Err(format!("cannot be read: {inner}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK: &str = "/var/run/postgresql";

    #[test]
    fn a_missing_host_is_the_socket_directory() {
        assert_eq!(
            with_defaults("postgresql://u:pw@/db", SOCK, None, None),
            "postgresql://u:pw@%2Fvar%2Frun%2Fpostgresql/db"
        );
        assert_eq!(
            with_defaults("postgres:///db?sslmode=disable", "/tmp", Some("5433"), None),
            "postgres://%2Ftmp:5433/db?sslmode=disable"
        );
        assert_eq!(
            with_defaults("postgres://u@:5440/db", SOCK, Some("5433"), None),
            "postgres://u@%2Fvar%2Frun%2Fpostgresql:5440/db"
        );
        assert_eq!(
            with_defaults("postgres://u@/db", "a,b", None, None),
            "postgres://u@a,b/db"
        );
    }

    #[test]
    fn a_named_host_or_port_is_kept() {
        let url = "postgres://u:pw@db.example:6000/rag";
        assert_eq!(with_defaults(url, SOCK, Some("5433"), None), url);
        assert_eq!(
            with_defaults("postgres://u@db/rag", SOCK, Some("5433"), None),
            "postgres://u@db:5433/rag"
        );
        assert_eq!(
            with_defaults("postgres://u@/rag?host=/tmp/s", SOCK, Some("5433"), None),
            "postgres://u@/rag?host=/tmp/s&port=5433"
        );
        assert_eq!(
            with_defaults("postgres://u@:7/rag?host=/tmp/s", SOCK, None, None),
            "postgres://u@/rag?host=/tmp/s&port=7"
        );
        assert_eq!(with_defaults("mysql://x", SOCK, None, None), "mysql://x");
    }

    #[test]
    fn a_missing_user_is_pguser_or_the_login_name() {
        assert_eq!(
            with_defaults("postgresql:///rag", SOCK, None, Some("ann")),
            "postgresql://ann@%2Fvar%2Frun%2Fpostgresql/rag"
        );
        // A user in the URL, or in its query, is kept.
        let named = "postgres://bob@db/rag";
        assert_eq!(with_defaults(named, SOCK, None, Some("ann")), named);
        let query = "postgres://db/rag?user=bob";
        assert_eq!(with_defaults(query, SOCK, None, Some("ann")), query);
    }

    #[test]
    fn the_driver_reads_the_rewritten_socket_url() -> Result<(), postgres::Error> {
        let config: postgres::Config =
            with_defaults("postgresql://u:pw@/db", "/tmp/sock dir", Some("5433"), None).parse()?;
        assert_eq!(
            config.get_hosts(),
            [postgres::config::Host::Unix("/tmp/sock dir".into())]
        );
        assert_eq!(config.get_ports(), [5433]);
        assert_eq!(config.get_dbname(), Some("db"));
        Ok(())
    }

    #[test]
    fn errors_name_the_part_and_hide_the_password() {
        let e = check("postgres://u:Secret@host:notaport/db")
            .err()
            .unwrap_or_default();
        assert!(e.contains("`notaport`") && e.contains("host"), "{e}");
        assert!(!e.contains("Secret"), "{e}");
        let e = check("postgres://h/db?connect_timeout=soon")
            .err()
            .unwrap_or_default();
        assert!(e.contains("connect_timeout"), "{e}");
        let e = check("postgres://h/db?port=x").err().unwrap_or_default();
        assert!(e.contains("port"), "{e}");
        assert!(check("mysql://h/db").is_err());
        assert!(check("postgres://h/db?sslmode=bogus").is_err());
        assert!(check("postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/x").is_ok());
        assert!(check("postgresql://u:pw@/db").is_ok());
        assert!(check("postgresql://u@/db?host=/var/run/postgresql").is_ok());
    }
}
