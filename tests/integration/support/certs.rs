//! Certificates made with the openssl command for TLS tests: a CA, a server
//! certificate for `localhost` only, and an unrelated CA.

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
pub fn make_certs(dir: &Path) {
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
