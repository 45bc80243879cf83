//! TLS to PostgreSQL: sslmode and sslrootcert as libpq means them, against a
//! throwaway server started with ssl=on and certificates made here.

use crate::support::TestEnv;
use crate::support::servers::OwnPg;
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `<name>.key` and `<name>.pem`.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    let args = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days",
        "2", "-subj", &subj,
    ];
    openssl(dir, &args);
}

/// A CA, a server certificate for `localhost` only, and an unrelated CA.
fn make_certs(dir: &Path) {
    make_ca(dir, "ca", "ragspool test CA");
    make_ca(dir, "wrong-ca", "someone else");
    let csr = [
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ];
    openssl(dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").expect("write san.ext");
    let sign = [
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ];
    openssl(dir, &sign);
    let _ = Command::new("chmod")
        .args(["600", "server.key"])
        .current_dir(dir)
        .status();
    let owner = "id -u | grep -qx 0 && chown postgres server.key server.crt || true";
    let _ = Command::new("sh")
        .args(["-c", owner])
        .current_dir(dir)
        .status();
}

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
}
