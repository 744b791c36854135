//! ACME certificate resolvers against a real ACME server: pebble on
//! loopback (tests/support/pebble.rs), validating against sluicegate's own
//! entrypoints. A router with `certResolver` gets a certificate that
//! `openssl s_client -verify_return_error` accepts with pebble's root, by
//! TLS-ALPN-01 and by HTTP-01; short-lived certificates are renewed and
//! swapped in while a session on the old one keeps working; a CA that is
//! down leaves the default certificate and the error in the log, and a
//! restart with the storage file serves the stored certificate without the
//! CA; Traefik's `acme_tcp.toml` scenario.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::pebble::{self, Pebble};
use support::process::free_port;
use support::tls::{client_config, TlsStream};
use support::*;

const NAME: &str = "app.sluicegate.test";

struct Setup {
    tls_port: u16,
    http_port: u16,
    storage: PathBuf,
}

impl Setup {
    fn new(dir: &TempDir) -> Setup {
        Setup {
            tls_port: free_port(),
            http_port: free_port(),
            storage: dir.0.join("acme.json"),
        }
    }

    /// One TLS entrypoint and router for NAME (certificate from resolver
    /// `pebble`), an HTTP entrypoint, and the admin entrypoint.
    fn toml(&self, ca_server: &str, challenge: &str, backend: SocketAddr) -> String {
        format!(
            r#"
[entryPoints.tls]
address = "127.0.0.1:{tls}"
[entryPoints.web]
address = "127.0.0.1:{http}"
[entryPoints.traefik]
address = "127.0.0.1:0"
[metrics.prometheus]

[certificatesResolvers.pebble.acme]
email = "ops@sluicegate.test"
caServer = "{ca_server}"
storage = "{storage}"
keyType = "EC256"
{challenge}

[tcp.routers.app]
entryPoints = ["tls"]
rule = "HostSNI(`{NAME}`)"
service = "svc"
  [tcp.routers.app.tls]
  certResolver = "pebble"

[tcp.services.svc.loadBalancer]
  [[tcp.services.svc.loadBalancer.servers]]
  address = "{backend}"
"#,
            tls = self.tls_port,
            http = self.http_port,
            storage = self.storage.display(),
        )
    }
}

const TLS_CHALLENGE: &str = "[certificatesResolvers.pebble.acme.tlsChallenge]";
const HTTP_CHALLENGE: &str =
    "[certificatesResolvers.pebble.acme.httpChallenge]\nentryPoint = \"web\"";

fn start_proxy(config: &str, p: Option<&Pebble>) -> Proxy {
    let env = p.map(Pebble::env).unwrap_or_default();
    let wrapper: Vec<&str> = env.iter().map(String::as_str).collect();
    Proxy::start_with(config, &wrapper)
}

