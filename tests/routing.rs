//! Load balancing, failover and ClientIP routing through the real binary.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// Connect, read the one-byte greeting that names the backend.
fn who(addr: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    b[0]
}

#[test]
fn smooth_weighted_round_robin_5_1_1_exact_sequence() {
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let c = Backend::greeting(b"C");
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .table("tcp.services.s.loadBalancer")
        .server("s", a.addr)
        .and("weight", 5)
        .server("s", b.addr)
        .and("weight", 1)
        .server("s", c.addr)
        .and("weight", 1)
        .workers(1)
        .to_toml();
    let p = Proxy::start(&cfg);
    let seq: String = (0..14).map(|_| who(p.addr("main")) as char).collect();
    // nginx's smooth WRR: no bursts, the same 7-pick cycle twice.
    assert_eq!(seq, "AABACAAAABACAA");
}

#[test]
fn weighted_service_90_10_over_1000_connections() {
    let primary = Backend::greeting(b"P");
    let replica = Backend::greeting(b"R");
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "split")
        .weighted("split", &[("primary", 90), ("replica", 10)])
        .service("primary", &[primary.addr])
        .service("replica", &[replica.addr])
        .workers(1)
        .and("accessLog", false)
        .to_toml();
    let p = Proxy::start(&cfg);
    let mut counts = [0usize; 2];
    let mut seq = String::new();
    for _ in 0..1000 {
        let w = who(p.addr("main"));
        counts[(w == b'R') as usize] += 1;
        if seq.len() < 20 {
            seq.push(w as char);
        }
    }
    assert_eq!(counts, [900, 100]);
    // Smooth: the replica's turns are spread out, never two in a row.
    assert!(!seq.contains("RR"), "{seq}");
}

#[test]
fn failover_past_refused_and_blackholed_servers() {
    let good = Backend::greeting(b"G");
    let hole = Blackhole::new();
    let refused = refused_addr();
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[refused, hole.addr, good.addr])
        .lb("s", "serversTransport", "fast")
        .transport("fast", "dialTimeout", "150ms")
        .workers(2)
        .and("accessLog", false)
        .to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    // 300 connections, 30 at a time: every one reaches the good server.
    let handles: Vec<_> = (0..30)
        .map(|_| std::thread::spawn(move || (0..10).filter(|_| who(addr) == b'G').count()))
        .collect();
    let ok: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(ok, 300);
    let failed = |server: std::net::SocketAddr| {
        let server = format!(" server={server} ");
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"dial failed\"") && l.contains(&server))
            .count()
    };
    let (refusals, timeouts) = (failed(refused), failed(hole.addr));
    // Both bad servers were really tried, until passive ejection (3 failures
    // in a row per worker, balance.rs) stopped them costing every connection
    // a dial: without it they fail on most of the 300 connections.
    assert!(
        refusals >= 3 && timeouts >= 3 && refusals + timeouts < 150,
        "{refusals} refusals and {timeouts} dial timeouts"
    );
}

#[test]
fn all_servers_down_closes_client_with_dial_failed() {
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[refused_addr(), refused_addr()])
        .to_toml();
    let p = Proxy::start(&cfg);
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    let (got, _) = read_to_end(&mut s);
    assert!(got.is_empty());
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("dial_failed"), "{l}");
}

#[test]
fn client_ip_routing_by_source_address() {
    let two = Backend::greeting(b"2");
    let other = Backend::greeting(b"O");
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("from-two", "HostSNI(`*`) && ClientIP(`127.0.0.2`)", "two")
        .router("rest", "HostSNI(`*`)", "other")
        .service("two", &[two.addr])
        .service("other", &[other.addr])
        .to_toml();
    let p = Proxy::start(&cfg);
    let read1 = |mut s: TcpStream| {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        b[0]
    };
    assert_eq!(read1(connect_from("127.0.0.2", p.addr("main"))), b'2');
    assert_eq!(read1(connect_from("127.0.0.3", p.addr("main"))), b'O');
    assert_eq!(read1(connect_from("127.0.0.1", p.addr("main"))), b'O');
}

