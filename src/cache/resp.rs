//! A small synchronous RESP2 client: one TCP (or native-TLS) connection with
//! connect, read and write timeouts. Any I/O error or timeout poisons the
//! connection, and a poisoned connection is never used again: a reply that
//! arrives late would otherwise be taken for the next command's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest bulk reply accepted (Redis's own limit for a string).
const MAX_BULK: usize = 512 * 1024 * 1024;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$n` bulk string, `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n`, `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

/// What can go wrong talking to the server.
#[derive(Debug)]
pub enum Fault {
    /// Connect, read, write or timeout: the connection is gone.
    Io(std::io::Error),
    /// The server sent something that is not RESP.
    Protocol(String),
    /// TLS could not be set up or verified.
    Tls(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "timed out: {e}")
            }
            Fault::Io(e) => write!(f, "{e}"),
            Fault::Protocol(m) => write!(f, "protocol error: {m}"),
            Fault::Tls(m) => write!(f, "TLS: {m}"),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One connection.
pub struct Connection {
    reader: BufReader<Box<dyn Stream>>,
    poisoned: bool,
}

/// TLS settings for [`Connection::open`].
pub struct Tls<'a> {
    /// Extra CA certificates (PEM), added to the system's.
    pub ca_pem: Option<&'a [u8]>,
}

impl Connection {
    /// Connects to `host:port` within `timeout`, over TLS when `tls` is given.
    pub fn open(
        host: &str,
        port: u16,
        timeout: Duration,
        tls: Option<Tls<'_>>,
    ) -> Result<Connection, Fault> {
        let addrs = (host, port).to_socket_addrs().map_err(Fault::Io)?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp =
            tcp.ok_or_else(|| {
                Fault::Io(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                }))
            })?;
        tcp.set_read_timeout(Some(timeout)).map_err(Fault::Io)?;
        tcp.set_write_timeout(Some(timeout)).map_err(Fault::Io)?;
        tcp.set_nodelay(true).map_err(Fault::Io)?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let mut builder = native_tls::TlsConnector::builder();
                if let Some(pem) = tls.ca_pem {
                    let cert = native_tls::Certificate::from_pem(pem)
                        .map_err(|e| Fault::Tls(e.to_string()))?;
                    builder.add_root_certificate(cert);
                }
                let connector = builder.build().map_err(|e| Fault::Tls(e.to_string()))?;
                Box::new(
                    connector
                        .connect(host, tcp)
                        .map_err(|e| Fault::Tls(e.to_string()))?,
                )
            }
        };
        Ok(Connection {
            reader: BufReader::new(stream),
            poisoned: false,
        })
    }

    /// Whether an error has made this connection unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, Fault> {
        if self.poisoned {
            return Err(Fault::Protocol(
                "connection was dropped after an earlier error".into(),
            ));
        }
        let result = self.send(args).and_then(|()| self.read_reply(0));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn send(&mut self, args: &[&[u8]]) -> Result<(), Fault> {
        let mut buf = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        let stream = self.reader.get_mut();
        stream
            .write_all(&buf)
            .and_then(|()| stream.flush())
            .map_err(Fault::Io)
    }

    fn line(&mut self) -> Result<String, Fault> {
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .map_err(Fault::Io)?;
        if n == 0 {
            return Err(Fault::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )));
        }
        if !line.ends_with(b"\r\n") {
            return Err(Fault::Protocol("reply line without CRLF".into()));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| Fault::Protocol("reply line is not UTF-8".into()))
    }

    fn read_reply(&mut self, depth: usize) -> Result<Reply, Fault> {
        if depth > 16 {
            return Err(Fault::Protocol("reply nested too deep".into()));
        }
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| Fault::Protocol(format!("bad length `{s}`")))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(int(rest)?)),
            "$" => {
                let len = int(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len =
                    usize::try_from(len).map_err(|_| Fault::Protocol("bad bulk length".into()))?;
                if len > MAX_BULK {
                    return Err(Fault::Protocol(format!(
                        "bulk reply of {len} bytes is too large"
                    )));
                }
                let mut data = vec![0; len + 2];
                self.reader.read_exact(&mut data).map_err(Fault::Io)?;
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    items.push(self.read_reply(depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(Fault::Protocol(format!("unknown reply type `{other}`"))),
        }
    }
}
