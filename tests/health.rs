//! Active health checks and passive ejection through the real binary: a
//! server that fails its checks gets no new connections until it passes
//! again; a server that keeps refusing dials stops costing clients a dial.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::*;

/// Connect through the proxy and read the one-byte tag of the backend.
fn who(addr: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    b[0]
}

fn whos(addr: SocketAddr, n: usize) -> String {
    (0..n).map(|_| who(addr) as char).collect()
}

/// `GET path` on the admin entrypoint: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// A backend on `ip` that greets every connection with `tag` and then waits
/// for the client to close.
fn tagged(ip: &str, tag: &'static [u8]) -> Backend {
    Backend::start_on(&format!("{ip}:0"), move |mut s| {
        let _ = s.write_all(tag);
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// A listener that health checks connect to, which can be closed (connects
/// are refused) and reopened on the same address.
struct HealthPort {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl HealthPort {
    fn new(l: TcpListener) -> HealthPort {
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, st) = (open.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let mut l = Some(l);
            while !st.load(Ordering::Acquire) {
                match (o.load(Ordering::Acquire), &l) {
                    // Accept and drop, so the backlog never fills.
                    (true, Some(lis)) => while lis.accept().is_ok() {},
                    (true, None) => {
                        // SO_REUSEADDR (std sets it): rebinding works right away.
                        if let Ok(n) = TcpListener::bind(addr) {
                            n.set_nonblocking(true).unwrap();
                            l = Some(n);
                        }
                    }
                    (false, _) => l = None,
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        HealthPort { addr, open, stop }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The same free port on 127.0.0.1 and 127.0.0.2 (the `port` key applies to
/// every server of a service; the servers differ by host).
fn health_ports() -> (HealthPort, HealthPort) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.2", port)) {
            return (HealthPort::new(a), HealthPort::new(b));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

fn is_transition(l: &str, msg: &str, server: SocketAddr) -> bool {
    l.contains(&format!("msg=\"{msg}\""))
        && field(l, "server").as_deref() == Some(&server.to_string())
}

/// Everything on `main` to service `s` over `servers`, one worker. The
/// clients here read a greeting and never half-close: terminationDelay plays
/// no part.
fn one_lb(servers: &[SocketAddr]) -> Cfg {
    Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", servers)
        .workers(1)
}

/// Service `s` checked by sending `PING\n` and expecting `expect`.
fn ping_pong(c: Cfg, expect: &str, interval: &str) -> Cfg {
    c.set("tcp.services.s.loadBalancer.healthCheck", "send", "PING\n")
        .and("expect", expect)
        .and("interval", interval)
        .and("timeout", "1s")
}

#[test]
fn a_server_failing_its_check_gets_no_connections_until_it_recovers() {
    let a = tagged("127.0.0.1", b"A");
    let b = tagged("127.0.0.2", b"B");
    let (ha, _hb) = health_ports();
    let cfg = one_lb(&[a.addr, b.addr])
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .table("api")
        .set(
            "tcp.services.s.loadBalancer.healthCheck",
            "port",
            ha.addr.port(),
        )
        .and("interval", "100ms")
        .and("unhealthyInterval", "50ms")
        .and("timeout", "1s")
        .to_toml();
    let p = Proxy::start(&cfg);
    let main = p.addr("main");
    let admin = p.addr("traefik");
    assert_eq!(whos(main, 4), "ABAB");

    // The check port of A closes: A goes down, with the reason logged.
    ha.set_open(false);
    let down = p.wait_logs(1, |l| is_transition(l, "server unhealthy", a.addr));
    assert_eq!(field(&down[0], "service").as_deref(), Some("s"));
    assert!(
        field(&down[0], "reason").unwrap().starts_with("connect: "),
        "{}",
        down[0]
    );
    assert!(down[0].contains("level=warn"), "{}", down[0]);
    let a_before = a.accepted.load(Ordering::SeqCst);
    let b_before = b.accepted.load(Ordering::SeqCst);
    // A still accepts on its service port, but the balancer passes it over.
    assert_eq!(whos(main, 6), "BBBBBB");
    assert_eq!(a.accepted.load(Ordering::SeqCst), a_before);
    assert_eq!(b.accepted.load(Ordering::SeqCst), b_before + 6);
    let (_, metrics) = get(admin, "/metrics");
    let up_line = |addr: SocketAddr, v: u8| {
        format!("sluicegate_server_up{{service=\"s\",server=\"{addr}\"}} {v}")
    };
    assert!(
        metrics.lines().any(|l| l == up_line(a.addr, 0)),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == up_line(b.addr, 1)),
        "{metrics}"
    );
    let (_, services) = get(admin, "/api/tcp/services");
    assert!(
        services.contains(&format!(
            "\"serverStatus\":{{\"{}\":\"DOWN\",\"{}\":\"UP\"}}",
            a.addr, b.addr
        )),
        "{services}"
    );
    // Nothing was dialed in vain.
    assert!(!p.logs().iter().any(|l| l.contains("msg=\"dial failed\"")));

    // Back: one good check brings it into the rotation where it left it.
    ha.set_open(true);
    let up = p.wait_logs(1, |l| is_transition(l, "server healthy", a.addr));
    assert!(up[0].contains("level=info"), "{}", up[0]);
    assert_eq!(whos(main, 4), "ABAB");
    assert_eq!(a.accepted.load(Ordering::SeqCst), a_before + 2);
    // Exactly one transition each way.
    assert_eq!(
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"server unhealthy\""))
            .count(),
        1
    );
    assert_eq!(
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"server healthy\""))
            .count(),
        1
    );
}

/// How a `Probed` backend answers health probes.
const RIGHT: u8 = 0;
const WRONG: u8 = 1;
const SILENT: u8 = 2;

/// A backend that answers the probe line `PING` according to `mode` and
/// greets every other client with its tag, counting those clients.
struct Probed {
    backend: Backend,
    mode: Arc<AtomicU8>,
    clients: Arc<AtomicUsize>,
}

impl Probed {
    fn new(tag: &'static [u8]) -> Probed {
        let mode = Arc::new(AtomicU8::new(RIGHT));
        let clients = Arc::new(AtomicUsize::new(0));
        let (m, c) = (mode.clone(), clients.clone());
        let backend = Backend::start(move |s| {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut s = s;
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                return;
            }
            if line == "PING\n" {
                match m.load(Ordering::SeqCst) {
                    RIGHT => drop(s.write_all(b"PONG\r\n")),
                    WRONG => drop(s.write_all(b"PANG\r\n")),
                    _ => thread::sleep(Duration::from_secs(2)),
                }
                return;
            }
            c.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(tag);
            let _ = r.read_line(&mut line);
        });
        Probed {
            backend,
            mode,
            clients,
        }
    }
}

/// A client that speaks first (one line), then reads the tag.
fn ask(addr: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    b[0]
}

fn asks(addr: SocketAddr, n: usize) -> String {
    (0..n).map(|_| ask(addr) as char).collect()
}

#[test]
fn send_expect_wrong_or_missing_reply_is_unhealthy() {
    let a = Probed::new(b"A");
    let b = Probed::new(b"B");
    let cfg = ping_pong(one_lb(&[a.backend.addr, b.backend.addr]), "PONG", "50ms").to_toml();
    let p = Proxy::start(&cfg);
    let main = p.addr("main");
    assert_eq!(asks(main, 4), "ABAB");

    a.mode.store(WRONG, Ordering::SeqCst);
    let down = p.wait_logs(1, |l| is_transition(l, "server unhealthy", a.backend.addr));
    assert_eq!(
        field(&down[0], "reason").as_deref(),
        Some("unexpected reply")
    );
    let a_clients = a.clients.load(Ordering::SeqCst);
    assert_eq!(asks(main, 5), "BBBBB");
    assert_eq!(a.clients.load(Ordering::SeqCst), a_clients);
    assert_eq!(b.clients.load(Ordering::SeqCst), 2 + 5);

    a.mode.store(RIGHT, Ordering::SeqCst);
    p.wait_logs(1, |l| is_transition(l, "server healthy", a.backend.addr));
    assert_eq!(asks(main, 2), "AB");

    // Connected, but no reply within the timeout.
    a.mode.store(SILENT, Ordering::SeqCst);
    let down = p.wait_logs(2, |l| is_transition(l, "server unhealthy", a.backend.addr));
    assert_eq!(
        field(&down[1], "reason").as_deref(),
        Some("timeout waiting for the reply")
    );
    assert_eq!(asks(main, 3), "BBB");
    assert_eq!(a.clients.load(Ordering::SeqCst), a_clients + 1);
}

#[test]
fn every_server_down_means_no_server_at_once() {
    let a = Probed::new(b"A");
    a.mode.store(WRONG, Ordering::SeqCst);
    let cfg = ping_pong(one_lb(&[a.backend.addr]), "PONG", "50ms").to_toml();
    let p = Proxy::start(&cfg);
    p.wait_logs(1, |l| is_transition(l, "server unhealthy", a.backend.addr));
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (got, _) = read_to_end(&mut s);
    assert!(got.is_empty());
    let conn = p.wait_conns(1);
    assert_eq!(field(&conn[0], "outcome").as_deref(), Some("no_server"));
    assert_eq!(a.clients.load(Ordering::SeqCst), 0);
}

#[test]
fn passive_ejection_stops_dialing_a_refusing_server() {
    let dead = refused_addr();
    let b = tagged("127.0.0.1", b"B");
    let cfg = one_lb(&[dead, b.addr])
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .to_toml();
    let p = Proxy::start(&cfg);
    // Every client gets through (failover), and the dead server is dialed
    // on every other connection until its third refusal in a row ejects it:
    // connections 1, 3 and 5 (smooth round robin over two equal weights).
    assert_eq!(whos(p.addr("main"), 20), "B".repeat(20));
    let failures = |p: &Proxy| {
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"dial failed\""))
            .count()
    };
    assert_eq!(failures(&p), 3);
    let ejected = p.wait_logs(1, |l| l.contains("msg=\"server ejected\""));
    assert_eq!(field(&ejected[0], "server"), Some(dead.to_string()));
    assert_eq!(field(&ejected[0], "cooldown_ms").as_deref(), Some("5000"));
    let (_, metrics) = get(p.addr("traefik"), "/metrics");
    let line =
        format!("sluicegate_server_dial_failures_total{{service=\"s\",server=\"{dead}\"}} 3");
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
    // During the cool-down the count stays where it is.
    assert_eq!(whos(p.addr("main"), 10), "B".repeat(10));
    let (_, metrics) = get(p.addr("traefik"), "/metrics");
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
    assert_eq!(failures(&p), 3);
    assert_eq!(
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"server ejected\""))
            .count(),
        1
    );
}

