//! Traefik's own TCP integration scenarios (`integration/tcp_test.go`,
//! `tcp_healthcheck_test.go`, `proxy_protocol_test.go`, `simple_test.go`)
//! run against sluicegate: each upstream fixture (copied unchanged in
//! `tests/fixtures/traefik/`) is rendered as Traefik's test renders it, the
//! real binary runs it, `whoamitcp`-compatible backends
//! (`support/whoami.rs`) and real clients make the upstream assertions.
//!
//! Where sluicegate differs on purpose (HTTP routers, UDP, a whole file
//! refused for one broken router or TLS 1.1), the test asserts the error
//! `sluicegate check` gives, at its FILE:LINE:COL, and then runs the TCP
//! part that applies.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::process::{run, Ran};
use support::tls::{insecure_client_config, subject_cn, TlsStream};
use support::whoami::{Opts, Whoami};
use support::Proxy;

/// The copied fixtures; rendered files are written here too, so the
/// fixtures' relative certificate paths (`fixtures/tcp/whoami-c.crt`)
/// resolve as they do from Traefik's `integration/` directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traefik")
}

fn cert(name: &str) -> (PathBuf, PathBuf) {
    let d = root().join("fixtures/tcp");
    (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
}

/// A rendered fixture, removed on drop.
struct Rendered {
    path: PathBuf,
    name: String,
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Render `fixture` (a path under `fixtures/`) as Traefik's `adaptFile`
/// does for these templates: plain `{{ .Name }}` substitution, with
/// `{{ .SelfFilename }}` the rendered file itself. Entrypoint addresses
/// (`address = ":8093"`) become `127.0.0.1:0` (the proxy reports the bound
/// port). `edit` may change the text afterwards (TCP translations,
/// `[runtime] workers = 1`).
fn render(fixture: &str, vars: &[(&str, String)], edit: impl FnOnce(String) -> String) -> Rendered {
    static N: AtomicUsize = AtomicUsize::new(0);
    let stem = Path::new(fixture).file_stem().unwrap().to_string_lossy();
    let name = format!(
        "rendered-{stem}-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let path = root().join(&name);
    let src = root().join("fixtures").join(fixture);
    let mut text =
        std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let mut all: Vec<(&str, String)> = vars.to_vec();
    all.push(("SelfFilename", path.display().to_string()));
    for (k, v) in &all {
        text = text
            .replace(&format!("{{{{ .{k} }}}}"), v)
            .replace(&format!("{{{{.{k}}}}}"), v);
    }
    assert!(
        !text.contains("{{"),
        "{fixture}: a template variable was not given:\n{text}"
    );
    let text = entrypoints_on_ephemeral_ports(&text);
    std::fs::write(&path, edit(text)).unwrap();
    Rendered { path, name }
}

/// `address = ":PORT"` (an entrypoint: servers are `IP:port`) ->
/// `address = "127.0.0.1:0"`; `:PORT/udp` is left for `check` to refuse.
fn entrypoints_on_ephemeral_ports(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            let v = t
                .strip_prefix("address")
                .map(|r| r.trim_start())
                .and_then(|r| r.strip_prefix('='))
                .map(|r| r.trim());
            match v {
                Some(v)
                    if v.starts_with("\":")
                        && v.ends_with('"')
                        && v[2..v.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
                {
                    let indent = &l[..l.len() - t.len()];
                    format!("{indent}address = \"127.0.0.1:0\"")
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Cut the text from the line starting (trimmed) with `from` up to (not
/// including) the line starting with `to` (or to the end).
fn cut(text: &str, from: &str, to: Option<&str>) -> String {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("`{from}` not in:\n{text}"));
    let end = match to {
        Some(t) => {
            start
                + text[start..]
                    .find(t)
                    .unwrap_or_else(|| panic!("`{t}` not found"))
        }
        None => text.len(),
    };
    format!("{}{}", &text[..start], &text[end..])
}

fn workers_1(text: String) -> String {
    format!("{text}\n[runtime]\nworkers = 1\n")
}

/// `sluicegate check` on a rendered file, run from its directory so the
/// messages name it as `rendered-....toml:LINE:COL`.
fn check(r: &Rendered) -> Ran {
    run(
        Command::new(support::BIN)
            .arg("check")
            .arg("-c")
            .arg(&r.name)
            .current_dir(root()),
        b"",
        Duration::from_secs(30),
    )
}

/// Asserts `check` fails and reports each `(LINE:COL, message fragment)`.
fn assert_check_errors(r: &Rendered, want: &[(&str, &str)]) {
    let ran = check(r);
    assert!(!ran.ok(), "check passed:\n{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.ends_with('\n'),
        "the error list must end with a newline: {:?}",
        ran.stderr
    );
    let all = format!("{}{}", ran.stdout, ran.stderr);
    for (pos, msg) in want {
        let line = format!("{}:{pos}: {msg}", r.name);
        assert!(
            all.lines().any(|l| l.starts_with(&line)),
            "expected `{line}` in:\n{all}"
        );
    }
}

/// The `Name:` line of a whoamitcp answer.
fn name_of(answer: &str) -> Option<&str> {
    answer.lines().find_map(|l| l.strip_prefix("Name: "))
}

/// Plain TCP: write `WHO`, read once (2 s deadline), as upstream `guessWho`.
fn who_plain(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"WHO").unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// TLS with any certificate accepted: write `WHO`, read once. Returns the
/// answer and the connection (for its certificates and version).
fn who_tls(
    addr: SocketAddr,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<(String, TlsStream)> {
    let t = TlsStream::connect(addr, sni, insecure_client_config(versions))?;
    t.tcp().set_read_timeout(Some(Duration::from_secs(5)))?;
    t.write_all(b"WHO")?;
    let got = t.read_some()?;
    Ok((String::from_utf8_lossy(&got).into_owned(), t))
}

/// Upstream's "TLS passthrough check": the server sent exactly one
/// certificate and its CN is the SNI, i.e. the backend terminated.
fn who_passthrough(addr: SocketAddr, sni: &str) -> std::io::Result<String> {
    let (answer, t) = who_tls(addr, sni, &[])?;
    let certs = t.peer_certificates();
    assert_eq!(certs.len(), 1, "{sni}: one certificate expected");
    assert_eq!(
        subject_cn(&certs[0]).as_deref(),
        Some(sni),
        "{sni}: the certificate must be the backend's"
    );
    Ok(answer)
}

/// The CN of the certificate a TLS connection got.
fn cn_of(t: &TlsStream) -> String {
    let certs = t.peer_certificates();
    subject_cn(&certs[0]).unwrap_or_default()
}

// ---- fixtures/tcp/non-tls.toml (TestNonTlsTcp) ----

#[test]
fn non_tls() {
    let w = Whoami::local(Opts::named("whoami-no-tls"));
    let r = render(
        "tcp/non-tls.toml",
        &[("WhoamiNoTLS", w.addr.to_string())],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    let answer = who_plain(p.addr("tcp"));
    assert_eq!(name_of(&answer), Some("whoami-no-tls"), "{answer}");
}

// ---- fixtures/tcp/catch-all-no-tls.toml (TestCatchAllNoTLS) ----

#[test]
fn catch_all_no_tls_server_speaks_first() {
    let w = Whoami::local(Opts {
        banner: true,
        ..Opts::named("whoami-banner")
    });
    let r = render(
        "tcp/catch-all-no-tls.toml",
        &[("WhoamiBannerAddress", w.addr.to_string())],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    // Send nothing: the proxy must dial at once and pass the banner on.
    let mut s = TcpStream::connect(p.addr("tcp")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("the banner within 2 s");
    assert_eq!(&buf[..n], b"Welcome\n");
}

// ---- fixtures/tcp/non-tls-fallback.toml (TestNonTLSFallback) ----

#[test]
fn non_tls_fallback() {
    let (ca, ka) = cert("whoami-a");
    let (cb, kb) = cert("whoami-b");
    let a = Whoami::local(Opts::named("whoami-a").with_tls(ca, ka));
    let b = Whoami::local(Opts::named("whoami-b").with_tls(cb, kb));
    let no_cert = Whoami::local(Opts::named("whoami-no-cert"));
    let no_tls = Whoami::local(Opts::named("whoami-no-tls"));
    let r = render(
        "tcp/non-tls-fallback.toml",
        &[
            ("WhoamiA", a.addr.to_string()),
            ("WhoamiB", b.addr.to_string()),
            ("WhoamiNoCert", no_cert.addr.to_string()),
            ("WhoamiNoTLS", no_tls.addr.to_string()),
        ],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    let out = who_passthrough(ep, "whoami-a.test").unwrap();
    assert_eq!(name_of(&out), Some("whoami-a"), "{out}");
    let out = who_passthrough(ep, "whoami-b.test").unwrap();
    assert_eq!(name_of(&out), Some("whoami-b"), "{out}");
    // Terminated by the proxy: no certificate is configured, so the
    // generated default one is served (as Traefik's).
    let (out, t) = who_tls(ep, "whoami-c.test", &[]).unwrap();
    assert_eq!(name_of(&out), Some("whoami-no-cert"), "{out}");
    assert_eq!(cn_of(&t), "TRAEFIK DEFAULT CERT");
    let out = who_plain(ep);
    assert_eq!(name_of(&out), Some("whoami-no-tls"), "{out}");
}

// ---- fixtures/tcp/ip-allowlist.toml, ip-whitelist.toml ----

fn allow_list(fixture: &str) {
    let (ca, ka) = cert("whoami-a");
    let (cb, kb) = cert("whoami-b");
    let a = Whoami::local(Opts::named("whoami-a").with_tls(ca, ka));
    let b = Whoami::local(Opts::named("whoami-b").with_tls(cb, kb));
    let r = render(
        fixture,
        &[
            ("WhoamiA", a.addr.to_string()),
            ("WhoamiB", b.addr.to_string()),
        ],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    // Blocked (sourceRange 127.127.127.127/32): the proxy reads the
    // ClientHello and closes: a clean EOF during the handshake, no reset.
    let err = who_passthrough(ep, "whoami-a.test").expect_err("whoami-a must be blocked");
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(
        a.connections(),
        0,
        "a blocked client must not reach whoami-a"
    );
    let out = who_passthrough(ep, "whoami-b.test").unwrap();
    assert_eq!(name_of(&out), Some("whoami-b"), "{out}");
}

#[test]
fn ip_allowlist() {
    allow_list("tcp/ip-allowlist.toml");
}

#[test]
fn ip_whitelist() {
    allow_list("tcp/ip-whitelist.toml");
}

// ---- fixtures/tcp/wrr.toml (TestWRR) ----

#[test]
fn wrr_three_to_one() {
    let (cb, kb) = cert("whoami-b");
    let b = Whoami::local(Opts::named("whoami-b").with_tls(cb.clone(), kb.clone()));
    let ab = Whoami::local(Opts::named("whoami-ab").with_tls(cb, kb));
    let r = render(
        "tcp/wrr.toml",
        &[
            ("WhoamiB", b.addr.to_string()),
            ("WhoamiAB", ab.addr.to_string()),
        ],
        // One balancer per worker: one worker gives upstream's global count.
        workers_1,
    );
    let p = Proxy::start_file(&r.path);
    let mut calls: HashMap<String, usize> = HashMap::new();
    for _ in 0..4 {
        let out = who_passthrough(p.addr("tcp"), "whoami-b.test").unwrap();
        *calls
            .entry(name_of(&out).unwrap_or("unknown").to_string())
            .or_default() += 1;
    }
    let want: HashMap<String, usize> = [("whoami-b".to_string(), 3), ("whoami-ab".to_string(), 1)]
        .into_iter()
        .collect();
    assert_eq!(calls, want);
}

// ---- fixtures/tcp/multi-tls-options.toml (TestTLSOptions) ----

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[test]
fn multi_tls_options() {
    let w = Whoami::local(Opts::named("whoami-no-cert"));
    let vars = [("WhoamiNoCert", w.addr.to_string())];
    // Deliberately different: Traefik keeps the router whose options are
    // broken (mTLS without CA files) and fails only its handshakes;
    // sluicegate refuses the whole file, at the broken key.
    let as_is = render("tcp/multi-tls-options.toml", &vars, |t| t);
    assert_check_errors(
        &as_is,
        &[(
            "59:22",
            "`tls.options.invalid.clientAuth.clientAuthType` verifies client certificates but no `caFiles` are given",
        )],
    );
    // The rest of upstream's assertions, without the broken router.
    let r = render("tcp/multi-tls-options.toml", &vars, |t| {
        let t = cut(
            &t,
            "    [tcp.routers.to-whoami-invalid-tls]",
            Some("    [tcp.services.whoami-no-cert]"),
        );
        cut(&t, "  [tls.options.invalid.clientAuth]", None)
    });
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    // whoami-c.test: options foo (minVersion 1.2): a TLS 1.2 client is served.
    let (out, t) = who_tls(ep, "whoami-c.test", TLS12).unwrap();
    assert_eq!(name_of(&out), Some("whoami-no-cert"), "{out}");
    assert_eq!(t.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    // whoami-d.test: options bar (minVersion 1.3): TLS 1.3 served ...
    let (out, t) = who_tls(ep, "whoami-d.test", TLS13).unwrap();
    assert_eq!(name_of(&out), Some("whoami-no-cert"), "{out}");
    assert_eq!(t.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // ... and a TLS 1.2-only client refused with a protocol_version alert
    // (Go reports it as "protocol version not supported").
    let err = who_tls(ep, "whoami-d.test", TLS12).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("ProtocolVersion")),
        "expected a protocol_version alert, got {err:?}"
    );
    // whoami-i.test now matches no router: the handshake is completed with
    // the default certificate, then closed; nothing reaches the backend.
    let before = w.connections();
    let out = who_tls(ep, "whoami-i.test", &[]).map(|(o, _)| o);
    assert!(
        out.as_ref().map_or(true, |o| o.is_empty()),
        "whoami-i.test must not be served: {out:?}"
    );
    assert_eq!(w.connections(), before, "whoami-i.test reached the backend");
}

// ---- fixtures/tcp/wildcard-hostsni-tls-options.toml (SimpleSuite
// TestTCPWildcardHostSNI / TestTCPWildcardHostSNITLSOptions) ----

/// Handshake only (then close), as upstream.
fn handshake(
    addr: SocketAddr,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream> {
    TlsStream::connect(addr, sni, insecure_client_config(versions))
}

#[test]
fn wildcard_hostsni_tls_options() {
    let w = Whoami::local(Opts::named("backend"));
    let vars = [("Backend", w.addr.to_string())];
    // Deliberately different: the default options are TLS 1.1 only, which
    // rustls cannot serve; sluicegate refuses them at load.
    let as_is = render("tcp/wildcard-hostsni-tls-options.toml", &vars, |t| t);
    let why = "rustls supports TLS 1.2 and 1.3 only (VersionTLS12, VersionTLS13)";
    assert_check_errors(
        &as_is,
        &[
            (
                "56:18",
                &format!("`tls.options.default.minVersion` VersionTLS11: {why}"),
            ),
            (
                "57:18",
                &format!("`tls.options.default.maxVersion` VersionTLS11: {why}"),
            ),
        ],
    );
    // Without the TLS 1.1 default options (and so without the TLS 1.1 row).
    let r = render("tcp/wildcard-hostsni-tls-options.toml", &vars, |t| {
        cut(&t, "  [tls.options.default]", Some("  [tls.options.foo]"))
    });
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    for (sni, versions, want) in [
        // The wildcard router (options foo: TLS 1.2 only).
        ("foo.snitest.com", &[][..], rustls::ProtocolVersion::TLSv1_2),
        ("foo.snitest.com", TLS12, rustls::ProtocolVersion::TLSv1_2),
        // The specific router wins over the wildcard (options bar: 1.3 only).
        ("bar.snitest.com", &[][..], rustls::ProtocolVersion::TLSv1_3),
        ("bar.snitest.com", TLS13, rustls::ProtocolVersion::TLSv1_3),
        // Default options (here rustls' defaults).
        (
            "other.snitest.com",
            &[][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let t = handshake(ep, sni, versions).unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(t.protocol_version(), Some(want), "{sni}");
        assert_eq!(cn_of(&t), "*.snitest.com", "{sni}");
    }
    // And the options are really per router: each refuses the other version.
    for (sni, versions) in [("foo.snitest.com", TLS13), ("bar.snitest.com", TLS12)] {
        let err = handshake(ep, sni, versions).err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains("ProtocolVersion")),
            "{sni}: expected a protocol_version alert, got {err:?}"
        );
    }
}

// ---- fixtures/simple_ddos.toml (SimpleSuite TestDDOS) ----

#[test]
fn ddos_stalled_record_closed_by_read_timeout() {
    let r = render("simple_ddos.toml", &[], |t| t);
    let p = Proxy::start_file(&r.path);
    for ep in ["web", "tcp"] {
        let mut s = TcpStream::connect(p.addr(ep)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A TLS record header announcing 16 bytes that never come.
        s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x10]).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let got = s.read(&mut buf);
        let took = start.elapsed();
        eprintln!("{ep}: stalled record closed after {took:?}");
        assert_eq!(got.ok(), Some(0), "{ep}: a clean EOF expected");
        // readTimeout is 200 ms; upstream allows 500 ms.
        assert!(
            took < Duration::from_millis(500),
            "{ep}: closed after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(150),
            "{ep}: closed after {took:?}, before readTimeout"
        );
    }
}

// ---- Deliberately different: whole-file errors ----

#[test]
fn mixed_http_routers_are_an_error() {
    let r = render(
        "tcp/mixed.toml",
        &[
            ("Whoami", "http://127.0.0.1:9".into()),
            ("WhoamiA", "127.0.0.1:9".into()),
            ("WhoamiB", "127.0.0.1:9".into()),
            ("WhoamiNoCert", "127.0.0.1:9".into()),
        ],
        |t| t,
    );
    assert_check_errors(
        &r,
        &[(
            "21:2",
            "`http` is not supported: sluicegate proxies TCP only",
        )],
    );
}

/// The TCP part of `mixed.toml` (its `[http]` block removed): the proxy
/// terminates whoami-c.test with the fixture's X.509 v1 certificate.
#[test]
fn mixed_tcp_part() {
    let (ca, ka) = cert("whoami-a");
    let (cb, kb) = cert("whoami-b");
    let a = Whoami::local(Opts::named("whoami-a").with_tls(ca, ka));
    let b = Whoami::local(Opts::named("whoami-b").with_tls(cb, kb));
    let no_cert = Whoami::local(Opts::named("whoami-no-cert"));
    let r = render(
        "tcp/mixed.toml",
        &[
            ("Whoami", "http://127.0.0.1:9".into()),
            ("WhoamiA", a.addr.to_string()),
            ("WhoamiB", b.addr.to_string()),
            ("WhoamiNoCert", no_cert.addr.to_string()),
        ],
        |t| cut(&t, "[http]", Some("[tcp]")),
    );
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    let out = who_passthrough(ep, "whoami-a.test").unwrap();
    assert_eq!(name_of(&out), Some("whoami-a"), "{out}");
    let out = who_passthrough(ep, "whoami-b.test").unwrap();
    assert_eq!(name_of(&out), Some("whoami-b"), "{out}");
    let (out, t) = who_tls(ep, "whoami-c.test", &[]).unwrap();
    assert_eq!(name_of(&out), Some("whoami-no-cert"), "{out}");
    assert_eq!(cn_of(&t), "whoami-c.test", "the configured certificate");
}

/// A v1 certificate is served (above), but its key is still checked.
#[test]
fn v1_certificate_with_another_key_is_an_error() {
    let r = render(
        "tcp/mixed.toml",
        &[
            ("Whoami", "http://127.0.0.1:9".into()),
            ("WhoamiA", "127.0.0.1:9".into()),
            ("WhoamiB", "127.0.0.1:9".into()),
            ("WhoamiNoCert", "127.0.0.1:9".into()),
        ],
        |t| cut(&t, "[http]", Some("[tcp]")).replace("whoami-c.key", "whoami-a.key"),
    );
    let text = std::fs::read_to_string(&r.path).unwrap();
    let (line, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("keyFile"))
        .unwrap();
    let pos = format!("{}:{}", line + 1, l.find('"').unwrap() + 1);
    assert_check_errors(
        &r,
        &[(
            &pos,
            "the private key `fixtures/tcp/whoami-a.key` does not match the certificate `fixtures/tcp/whoami-c.crt`",
        )],
    );
}

#[test]
fn catch_all_with_https_router_is_an_error() {
    let r = render(
        "tcp/catch-all-no-tls-with-https.toml",
        &[
            ("WhoamiNoTLSAddress", "127.0.0.1:9".into()),
            ("WhoamiURL", "http://127.0.0.1:9".into()),
        ],
        |t| t,
    );
    assert_check_errors(
        &r,
        &[(
            "33:2",
            "`http` is not supported: sluicegate proxies TCP only",
        )],
    );
}

#[test]
fn service_errors_are_whole_file_errors() {
    let r = render("tcp/service_errors.toml", &[], |t| t);
    assert_check_errors(
        &r,
        &[
            (
                "13:15",
                "entrypoint `udp`: `:4443/udp`: UDP entrypoints are not supported",
            ),
            (
                "35:17",
                "service `service1` needs `loadBalancer`, `weighted` or `failover`",
            ),
        ],
    );
}

#[test]
fn router_errors_are_whole_file_errors() {
    let r = render("router_errors.toml", &[], |t| t);
    assert_check_errors(
        &r,
        &[
            ("21:2", "`http` is not supported"),
            ("56:18", "unknown entrypoint `unknown-entrypoint`"),
            ("62:13", "invalid rule: unknown matcher `Host`"),
            ("70:2", "`udp` is not supported"),
        ],
    );
}

#[test]
fn proxy_protocol_fixture_http_router_is_an_error() {
    let r = render(
        "proxy-protocol/proxy-protocol.toml",
        &[("WhoamiIP", "127.0.0.1:9".into())],
        |t| t,
    );
    assert_check_errors(
        &r,
        &[(
            "27:2",
            "`http` is not supported: sluicegate proxies TCP only",
        )],
    );
}

// ---- fixtures/tcp/postgres-starttls.toml, postgres-starttls-passthrough.toml
// (TestPostgresSTARTTLS, TestPostgresSTARTTLSPassthrough) ----

/// PostgreSQL's SSLRequest: int32 8, int32 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// SSLRequest in clear, `S` within 2 s, then a TLS handshake with `sni`
/// (any certificate accepted), as upstream.
fn starttls(addr: SocketAddr, sni: &str) -> TlsStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&SSL_REQUEST).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = [0u8; 1];
    s.read_exact(&mut reply)
        .expect("an answer to the SSLRequest");
    assert_eq!(reply[0], b'S', "SSLRequest answer");
    let t = TlsStream::over(s, sni, insecure_client_config(&[])).expect("TLS handshake");
    t.tcp()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    t
}

/// Backend messages `(type, body)` up to and including ReadyForQuery.
fn pg_until_ready(t: &TlsStream, buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                break;
            }
            let msg: Vec<u8> = buf.drain(..1 + len).collect();
            let ty = msg[0];
            out.push((ty, msg[5..].to_vec()));
            if ty == b'Z' {
                return out;
            }
        }
        let more = t
            .read_some()
            .unwrap_or_else(|e| panic!("after {out:?}: {e}"));
        buf.extend_from_slice(&more);
    }
}

/// Upstream's StartupMessage (user and database `test`): the first reply
/// must be an Authentication message (`R`). Then one query the upstream
/// test does not make: whether the server's side of this session is TLS
/// (`pg_stat_ssl`), which tells terminated from passed-through.
fn startup_then_server_ssl(t: &TlsStream) -> String {
    let params = b"user\0test\0database\0test\0\0";
    let mut startup = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    startup.extend_from_slice(params);
    t.write_all(&startup).unwrap();
    let mut buf = Vec::new();
    let msgs = pg_until_ready(t, &mut buf);
    assert_eq!(msgs[0].0, b'R', "first reply: {msgs:?}");
    assert_eq!(
        msgs[0].1,
        [0, 0, 0, 0],
        "AuthenticationOk expected: {msgs:?}"
    );
    let sql = b"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((4 + sql.len()) as u32).to_be_bytes());
    q.extend_from_slice(sql);
    t.write_all(&q).unwrap();
    let msgs = pg_until_ready(t, &mut buf);
    // DataRow: int16 columns, int32 length, value.
    let row = msgs
        .iter()
        .find(|(ty, _)| *ty == b'D')
        .unwrap_or_else(|| panic!("no DataRow in {msgs:?}"));
    String::from_utf8_lossy(&row.1[6..]).into_owned()
}

#[test]
fn postgres_starttls_terminated_and_passthrough() {
    if !support::pg::available() {
        return;
    }
    let dir = support::TempDir::new("traefik-pg");
    let ca = support::tls::Ca::new("traefik scenarios CA");
    // The upstream postgres-ssl container makes a self-signed CN=postgres-ssl.
    let (_, c, k) = ca.write_leaf(&dir.0, &["postgres-ssl"]);
    let cluster = support::pg::PgCluster::start(&c, &k);
    cluster.sql("CREATE ROLE test LOGIN");
    cluster.sql("CREATE DATABASE test OWNER test");
    let backend = format!("127.0.0.1:{}", cluster.port);

    // Terminated by the proxy (no certificate configured: the generated
    // default); the backend gets the startup in clear.
    let r = render(
        "tcp/postgres-starttls.toml",
        &[("PostgresAddr", backend.clone())],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    let t = starttls(p.addr("tcp"), "postgres-starttls");
    assert_eq!(cn_of(&t), "TRAEFIK DEFAULT CERT");
    assert_eq!(startup_then_server_ssl(&t), "f", "{}", cluster.log());
    drop(t);
    drop(p);

    // Passed through: the proxy asks the backend for TLS itself, swallows
    // its `S`, and the session's TLS is the server's.
    let r = render(
        "tcp/postgres-starttls-passthrough.toml",
        &[("PostgresSSLAddr", backend)],
        |t| t,
    );
    let p = Proxy::start_file(&r.path);
    let t = starttls(p.addr("tcp"), "postgres-starttls-passthrough");
    assert_eq!(cn_of(&t), "postgres-ssl");
    assert_eq!(startup_then_server_ssl(&t), "t", "{}", cluster.log());
}

// ---- fixtures/tcp_healthcheck/simple.toml (TCPHealthCheckSuite
// TestSimpleConfiguration) ----

#[test]
fn tcp_healthcheck_weighted() {
    // The template appends `:8080`: each backend on its own 127.0.0.x.
    let w1 = Whoami::on_8080(221..=230, Opts::named("whoamitcp1"));
    let mut w2 = Whoami::on_8080(231..=240, Opts::named("whoamitcp2"));
    let r = render(
        "tcp_healthcheck/simple.toml",
        &[
            ("Server1", w1.ip().to_string()),
            ("Server2", w2.ip().to_string()),
        ],
        workers_1,
    );
    let p = Proxy::start_file(&r.path);
    let ep = p.addr("tcp");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..4 {
        let out = who_plain(ep);
        *counts
            .entry(name_of(&out).unwrap_or("unknown").to_string())
            .or_default() += 1;
    }
    let want: HashMap<String, usize> =
        [("whoamitcp1".to_string(), 2), ("whoamitcp2".to_string(), 2)]
            .into_iter()
            .collect();
    assert_eq!(counts, want);
    // Stop whoamitcp2 (an idle connection to it held open, as upstream),
    // and wait for the health check to see it (upstream sleeps 1 s).
    let _idle = TcpStream::connect(w2.addr).unwrap();
    w2.stop();
    let stopped = Instant::now();
    let down = w2.addr.to_string();
    p.wait_logs(1, |l| l.contains("server unhealthy") && l.contains(&down));
    eprintln!(
        "whoamitcp2 seen down {:?} after it stopped",
        stopped.elapsed()
    );
    for _ in 0..3 {
        let out = who_plain(ep);
        assert_eq!(name_of(&out), Some("whoamitcp1"), "{out}");
    }
}

// ---- fixtures/proxy-protocol/proxy-protocol.toml (ProxyProtocolSuite
// TestProxyProtocolTrusted / NotTrusted), translated to TCP ----

/// The PROXY header upstream sends: TCP4, 1.2.3.4:62541 -> 127.0.0.1:8000.
fn upstream_proxy_header(version: u8) -> Vec<u8> {
    if version == 1 {
        return b"PROXY TCP4 1.2.3.4 127.0.0.1 62541 8000\r\n".to_vec();
    }
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2, 3, 4, 127, 0, 0, 1]);
    h.extend_from_slice(&62541u16.to_be_bytes());
    h.extend_from_slice(&8000u16.to_be_bytes());
    h
}

/// Optionally a PROXY header, then `WHO`; the `Proxy Protocol Source:` the
/// backend reports, and the client's own address.
fn who_behind_proxy_header(addr: SocketAddr, version: Option<u8>) -> (String, SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Some(v) = version {
        s.write_all(&upstream_proxy_header(v)).unwrap();
    }
    s.write_all(b"WHO").unwrap();
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let me = s.local_addr().unwrap();
    (answer, me)
}

fn source_of(answer: &str) -> Option<&str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Proxy Protocol Source: "))
}

#[test]
fn proxy_protocol_trusted_and_not_trusted() {
    let w = Whoami::local(Opts {
        proxy_protocol: true,
        ..Opts::named("whoami-pp")
    });
    // The upstream fixture's entrypoints (trust: trustedIPs 127.0.0.1,
    // nottrust: trustedIPs 1.2.3.4) unchanged; its HTTP router becomes a
    // TCP catch-all to a whoamitcp -proxyprotocol behind a PROXY v2
    // transport, so the backend reports the client address the proxy
    // believed.
    let backend = w.addr.to_string();
    let r = render(
        "proxy-protocol/proxy-protocol.toml",
        &[("WhoamiIP", backend.clone())],
        |t| {
            let t = cut(&t, "[http.routers]", None);
            format!(
                "{t}[tcp.routers.router1]\n  service = \"service1\"\n  rule = \"HostSNI(`*`)\"\n\
                 [tcp.services.service1.loadBalancer]\n  serversTransport = \"pp\"\n\
                 [[tcp.services.service1.loadBalancer.servers]]\n  address = \"{backend}\"\n\
                 [tcp.serversTransports.pp.proxyProtocol]\n  version = 2\n"
            )
        },
    );
    let p = Proxy::start_file(&r.path);
    let mut failures = Vec::new();
    let mut expect = |what: &str, (answer, me): (String, SocketAddr), want: String| {
        if source_of(&answer) != Some(want.as_str()) {
            failures.push(format!(
                "{what}: want source {want}, backend answered {answer:?} (client {me})"
            ));
        }
    };
    // Upstream's readiness request: a trusted source may omit the header.
    let got = who_behind_proxy_header(p.addr("trust"), None);
    let me = got.1.to_string();
    expect("trust, no header", got, me);
    for v in [1, 2] {
        let got = who_behind_proxy_header(p.addr("trust"), Some(v));
        expect(&format!("trust, v{v}"), got, "1.2.3.4:62541".into());
    }
    // Untrusted: the header is parsed, stripped and ignored; the
    // connection is served with the real client address.
    for v in [1, 2] {
        let got = who_behind_proxy_header(p.addr("nottrust"), Some(v));
        let me = got.1.to_string();
        expect(&format!("nottrust, v{v}"), got, me);
    }
    assert!(
        failures.is_empty(),
        "PROXY protocol differs from Traefik's (needs the untrusted-header \
         strip / optional-trusted-header change):\n{}",
        failures.join("\n")
    );
}
