//! TLS to PostgreSQL: sslmode and sslrootcert as libpq means them, against a
//! throwaway server started with ssl=on and certificates made here.

use crate::support::TestEnv;
use crate::support::certs::make_certs;
use crate::support::servers::OwnPg;
use std::path::Path;

#[test]
fn verify_full_accepts_the_right_ca_and_refuses_others() {
    let own = OwnPg::start_with(make_certs, |dir| {
        format!(
            "-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
            dir.display()
        )
    });
    own.create_db("tls");
    let ca = own.dir.join("ca.pem");
    let wrong = own.dir.join("wrong-ca.pem");
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "{}?sslmode={mode}&sslrootcert={}",
            own.url(host, "tls"),
            root.display()
        )
    };
    let migrate = |u: String| {
        env.run(&["migrate"])
            .env("DATABASE_URL", u)
            .env("RETRY_MAX_SECS", "1")
            .output()
    };
    migrate(url("localhost", "verify-full", &ca)).code(0);
    migrate(url("localhost", "verify-full", &wrong))
        .code(78)
        .stderr_has("certificate");
    migrate(url("127.0.0.1", "verify-full", &ca))
        .code(78)
        .stderr_has("certificate");
    migrate(url("127.0.0.1", "verify-ca", &ca)).code(0);
    migrate(url("127.0.0.1", "verify-ca", &wrong)).code(78);
    migrate(format!("{}?sslmode=require", own.url("127.0.0.1", "tls"))).code(0);
    // prefer (the default) with a server that agrees: TLS is set up at the
    // handshake, not before.
    migrate(format!("{}?sslmode=prefer", own.url("127.0.0.1", "tls"))).code(0);
    // A sslrootcert that cannot be used is a settings error at once, before any
    // connection is tried.
    migrate(url("localhost", "verify-full", &own.dir.join("absent.pem")))
        .code(78)
        .stderr_has("cannot read sslrootcert");
    let empty = own.dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write empty.pem");
    migrate(url("localhost", "verify-full", &empty))
        .code(78)
        .stderr_has("holds no PEM certificate");
}

/// A handshake the network cuts (the server agrees to TLS, then the connection
/// closes) is an outage, retried and then exit 75; a server that declines TLS
/// under sslmode=require is a settings error, 78.
#[test]
fn a_handshake_cut_by_the_network_is_an_outage() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    for (answer, code) in [(b"S", 75), (b"N", 78)] {
        let port = answer_ssl_request(answer);
        env.run(&["migrate"])
            .env(
                "DATABASE_URL",
                format!("postgres://ragspool@127.0.0.1:{port}/db?sslmode=require"),
            )
            .env("RETRY_MAX_SECS", "1")
            .output()
            .code(code);
    }
}

/// A port whose every connection gets `answer` to its SSLRequest and is then
/// closed.
fn answer_ssl_request(answer: &'static [u8; 1]) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 8];
            if stream.read_exact(&mut request).is_ok() {
                let _ = stream.write_all(answer);
            }
        }
    });
    port
}