#[test]
fn reload_keeps_verdicts_and_restarts_checks_with_the_new_config() {
    let a = Probed::new(b"A");
    let b = Probed::new(b"B");
    a.mode.store(WRONG, Ordering::SeqCst);
    let cfg = |expect: &str, interval: &str| {
        ping_pong(one_lb(&[a.backend.addr, b.backend.addr]), expect, interval).to_toml()
    };
    let p = Proxy::start(&cfg("PONG", "50ms"));
    let main = p.addr("main");
    p.wait_logs(1, |l| is_transition(l, "server unhealthy", a.backend.addr));

    // Same check, new snapshot: A is still down from the first request on
    // (the verdict is carried over, not re-learnt), and no new transition.
    std::fs::write(&p.config_path, cfg("PONG", "60ms")).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(asks(main, 4), "BBBB");
    assert_eq!(a.clients.load(Ordering::SeqCst), 0);

    // A check that A's reply (PANG) now satisfies as well as B's (PONG): the
    // restarted checker, running the new config, brings A back.
    std::fs::write(&p.config_path, cfg("P", "60ms")).unwrap();
    p.signal(1);
    p.wait_logs(2, |l| l.contains("msg=reloaded"));
    p.wait_logs(1, |l| is_transition(l, "server healthy", a.backend.addr));
    assert_eq!(asks(main, 2), "AB");
    assert_eq!(
        p.logs()
            .iter()
            .filter(|l| l.contains("msg=\"server unhealthy\""))
            .count(),
        1
    );
}

