//! PROXY protocol in, with Traefik's meaning, through the real
//! binary: on an entrypoint with a `proxyProtocol` table a trusted source may
//! send a header or none (then it is direct); any other source may send one
//! too, and it is stripped and ignored (the real peer address counts). A
//! header never reaches a backend as data, on routers that peek (TLS) and on
//! ones that dial at once; a server-speaks-first backend still greets a
//! client that sends nothing. Also: an empty `proxyProtocol` table towards
//! the servers means version 2.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sluicegate::model::ServiceKind;
use sluicegate::wire::proxy_protocol::{self, Addresses, Decoded, Version};
use support::hello::{capture, write_bytewise};
use support::record::Recorder;
use support::*;

/// The SNI of the `openssl_sni.bin` capture.
const SNI: &str = "db.prod.example.com";
/// What the source claims in the headers the tests send.
const SPOOFED: &str = "203.0.113.9:51234";
const VIP: &str = "198.51.100.1:5432";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Entry point `name` with a `proxyProtocol` table trusting `trusted`.
fn entrypoint(c: Cfg, name: &str, trusted: &str) -> Cfg {
    c.entrypoint(name).set(
        &format!("entryPoints.{name}.proxyProtocol"),
        "trustedIPs",
        [trusted],
    )
}

/// A router `name` on `ep` to its own one-server service; `tls` makes it a
/// passthrough router.
fn route(c: Cfg, name: &str, ep: &str, rule: &str, tls: bool, backend: SocketAddr) -> Cfg {
    let c = c.router_on(name, ep, rule, name);
    let c = if tls {
        c.router_tls(name).and("passthrough", true)
    } else {
        c
    };
    c.service(name, &[backend])
}

/// The backends here (Recorder) answer after the client's FIN (`finish`): a
/// generous terminationDelay keeps a late answer on a loaded machine.
fn base() -> Cfg {
    Cfg::new().termination_delay("30s")
}

/// `route`'s `tls` for a TLS passthrough router.
const TLS: bool = true;

/// The ClientHello of the passthrough tests and the record after it.
fn hello() -> Vec<u8> {
    let mut h = capture("openssl_sni.bin");
    h.extend_from_slice(b"\x17\x03\x03\x00\x0bafter-hello");
    h
}

/// Half-close what the client sent and read the reply to EOF.
fn finish(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_end(&mut s).0
}

/// The access-log line whose `client=` is `client` (waits for `n` lines).
fn line_of(p: &Proxy, n: usize, client: SocketAddr) -> String {
    let lines = p.wait_conns(n);
    let want = client.to_string();
    lines
        .iter()
        .find(|l| field(l, "client").as_deref() == Some(want.as_str()))
        .unwrap_or_else(|| panic!("no line for {client} in {lines:#?}"))
        .clone()
}

fn outcome(line: &str) -> String {
    field(line, "outcome").unwrap_or_default()
}

#[test]
fn a_trusted_source_without_a_header_is_direct_on_plain_and_tls_routers() {
    let plain = Recorder::start(b"P");
    let tls = Recorder::start(b"T");
    let c = entrypoint(base(), "plain", "127.0.0.1/32");
    let c = entrypoint(c, "tls", "127.0.0.1/32");
    let c = route(c, "plain", "plain", "HostSNI(`*`)", false, plain.addr());
    let cfg = route(
        c,
        "tls",
        "tls",
        &format!("HostSNI(`{SNI}`)"),
        TLS,
        tls.addr(),
    )
    .to_toml();
    let p = Proxy::start(&cfg);

    // Plain router (dials at once): bytes that merely start like `PROXY`
    // are the client's own.
    let mut s = connect_from("127.0.0.1", p.addr("plain"));
    let me = s.local_addr().unwrap();
    s.write_all(b"PING\r\nsome data").unwrap();
    assert_eq!(finish(s), b"P");
    assert_eq!(plain.next(), b"PING\r\nsome data");
    let l = line_of(&p, 1, me);
    assert_eq!(outcome(&l), "closed", "{l}");

    // TLS passthrough router (peeks): routed by the hello, replayed exactly.
    let mut s = connect_from("127.0.0.1", p.addr("tls"));
    let me = s.local_addr().unwrap();
    s.write_all(&hello()).unwrap();
    assert_eq!(finish(s), b"T");
    assert!(tls.next() == hello(), "the hello replayed byte for byte");
    let l = line_of(&p, 2, me);
    assert_eq!(field(&l, "router").as_deref(), Some("tls"), "{l}");
    assert_eq!(outcome(&l), "closed", "{l}");
}