/// Wait (bounded) for a log line containing `needle`.
fn wait_log(proxy: &Proxy, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(l) = proxy.logs().into_iter().find(|l| l.contains(needle)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log after {limit:?}:\n{}",
            proxy.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `openssl s_client -verify_return_error` to the TLS entrypoint for
/// NAME, verifying with `root` (it ends at its stdin's end).
fn verify(addr: SocketAddr, root: &Path) -> support::process::Ran {
    support::process::run(
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(["-servername", NAME, "-verify_hostname", NAME])
            .arg("-CAfile")
            .arg(root)
            .arg("-verify_return_error"),
        b"",
        Duration::from_secs(20),
    )
}

/// The leaf certificate served for NAME (DER), read with a verifying client.
fn leaf(addr: SocketAddr, root: &Path) -> (TlsStream, Vec<u8>) {
    let t = TlsStream::connect(addr, NAME, client_config(root, None, &[]))
        .expect("TLS with pebble's root");
    let der = t.peer_certificates()[0].as_ref().to_vec();
    (t, der)
}

/// One round trip on a session that stays open.
fn ping_pong(t: &TlsStream, data: &[u8]) -> Vec<u8> {
    t.write_all(data).unwrap();
    t.read_exact_len(data.len()).unwrap()
}

fn obtain_and_verify(challenge: &str, extra: &str) {
    if !pebble::available() || !require_tool("openssl", "openssl") {
        return;
    }
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let p = Pebble::start(s.http_port, s.tls_port, 3600);
    let echo = Backend::echo();
    let config = format!("{}{extra}", s.toml(&p.directory, challenge, echo.addr));
    let proxy = start_proxy(&config, Some(&p));
    let line = wait_log(
        &proxy,
        "acme: certificate obtained",
        Duration::from_secs(90),
    );
    assert!(line.contains(NAME), "{line}");
    let root = p.root();
    let ran = verify(proxy.addr("tls"), &root);
    assert!(
        ran.ok(),
        "s_client refused the certificate:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(
        ran.stdout.contains("Verify return code: 0 (ok)"),
        "{}",
        ran.stdout
    );
    // Data goes through to the backend on it.
    let (t, der) = leaf(proxy.addr("tls"), &root);
    assert_eq!(t.exchange(b"through acme".to_vec()).0, b"through acme");
    assert!(support::tls::subject_cn(&der).is_some_and(|cn| cn == NAME));
    // The storage file is Traefik's format, private.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&s.storage).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.storage).unwrap()).unwrap();
    let entry = &json["pebble"];
    assert_eq!(entry["Account"]["Email"], "ops@sluicegate.test");
    assert!(entry["Account"]["Registration"]["uri"].as_str().is_some());
    assert_eq!(entry["Certificates"][0]["domain"]["main"], NAME);
    assert_eq!(entry["Certificates"][0]["Store"], "default");
    let m = metrics(proxy.addr("traefik"));
    assert_eq!(
        sample(
            &m,
            "sluicegate_acme_orders_total{resolver=\"pebble\",result=\"ok\"}"
        ),
        Some(1),
        "{m}"
    );
    if !extra.is_empty() {
        // Not a challenge (an HTTP request for another path, then raw
        // bytes): routed to the plain router, every byte replayed.
        let mut c = std::net::TcpStream::connect(proxy.addr("web")).unwrap();
        let sent = b"GET /.well-known/other HTTP/1.1\r\n\r\nand more".to_vec();
        std::io::Write::write_all(&mut c, &sent).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut c).0, sent);
        // An unknown token is answered 404 by sluicegate itself.
        let mut c = std::net::TcpStream::connect(proxy.addr("web")).unwrap();
        std::io::Write::write_all(
            &mut c,
            b"GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        let answer = read_to_end(&mut c).0;
        assert!(
            answer.starts_with(b"HTTP/1.1 404"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[test]
fn tls_alpn_01_certificate_verifies_with_pebble_root() {
    obtain_and_verify(TLS_CHALLENGE, "");
}

/// The HTTP-01 entrypoint also carries a plain router: a connection that
/// is not a challenge request reaches it with its bytes intact.
#[test]
fn http_01_certificate_verifies_with_pebble_root() {
    let plain = Backend::echo();
    let extra = format!(
        r#"
[tcp.routers.plain]
entryPoints = ["web"]
rule = "HostSNI(`*`)"
service = "plain"
[tcp.services.plain.loadBalancer]
  [[tcp.services.plain.loadBalancer.servers]]
  address = "{}"
"#,
        plain.addr
    );
    obtain_and_verify(HTTP_CHALLENGE, &extra);
}

/// A reload that adds a router for another name obtains its certificate
/// without a restart; the first one keeps being served.
#[test]
fn reload_adds_a_name() {
    if !pebble::available() {
        return;
    }
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let p = Pebble::start(s.http_port, s.tls_port, 3600);
    let echo = Backend::echo();
    let config = s.toml(&p.directory, TLS_CHALLENGE, echo.addr);
    let proxy = start_proxy(&config, Some(&p));
    wait_log(
        &proxy,
        "acme: certificate obtained",
        Duration::from_secs(90),
    );
    let second = "second.sluicegate.test";
    let added = format!(
        "{config}\n[tcp.routers.second]\nentryPoints = [\"tls\"]\nrule = \"HostSNI(`{second}`)\"\nservice = \"svc\"\ntls.certResolver = \"pebble\"\n"
    );
    std::fs::write(&proxy.config_path, added).unwrap();
    proxy.signal(1);
    let line = wait_log(
        &proxy,
        &format!("domains={second}"),
        Duration::from_secs(90),
    );
    assert!(line.contains("acme: certificate obtained"), "{line}");
    let root = p.root();
    for name in [NAME, second] {
        let t = TlsStream::connect(proxy.addr("tls"), name, client_config(&root, None, &[]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let der = t.peer_certificates()[0].as_ref().to_vec();
        assert_eq!(support::tls::subject_cn(&der).as_deref(), Some(name));
    }
}

/// A certificate of 30 s is renewed when a third of it is left: new
/// connections get the new one, while a session opened on the old one
/// keeps exchanging data.
#[test]
fn renewal_swaps_certificate_and_open_session_keeps_working() {
    if !pebble::available() {
        return;
    }
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let p = Pebble::start(s.http_port, s.tls_port, 30);
    let echo = Backend::echo();
    let proxy = start_proxy(&s.toml(&p.directory, TLS_CHALLENGE, echo.addr), Some(&p));
    wait_log(
        &proxy,
        "acme: certificate obtained",
        Duration::from_secs(90),
    );
    let root = p.root();
    let (old_session, first) = leaf(proxy.addr("tls"), &root);
    assert_eq!(ping_pong(&old_session, b"before"), b"before");
    wait_log(&proxy, "acme: certificate renewed", Duration::from_secs(90));
    let (t, second) = leaf(proxy.addr("tls"), &root);
    assert_ne!(
        first, second,
        "the renewed certificate is served to new connections"
    );
    assert_eq!(t.exchange(b"new".to_vec()).0, b"new");
    // The session on the old certificate is untouched.
    assert_eq!(ping_pong(&old_session, b"after renewal"), b"after renewal");
}

/// A CA that is down: the default certificate is served and the error is
/// logged and counted; the order is retried later, never blocking traffic.
#[test]
fn ca_down_keeps_default_certificate_and_logs_error() {
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let down = format!("https://{}/dir", refused_addr());
    let echo = Backend::echo();
    let proxy = start_proxy(&s.toml(&down, TLS_CHALLENGE, echo.addr), None);
    let line = wait_log(
        &proxy,
        "acme: cannot obtain a certificate",
        Duration::from_secs(30),
    );
    assert!(line.contains("level=error"), "{line}");
    assert!(line.contains(NAME), "{line}");
    let t = TlsStream::connect(
        proxy.addr("tls"),
        NAME,
        support::tls::insecure_client_config(&[&rustls::version::TLS13]),
    )
    .unwrap();
    let cn = support::tls::subject_cn(t.peer_certificates()[0].as_ref());
    assert_eq!(cn.as_deref(), Some("TRAEFIK DEFAULT CERT"));
    assert_eq!(t.exchange(b"still served".to_vec()).0, b"still served");
    let m = metrics(proxy.addr("traefik"));
    assert!(
        sample(
            &m,
            "sluicegate_acme_orders_total{resolver=\"pebble\",result=\"error\"}"
        )
        .is_some_and(|n| n >= 1),
        "{m}"
    );
    assert!(!s.storage.exists(), "nothing obtained, nothing stored");
}

/// pebble refuses the order (the name is on its block list): the default
/// certificate stays and the CA's reason is in the log.
#[test]
fn ca_refusal_keeps_default_certificate_and_logs_reason() {
    if !pebble::available() {
        return;
    }
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let p = Pebble::start_with(s.http_port, s.tls_port, 3600, &[NAME]);
    let echo = Backend::echo();
    let proxy = start_proxy(&s.toml(&p.directory, TLS_CHALLENGE, echo.addr), Some(&p));
    let line = wait_log(
        &proxy,
        "acme: cannot obtain a certificate",
        Duration::from_secs(60),
    );
    assert!(
        line.contains("rejectedIdentifier") || line.contains("blocked"),
        "{line}"
    );
    let t = TlsStream::connect(
        proxy.addr("tls"),
        NAME,
        support::tls::insecure_client_config(&[&rustls::version::TLS13]),
    )
    .unwrap();
    let cn = support::tls::subject_cn(t.peer_certificates()[0].as_ref());
    assert_eq!(cn.as_deref(), Some("TRAEFIK DEFAULT CERT"));
    assert_eq!(t.exchange(b"default".to_vec()).0, b"default");
}

/// With a certificate obtained and pebble stopped, a restart with the
/// storage file serves the stored certificate without contacting the CA
/// (whose URL now refuses connections).
#[test]
fn restart_serves_stored_certificate_without_the_ca() {
    if !pebble::available() {
        return;
    }
    let dir = TempDir::new("acme");
    let s = Setup::new(&dir);
    let echo = Backend::echo();
    let root;
    {
        let p = Pebble::start(s.http_port, s.tls_port, 3600);
        let proxy = start_proxy(&s.toml(&p.directory, TLS_CHALLENGE, echo.addr), Some(&p));
        wait_log(
            &proxy,
            "acme: certificate obtained",
            Duration::from_secs(90),
        );
        root = std::fs::copy(p.root(), dir.0.join("root.pem"))
            .map(|_| dir.0.join("root.pem"))
            .unwrap();
    }
    let stored = std::fs::read(&s.storage).unwrap();
    let down = format!("https://{}/dir", refused_addr());
    let proxy = start_proxy(&s.toml(&down, TLS_CHALLENGE, echo.addr), None);
    let line = wait_log(&proxy, "acme: storage loaded", Duration::from_secs(30));
    assert!(line.contains("certificates=1"), "{line}");
    // The stored certificate is published right after the load.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (t, der) = loop {
        match TlsStream::connect(proxy.addr("tls"), NAME, client_config(&root, None, &[])) {
            Ok(t) => {
                let der = t.peer_certificates()[0].as_ref().to_vec();
                break (t, der);
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "stored certificate not served: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(support::tls::subject_cn(&der).as_deref(), Some(NAME));
    assert_eq!(t.exchange(b"from storage".to_vec()).0, b"from storage");
    let m = metrics(proxy.addr("traefik"));
    assert_eq!(
        sample(
            &m,
            "sluicegate_acme_orders_total{resolver=\"pebble\",result=\"error\"}"
        ),
        Some(0),
        "no order was attempted: {m}"
    );
    assert!(!proxy
        .logs()
        .iter()
        .any(|l| l.contains("acme: cannot obtain")));
    assert_eq!(
        std::fs::read(&s.storage).unwrap(),
        stored,
        "storage untouched"
    );
}

fn load(
    text: &str,
) -> (
    TempDir,
    Result<sluicegate::model::Config, sluicegate::config::Errors>,
) {
    let dir = TempDir::new("acme-config");
    let path = dir.write("main.toml", text);
    let r = sluicegate::config::load(&path);
    (dir, r)
}

const ROUTERS: &str = r#"
[entryPoints.tls]
address = "127.0.0.1:0"
[entryPoints.web]
address = "127.0.0.1:0"
[tcp.services.svc.loadBalancer]
servers = [{ address = "127.0.0.1:9" }]
"#;

/// The resolver keys as Traefik reads them, and the names each router
/// asks for: its `tls.domains`, else one certificate per HostSNI name.
#[test]
fn resolver_keys_and_router_names() {
    let text = format!(
        r#"{ROUTERS}
[certificatesResolvers.le.acme]
email = "ops@example.com"
storage = "acme.json"
keyType = "EC384"
certificatesDuration = 24
[certificatesResolvers.le.acme.httpChallenge]
entryPoint = "web"
[certificatesResolvers.le.acme.tlsChallenge]

[tcp.routers.a]
entryPoints = ["tls"]
rule = "HostSNI(`a.example.com`) || HostSNI(`B.example.com`)"
service = "svc"
tls.certResolver = "le"

[tcp.routers.b]
entryPoints = ["tls"]
rule = "HostSNI(`c.example.com`)"
service = "svc"
[tcp.routers.b.tls]
certResolver = "le"
[[tcp.routers.b.tls.domains]]
main = "c.example.com"
sans = ["d.example.com"]
"#
    );
    let (dir, r) = load(&text);
    let cfg = r.unwrap_or_else(|e| panic!("{:?}", e.0));
    let acme = &cfg.acme;
    assert_eq!(acme.resolvers.len(), 1);
    let le = &acme.resolvers[0];
    assert_eq!(le.email.as_deref(), Some("ops@example.com"));
    assert_eq!(
        le.ca_server,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(le.storage, dir.0.join("acme.json"));
    assert_eq!(le.key_type, sluicegate::acme::KeyType::Ec384);
    assert_eq!(le.certificates_duration, Duration::from_secs(24 * 3600));
    assert_eq!(le.challenges.len(), 2);
    let wants: Vec<Vec<String>> = acme.wants.iter().map(|w| w.domain.names()).collect();
    assert_eq!(
        wants,
        vec![
            vec!["a.example.com".to_string()],
            vec!["b.example.com".to_string()],
            vec!["c.example.com".to_string(), "d.example.com".to_string()],
        ]
    );
}

/// Bad resolver and router keys are errors at FILE:LINE:COL.
#[test]
fn resolver_errors_point_at_the_keys() {
    let text = format!(
        r#"{ROUTERS}
[certificatesResolvers.dns.acme]
email = "ops@example.com"
[certificatesResolvers.dns.acme.dnsChallenge]
provider = "cloudflare"

[certificatesResolvers.le.acme]
emial = "ops@example.com"
keyType = "RSA1024"
[certificatesResolvers.le.acme.httpChallenge]
entryPoint = "nowhere"

[tcp.routers.a]
entryPoints = ["tls"]
rule = "HostSNI(`a.example.com`)"
service = "svc"
[tcp.routers.a.tls]
certResolver = "letsencrypt"

[tcp.routers.w]
entryPoints = ["tls"]
rule = "HostSNI(`w.example.com`)"
service = "svc"
[tcp.routers.w.tls]
certResolver = "le"
[[tcp.routers.w.tls.domains]]
main = "*.example.com"
"#
    );
    let (_dir, r) = load(&text);
    let Err(sluicegate::config::Errors(errors)) = r else {
        panic!("expected errors")
    };
    let all = errors.join("\n");
    for (at, what) in [
        (
            "main.toml:11:33",
            "`certificatesResolvers.dns.acme.dnsChallenge` is not supported",
        ),
        ("main.toml:15:1", "unknown key `emial`"),
        (
            "main.toml:18:14",
            "unknown entrypoint `nowhere` for the HTTP-01 challenge",
        ),
        (
            "main.toml:16:11",
            "keyType` must be one of EC256, EC384, RSA2048, RSA4096, RSA8192",
        ),
        (
            "main.toml:25:16",
            "unknown certificate resolver `letsencrypt` (defined: ",
        ),
        (
            "main.toml:34:8",
            "a wildcard domain needs the DNS-01 challenge",
        ),
    ] {
        assert!(
            errors.iter().any(|e| e.contains(at) && e.contains(what)),
            "no `{at}: ...{what}...` in:\n{all}"
        );
    }
}

/// Traefik's `acme_tcp.toml` (AcmeSuite TestTLSALPN01OnHostRuleTCP): a TCP
/// router on `websecure` for HostSNI(`traefik.acme.wtf`) with
/// `certResolver = "default"`, a TLS-ALPN-01 resolver with Traefik's
/// default key type. The template's resolver block is rendered as that
/// test renders it; its `/tmp/acme.json` becomes a per-test file, its
/// backend an echo server, and an admin entrypoint is added for `[api]`.
#[test]
fn traefik_acme_tcp_fixture() {
    if !pebble::available() {
        return;
    }
    let dir = TempDir::new("acme-traefik");
    let (http_port, tls_port) = (free_port(), free_port());
    let p = Pebble::start(http_port, tls_port, 3600);
    let echo = Backend::echo();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traefik/fixtures/acme/acme_tcp.toml");
    let text = std::fs::read_to_string(fixture).unwrap();
    let start = text.find("{{range").unwrap();
    let end = text.find("{{end}}\n\n[api]").unwrap() + "{{end}}".len();
    let block = text[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{{ $name }}", "default")
        .replace("{{ $resolvers.ACME.KeyType }}", "")
        .replace("{{ $resolvers.ACME.CAServer }}", &p.directory)
        .replace(
            "\n  [certificatesResolvers.default.acme.httpChallenge]\n    entryPoint = \"{{ $resolvers.ACME.HTTPChallenge.EntryPoint }}\"",
            "",
        );
    let storage = dir.0.join("acme.json");
    let path = dir.0.join("acme_tcp.toml");
    let rendered = format!("{}{block}{}", &text[..start], &text[end..])
        .replace("{{ .PortHTTP }}", &format!("127.0.0.1:{http_port}"))
        .replace("{{ .PortHTTPS }}", &format!("127.0.0.1:{tls_port}"))
        .replace("{{ .SelfFilename }}", &path.display().to_string())
        .replace("/tmp/acme.json", &storage.display().to_string())
        .replace("127.0.0.1:9010", &echo.addr.to_string())
        .replace(
            "[entryPoints]\n",
            "[entryPoints]\n  [entryPoints.traefik]\n    address = \"127.0.0.1:0\"\n",
        );
    assert!(!rendered.contains("{{"), "{rendered}");
    std::fs::write(&path, &rendered).unwrap();
    let env = p.env();
    // The fixture names itself as its file provider: started from its path.
    let wrapper: Vec<&str> = env.iter().map(String::as_str).collect();
    let proxy = Proxy::start_file_with(&path, &wrapper);
    let line = wait_log(
        &proxy,
        "acme: certificate obtained",
        Duration::from_secs(120),
    );
    assert!(line.contains("domains=traefik.acme.wtf"), "{line}");
    let root = p.root();
    let t = TlsStream::connect(
        proxy.addr("websecure"),
        "traefik.acme.wtf",
        client_config(&root, None, &[]),
    )
    .expect("pebble's certificate for traefik.acme.wtf");
    let der = t.peer_certificates()[0].as_ref().to_vec();
    assert_eq!(
        support::tls::subject_cn(&der).as_deref(),
        Some("traefik.acme.wtf")
    );
    assert_eq!(t.exchange(b"acme tcp".to_vec()).0, b"acme tcp");
    // Traefik's default key type for the certificate: RSA 4096.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&storage).unwrap()).unwrap();
    assert_eq!(json["default"]["Account"]["KeyType"], "4096");
}