/// Connect through the proxy: the backend's tag, or `None` when the proxy
/// closed without one (no server).
fn try_who(addr: SocketAddr) -> Option<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok().map(|()| b[0])
}

/// Two children `sa` (server A, checked on host A's `port`) and `sb`, 1:1,
/// under weighted `w`; `weighted_hc` adds `[weighted.healthCheck]`.
fn weighted_config(a: SocketAddr, b: SocketAddr, port: u16, weighted_hc: bool) -> String {
    let c = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "w")
        .weighted("w", &[("sa", 1), ("sb", 1)]);
    let c = if weighted_hc {
        c.table("tcp.services.w.weighted.healthCheck")
    } else {
        c
    };
    c.service("sa", &[a])
        .set("tcp.services.sa.loadBalancer.healthCheck", "port", port)
        .and("interval", "100ms")
        .and("unhealthyInterval", "50ms")
        .and("timeout", "1s")
        .service("sb", &[b])
        .set("tcp.services.sb.loadBalancer.healthCheck", "port", port)
        .and("interval", "100ms")
        .and("timeout", "1s")
        .workers(1)
        .to_toml()
}

#[test]
fn weighted_health_check_skips_a_child_whose_only_server_is_down() {
    let a = tagged("127.0.0.1", b"A");
    let b = tagged("127.0.0.2", b"B");
    let (ha, _hb) = health_ports();
    let with = Proxy::start(&weighted_config(a.addr, b.addr, ha.addr.port(), true));
    let without = Proxy::start(&weighted_config(a.addr, b.addr, ha.addr.port(), false));
    assert_eq!(whos(with.addr("main"), 4), "ABAB");
    assert_eq!(whos(without.addr("main"), 4), "ABAB");
    // A's check port closes: A goes down in both proxies.
    ha.set_open(false);
    with.wait_logs(1, |l| is_transition(l, "server unhealthy", a.addr));
    without.wait_logs(1, |l| is_transition(l, "server unhealthy", a.addr));
    // With weighted.healthCheck, the child whose only server is down is
    // passed over: every connection goes to B.
    assert_eq!(whos(with.addr("main"), 6), "BBBBBB");
    // Without it (Traefik: no status propagation), the 1:1 split goes on
    // and the connections that land on `sa` find no server.
    let got: Vec<Option<u8>> = (0..6).map(|_| try_who(without.addr("main"))).collect();
    assert_eq!(
        got.iter().filter(|g| **g == Some(b'B')).count(),
        3,
        "{got:?}"
    );
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 3, "{got:?}");
    let conns = without.wait_conns(10);
    let no_server = conns
        .iter()
        .filter(|l| field(l, "outcome").as_deref() == Some("no_server"))
        .count();
    assert_eq!(no_server, 3, "{conns:?}");
    // A back: both proxies split again.
    ha.set_open(true);
    with.wait_logs(1, |l| is_transition(l, "server healthy", a.addr));
    let split = whos(with.addr("main"), 4);
    assert_eq!(split.matches('A').count(), 2, "{split}");
}

