//! The admin entrypoint through the real binary: `/ping`, `/metrics` with
//! exact counts for a known exchange, the JSON API, and the HTTP edges
//! (404, 405, oversized requests, 503 while draining).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

/// Send `request` raw; returns (status, headers, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let (raw, err) = read_to_end(&mut s);
    assert!(err.is_none(), "{err:?}");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    // Every header line, the last one included, ends with CRLF.
    let head = format!("{head}\r\n");
    let status = head[9..12].parse().unwrap();
    // The length is exact and the server closes after one response.
    if !head.starts_with("HTTP/1.1 200") || !request.starts_with(b"HEAD") {
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
    }
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    (status, head, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    (status, body)
}

/// Two data entrypoints, the admin one with ping, metrics and the API; a
/// health-checked service `s` and a weighted `split` over it. The echoes come
/// back after the clients' FIN: a generous terminationDelay keeps a late one
/// on a loaded machine.
fn config(echo: SocketAddr) -> String {
    Cfg::new()
        .entrypoint("main")
        .entrypoint("other")
        .admin()
        .router_on("r", "main", "HostSNI(`*`)", "s")
        .router_on("only-ten", "other", "ClientIP(`10.9.9.9`)", "split")
        .table("tcp.services.s.loadBalancer")
        .server("s", echo)
        .and("weight", 3)
        .set("tcp.services.s.loadBalancer.healthCheck", "interval", "10s")
        .and("timeout", "1s")
        .weighted("split", &[("s", 90)])
        .termination_delay("30s")
        .workers(2)
        .to_toml()
}

