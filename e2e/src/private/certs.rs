//! A throwaway CA and a server certificate it signed.

use super::{run, token};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A CA of its own (in a temp dir, removed when dropped) and a server certificate it signed
/// for `IP:127.0.0.1` and `DNS:localhost`, made with the `openssl` command (P-256 keys,
/// valid for two days). `other_ca` is a second CA that signed nothing here: trusting only it
/// must fail verification.
pub struct TestCerts {
    dir: PathBuf,
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// An unrelated CA certificate (PEM).
    pub other_ca: PathBuf,
    /// The server's certificate (PEM), signed by `ca`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub server_key: PathBuf,
}

const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
";

impl TestCerts {
    /// Make the CAs and the server certificate; panics if `openssl` fails.
    pub fn generate() -> TestCerts {
        let dir = std::env::temp_dir().join(format!("thygon-tls-{}", token()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONF).expect("openssl.cnf");
        let file = |name: &str| dir.join(name).display().to_string();
        let log = dir.join("openssl.log");
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args);
            run(cmd, Duration::from_secs(30), &log).unwrap_or_else(|e| panic!("openssl: {e}"));
        };
        let conf = file("openssl.cnf");
        let new_key = |key: &str, out: &str, subject: &str, extra: &[&str]| {
            let mut args = vec!["req", "-config", &conf, "-subj", subject, "-nodes"];
            args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
            args.extend(["-keyout", key, "-out", out]);
            args.extend(extra);
            openssl(&args);
        };
        let self_signed = ["-x509", "-extensions", "ca_ext", "-days", "2"];
        let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
        new_key(&ca_key, &ca, "/CN=Thygon test CA", &self_signed);
        let (other, other_key) = (file("other-ca.pem"), file("other-ca.key"));
        new_key(&other_key, &other, "/CN=Unrelated test CA", &self_signed);
        let (key, csr, cert) = (file("server.key"), file("server.csr"), file("server.pem"));
        new_key(&key, &csr, "/CN=localhost", &["-new"]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            &conf,
            "-extensions",
            "server_ext",
            "-out",
            &cert,
        ]);
        TestCerts {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