#[test]
fn untrusted_v1_and_v2_headers_are_stripped_and_ignored() {
    let plain = Recorder::start(b"P");
    let tls = Recorder::start(b"T");
    // 127.0.0.1 is not in 10.0.0.0/8: every test connection is untrusted.
    // The plain service sends its own v2 header, which must name the real
    // peer, never the address the client claimed.
    let c = entrypoint(base(), "plain", "10.0.0.0/8");
    let c = entrypoint(c, "tls", "10.0.0.0/8");
    let c = route(c, "plain", "plain", "HostSNI(`*`)", false, plain.addr()).lb(
        "plain",
        "serversTransport",
        "v2",
    );
    let cfg = route(
        c,
        "tls",
        "tls",
        &format!("HostSNI(`{SNI}`)"),
        TLS,
        tls.addr(),
    )
    .set("tcp.serversTransports.v2.proxyProtocol", "version", 2)
    .to_toml();
    let p = Proxy::start(&cfg);
    let v1 = b"PROXY TCP4 203.0.113.9 198.51.100.1 51234 5432\r\n".to_vec();
    let v2 = proxy_protocol::encode_v2(addr(SPOOFED), addr(VIP));
    let mut n = 0;
    for (what, header) in [("v1", &v1), ("v2", &v2)] {
        // Plain router: header and payload in one write.
        let mut s = connect_from("127.0.0.1", p.addr("plain"));
        let me = s.local_addr().unwrap();
        let mut sent = header.clone();
        sent.extend_from_slice(b"payload");
        s.write_all(&sent).unwrap();
        assert_eq!(finish(s), b"P", "{what}");
        let got = plain.next();
        let Decoded::Header(h) = proxy_protocol::decode(&got) else {
            panic!("{what}: the backend got no PROXY header: {got:?}")
        };
        assert_eq!(
            h.addresses,
            Addresses::Proxied {
                src: me,
                dst: p.addr("plain")
            },
            "{what}: our header carries the real peer"
        );
        assert_eq!(
            &got[h.consumed_len..],
            b"payload",
            "{what}: header stripped"
        );
        n += 1;
        let l = line_of(&p, n, me);
        assert_eq!(outcome(&l), "closed", "{what}: {l}");

        // TLS router: the header byte by byte, then the hello.
        let mut s = connect_from("127.0.0.1", p.addr("tls"));
        let me = s.local_addr().unwrap();
        write_bytewise(&mut s, header, Duration::from_millis(1));
        s.write_all(&hello()).unwrap();
        assert_eq!(finish(s), b"T", "{what}");
        assert!(tls.next() == hello(), "{what}: exactly the client's bytes");
        n += 1;
        let l = line_of(&p, n, me);
        assert_eq!(outcome(&l), "closed", "{what}: {l}");
    }
}

