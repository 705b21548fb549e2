//! A PKI made by `openssl` for one test: a CA, a server certificate for `localhost` and a
//! client certificate, all signed by the CA.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    // Its progress dots go to stderr: shown only when it fails.
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` and a client certificate, all signed by the CA.
pub fn make_pki(dir: &Path) {
    let ca_subject = "/CN=cairn-test-ca";
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", ca_subject,
        ],
    );
    // webpki accepts only X.509 v3 certificates: both get extensions.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let subject = format!("/CN={name}");
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                &subject,
            ],
        );
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    for file in ["ca.crt", "server.crt", "server.key"] {
        std::fs::set_permissions(
            dir.join(file),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
}

/// A mosquitto with a plain listener (for the test's own subscriber, on `broker.port`) and a
/// TLS one on `tls_port`, its certificates from a fresh [`make_pki`].
pub struct TlsBroker {
    pub broker: super::Broker,
    pub tls_port: u16,
    pki: tempfile::TempDir,
}

impl TlsBroker {
    /// Starts it; `extra` goes into the TLS listener's settings (`require_certificate true`).
    pub fn start(extra: &str) -> Self {
        let pki = tempfile::tempdir().unwrap();
        // mosquitto runs as its own user and reads the server's files from here.
        std::fs::set_permissions(
            pki.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        make_pki(pki.path());
        let tls_port = super::free_port();
        let file = |f: &str| pki.path().join(f).display().to_string();
        let broker = super::Broker::start_with(
            super::free_port(),
            &format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}",
                file("ca.crt"),
                file("server.crt"),
                file("server.key")
            ),
        );
        Self {
            broker,
            tls_port,
            pki,
        }
    }

    /// The path of one of the PKI's files (`ca.crt`, `client.key`...).
    pub fn file(&self, name: &str) -> String {
        self.pki.path().join(name).display().to_string()
    }
}
