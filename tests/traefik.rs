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