#[test]
fn a_trusted_header_decides_client_ip_allow_list_and_in_flight_conn() {
    let lb = Backend::echo();
    let direct = Recorder::start(b"D");
    let c = entrypoint(base(), "pp", "127.0.0.1/32");
    let c = route(c, "lb", "pp", "ClientIP(`203.0.113.0/24`)", false, lb.addr).set(
        "tcp.routers.lb",
        "middlewares",
        ["allow", "one"],
    );
    let cfg = route(
        c,
        "direct",
        "pp",
        "ClientIP(`127.0.0.0/8`)",
        false,
        direct.addr(),
    )
    .set(
        "tcp.middlewares.allow.ipAllowList",
        "sourceRange",
        ["203.0.113.0/28"],
    )
    .set("tcp.middlewares.one.inFlightConn", "amount", 1)
    .to_toml();
    let p = Proxy::start(&cfg);
    let ep = p.addr("pp");
    let v1 = |src: &str| {
        let a = addr(src);
        proxy_protocol::encode_v1(a, addr(VIP))
    };

    // Held open: 203.0.113.9 uses its one inFlightConn slot.
    let mut held = connect_from("127.0.0.1", ep);
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(&[v1("203.0.113.9:51001"), b"hold".to_vec()].concat())
        .unwrap();
    let mut b = [0u8; 4];
    held.read_exact(&mut b).unwrap();
    assert_eq!(
        &b, b"hold",
        "the header's address matched ClientIP and the allow list"
    );

    let mut s = connect_from("127.0.0.1", ep);
    s.write_all(&[v1("203.0.113.9:51002"), b"x".to_vec()].concat())
        .unwrap();
    assert!(finish(s).is_empty());
    let l = line_of(&p, 1, addr("203.0.113.9:51002"));
    assert_eq!(outcome(&l), "too_many_connections", "{l}");

    // Another header address from the same real peer has its own slot.
    let mut s = connect_from("127.0.0.1", ep);
    s.write_all(&[v1("203.0.113.10:51003"), b"ten".to_vec()].concat())
        .unwrap();
    assert_eq!(finish(s), b"ten");
    let l = line_of(&p, 2, addr("203.0.113.10:51003"));
    assert_eq!(outcome(&l), "closed", "{l}");

    // Outside the allow list by its header address.
    let mut s = connect_from("127.0.0.1", ep);
    s.write_all(&[v1("203.0.113.200:51004"), b"x".to_vec()].concat())
        .unwrap();
    assert!(finish(s).is_empty());
    let l = line_of(&p, 3, addr("203.0.113.200:51004"));
    assert_eq!(outcome(&l), "denied", "{l}");

    // Untrusted (127.0.0.2): the same header is stripped and ignored; the
    // real peer matches the other router.
    let mut s = connect_from("127.0.0.2", ep);
    let me = s.local_addr().unwrap();
    s.write_all(&[v1("203.0.113.9:51005"), b"spoof".to_vec()].concat())
        .unwrap();
    assert_eq!(finish(s), b"D");
    assert_eq!(direct.next(), b"spoof");
    let l = line_of(&p, 4, me);
    assert_eq!(field(&l, "router").as_deref(), Some("direct"), "{l}");

    // Trusted without a header: direct, by its own address.
    let mut s = connect_from("127.0.0.1", ep);
    let me = s.local_addr().unwrap();
    s.write_all(b"plain").unwrap();
    assert_eq!(finish(s), b"D");
    assert_eq!(direct.next(), b"plain");
    let l = line_of(&p, 5, me);
    assert_eq!(field(&l, "router").as_deref(), Some("direct"), "{l}");
    drop(held);
}

