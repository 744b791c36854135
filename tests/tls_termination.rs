//! TLS termination through the real binary: certificates chosen by SNI (and
//! the default one), sniStrict, exact bytes both ways (64 MiB), half-close and
//! resets through TLS, minVersion, mutual TLS, key formats, start-up errors,
//! reload, the handshake deadline, and real clients and servers: redis-cli
//! --tls to a plain redis-server, psql sslmode=verify-full to a plain
//! PostgreSQL, and re-encryption to an `openssl s_server` backend.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use support::openssl::{s_client, subject, Pki, SServer};
use support::process::run;
use support::tls::{client_config, Ca, TlsStream};
use support::*;

/// One terminating router for every SNI (`HostSNI(*)`) on entrypoint `tls`
/// (10 s to send a ClientHello), towards `backend` over transport `t` (5 s
/// dial); `[tls.options.default]` for the tests' option keys; two workers on
/// io_uring. The backends answer after the client's close_notify or FIN: a
/// generous terminationDelay (30 s) keeps a late answer on a loaded machine.
fn cfg(backend: SocketAddr) -> Cfg {
    Cfg::new()
        .entrypoint("tls")
        .set(
            "entryPoints.tls.transport.respondingTimeouts",
            "readTimeout",
            "10s",
        )
        .router_on("term", "tls", "HostSNI(`*`)", "svc")
        .router_tls("term")
        .service("svc", &[backend])
        .lb("svc", "serversTransport", "t")
        .transport("t", "dialTimeout", "5s")
        .and("terminationDelay", "30s")
        .table("tls.options.default")
        .workers(2)
        .set("runtime", "driver", "io_uring")
}

/// `[tcp.serversTransports.t.tls]` with `keys` (values as TOML text).
fn transport_tls(c: Cfg, keys: &[(&str, String)]) -> Cfg {
    let mut c = c.table("tcp.serversTransports.t.tls");
    for (k, v) in keys {
        c = c.and(k, Raw(v));
    }
    c
}

/// A backend that answers the first line upper-cased, then closes (so
/// `openssl s_client -ign_eof` ends).
fn line_backend() -> Backend {
    Backend::start(|mut s| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b) {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        let _ = s.write_all(&line.to_ascii_uppercase());
        let _ = s.shutdown(Shutdown::Write);
        let _ = read_to_end(&mut s);
    })
}

/// `openssl s_client` with extra arguments; sends `input`.
fn s_client_args(addr: SocketAddr, args: &[&str], ca: &Path, input: &str) -> support::process::Ran {
    run(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(args)
            .arg("-CAfile")
            .arg(ca)
            .args(["-verify_return_error", "-ign_eof"]),
        input.as_bytes(),
        Duration::from_secs(20),
    )
}

#[test]
fn sni_picks_the_certificate_by_name_wildcard_and_default() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (a_crt, a_key) = pki.leaf("a.test", &["a.test", "alias.test"]);
    let (w_crt, w_key) = pki.leaf("*.wild.test", &["*.wild.test"]);
    let (d_crt, d_key) = pki.leaf("default.test", &["default.test"]);
    let backend = line_backend();
    let p = cfg(backend.addr)
        .cert(&a_crt, &a_key)
        .cert(&w_crt, &w_key)
        .default_cert(&d_crt, &d_key)
        .start();
    let addr = p.addr("tls");
    for (sni, cn) in [
        ("a.test", "a.test"),
        ("ALIAS.test", "a.test"),
        ("x.wild.test", "*.wild.test"),
        ("deeper.x.wild.test", "default.test"),
        ("unknown.test", "default.test"),
    ] {
        let ran = s_client(addr, sni, &pki.ca, "hello\n");
        assert!(ran.ok(), "{sni}: {ran:?}");
        let subj = subject(&ran).unwrap_or_else(|| panic!("{sni}: no subject: {ran:?}"));
        assert!(subj.ends_with(&format!("CN = {cn}")), "{sni}: got {subj}");
        assert!(
            ran.stdout.contains("HELLO"),
            "{sni}: backend reply: {ran:?}"
        );
        assert!(ran.stdout.contains("Verify return code: 0 (ok)"), "{ran:?}");
    }
    // No SNI at all: the default certificate.
    let ran = s_client_args(addr, &["-noservername"], &pki.ca, "hello\n");
    assert!(ran.ok(), "{ran:?}");
    assert!(
        subject(&ran).unwrap().ends_with("CN = default.test"),
        "{ran:?}"
    );
    for l in p.wait_conns(6) {
        assert_eq!(field(&l, "outcome").as_deref(), Some("closed"), "{l}");
        assert_eq!(field(&l, "up").as_deref(), Some("6"), "{l}");
    }
}

#[test]
fn sni_strict_refuses_clients_without_a_matching_certificate() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (a_crt, a_key) = pki.leaf("a.test", &["a.test"]);
    let (d_crt, d_key) = pki.leaf("default.test", &["default.test"]);
    let backend = line_backend();
    let c = cfg(backend.addr)
        .cert(&a_crt, &a_key)
        .default_cert(&d_crt, &d_key)
        .set("tls.options.default", "sniStrict", true);
    let p = c.start();
    let ok = s_client(p.addr("tls"), "a.test", &pki.ca, "hi\n");
    assert!(ok.ok() && ok.stdout.contains("HI"), "{ok:?}");
    let refused = s_client(p.addr("tls"), "other.test", &pki.ca, "hi\n");
    assert!(!refused.ok(), "{refused:?}");
    let none = s_client_args(p.addr("tls"), &["-noservername"], &pki.ca, "hi\n");
    assert!(!none.ok(), "{none:?}");
    let lines = p.wait_conns(3);
    let outcomes: Vec<String> = lines.iter().filter_map(|l| field(l, "outcome")).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| *o == "tls_no_certificate")
            .count(),
        2,
        "{lines:?}"
    );
    assert!(outcomes.iter().any(|o| o == "closed"), "{lines:?}");
}