#[test]
fn ip_allow_list_denies_others_on_dual_stack_listener() {
    let backend = Backend::greeting(b"Y");
    let cfg = Cfg::new()
        .entrypoint_at("main", "[::]:0")
        .router("r", "HostSNI(`*`)", "s")
        .and("middlewares", ["allow"])
        .set(
            "tcp.middlewares.allow.ipAllowList",
            "sourceRange",
            ["127.0.0.2/32"],
        )
        .service("s", &[backend.addr])
        .to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("main").port();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ok = connect_from("127.0.0.2", v4);
    let mut b = [0u8; 1];
    ok.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"Y");
    for local in ["127.0.0.3", "::1"] {
        let to: SocketAddr = if local == "::1" {
            format!("[::1]:{port}").parse().unwrap()
        } else {
            v4
        };
        let mut s = connect_from(local, to);
        let _ = s.write_all(b"x");
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty(), "{local} must be denied");
    }
    let denied = p.wait_logs(2, |l| l.contains("outcome=denied"));
    assert_eq!(denied.len(), 2);
}

// ---- TLS never falls back, catch-all priority, rule casings ----

use std::net::Shutdown;
use std::process::Command;

use support::hello::capture;
use support::process::run;
use support::record::Recorder;
use support::tls::{client_config, Ca, TlsStream};

/// A router on entrypoint `main` to its own one-server service `name`;
/// `passthrough` makes it a TLS passthrough router.
fn router(c: Cfg, name: &str, rule: &str, passthrough: bool, backend: SocketAddr) -> Cfg {
    let c = c.router_on(name, "main", rule, name);
    let c = if passthrough {
        c.router_tls(name).and("passthrough", true)
    } else {
        c
    };
    c.service(name, &[backend])
}

/// Entry point `main` (10 s to send a ClientHello). The backends here answer
/// after the client's FIN (`send_fin_read`): a generous terminationDelay
/// keeps a late answer on a loaded machine.
fn main_ep() -> Cfg {
    Cfg::new()
        .entrypoint("main")
        .set(
            "entryPoints.main.transport.respondingTimeouts",
            "readTimeout",
            "10s",
        )
        .termination_delay("30s")
}

/// A ClientHello from rustls with SNI `server_name` and ALPN `alpn`.
fn rustls_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Send `data`, half-close, read until EOF or reset.
fn send_fin_read(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(data).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    read_to_end(&mut s).0
}

#[test]
fn tls_with_an_unknown_sni_is_refused_with_the_default_certificate_not_sent_to_the_plain_catch_all()
{
    let dir = TempDir::new("refuse");
    let ca = Ca::new("refusal CA");
    // The default certificate names the SNI the client sends, so the client
    // can verify the handshake it gets; the store serves it only as the
    // default (defaultCertificate names are not looked up by SNI).
    let (ca_file, crt, key) = ca.write_leaf(&dir.0, &["unknown.test"]);
    let tls_backend = Recorder::start(b"TLS");
    let plain = Recorder::start(b"PLAIN");
    let c = router(
        main_ep(),
        "db",
        "HostSNI(`db.test`)",
        true,
        tls_backend.addr(),
    );
    let cfg = router(c, "plain", "HostSNI(`*`)", false, plain.addr())
        .default_cert(&crt, &key)
        .to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");

    let c = TlsStream::connect(addr, "unknown.test", client_config(&ca_file, None, &[]))
        .expect("the refusal completes a handshake with the default certificate");
    assert_eq!(c.peer_names(), ["unknown.test"]);
    // Then close_notify (a clean end, not a bare EOF or a reset), no data.
    let (got, err) = c.read_to_end();
    assert!(got.is_empty() && err.is_none(), "{got:?} {err:?}");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("no_route"), "{l}");
    assert_eq!(field(l, "router").as_deref(), Some("-"), "{l}");
    assert_eq!(field(l, "up").as_deref(), Some("0"), "{l}");

    // A plain client on the same entrypoint still reaches the catch-all.
    assert_eq!(send_fin_read(addr, b"plain bytes"), b"PLAIN");
    assert_eq!(plain.next(), b"plain bytes");
    let l = &p.wait_conns(2)[1];
    assert_eq!(field(l, "router").as_deref(), Some("plain"), "{l}");

    assert_eq!(
        plain.accepted(),
        1,
        "the TLS client never reached the plain backend"
    );
    assert_eq!(tls_backend.accepted(), 0);
}