#[test]
fn a_server_first_backend_greets_a_client_that_sends_nothing() {
    const GREETING: &[u8] = b"220 ready\r\n";
    let backend = Backend::greeting(GREETING);
    let c = entrypoint(base(), "pp", "127.0.0.1/32");
    let cfg = route(c, "smtp", "pp", "HostSNI(`*`)", false, backend.addr).to_toml();
    let p = Proxy::start(&cfg);
    // Trusted and untrusted sources alike; readTimeout is Traefik's default
    // (60 s), far above the bound asserted here.
    for from in ["127.0.0.1", "127.0.0.2"] {
        let started = Instant::now();
        let mut s = connect_from(from, p.addr("pp"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = vec![0u8; GREETING.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{from}: no greeting: {e}"));
        assert_eq!(got, GREETING, "{from}");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(8),
            "{from}: the greeting took {waited:?}"
        );
        // The connection is then an ordinary one.
        s.write_all(b"QUIT\r\n").unwrap();
        assert_eq!(finish(s), b"QUIT\r\n", "{from}");
    }
}

#[test]
fn malformed_headers_are_closed_with_their_outcome() {
    let rec = Recorder::start(b"R");
    let c = entrypoint(base(), "pp", "127.0.0.1/32");
    let cfg = route(c, "all", "pp", "HostSNI(`*`)", false, rec.addr()).to_toml();
    let p = Proxy::start(&cfg);
    let mut bad_version = proxy_protocol::encode_v2(addr(SPOOFED), addr(VIP));
    bad_version[12] = 0x31;
    let rows: [(&str, &str, &[u8]); 4] = [
        (
            "127.0.0.1",
            "trusted v1 bad protocol",
            b"PROXY TCP5 203.0.113.9 198.51.100.1 51234 5432\r\n",
        ),
        (
            "127.0.0.1",
            "trusted v1 LF without CR",
            b"PROXY TCP4 203.0.113.9 198.51.100.1 51234 5432\n",
        ),
        ("127.0.0.1", "trusted v2 version 3", &bad_version),
        // go-proxyproto fails the connection on a malformed header whatever
        // the policy; never forwarded.
        (
            "127.0.0.2",
            "untrusted v1 bad address",
            b"PROXY TCP4 203.0.113.999 198.51.100.1 51234 5432\r\n",
        ),
    ];
    for (n, (from, what, header)) in rows.into_iter().enumerate() {
        let mut s = connect_from(from, p.addr("pp"));
        let me = s.local_addr().unwrap();
        s.write_all(header).unwrap();
        let _ = s.write_all(b"data");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (back, _) = read_to_end(&mut s);
        assert!(back.is_empty(), "{what}");
        let l = line_of(&p, n + 1, me);
        assert_eq!(outcome(&l), "proxy_protocol_invalid", "{what}: {l}");
    }
    assert_eq!(rec.accepted(), 0, "no malformed header reached the backend");
}

#[test]
fn an_empty_proxy_protocol_table_means_version_2() {
    let new = Recorder::start(b"N");
    let old = Recorder::start(b"O");
    // An empty proxyProtocol table, in both places Traefik reads it.
    let c = base().entrypoint("new").entrypoint("old");
    let c = route(c, "new", "new", "HostSNI(`*`)", false, new.addr())
        .lb("new", "serversTransport", "t")
        .table("tcp.serversTransports.t.proxyProtocol");
    let cfg = route(c, "old", "old", "HostSNI(`*`)", false, old.addr())
        .table("tcp.services.old.loadBalancer.proxyProtocol")
        .to_toml();

    // The loader's view, in both places Traefik reads the table.
    let dir = TempDir::new("pp-empty");
    let path = dir.write("main.toml", &cfg);
    let c = sluicegate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for s in &c.services {
        let ServiceKind::LoadBalancer(lb) = &s.kind else {
            panic!("{}", s.name)
        };
        assert_eq!(
            lb.proxy_protocol,
            Some(sluicegate::model::ProxyVersion::V2),
            "service {}",
            s.name
        );
    }
    let summary = c.summary();
    assert!(
        summary.matches("proxyProtocol v2").count() >= 2,
        "{summary}"
    );

    // And on the wire: each backend gets a v2 header naming the client.
    let p = Proxy::start(&cfg);
    for (ep, rec) in [("new", &new), ("old", &old)] {
        let mut s = TcpStream::connect(p.addr(ep)).unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"hi").unwrap();
        finish(s);
        let got = rec.next();
        let Decoded::Header(h) = proxy_protocol::decode(&got) else {
            panic!("{ep}: no PROXY header: {got:?}")
        };
        assert_eq!(h.version, Version::V2, "{ep}");
        assert_eq!(
            h.addresses,
            Addresses::Proxied {
                src: me,
                dst: p.addr(ep)
            },
            "{ep}"
        );
        assert_eq!(&got[h.consumed_len..], b"hi", "{ep}");
    }
}