#[test]
fn exact_bytes_both_ways_64m_through_tls() {
    let dir = TempDir::new("tls-bytes");
    let ca = Ca::new("bytes CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["bytes.test"]);
    let echo = Backend::echo();
    for driver in ["io_uring", "epoll"] {
        let c = cfg(echo.addr)
            .cert(&crt, &key)
            .set("runtime", "driver", driver);
        let p = c.start();
        for (version, len, seed) in [
            (&rustls::version::TLS13, 1024usize, 1u64),
            (&rustls::version::TLS13, 64 << 20, 2),
            (&rustls::version::TLS12, 64 << 20, 3),
        ] {
            let config = client_config(&ca_path, None, &[version]);
            let s = TlsStream::connect(p.addr("tls"), "bytes.test", config).unwrap();
            let data = pattern(len, seed);
            let (got, err) = s.exchange(data.clone());
            assert!(err.is_none(), "{driver} {len}: {err:?}");
            assert_eq!(got.len(), data.len(), "{driver} {version:?} length");
            assert_eq!(
                checksum(&got),
                checksum(&data),
                "{driver} {version:?} checksum"
            );
        }
        let lines = p.wait_conns(3);
        for l in &lines {
            assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        }
        let big: Vec<_> = lines
            .iter()
            .filter(|l| field(l, "up").as_deref() == Some(&(64u64 << 20).to_string()))
            .collect();
        assert_eq!(big.len(), 2, "{lines:?}");
        for l in big {
            assert_eq!(field(l, "down"), Some((64u64 << 20).to_string()), "{l}");
        }
    }
}

#[test]
fn half_close_through_tls_client_first() {
    // The client sends 1 MiB then close_notify + FIN; the backend reads to
    // EOF (the FIN was passed on), then answers 8 MiB and FIN; the client
    // gets all of it and then close_notify.
    let dir = TempDir::new("tls-half");
    let ca = Ca::new("half CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["half.test"]);
    let backend = Backend::start(|mut s| {
        let (got, err) = read_to_end(&mut s);
        assert!(err.is_none());
        assert_eq!(checksum(&got), checksum(&pattern(1 << 20, 3)));
        s.write_all(&pattern(8 << 20, 7)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let p = Proxy::start(&cfg(backend.addr).cert(&crt, &key).to_toml());
    let s = TlsStream::connect(
        p.addr("tls"),
        "half.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    s.write_all(&pattern(1 << 20, 3)).unwrap();
    s.close_write().unwrap();
    let (got, err) = s.read_to_end();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(checksum(&got), checksum(&pattern(8 << 20, 7)));
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
}

#[test]
fn half_close_through_tls_backend_first() {
    // The backend sends 1 MiB and FIN first: the client gets close_notify
    // after the last byte, then sends 8 MiB on the still-open direction.
    let dir = TempDir::new("tls-half2");
    let ca = Ca::new("half2 CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["half2.test"]);
    let (tx, rx) = mpsc::channel::<u64>();
    let tx = Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        s.write_all(&pattern(1 << 20, 11)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, _) = read_to_end(&mut s);
        tx.lock().unwrap().send(checksum(&got)).unwrap();
    });
    let p = Proxy::start(&cfg(backend.addr).cert(&crt, &key).to_toml());
    let s = TlsStream::connect(
        p.addr("tls"),
        "half2.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    let (got, err) = s.read_to_end();
    assert!(err.is_none(), "close_notify expected, got {err:?}");
    assert_eq!(checksum(&got), checksum(&pattern(1 << 20, 11)));
    s.write_all(&pattern(8 << 20, 12)).unwrap();
    s.close_write().unwrap();
    let sum = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(sum, checksum(&pattern(8 << 20, 12)));
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
}

#[test]
fn backend_reset_reaches_the_tls_client_as_a_reset() {
    let dir = TempDir::new("tls-rst");
    let ca = Ca::new("rst CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["rst.test"]);
    // The backend resets only once the client holds every byte (a sleep
    // instead would race the proxy on a loaded machine: the backend's kernel
    // discards what it has not sent yet when it resets).
    let (received_tx, received_rx) = mpsc::channel::<()>();
    let received_rx = Mutex::new(received_rx);
    let backend = Backend::start(move |mut s| {
        s.write_all(&pattern(1 << 20, 5)).unwrap();
        let _ = received_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let p = Proxy::start(&cfg(backend.addr).cert(&crt, &key).to_toml());
    let s = TlsStream::connect(
        p.addr("tls"),
        "rst.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    let got = s
        .read_exact_len(1 << 20)
        .expect("every byte before the reset");
    assert_eq!(checksum(&got), checksum(&pattern(1 << 20, 5)));
    received_tx.send(()).unwrap();
    let (rest, err) = s.read_to_end();
    assert!(rest.is_empty(), "bytes after the reply: {}", rest.len());
    let err = err.expect("a reset, not a clean close_notify");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
}

#[test]
fn tls_client_reset_reaches_the_backend_as_a_reset() {
    let dir = TempDir::new("tls-crst");
    let ca = Ca::new("crst CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["crst.test"]);
    // The backend says when the request's bytes have arrived (the client
    // resets only then), and then how its read ended.
    let (arrived_tx, arrived_rx) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let (tx, rx) = mpsc::channel::<(usize, Option<ErrorKind>)>();
    let tx = Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        let mut first = [0u8; 15];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        arrived_tx.lock().unwrap().send(()).unwrap();
        let (rest, err) = read_to_end(&mut s);
        tx.lock()
            .unwrap()
            .send((first.len() + rest.len(), err.map(|e| e.kind())))
            .unwrap();
    });
    let p = Proxy::start(&cfg(backend.addr).cert(&crt, &key).to_toml());
    let s = TlsStream::connect(
        p.addr("tls"),
        "crst.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    s.write_all(b"partial request").unwrap();
    arrived_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the backend");
    socket2::SockRef::from(s.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let (n, kind) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(n, 15, "bytes before the reset arrive first");
    assert_eq!(kind, Some(ErrorKind::ConnectionReset));
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("client_reset"), "{l}");
}

#[test]
fn min_version_tls13_refuses_a_tls12_client() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("v.test", &["v.test"]);
    let backend = line_backend();
    let c =
        cfg(backend.addr)
            .cert(&crt, &key)
            .set("tls.options.default", "minVersion", "VersionTLS13");
    let p = c.start();
    let old = s_client_args(
        p.addr("tls"),
        &["-servername", "v.test", "-tls1_2"],
        &pki.ca,
        "x\n",
    );
    assert!(!old.ok(), "TLS 1.2 must be refused: {old:?}");
    let new = s_client_args(
        p.addr("tls"),
        &["-servername", "v.test", "-tls1_3"],
        &pki.ca,
        "x\n",
    );
    assert!(new.ok() && new.stdout.contains("TLSv1.3"), "{new:?}");
    let lines = p.wait_conns(2);
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| field(l, "outcome").as_deref() == Some("tls_handshake_failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    // The line keeps rustls' reason (a TLS 1.2-only client cannot meet a
    // TLS 1.3 minimum), not just the outcome.
    let error = field(failed[0], "error").unwrap_or_default();
    assert!(
        error.starts_with("TLS: ") && error.len() > "TLS: ".len(),
        "{failed:?}"
    );
}

#[test]
fn max_version_and_cipher_suites_are_honoured() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("c.test", &["c.test"]);
    let backend = line_backend();
    let c = cfg(backend.addr)
        .cert(&crt, &key)
        .set("tls.options.default", "maxVersion", "VersionTLS12")
        .and("cipherSuites", ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"])
        .and("curvePreferences", ["CurveP256"]);
    let p = c.start();
    let ran = s_client_args(p.addr("tls"), &["-servername", "c.test"], &pki.ca, "x\n");
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stdout.contains("ECDHE-ECDSA-CHACHA20-POLY1305"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("TLSv1.2"), "{ran:?}");
    assert!(
        ran.stdout.contains("Server Temp Key: ECDH, prime256v1"),
        "{ran:?}"
    );
    let other = s_client_args(
        p.addr("tls"),
        &[
            "-servername",
            "c.test",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ],
        &pki.ca,
        "x\n",
    );
    assert!(!other.ok(), "a suite not listed must be refused: {other:?}");
}

#[test]
fn mutual_tls_accepts_verified_clients_and_refuses_others() {
    let dir = TempDir::new("tls-mtls");
    let ca = Ca::new("mtls server CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["mtls.test"]);
    let clients = Ca::new("clients CA");
    let (clients_ca, client_crt, client_key) = clients.write_leaf(&dir.0, &["client.one"]);
    let rogue = Ca::new("rogue CA");
    let (_, rogue_crt, rogue_key) = rogue.write_leaf(&dir.0, &["client.rogue"]);
    let echo = Backend::echo();
    let c = cfg(echo.addr)
        .cert(&crt, &key)
        .set("tls.options.default.clientAuth", "caFiles", [&clients_ca])
        .and("clientAuthType", "RequireAndVerifyClientCert");
    let p = c.start();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // A client certificate from the configured CA: accepted.
        let good = client_config(&ca_path, Some((&client_crt, &client_key)), &[version]);
        let s = TlsStream::connect(p.addr("tls"), "mtls.test", good).unwrap();
        let (got, err) = s.exchange(b"ping".to_vec());
        assert!(err.is_none(), "{version:?}: {err:?}");
        assert_eq!(got, b"ping");
        // No certificate, or one from another CA: refused.
        for cert in [None, Some((rogue_crt.as_path(), rogue_key.as_path()))] {
            let config = client_config(&ca_path, cert, &[version]);
            let refused = match TlsStream::connect(p.addr("tls"), "mtls.test", config) {
                Err(_) => true,
                Ok(s) => {
                    let _ = s.write_all(b"ping");
                    let (got, err) = s.read_to_end();
                    got.is_empty() && err.is_some()
                }
            };
            assert!(refused, "{version:?} {cert:?} must be refused");
        }
    }
    let lines = p.wait_conns(6);
    let refused = lines
        .iter()
        .filter(|l| field(l, "outcome").as_deref() == Some("tls_client_certificate_refused"))
        .count();
    assert_eq!(refused, 4, "{lines:?}");
}

#[test]
fn rsa_pkcs1_ec_sec1_and_ed25519_keys_are_served() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let dir = TempDir::new("tls-keys");
    let openssl = |args: &[&str]| {
        run(
            Command::new("openssl").args(args),
            b"",
            Duration::from_secs(60),
        )
        .expect_ok(&format!("openssl {args:?}"));
    };
    let mut certs = Vec::new();
    let mut names = Vec::new();
    for (name, keygen) in [
        (
            "rsa.test",
            vec!["genrsa", "-traditional", "-out", "KEY", "2048"],
        ),
        (
            "ec.test",
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "KEY",
            ],
        ),
        (
            "ed.test",
            vec!["genpkey", "-algorithm", "ed25519", "-out", "KEY"],
        ),
    ] {
        let key = dir.0.join(format!("{name}.key"));
        let crt = dir.0.join(format!("{name}.crt"));
        let k = key.display().to_string();
        let args: Vec<&str> = keygen
            .iter()
            .map(|a| if *a == "KEY" { k.as_str() } else { a })
            .collect();
        openssl(&args);
        openssl(&[
            "req",
            "-x509",
            "-key",
            &k,
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
            "-days",
            "2",
            "-out",
            &crt.display().to_string(),
        ]);
        let pem = std::fs::read_to_string(&key).unwrap();
        let kind = pem.lines().next().unwrap().to_string();
        certs.push((crt.clone(), key.clone()));
        names.push((name, crt, kind));
    }
    // The formats really are the three PEM kinds.
    assert_eq!(names[0].2, "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(names[1].2, "-----BEGIN EC PRIVATE KEY-----");
    assert_eq!(names[2].2, "-----BEGIN PRIVATE KEY-----");
    let backend = line_backend();
    let c = certs
        .iter()
        .fold(cfg(backend.addr), |c, (crt, key)| c.cert(crt, key));
    let p = c.start();
    for (name, crt, _) in &names {
        let ran = s_client(p.addr("tls"), name, crt, "abc\n");
        assert!(ran.ok(), "{name}: {ran:?}");
        assert!(
            subject(&ran).unwrap().ends_with(&format!("CN = {name}")),
            "{ran:?}"
        );
        assert!(ran.stdout.contains("ABC"), "{ran:?}");
    }
}

/// Run the binary with `config` and expect it to exit non-zero before
/// serving; returns its stderr.
fn start_fails(config: &str) -> String {
    let dir = TempDir::new("tls-bad");
    let path = dir.write("sluicegate.toml", config);
    let ran = run(
        Command::new(BIN).arg("-c").arg(&path),
        b"",
        Duration::from_secs(20),
    );
    assert!(!ran.ok(), "must not start: {ran:?}");
    assert!(!ran.stderr.contains("msg=starting"), "{}", ran.stderr);
    ran.stderr
}

#[test]
fn bad_certificates_stop_the_start_and_expired_ones_warn() {
    let dir = TempDir::new("tls-certs");
    let ca = Ca::new("bad CA");
    let (_, crt, key) = ca.write_leaf(&dir.0, &["good.test"]);
    let (_, other_crt, _) = ca.write_leaf(&dir.0, &["other.test"]);
    let backend = Backend::echo();
    let missing = dir.0.join("missing.crt");
    let err = start_fails(&cfg(backend.addr).cert(&missing, &key).to_toml());
    assert!(err.contains("missing.crt"), "{err}");
    // The key of good.test with the certificate of other.test.
    let err = start_fails(&cfg(backend.addr).cert(&other_crt, &key).to_toml());
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("good.test.key"), "{err}");
    // A file without a key.
    let err = start_fails(&cfg(backend.addr).cert(&crt, &crt).to_toml());
    assert!(err.contains("no PEM private key"), "{err}");
    // Expired: served, with a warning at start.
    let (old_crt, old_key) = ca.leaf(&["old.test"], true);
    let oc = dir.write("old.crt", &old_crt);
    let ok = dir.write("old.key", &old_key);
    let p = Proxy::start(&cfg(backend.addr).cert(&oc, &ok).to_toml());
    let warn = &p.wait_logs(1, |l| l.contains("certificate has expired"))[0];
    assert!(
        warn.contains("level=warn") && warn.contains("old.crt"),
        "{warn}"
    );
}

#[test]
fn reload_serves_new_certificates_and_keeps_old_ones_on_error() {
    let dir = TempDir::new("tls-reload");
    let ca = Ca::new("reload CA");
    let ca_path = dir.write("ca.crt", &ca.pem);
    let (c1, k1) = ca.leaf(&["r.test", "first.r"], false);
    let crt = dir.write("r.crt", &c1);
    let key = dir.write("r.key", &k1);
    let echo = Backend::echo();
    let toml = cfg(echo.addr).cert(&crt, &key).to_toml();
    let p = Proxy::start(&toml);
    let names = |s: &TlsStream| s.peer_names();
    let s =
        TlsStream::connect(p.addr("tls"), "r.test", client_config(&ca_path, None, &[])).unwrap();
    assert!(names(&s).contains(&"first.r".to_string()));
    // New certificate files, then SIGHUP.
    let (c2, k2) = ca.leaf(&["r.test", "second.r"], false);
    std::fs::write(&crt, &c2).unwrap();
    std::fs::write(&key, &k2).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    let s2 = connect_after_reload(p.addr("tls"), &ca_path, "second.r");
    // The session accepted before the reload still works.
    let (got, err) = s.exchange(b"old".to_vec());
    assert!(err.is_none() && got == b"old", "{err:?}");
    drop(s2);
    // A key that does not match: the reload fails, the last good one stays.
    std::fs::write(&key, &k1).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| {
        l.contains("reload failed") && l.contains("does not match")
    });
    let s3 =
        TlsStream::connect(p.addr("tls"), "r.test", client_config(&ca_path, None, &[])).unwrap();
    assert!(names(&s3).contains(&"second.r".to_string()));
}

/// Workers take a new snapshot at their next accept; retry briefly until
/// the new certificate is served.
fn connect_after_reload(addr: SocketAddr, ca: &Path, want: &str) -> TlsStream {
    for _ in 0..100 {
        let s = TlsStream::connect(addr, "r.test", client_config(ca, None, &[])).unwrap();
        if s.peer_names().iter().any(|n| n == want) {
            return s;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{want} never served after reload");
}

#[test]
fn a_stalled_handshake_ends_at_the_deadline() {
    let dir = TempDir::new("tls-stall");
    let ca = Ca::new("stall CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["stall.test"]);
    let echo = Backend::echo();
    let c = cfg(echo.addr).cert(&crt, &key).set(
        "entryPoints.tls.transport.respondingTimeouts",
        "readTimeout",
        "500ms",
    );
    let p = c.start();
    // A real ClientHello, then silence.
    let config = client_config(&ca_path, None, &[]);
    let mut conn = rustls::ClientConnection::new(config, "stall.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(p.addr("tls")).unwrap();
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = std::time::Instant::now();
    let _ = read_to_end(&mut s);
    assert!(start.elapsed() < Duration::from_secs(5));
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("tls_timeout"), "{l}");
    assert_eq!(
        echo.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no dial before the handshake"
    );
}

#[test]
fn redis_cli_tls_through_the_proxy_to_a_plain_redis() {
    if !require_tool("redis-server", "redis-server") || !require_tool("redis-cli", "redis-tools") {
        return;
    }
    let dir = TempDir::new("tls-redis");
    let ca = Ca::new("redis CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["redis.test"]);
    let redis = support::redis::RedisServer::start();
    let backend: SocketAddr = ([127, 0, 0, 1], redis.port).into();
    let p = Proxy::start(&cfg(backend).cert(&crt, &key).to_toml());
    let port = p.addr("tls").port().to_string();
    let cli = |args: &[&str]| {
        run(
            Command::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "--tls",
                    "--sni",
                    "redis.test",
                    "--cacert",
                ])
                .arg(&ca_path)
                .args(args),
            b"",
            Duration::from_secs(20),
        )
        .expect_ok("redis-cli")
        .stdout
    };
    assert_eq!(cli(&["SET", "greeting", "hello over tls"]).trim(), "OK");
    assert_eq!(cli(&["GET", "greeting"]).trim(), "hello over tls");
    // The value really is in the plain redis-server.
    let mut direct = TcpStream::connect(backend).unwrap();
    direct.write_all(b"GET greeting\r\n").unwrap();
    let mut b = [0u8; 64];
    let n = direct.read(&mut b).unwrap();
    assert_eq!(&b[..n], b"$14\r\nhello over tls\r\n");
}

#[test]
fn psql_verify_full_through_the_proxy_to_a_plain_postgresql() {
    if !support::pg::available() {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("db.test", &["db.test"]);
    // The cluster has TLS on (so it could), but the proxy talks plain to it.
    let (pg_crt, pg_key) = pki.leaf("pg.backend", &["pg.backend"]);
    let pg = support::pg::PgCluster::start(&pg_crt, &pg_key);
    let backend: SocketAddr = ([127, 0, 0, 1], pg.port).into();
    let p = Proxy::start(&cfg(backend).cert(&crt, &key).to_toml());
    let conninfo = format!(
        "host=db.test hostaddr=127.0.0.1 port={} sslmode=verify-full sslrootcert={} user=postgres dbname=postgres",
        p.addr("tls").port(),
        pki.ca.display()
    );
    let one = support::pg::psql(&conninfo, "select 1").expect_ok("psql via proxy");
    assert_eq!(one.stdout.trim(), "1");
    // The backend session is not encrypted: the proxy terminated TLS.
    let ssl = support::pg::psql(
        &conninfo,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .expect_ok("psql pg_stat_ssl");
    assert_eq!(ssl.stdout.trim(), "f", "{}", pg.log());
    // The client side was TLS, verified against the proxy's certificate
    // (verify-full fails otherwise); a wrong name is refused.
    let wrong = conninfo.replace("host=db.test", "host=other.test");
    assert!(!support::pg::psql(&wrong, "select 1").ok());
    for l in p.wait_conns(3).iter().take(2) {
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }
}

#[test]
fn reencrypts_to_an_openssl_backend_with_and_without_verification() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (front_crt, front_key) = pki.leaf("front.test", &["front.test"]);
    let (back_crt, back_key) = pki.leaf("backend.test", &["backend.test"]);
    let other = Pki::new();
    let server = SServer::start(&back_crt, &back_key);
    let ca = pki.ca.display().to_string();
    let wrong_ca = other.ca.display().to_string();
    let name = ("serverName", "\"backend.test\"".to_string());
    let cases: [(Vec<(&str, String)>, bool); 3] = [
        (vec![name.clone(), ("rootCAs", format!("[{ca:?}]"))], true),
        (
            vec![
                name.clone(),
                ("rootCAs", format!("[{wrong_ca:?}]")),
                ("insecureSkipVerify", "true".to_string()),
            ],
            true,
        ),
        (
            vec![name.clone(), ("rootCAs", format!("[{wrong_ca:?}]"))],
            false,
        ),
    ];
    for (transport, works) in &cases {
        let c = cfg(server.addr).cert(&front_crt, &front_key);
        // The server's `tls` turns TLS on; the transport only configures it.
        let p = transport_tls(c, transport)
            .server_set("svc", 0, "tls", true)
            .start();
        let s = TlsStream::connect(
            p.addr("tls"),
            "front.test",
            client_config(&pki.ca, None, &[]),
        )
        .unwrap();
        s.write_all(b"abc\nCLOSE\n").unwrap();
        let (got, err) = s.read_to_end();
        // The backend closed after CLOSE; the client ends its side too.
        let _ = s.close_write();
        let l = &p.wait_conns(1)[0];
        if *works {
            assert!(err.is_none(), "{transport:?}: {err:?} {l}");
            assert_eq!(String::from_utf8_lossy(&got), "cba\n", "{transport:?}");
            assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        } else {
            assert!(
                got.is_empty() && err.is_some(),
                "{transport:?}: {got:?} {err:?}"
            );
            assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
            assert!(l.contains("certificate"), "the error says why: {l}");
        }
    }
}

#[test]
fn termination_delay_after_the_clients_close_notify() {
    // The backend never finishes after the client's close_notify (passed on
    // as a FIN): both sides are closed once terminationDelay has passed.
    let dir = TempDir::new("tls-delay");
    let ca = Ca::new("delay CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["delay.test"]);
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        let (got, _) = read_to_end(&mut s);
        tx.lock().unwrap().send(got).unwrap();
        thread::sleep(Duration::from_secs(10));
    });
    let toml = cfg(backend.addr)
        .cert(&crt, &key)
        .transport("t", "terminationDelay", "200ms")
        .to_toml();
    let p = Proxy::start(&toml);
    let s = TlsStream::connect(
        p.addr("tls"),
        "delay.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    s.write_all(b"bye").unwrap();
    s.close_write().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"bye");
    let start = std::time::Instant::now();
    let (_, err) = s.read_to_end();
    assert!(start.elapsed() < Duration::from_secs(5));
    // Cut short on purpose: a reset, never a clean close_notify.
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ConnectionReset));
    let l = &p.wait_conns(1)[0];
    assert_eq!(
        field(l, "outcome").as_deref(),
        Some("termination_delay"),
        "{l}"
    );
}

#[test]
fn alpn_protocols_are_negotiated_and_mismatches_refused() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("alpn.test", &["alpn.test"]);
    let backend = line_backend();
    let c = cfg(backend.addr).cert(&crt, &key).set(
        "tls.options.default",
        "alpnProtocols",
        ["postgresql", "redis"],
    );
    let p = c.start();
    let args = |alpn: &'static str| ["-servername", "alpn.test", "-alpn", alpn];
    let ok = s_client_args(p.addr("tls"), &args("h2,redis"), &pki.ca, "x\n");
    assert!(ok.ok(), "{ok:?}");
    assert!(ok.stdout.contains("ALPN protocol: redis"), "{ok:?}");
    let refused = s_client_args(p.addr("tls"), &args("h2"), &pki.ca, "x\n");
    assert!(!refused.ok(), "{refused:?}");
    // A client without ALPN is served.
    let none = s_client_args(p.addr("tls"), &["-servername", "alpn.test"], &pki.ca, "x\n");
    assert!(none.ok() && none.stdout.contains("X"), "{none:?}");
}

/// A TLS client over a plain blocking socket (rustls' buffered API), for
/// reading at a chosen pace.
fn tls_client(
    addr: SocketAddr,
    name: &str,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca, None, &[]), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

#[test]
fn slow_tls_reader_gets_every_byte_of_a_finished_reply() {
    // As tests/forward.rs: the backend writes 16 MiB and closes; the TLS
    // client keeps its side open and reads at ~8 MB/s, far behind the
    // default 100 ms terminationDelay. The finished direction keeps every
    // byte: close_notify after the last one, no reset.
    const LEN: usize = 16 << 20;
    let dir = TempDir::new("tls-slow");
    let ca = Ca::new("slow CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["slow.test"]);
    let reply = std::sync::Arc::new(pattern(LEN, 41));
    let expect = checksum(&reply);
    let backend = {
        let reply = reply.clone();
        Backend::start(move |mut s| {
            let _ = s.write_all(&reply);
            let _ = s.shutdown(Shutdown::Write);
        })
    };
    for driver in ["io_uring", "epoll"] {
        let toml = cfg(backend.addr)
            .cert(&crt, &key)
            .set("runtime", "driver", driver)
            .transport("t", "terminationDelay", "100ms")
            .to_toml();
        let p = Proxy::start(&toml);
        let mut s = tls_client(p.addr("tls"), "slow.test", &ca_path);
        let (got, err) = read_throttled(&mut s, 8_000_000);
        assert!(
            err.is_none(),
            "{driver}: {err:?} after {} of {LEN} bytes",
            got.len()
        );
        assert_eq!(got.len(), LEN, "{driver}: bytes lost");
        assert_eq!(checksum(&got), expect, "{driver}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "down"), Some(LEN.to_string()), "{driver}: {l}");
    }
}

#[test]
fn a_tls_reply_cut_by_termination_delay_is_reset_and_counts_what_arrived() {
    // The client sends close_notify at once; the backend streams 64 MiB and
    // terminationDelay cuts it: a reset, never close_notify, and `down=` no
    // more than the plaintext the client got.
    let dir = TempDir::new("tls-cut");
    let ca = Ca::new("cut CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["cut.test"]);
    let reply = std::sync::Arc::new(pattern(64 << 20, 43));
    let backend = Backend::start(move |mut s| {
        let _ = s.write_all(&reply);
    });
    for driver in ["io_uring", "epoll"] {
        let toml = cfg(backend.addr)
            .cert(&crt, &key)
            .set("runtime", "driver", driver)
            .transport("t", "terminationDelay", "300ms")
            .to_toml();
        let p = Proxy::start(&toml);
        let mut s = tls_client(p.addr("tls"), "cut.test", &ca_path);
        s.write_all(b"go").unwrap();
        s.conn.send_close_notify();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut s.sock).unwrap();
        }
        s.sock.shutdown(Shutdown::Write).unwrap();
        let (got, err) = read_throttled(&mut s, 8_000_000);
        assert_eq!(
            err.map(|e| e.kind()),
            Some(ErrorKind::ConnectionReset),
            "{driver}: after {} bytes",
            got.len()
        );
        assert!(got.len() < 64 << 20, "{driver}: nothing was cut");
        let l = &p.wait_conns(1)[0];
        assert_eq!(
            field(l, "outcome").as_deref(),
            Some("termination_delay"),
            "{l}"
        );
        let down: usize = field(l, "down").unwrap().parse().unwrap();
        assert!(
            down <= got.len(),
            "{driver}: down={down} but the client received {}",
            got.len()
        );
        eprintln!("{driver}: down={down} received={}", got.len());
        assert_eq!(field(l, "up").as_deref(), Some("2"), "{l}");
    }
}

/// `openssl s_client` without verification: what a client is served when no
/// certificate is configured (stdout has the subject and the PEM).
fn s_client_unverified(addr: SocketAddr, sni: &str, input: &str) -> support::process::Ran {
    run(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
            "-ign_eof",
        ]),
        input.as_bytes(),
        Duration::from_secs(20),
    )
}

/// The server certificate s_client printed, PEM.
fn served_pem(ran: &support::process::Ran) -> String {
    let out = &ran.stdout;
    let start = out
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate printed: {ran:?}"));
    let end = out[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    out[start..end].to_string()
}

#[test]
fn without_certificates_a_generated_default_is_served_with_a_warning() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let backend = line_backend();
    let toml = cfg(backend.addr).to_toml();
    let p = Proxy::start(&toml);
    // The config warning, at the router's tls table, in the log.
    let warn = &p.wait_logs(1, |l| l.contains("TRAEFIK DEFAULT CERT"))[0];
    assert!(warn.contains("level=warn"), "{warn}");
    assert!(warn.contains("router `term` terminates TLS"), "{warn}");
    let line = 1 + toml
        .lines()
        .position(|l| l == "[tcp.routers.term.tls]")
        .expect("the tls table");
    assert!(warn.contains(&format!(".toml:{line}:1:")), "{warn}");
    let ran = s_client_unverified(p.addr("tls"), "any.test", "hello\n");
    let subj = subject(&ran).unwrap_or_else(|| panic!("no subject: {ran:?}"));
    assert!(subj.ends_with("CN = TRAEFIK DEFAULT CERT"), "{subj}");
    // Self-signed: a verifying client refuses it; bytes still flow here.
    assert!(
        ran.stdout.contains("Verify return code: 18"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("HELLO"), "{ran:?}");
    let first = served_pem(&ran);
    // No SNI at all: the same certificate.
    let no_sni = run(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &p.addr("tls").to_string(),
            "-noservername",
            "-ign_eof",
        ]),
        b"x\n",
        Duration::from_secs(20),
    );
    assert_eq!(served_pem(&no_sni), first);
    // A reload keeps the certificate: it is generated once per process.
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    let again = s_client_unverified(p.addr("tls"), "any.test", "x\n");
    assert_eq!(served_pem(&again), first, "a reload made a new certificate");
    // `check` says it too, with the position, and passes.
    let dir = TempDir::new("tls-generated");
    let path = dir.write("config.toml", &toml);
    let ran = run(
        Command::new(support::BIN).arg("check").arg("-c").arg(&path),
        b"",
        Duration::from_secs(30),
    );
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stderr.contains("warning: ")
            && ran.stderr.contains(&format!("config.toml:{line}:1:"))
            && ran.stderr.contains("TRAEFIK DEFAULT CERT"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_name_no_certificate_covers_gets_the_generated_default_not_the_first_certificate() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (a_crt, a_key) = pki.leaf("a.test", &["a.test"]);
    let backend = line_backend();
    let p = Proxy::start(&cfg(backend.addr).cert(&a_crt, &a_key).to_toml());
    let warn = &p.wait_logs(1, |l| l.contains("no defaultCertificate"))[0];
    assert!(
        warn.contains("level=warn") && warn.contains("routers=term"),
        "{warn}"
    );
    let named = s_client(p.addr("tls"), "a.test", &pki.ca, "hi\n");
    assert!(
        subject(&named).unwrap().ends_with("CN = a.test"),
        "{named:?}"
    );
    let other = s_client_unverified(p.addr("tls"), "b.test", "hi\n");
    assert!(
        subject(&other)
            .unwrap()
            .ends_with("CN = TRAEFIK DEFAULT CERT"),
        "{other:?}"
    );
}

#[test]
fn inline_pem_certificates_and_root_cas_are_loaded() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("inline.test", &["inline.test"]);
    let (back_crt, back_key) = pki.leaf("backend.test", &["backend.test"]);
    let server = SServer::start(&back_crt, &back_key);
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    // TOML multi-line literal strings, as a user pastes PEM.
    let multi = |text: String| format!("'''\n{text}'''");
    let c = cfg(server.addr)
        .push("tls.certificates")
        .and("certFile", Raw(&multi(pem(&crt))))
        .and("keyFile", Raw(&multi(pem(&key))));
    let transport = [
        ("serverName", "\"backend.test\"".to_string()),
        ("rootCAs", format!("[{}]", multi(pem(&pki.ca)))),
    ];
    let p = transport_tls(c, &transport)
        .server_set("svc", 0, "tls", true)
        .start();
    let ran = s_client(p.addr("tls"), "inline.test", &pki.ca, "abc\nCLOSE\n");
    assert!(ran.ok(), "{ran:?}");
    assert!(
        subject(&ran).unwrap().ends_with("CN = inline.test"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("cba"), "{ran:?}");
    assert!(ran.stdout.contains("Verify return code: 0 (ok)"), "{ran:?}");
}

/// One plain router (`HostSNI(*)` without tls) to one server, whose `tls`
/// key is `server_tls` (unset: `None`), over transport `t` with
/// `[tcp.serversTransports.t.tls]` keys `tls_keys`. The exchanges here
/// end with the server's close (no reply follows a client's FIN but the
/// echo's, which is immediate): Traefik's default terminationDelay.
fn plain_router(
    backend: SocketAddr,
    server_tls: Option<bool>,
    tls_keys: &[(&str, String)],
) -> String {
    let c = Cfg::new()
        .entrypoint("plain")
        .router_on("plain", "plain", "HostSNI(`*`)", "svc")
        .lb("svc", "serversTransport", "t")
        .server("svc", backend);
    let c = match server_tls {
        Some(tls) => c.and("tls", tls),
        None => c,
    };
    let c = c.transport("t", "dialTimeout", "5s");
    transport_tls(c, tls_keys).workers(2).to_toml()
}

/// Plain bytes in, TLS to the server: `abc` comes back reversed from the
/// s_server backend through the proxy's TLS.
fn originated(addr: SocketAddr) -> (Vec<u8>, Option<std::io::Error>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"abc\nCLOSE\n").unwrap();
    read_to_end(&mut s)
}

#[test]
fn plain_routers_originate_tls_to_tls_servers_and_not_to_the_others() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (back_crt, back_key) = pki.leaf("backend.test", &["backend.test"]);
    let server = SServer::start(&back_crt, &back_key);
    let ca = pki.ca.display().to_string();
    let verify = [
        ("serverName", "\"backend.test\"".to_string()),
        ("rootCAs", format!("[{ca:?}]")),
    ];
    let p = Proxy::start(&plain_router(server.addr, Some(true), &verify));
    let (got, err) = originated(p.addr("plain"));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(String::from_utf8_lossy(&got), "cba\n");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    assert_eq!(field(l, "up").as_deref(), Some("10"), "{l}");
    assert_eq!(field(l, "down").as_deref(), Some("4"), "{l}");
    drop(p);
    // The same server without `tls`: the proxy sends plain bytes, which
    // s_server refuses as a handshake: nothing comes back.
    let p = Proxy::start(&plain_router(server.addr, None, &verify));
    let (got, _) = originated(p.addr("plain"));
    assert!(got.is_empty(), "{got:?}");
    drop(p);
    // A plain echo server behind the same transport (a `tls` table) gets
    // the client's bytes exactly, in clear.
    let echo = Backend::echo();
    let p = Proxy::start(&plain_router(echo.addr, Some(false), &verify));
    let mut s = TcpStream::connect(p.addr("plain")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x16\x03\x01 not TLS").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, err) = read_to_end(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, b"\x16\x03\x01 not TLS");
    drop(p);
    // Verification applies: a server whose certificate the CA did not sign
    // is refused and nothing reaches the client.
    let other = Pki::new();
    let wrong = [
        ("serverName", "\"backend.test\"".to_string()),
        ("rootCAs", format!("[{:?}]", other.ca.display().to_string())),
    ];
    let p = Proxy::start(&plain_router(server.addr, Some(true), &wrong));
    let (got, _) = originated(p.addr("plain"));
    assert!(got.is_empty(), "{got:?}");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
    assert!(l.contains("certificate"), "{l}");
}

#[test]
fn terminated_clients_reach_a_plain_server_behind_a_transport_with_a_tls_table() {
    let dir = TempDir::new("tls-table-plain");
    let ca = Ca::new("front CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["front.test"]);
    let backend = line_backend();
    let c = cfg(backend.addr).cert(&crt, &key);
    // Before, this table alone made the proxy speak TLS to the server.
    let p = transport_tls(c, &[("insecureSkipVerify", "true".to_string())])
        .server_set("svc", 0, "tls", false)
        .start();
    let s = TlsStream::connect(
        p.addr("tls"),
        "front.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    s.write_all(b"plain please\n").unwrap();
    let (got, err) = s.read_to_end();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, b"PLAIN PLEASE\n");
}

/// A rustls server on 127.0.0.1 for one connection: it reads the decrypted
/// stream to its end (close_notify), sends it all back, and closes.
fn tls_echo_once(ca: &Ca, name: &str) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.leaf(&[name], false);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut got = Vec::new();
        let _ = tls.read_to_end(&mut got);
        let _ = tls.write_all(&got);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        got
    });
    (addr, h)
}

#[test]
fn passthrough_routers_originate_tls_too() {
    // Traefik dials a `tls = true` server with TLS whatever the router: what
    // a passthrough router's client sends (its own TLS records) travels
    // inside the proxy's TLS, byte for byte.
    let dir = TempDir::new("tls-passthrough-origination");
    let ca = Ca::new("backend CA");
    let ca_path = dir.write("ca.crt", &ca.pem);
    let (addr, backend) = tls_echo_once(&ca, "backend.test");
    // The echo follows the client's FIN: a generous terminationDelay keeps
    // it on a loaded machine.
    let c = Cfg::new()
        .entrypoint("pt")
        .router_on("pt", "pt", "HostSNI(`db.test`)", "svc")
        .router_tls("pt")
        .and("passthrough", true)
        .lb("svc", "serversTransport", "t")
        .server("svc", addr)
        .and("tls", true)
        .set("tcp.serversTransports.t.tls", "serverName", "backend.test")
        .and("rootCAs", [&ca_path])
        .termination_delay("30s")
        .workers(1);
    let toml = c.to_toml();
    let p = Proxy::start(&toml);
    let mut sent = support::hello::rustls_pq_hello("db.test");
    sent.extend_from_slice(b"and some bytes after the hello");
    let mut s = TcpStream::connect(p.addr("pt")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, err) = read_to_end(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(backend.join().unwrap(), sent, "the server decrypted");
    assert_eq!(got, sent, "the client got the echo back in clear");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "router").as_deref(), Some("pt"), "{l}");
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
}

/// A terminating router to the s_server backend with these transport keys:
/// the backend's answer to `abc`, or the access-log line when none came.
fn through_sans(server: SocketAddr, transport: &[(&str, String)]) -> Result<String, String> {
    let dir = TempDir::new("tls-sans");
    let ca = Ca::new("front CA");
    let (ca_path, crt, key) = ca.write_leaf(&dir.0, &["front.test"]);
    let c = cfg(server).cert(&crt, &key);
    let p = transport_tls(c, transport)
        .server_set("svc", 0, "tls", true)
        .start();
    let s = TlsStream::connect(
        p.addr("tls"),
        "front.test",
        client_config(&ca_path, None, &[]),
    )
    .unwrap();
    s.write_all(b"abc\nCLOSE\n").unwrap();
    let (got, _) = s.read_to_end();
    let _ = s.close_write();
    let l = p.wait_conns(1).remove(0);
    if got.is_empty() {
        Err(l)
    } else {
        Ok(String::from_utf8_lossy(&got).into_owned())
    }
}

#[test]
fn peer_cert_sans_accept_and_refuse_backend_certificates() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let pki = Pki::new();
    let (back_crt, back_key) = pki.leaf("backend.test", &["backend.test", "alt.test"]);
    let server = SServer::start(&back_crt, &back_key);
    let ca = pki.ca.display().to_string();
    let other = Pki::new();
    let wrong_ca = other.ca.display().to_string();
    // The transport's keys, values as TOML text.
    let skip = ("insecureSkipVerify", "true".to_string());
    let roots = |ca: &str| ("rootCAs", format!("[{ca:?}]"));
    let sans = |list: &str| ("peerCertSANs", format!("[{list}]"));
    let dns = |name: &str| format!("{{ type = \"DNSName\", value = \"{name}\" }}");
    // insecureSkipVerify: the SANs replace the name check (the address is
    // 127.0.0.1, which the certificate does not carry).
    let two = format!("{}, {}", dns("nope.test"), dns("alt.test"));
    let sans_only = [skip.clone(), roots(&ca), sans(&two)];
    assert_eq!(
        through_sans(server.addr, &sans_only).as_deref(),
        Ok("cba\n")
    );
    // No listed name in the certificate: refused.
    let missing = [skip.clone(), roots(&ca), sans(&dns("other.test"))];
    let l = through_sans(server.addr, &missing).unwrap_err();
    assert_eq!(
        field(&l, "outcome").as_deref(),
        Some("backend_reset"),
        "{l}"
    );
    assert!(l.contains("certificate"), "{l}");
    // The chain is still verified (Traefik verifies it even with
    // insecureSkipVerify when SANs are listed).
    let untrusted = [skip.clone(), roots(&wrong_ca), sans(&dns("alt.test"))];
    assert!(through_sans(server.addr, &untrusted).is_err());
    // A URI SAN the certificate lacks: refused.
    let uri_san = "{ type = \"URI\", value = \"spiffe://example.org/db\" }";
    let uri = [skip.clone(), roots(&ca), sans(uri_san)];
    assert!(through_sans(server.addr, &uri).is_err());
    // Without insecureSkipVerify the server name is checked too.
    let server_name = |n: &str| ("serverName", format!("{n:?}"));
    let both = [
        server_name("backend.test"),
        roots(&ca),
        sans(&dns("alt.test")),
    ];
    assert_eq!(through_sans(server.addr, &both).as_deref(), Ok("cba\n"));
    let wrong_name = [
        server_name("wrong.test"),
        roots(&ca),
        sans(&dns("alt.test")),
    ];
    assert!(through_sans(server.addr, &wrong_name).is_err());
}