#[test]
fn tls_without_any_certificate_is_closed_after_the_hello_and_never_reaches_the_catch_all() {
    let tls_backend = Recorder::start(b"TLS");
    let plain = Recorder::start(b"PLAIN");
    let c = router(
        main_ep(),
        "db",
        "HostSNI(`db.test`)",
        true,
        tls_backend.addr(),
    );
    let cfg = router(c, "plain", "HostSNI(`*`)", false, plain.addr()).to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    for (n, hello) in [
        capture("openssl_sni.bin"),
        capture("openssl_nosni.bin"),
        rustls_hello("other.test", &[b"h2"]),
    ]
    .iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(hello).unwrap();
        // No FIN from the client: the proxy decides on the hello alone.
        let (back, _) = read_to_end(&mut s);
        // With no certificate the proxy has nothing to handshake with and
        // closes. (A generated default certificate, when one exists, makes
        // it a handshake instead: then the reply is a TLS handshake record.)
        assert!(
            back.is_empty() || back.starts_with(&[0x16, 0x03, 0x03]),
            "hello {n}: {back:?}"
        );
        assert!(!back.ends_with(b"PLAIN"), "hello {n}");
        let l = &p.wait_conns(n + 1)[n];
        assert_eq!(field(l, "outcome").as_deref(), Some("no_route"), "{l}");
        assert_eq!(field(l, "router").as_deref(), Some("-"), "{l}");
    }
    assert_eq!(
        plain.accepted(),
        0,
        "no TLS bytes reached the plain backend"
    );
    assert_eq!(tls_backend.accepted(), 0);
}

#[test]
fn hostsniregexp_sees_an_empty_name_when_the_hello_has_no_sni() {
    let empty = Recorder::start(b"EMPTY");
    let named = Recorder::start(b"NAMED");
    let c = router(
        main_ep(),
        "empty",
        "HostSNIRegexp(`^$`)",
        true,
        empty.addr(),
    );
    let cfg = router(c, "named", "HostSNIRegexp(`.`)", true, named.addr()).to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    let nosni = capture("openssl_nosni.bin");
    assert_eq!(send_fin_read(addr, &nosni), b"EMPTY");
    assert!(empty.next() == nosni, "hello replayed exactly");
    let sni = capture("openssl_sni.bin");
    assert_eq!(send_fin_read(addr, &sni), b"NAMED");
    assert!(named.next() == sni, "hello replayed exactly");
    let routers: Vec<String> = p
        .wait_conns(2)
        .iter()
        .map(|l| field(l, "router").unwrap_or_default())
        .collect();
    assert_eq!(routers, ["empty", "named"]);
}

#[test]
fn a_catch_all_has_priority_minus_one_below_an_alpn_router_and_check_shows_it() {
    let any = Recorder::start(b"ANY");
    let h2 = Recorder::start(b"H2");
    let one = Recorder::start(b"ONE");
    let c = router(main_ep(), "any", "HostSNI(`*`)", true, any.addr()).set(
        "tcp.routers.any",
        "priority",
        0,
    );
    let c = router(c, "h2", "ALPN(`h2`)", true, h2.addr());
    let cfg = router(c, "one", "HostSNI(`one.test`)", true, one.addr())
        .set("tcp.routers.one", "priority", 1)
        .to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    let cases = [
        (rustls_hello("x.test", &[b"h2", b"http/1.1"]), &b"H2"[..]),
        (rustls_hello("one.test", &[]), b"ONE"),
        (rustls_hello("x.test", &[b"http/1.1"]), b"ANY"),
    ];
    for (hello, want) in &cases {
        assert_eq!(send_fin_read(addr, hello), *want);
    }
    assert!(h2.next() == cases[0].0 && one.next() == cases[1].0 && any.next() == cases[2].0);

    // `sluicegate check` lists the effective priorities, highest first.
    let dir = TempDir::new("check-prio");
    let path = dir.write("c.toml", &cfg);
    let ran = run(
        Command::new(BIN).arg("check").arg("-c").arg(&path),
        b"",
        Duration::from_secs(20),
    )
    .expect_ok("check");
    let prios: Vec<(String, String)> = ran
        .stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            (w.next()? == "prio").then(|| (name.to_string(), w.next().unwrap_or("").to_string()))
        })
        .collect();
    let want = [("h2", "10"), ("one", "1"), ("any", "-1")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(prios, want, "{}", ran.stdout);
}