#[test]
fn ping_metrics_and_api_report_exactly_what_happened() {
    let echo = Backend::echo();
    let p = Proxy::start(&config(echo.addr));
    let admin = p.addr("traefik");

    assert_eq!(get(admin, "/ping"), (200, "OK".to_string()));

    // 10 echoed exchanges of 5 bytes each way, spread over both workers,
    // and 3 connections that match no router.
    for _ in 0..10 {
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.write_all(b"hello").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, err) = read_to_end(&mut s);
        assert_eq!(
            (got.as_slice(), err.map(|e| e.kind())),
            (&b"hello"[..], None)
        );
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.addr("other")).unwrap();
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty());
    }
    // The access-log line of a connection is written after its counters.
    p.wait_conns(13);

    let (status, _, metrics) = http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let expect = [
        (
            "sluicegate_entrypoint_connections_accepted_total{entrypoint=\"main\"}",
            10,
        ),
        (
            "sluicegate_entrypoint_connections_accepted_total{entrypoint=\"other\"}",
            3,
        ),
        (
            "sluicegate_entrypoint_connections_open{entrypoint=\"main\"}",
            0,
        ),
        (
            "sluicegate_entrypoint_connections_open{entrypoint=\"other\"}",
            0,
        ),
        (
            "sluicegate_entrypoint_accept_errors_total{entrypoint=\"main\"}",
            0,
        ),
        (
            "sluicegate_connections_total{entrypoint=\"main\",router=\"r\",outcome=\"closed\"}",
            10,
        ),
        (
            "sluicegate_connections_total{entrypoint=\"other\",router=\"-\",outcome=\"no_route\"}",
            3,
        ),
        (
            "sluicegate_service_bytes_total{service=\"s\",direction=\"up\"}",
            50,
        ),
        (
            "sluicegate_service_bytes_total{service=\"s\",direction=\"down\"}",
            50,
        ),
        (
            &*format!(
                "sluicegate_server_up{{service=\"s\",server=\"{}\"}}",
                echo.addr
            ),
            1,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(
            sample(&metrics, series),
            Some(want),
            "{series} in:\n{metrics}"
        );
    }
    // Only the outcomes that happened, and every family documented.
    assert_eq!(
        metrics.matches("sluicegate_connections_total{").count(),
        2,
        "{metrics}"
    );
    for family in [
        "sluicegate_entrypoint_connections_accepted_total counter",
        "sluicegate_entrypoint_connections_open gauge",
        "sluicegate_connections_total counter",
        "sluicegate_service_bytes_total counter",
        "sluicegate_server_dial_failures_total counter",
        "sluicegate_server_up gauge",
    ] {
        assert!(metrics.contains(&format!("# TYPE {family}\n")), "{family}");
        let name = family.split(' ').next().unwrap();
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name}");
    }

    let (status, routers) = get(admin, "/api/tcp/routers");
    assert_eq!(status, 200);
    assert_eq!(
        routers,
        concat!(
            r#"[{"name":"only-ten","entryPoints":["other"],"rule":"ClientIP(`10.9.9.9`)","priority":20,"service":"split","status":"enabled","provider":"file"},"#,
            r#"{"name":"r","entryPoints":["main"],"rule":"HostSNI(`*`)","priority":-1,"service":"s","status":"enabled","provider":"file"}]"#
        )
    );
    let (status, services) = get(admin, "/api/tcp/services");
    assert_eq!(status, 200);
    assert_eq!(
        services,
        format!(
            concat!(
                r#"[{{"name":"s","type":"loadbalancer","loadBalancer":{{"servers":[{{"address":"{a}","weight":3}}],"#,
                r#""healthCheck":{{"interval":"10s","unhealthyInterval":"10s","timeout":"1s"}}}},"#,
                r#""serverStatus":{{"{a}":"UP"}},"usedBy":["r"],"status":"enabled","provider":"file"}},"#,
                r#"{{"name":"split","type":"weighted","weighted":{{"services":[{{"name":"s","weight":90}}]}},"#,
                r#""usedBy":["only-ten"],"status":"enabled","provider":"file"}}]"#
            ),
            a = echo.addr
        )
    );
    // One router by its Traefik name (with the provider, '@' escaped or not).
    let (status, one) = get(admin, "/api/tcp/routers/r%40file");
    assert_eq!(status, 200);
    assert!(one.starts_with(r#"{"name":"r","#), "{one}");
    assert_eq!(get(admin, "/api/tcp/routers/r@file").1, one);
    assert_eq!(
        get(admin, "/api/tcp/services/nope"),
        (404, r#"{"message":"service not found"}"#.to_string())
    );
}

#[test]
fn http_edges_are_bounded_and_answered() {
    let echo = Backend::echo();
    let p = Proxy::start(&config(echo.addr));
    let admin = p.addr("traefik");

    assert_eq!(
        get(admin, "/nope"),
        (404, "404 page not found\n".to_string())
    );
    assert_eq!(get(admin, "/metrics/x").0, 404);
    let (status, head, _) = http(admin, b"POST /ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("\r\nAllow: GET, HEAD\r\n"), "{head}");
    let (status, head, body) = http(admin, b"HEAD /ping HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("\r\nContent-Length: 2\r\n"), "{head}");
    assert_eq!(http(admin, b"GARBAGE\r\n\r\n").0, 400);
    // A head that never ends within the size cap.
    let mut huge = b"GET /ping HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 9000));
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may stop reading (and answer) before all of it is sent.
    let _ = s.write_all(&huge);
    let (raw, _) = read_to_end(&mut s);
    assert!(
        raw.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // A client that sends nothing is answered 408 at the deadline, and the
    // admin keeps serving after it.
    let mut idle = TcpStream::connect(admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (raw, _) = read_to_end(&mut idle);
    assert!(
        raw.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(get(admin, "/ping").0, 200);
}

#[test]
fn ping_is_503_while_draining_and_endpoints_follow_the_config() {
    let echo = Backend::echo();
    // Only [ping] is configured. The echo comes back after the client's FIN.
    let cfg = Cfg::new()
        .entrypoint("main")
        .set(
            "entryPoints.main.transport.lifeCycle",
            "graceTimeOut",
            "10s",
        )
        .entrypoint("traefik")
        .table("ping")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[echo.addr])
        .termination_delay("30s")
        .workers(1)
        .to_toml();
    let mut p = Proxy::start(&cfg);
    let admin = p.addr("traefik");
    // Only [ping] is configured.
    assert_eq!(get(admin, "/metrics").0, 404);
    assert_eq!(get(admin, "/api/tcp/routers").0, 404);

    // An open connection keeps the drain going.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    p.signal(15);
    p.wait_logs(1, |l| l.contains("msg=stopping"));
    // The signal thread logs `stopping` an instant before it sets the flag
    // /ping reads (a loaded machine showed a 200 in between): poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match get(admin, "/ping") {
            (503, body) => {
                assert_eq!(body, "Service Unavailable");
                break;
            }
            (200, _) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => panic!("/ping while draining: {other:?}"),
        }
    }
    s.shutdown(Shutdown::Write).unwrap();
    let _ = read_to_end(&mut s);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
}

/// Connections the admin entrypoint serves at once (`admin::MAX_CONNECTIONS`).
const ADMIN_CAP: usize = 64;

/// A config whose `/api/tcp/routers` listing is large (1.6 MB for 2000): `n`
/// routers with long rules, so that a response is far larger than what the
/// socket buffers of a client that reads nothing can absorb.
fn big_config(n: usize) -> String {
    let mut cfg = Cfg::new()
        .entrypoint("main")
        .entrypoint("traefik")
        .table("ping")
        .table("api")
        .service("s", &[refused_addr()])
        .workers(1);
    for r in 0..n {
        let rule: Vec<String> = (0..24)
            .map(|i| format!("ClientIP(`10.{}.{}.{i}/32`)", r / 256, r % 256))
            .collect();
        cfg = cfg.router_on(&format!("router-{r:05}"), "main", &rule.join(" || "), "s");
    }
    cfg.to_toml()
}

/// Send `GET path` and read nothing: the response stays queued. A small
/// receive buffer (which also turns off its autotuning) keeps the kernel from
/// absorbing the whole response on the reader's behalf.
fn request_and_stall(addr: SocketAddr, path: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    s
}

/// `GET /ping`, timed; the read timeout keeps a server that never answers
/// from hanging the test.
fn timed_ping(addr: SocketAddr) -> (Result<(u16, String), String>, Duration) {
    let t = std::time::Instant::now();
    let res = (|| {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let (raw, err) = read_to_end(&mut s);
        if let Some(e) = err {
            return Err(format!("{e} after {} bytes", raw.len()));
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or(text.clone())?;
        Ok((head[9..12].parse().unwrap_or(0), body.to_string()))
    })();
    (res, t.elapsed())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Idle connections and a reader that stalls on a large
/// `/api` response do not delay `/ping` (they used to be served one at a
/// time, 2 s of read deadline each: 30 idle connections delayed it by more
/// than a minute), and a response nobody reads is cut by its write deadline
/// with a reset, not a clean end.
#[test]
fn ping_answers_promptly_beside_idle_connections_and_a_stalled_reader() {
    let p = Proxy::start(&big_config(2000));
    let admin = p.addr("traefik");
    let stalled = request_and_stall(admin, "/api/tcp/routers");
    let sent = std::time::Instant::now();
    let idle: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();

    let (res, took) = timed_ping(admin);
    eprintln!("/ping beside 30 idle connections and a stalled reader: {took:?}");
    assert_eq!(res, Ok((200, "OK".to_string())));
    // Generous for a loaded machine; the one-at-a-time server took > 60 s.
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The idle ones get their 408 at the head deadline, all at once.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (raw, _) = read_to_end(&mut s);
        assert!(
            raw.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }

    // The stalled reader, once past the write deadline (10 s), finds its
    // response cut and the cut marked by a reset.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(sent.elapsed()));
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (raw, err) = read_to_end(&mut stalled);
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionReset),
        "after {} bytes",
        raw.len()
    );
    let full = get(admin, "/api/tcp/routers").1.len();
    assert!(full > 1_500_000, "{full}");
    assert!(raw.len() < full, "{} of {full}", raw.len());
}

/// Beyond the cap, the oldest idle connections are the ones
/// dropped, so `/ping` still answers, and the port's descriptors stay bounded.
#[test]
fn over_the_cap_idle_connections_give_way_to_ping() {
    let p = Proxy::start(&config(Backend::echo().addr));
    let admin = p.addr("traefik");
    let before = open_fds(p.pid());
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();

    let (res, took) = timed_ping(admin);
    eprintln!("/ping beside 200 idle connections (cap {ADMIN_CAP}): {took:?}");
    assert_eq!(res, Ok((200, "OK".to_string())));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Two descriptors per served connection (the socket and the handle to
    // evict it), for at most the cap plus as many being evicted; without a
    // cap the 200 idle connections would hold 400.
    let during = open_fds(p.pid());
    eprintln!("proxy descriptors: {before} before, {during} with 200 idle admin connections");
    assert!(
        during <= before + 4 * ADMIN_CAP,
        "{before} descriptors before, {during} with 200 idle admin connections"
    );

    // Every idle connection is closed by the server: the evicted ones at
    // once with nothing, the others with a 408 at the head deadline.
    let (mut evicted, mut timed_out) = (0, 0);
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (raw, err) = read_to_end(&mut s);
        match (raw.is_empty(), err) {
            (true, _) => evicted += 1,
            (false, None) if raw.starts_with(b"HTTP/1.1 408 ") => timed_out += 1,
            (_, err) => panic!("{err:?}: {}", String::from_utf8_lossy(&raw)),
        }
    }
    eprintln!("of 200 idle connections: {evicted} evicted, {timed_out} answered 408");
    assert!(evicted >= 1 && timed_out >= 1, "{evicted} {timed_out}");
    assert_eq!(get(admin, "/ping").0, 200);
}

/// Bytes after the request head (a stray CRLF, a pipelined
/// request) used to make the close reset the connection, destroying the
/// queued end of a large response (a 3 MB listing stopped at 128 000 bytes).
#[test]
fn bytes_after_the_request_do_not_cut_a_large_response() {
    let p = Proxy::start(&big_config(2000));
    let admin = p.addr("traefik");
    let head = &b"GET /api/tcp/routers HTTP/1.1\r\nHost: x\r\n\r\n"[..];
    for extra in [&b"\r\n"[..], b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"] {
        for together in [true, false] {
            let mut s = TcpStream::connect(admin).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            if together {
                s.write_all(&[head, extra].concat()).unwrap();
            } else {
                // The extra bytes arrive after the server read the head
                // and while it writes the response.
                s.write_all(head).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                s.write_all(extra).unwrap();
            }
            let (raw, err) = read_to_end(&mut s);
            let what = format!(
                "extra {:?}, sent with the head: {together}",
                String::from_utf8_lossy(extra)
            );
            assert!(err.is_none(), "{what}: {err:?} after {} bytes", raw.len());
            let end = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| panic!("{what}: no head in {} bytes", raw.len()))
                + 4;
            let head = String::from_utf8_lossy(&raw[..end]);
            let len: usize = head
                .split("\r\nContent-Length: ")
                .nth(1)
                .and_then(|v| v.split("\r\n").next()?.parse().ok())
                .unwrap_or_else(|| panic!("{what}: {head}"));
            assert!(len > 1_500_000, "{what}: {len}");
            assert_eq!(raw.len() - end, len, "{what}: body bytes received");
        }
    }
}
