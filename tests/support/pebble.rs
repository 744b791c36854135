//! pebble, Let's Encrypt's ACME test server, on loopback: its HTTPS API
//! with a certificate from a test CA (trusted by sluicegate through
//! `LEGO_CA_CERTIFICATES`), validating against the ports the test gives
//! (sluicegate's entrypoints), names resolved by `pebble-challtestsrv` as
//! its DNS server (every name is 127.0.0.1, no AAAA). Both are killed when
//! the `Pebble` is dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{free_port, run, wait_listening, ChildGuard};
use super::tls::Ca;
use super::TempDir;

pub struct Pebble {
    pub dir: TempDir,
    /// The CA that signed pebble's own HTTPS certificate (for LEGO_CA_CERTIFICATES).
    pub api_ca: PathBuf,
    pub directory: String,
    pub management: u16,
    _pebble: ChildGuard,
    _dns: ChildGuard,
}

/// Whether pebble is installed (locally a loud skip, under CI a failure
/// naming the package).
pub fn available() -> bool {
    super::require_tool("pebble", "pebble") && super::require_tool("pebble-challtestsrv", "pebble")
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`; `validity` is the lifetime of the certificates it issues
    /// (pebble's `certificateValidityPeriod`, seconds).
    pub fn start(http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        Self::start_with(http_port, tls_port, validity, &[])
    }

    /// `start`, refusing orders for the names in `blocked` (pebble's
    /// `domainBlocklist`).
    pub fn start_with(http_port: u16, tls_port: u16, validity: u64, blocked: &[&str]) -> Pebble {
        let blocklist = serde_json::to_string(blocked).unwrap();
        let dir = TempDir::new("pebble");
        let ca = Ca::new("pebble API test CA");
        let (api_ca, cert, key) = ca.write_leaf(&dir.0, &["localhost", "127.0.0.1"]);
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"{{ "pebble": {{
  "listenAddress": "127.0.0.1:{listen}",
  "managementListenAddress": "127.0.0.1:{management}",
  "certificate": "{}",
  "privateKey": "{}",
  "httpPort": {http_port},
  "tlsPort": {tls_port},
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "domainBlocklist": {blocklist},
  "certificateValidityPeriod": {validity}
}} }}"#,
            cert.display(),
            key.display()
        );
        let config_path = dir.write("pebble-config.json", &config);
        let quiet = std::env::var_os("SLUICEGATE_TEST_LOG").is_none();
        let out = || {
            if quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            }
        };
        let dns_guard = ChildGuard::spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(out())
                .stderr(out()),
        );
        let pebble = ChildGuard::spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(out())
                .stderr(out()),
        );
        wait_listening(listen, Duration::from_secs(20));
        wait_listening(management, Duration::from_secs(20));
        Pebble {
            dir,
            api_ca,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            _pebble: pebble,
            _dns: dns_guard,
        }
    }

    /// pebble's issuing root (it makes a new one at each start), as a PEM
    /// file, from its management endpoint.
    pub fn root(&self) -> PathBuf {
        let ran = run(
            Command::new("curl")
                .args(["-sS", "--fail", "--cacert"])
                .arg(&self.api_ca)
                .arg(format!("https://127.0.0.1:{}/roots/0", self.management)),
            b"",
            Duration::from_secs(20),
        )
        .expect_ok("curl pebble's root");
        assert!(ran.stdout.contains("BEGIN CERTIFICATE"), "{}", ran.stdout);
        self.dir.write("pebble-root.pem", &ran.stdout)
    }

    /// The wrapper that starts sluicegate trusting pebble's API.
    pub fn env(&self) -> Vec<String> {
        vec![
            "env".to_string(),
            format!("LEGO_CA_CERTIFICATES={}", self.api_ca.display()),
        ]
    }
}
