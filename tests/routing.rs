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
    let cfg = format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
weight = 5
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
weight = 1
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
weight = 1
[runtime]
workers = 1
"#,
        a.addr, b.addr, c.addr
    );
    let p = Proxy::start(&cfg);
    let seq: String = (0..14).map(|_| who(p.addr("main")) as char).collect();
    // nginx's smooth WRR: no bursts, the same 7-pick cycle twice.
    assert_eq!(seq, "AABACAAAABACAA");
}

#[test]
fn weighted_service_90_10_over_1000_connections() {
    let primary = Backend::greeting(b"P");
    let replica = Backend::greeting(b"R");
    let cfg = format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "split"
[tcp.services.split.weighted]
[[tcp.services.split.weighted.services]]
name = "primary"
weight = 90
[[tcp.services.split.weighted.services]]
name = "replica"
weight = 10
[tcp.services.primary.loadBalancer]
[[tcp.services.primary.loadBalancer.servers]]
address = "{}"
[tcp.services.replica.loadBalancer]
[[tcp.services.replica.loadBalancer.servers]]
address = "{}"
[runtime]
workers = 1
accessLog = false
"#,
        primary.addr, replica.addr
    );
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
    let cfg = format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
serversTransport = "fast"
[[tcp.services.s.loadBalancer.servers]]
address = "{refused}"
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
[tcp.serversTransports.fast]
dialTimeout = "150ms"
[runtime]
workers = 2
accessLog = false
"#,
        hole.addr, good.addr
    );
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
    let cfg = format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
"#,
        refused_addr(),
        refused_addr()
    );
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
    let cfg = format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.from-two]
rule = "HostSNI(`*`) && ClientIP(`127.0.0.2`)"
service = "two"
[tcp.routers.rest]
rule = "HostSNI(`*`)"
service = "other"
[tcp.services.two.loadBalancer]
[[tcp.services.two.loadBalancer.servers]]
address = "{}"
[tcp.services.other.loadBalancer]
[[tcp.services.other.loadBalancer.servers]]
address = "{}"
"#,
        two.addr, other.addr
    );
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
    let cfg = format!(
        r#"
[entryPoints.main]
address = "[::]:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
middlewares = ["allow"]
[tcp.middlewares.allow.ipAllowList]
sourceRange = ["127.0.0.2/32"]
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "{}"
"#,
        backend.addr
    );
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