#[test]
fn matcher_names_load_and_match_in_traefiks_casings() {
    let two = Backend::greeting(b"2");
    let rest = Backend::greeting(b"R");
    let named = Recorder::start(b"N");
    let c = main_ep();
    let c = router(
        c,
        "two",
        "hostsni(`*`) && CLIENTIP(`127.0.0.2`)",
        false,
        two.addr,
    );
    let c = router(c, "rest", "HOSTSNI(`*`)", false, rest.addr);
    let rule = "Hostsni(`db.prod.example.com`) || Alpn(`h2`)";
    let cfg = router(c, "named", rule, true, named.addr()).to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    let read1 = |mut s: TcpStream| {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        b[0]
    };
    // The entrypoint peeks (it has a TLS router), so the plain clients send
    // first.
    let mut s = connect_from("127.0.0.2", addr);
    s.write_all(b"x").unwrap();
    assert_eq!(read1(s), b'2');
    let mut s = connect_from("127.0.0.3", addr);
    s.write_all(b"x").unwrap();
    assert_eq!(read1(s), b'R');
    let hello = capture("openssl_sni.bin");
    assert_eq!(send_fin_read(addr, &hello), b"N");
    assert!(named.next() == hello);
}

#[test]
fn plain_routers_accept_hostsniregexp_and_alpn_with_traefiks_meaning() {
    let alpn = Backend::greeting(b"A");
    let empty = Backend::greeting(b"E");
    // Higher priority, but a plain connection offers no ALPN.
    let c = router(main_ep(), "alpn", "ALPN(`h2`)", false, alpn.addr).set(
        "tcp.routers.alpn",
        "priority",
        100,
    );
    // A plain connection has no server name: matched as "".
    let cfg = router(c, "empty", "HostSNIRegexp(`^$`)", false, empty.addr).to_toml();
    let p = Proxy::start(&cfg);
    // Neither needs a ClientHello: the proxy dials at once (the backend
    // speaks first).
    assert_eq!(who(p.addr("main")), b'E');
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "router").as_deref(), Some("empty"), "{l}");
}

/// Traefik v2 rule syntax, per router (`ruleSyntax = "v2"`) and as the
/// default (`core.defaultRuleSyntax`): several values per matcher and mux
/// templates route real ClientHellos; `check` prints the v3 equivalent; a
/// v3 router next to them keeps v3 meaning.
#[test]
fn v2_rules_route_as_traefik_v2_and_check_prints_their_v3_form() {
    let ab = Backend::greeting(b"A");
    let tpl = Backend::greeting(b"T");
    let v3 = Backend::greeting(b"3");
    let plain = Backend::greeting(b"P");
    let c = main_ep().set("core", "defaultRuleSyntax", "v2");
    let c = router(
        c,
        "ab",
        "HostSNI(`a.example.com`, `b.example.com`)",
        true,
        ab.addr,
    );
    let c = router(
        c,
        "tpl",
        "HostSNIRegexp(`{tenant:[a-z]+}.db.example.com`)",
        true,
        tpl.addr,
    );
    let c = router(
        c,
        "v3",
        "HostSNIRegexp(`^v3-[0-9]+\\.example\\.com$`)",
        true,
        v3.addr,
    )
    .set("tcp.routers.v3", "ruleSyntax", "v3");
    let rule = "ClientIP(`127.0.0.2`, `127.0.0.3`)";
    let cfg = router(c, "plain", rule, false, plain.addr).to_toml();
    let p = Proxy::start(&cfg);
    let addr = p.addr("main");
    for (sni, want) in [
        ("a.example.com", &b"A"[..]),
        ("b.example.com", b"A"),
        ("orders.db.example.com", b"T"),
        ("v3-7.example.com", b"3"),
    ] {
        // The greeting, then the hello echoed back.
        let got = send_fin_read(addr, &rustls_hello(sni, &[]));
        assert_eq!(got.get(..1), Some(want), "{sni}");
    }
    // Not a label of letters: no v2 router, no TLS catch-all: refused.
    let got = send_fin_read(addr, &rustls_hello("a1.db.example.com", &[]));
    assert!(!got.starts_with(b"T"), "{got:?}");
    // v2 ClientIP with two values, for a plain client from either.
    for from in ["127.0.0.2", "127.0.0.3"] {
        let mut s = connect_from(from, addr);
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"P", "{from}");
    }

    let dir = TempDir::new("v2-check");
    let path = dir.write("v2.toml", &cfg);
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for want in [
        "ruleSyntax v2; in v3: HostSNI(`a.example.com`) || HostSNI(`b.example.com`)",
        "ruleSyntax v2; in v3: HostSNIRegexp(`(?i)^([a-z]+)\\.db\\.example\\.com$`)",
        "ruleSyntax v2; in v3: ClientIP(`127.0.0.2`) || ClientIP(`127.0.0.3`)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches("ruleSyntax v2").count(), 3, "{stdout}");
}
