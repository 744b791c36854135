//! The openssl CLI as a test PKI, TLS backend and TLS client: a test CA that
//! signs leaf certificates with SANs, `openssl s_server -rev` backends (each
//! line comes back reversed) and `openssl s_client` runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::process::{run, ChildGuard, Ran};
use super::TempDir;

/// A test CA and the leaves it signed, in one scratch directory.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

fn openssl(args: &[&str]) {
    run(
        Command::new("openssl").args(args),
        b"",
        Duration::from_secs(20),
    )
    .expect_ok(&format!("openssl {}", args.join(" ")));
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let ca = dir.0.join("ca.crt");
        let ca_key = dir.0.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sluicegate test CA",
            "-keyout",
            path_str(&ca_key),
            "-out",
            path_str(&ca),
        ]);
        Pki { dir, ca, ca_key }
    }

    /// A leaf certificate with subject CN=`cn` and DNS SANs `sans` (clients
    /// check SANs, not the CN), signed by the CA. Returns (cert, key) paths.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let base = cn.replace('*', "star");
        let key = self.dir.0.join(format!("{base}.key"));
        let csr = self.dir.0.join(format!("{base}.csr"));
        let crt = self.dir.0.join(format!("{base}.crt"));
        let ext = self.dir.0.join(format!("{base}.ext"));
        let san: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
        std::fs::write(&ext, format!("subjectAltName={}\n", san.join(","))).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.ca),
            "-CAkey",
            path_str(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path_str(&ext),
            "-out",
            path_str(&crt),
        ]);
        (crt, key)
    }
}

/// `openssl s_server -rev` on an ephemeral port of 127.0.0.1: it answers each
/// line reversed and closes the connection on a line `CLOSE`. One connection
/// at a time (s_server is single-threaded). Killed on drop.
pub struct SServer {
    pub addr: SocketAddr,
    _child: ChildGuard,
}

impl SServer {
    pub fn start(cert: &Path, key: &Path) -> SServer {
        let mut child = ChildGuard::spawn(
            Command::new("openssl")
                .args(["s_server", "-accept", "127.0.0.1:0", "-rev", "-cert"])
                .arg(cert)
                .arg("-key")
                .arg(key)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        // Without -quiet, s_server prints `ACCEPT 127.0.0.1:PORT` once it
        // listens; a thread keeps draining its per-connection chatter.
        let out = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("openssl s_server did not print ACCEPT")
            .parse()
            .unwrap();
        SServer {
            addr,
            _child: child,
        }
    }
}

/// Run `openssl s_client` to `addr` with SNI `server_name`, verifying against
/// `ca`; sends `input` (end it with a `CLOSE` line for an `-rev` server) and
/// waits for the server to close.
pub fn s_client(addr: SocketAddr, server_name: &str, ca: &Path, input: &str) -> Ran {
    run(
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                server_name,
            ])
            .arg("-CAfile")
            .arg(ca)
            .args(["-verify_return_error", "-ign_eof"]),
        input.as_bytes(),
        Duration::from_secs(20),
    )
}

/// The subject line s_client printed for the server certificate.
pub fn subject(ran: &Ran) -> Option<&str> {
    ran.stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .map(|l| l.trim_start_matches("subject="))
}