/// A TLS server (rustls, certificate for `backend.test` from `ca`) that
/// answers a line with `PONG` when `good`, else with `NOPE`: the answer is
/// only readable through TLS.
struct TlsProbed {
    addr: SocketAddr,
    good: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl TlsProbed {
    fn start(ca: &support::tls::Ca) -> TlsProbed {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = ca.leaf(&["backend.test"], false);
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let good = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (good.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                let Ok((s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (config, g) = (config.clone(), g.clone());
                thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while let Ok(1) = tls.read(&mut b) {
                        line.push(b[0]);
                        if b[0] == b'\n' {
                            break;
                        }
                    }
                    let reply: &[u8] = if g.load(Ordering::Acquire) {
                        b"PONG"
                    } else {
                        b"NOPE"
                    };
                    let _ = tls.write_all(reply);
                    let _ = tls.flush();
                    thread::sleep(Duration::from_millis(100));
                });
            }
        });
        TlsProbed { addr, good, stop }
    }
}

impl Drop for TlsProbed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn tls_probe_config(server: SocketAddr, ca: &std::path::Path) -> String {
    Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .lb("s", "serversTransport", "t")
        .server("s", server)
        .and("tls", true)
        .set("tcp.services.s.loadBalancer.healthCheck", "send", "PING\n")
        .and("expect", "PONG")
        .and("interval", "100ms")
        .and("unhealthyInterval", "50ms")
        .and("timeout", "2s")
        .set("tcp.serversTransports.t.tls", "serverName", "backend.test")
        .and("rootCAs", [ca])
        .workers(1)
        .to_toml()
}

#[test]
fn a_tls_server_is_probed_through_tls_with_its_transport() {
    let dir = TempDir::new("health-tls");
    let ca = support::tls::Ca::new("health CA");
    let ca_path = dir.write("ca.crt", &ca.pem);
    let backend = TlsProbed::start(&ca);
    let p = Proxy::start(&tls_probe_config(backend.addr, &ca_path));
    // The reply is read inside TLS: a wrong one is "unexpected reply", not
    // a handshake failure.
    let down = p.wait_logs(1, |l| is_transition(l, "server unhealthy", backend.addr));
    assert_eq!(
        field(&down[0], "reason").as_deref(),
        Some("unexpected reply"),
        "{}",
        down[0]
    );
    backend.good.store(true, Ordering::Release);
    p.wait_logs(1, |l| is_transition(l, "server healthy", backend.addr));
    // The handshake uses the transport's roots: another CA fails it.
    let other = support::tls::Ca::new("other CA");
    let other_path = dir.write("other.crt", &other.pem);
    let q = Proxy::start(&tls_probe_config(backend.addr, &other_path));
    let down = q.wait_logs(1, |l| is_transition(l, "server unhealthy", backend.addr));
    let reason = field(&down[0], "reason").unwrap();
    assert!(
        reason.starts_with("tls: ") && reason.contains("certificate"),
        "{}",
        down[0]
    );
}
