//! Balancing for long-lived connections through the real binary, with
//! exact counts: `strategy = "leastConn"` across two workers, `hrw`
//! (rendezvous hashing of the client IP, the PROXY-protocol source when
//! trusted), `maxConn` with its queue and `queueTimeout`, and reloads that
//! keep the counts and the queue.
//!
//! Every backend greets with its one-letter name, so a client knows which
//! server it reached once it has read one byte, and the proxy has counted the
//! connection by then (the slot is taken before the dial).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const SIGHUP: i32 = 1;

/// Servers named A, B, C, ... that greet with their name, then echo.
fn named_backends(n: usize) -> Vec<Backend> {
    const NAMES: [&[u8]; 4] = [b"A", b"B", b"C", b"D"];
    NAMES[..n].iter().map(|g| Backend::greeting(g)).collect()
}

/// One entrypoint `main` (plus the admin one, `traefik`, with metrics)
/// routing everything to service `s` over `servers`; the tests add their
/// loadBalancer keys with `Cfg::lb`. The servers greet first: no test here
/// depends on terminationDelay.
fn config(servers: &[SocketAddr], workers: usize) -> Cfg {
    Cfg::new()
        .entrypoint("main")
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .router_on("r", "main", "HostSNI(`*`)", "s")
        .workers(workers)
        .service("s", servers)
}

/// Connect, read the greeting: the server's name.
fn reach(to: SocketAddr) -> (TcpStream, u8) {
    let s = TcpStream::connect(to).unwrap();
    greeted(s)
}

fn greeted(mut s: TcpStream) -> (TcpStream, u8) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    (s, b[0])
}

/// Open and queued connections of server `addr` of service `s`.
fn load_of(admin: SocketAddr, addr: SocketAddr) -> (u64, u64) {
    let m = metrics(admin);
    let labels = format!("{{service=\"s\",server=\"{addr}\"}}");
    let open = sample(&m, &format!("sluicegate_server_connections{labels}"));
    let queued = sample(&m, &format!("sluicegate_server_queued{labels}"));
    (
        open.unwrap_or_else(|| panic!("no connections gauge for {addr}:\n{m}")),
        queued.unwrap_or_else(|| panic!("no queued gauge for {addr}:\n{m}")),
    )
}

/// Wait until `load_of` says `want` (the proxy sees a close a moment after
/// the client makes it).
fn wait_load(admin: SocketAddr, addr: SocketAddr, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = load_of(admin, addr);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: (open, queued) stayed {got:?}, expected {want:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn count(held: &[(TcpStream, u8)], name: u8) -> usize {
    held.iter().filter(|(_, n)| *n == name).count()
}

#[test]
fn least_conn_across_two_workers_sends_each_connection_to_the_least_loaded_server() {
    let b = named_backends(2);
    let servers = [b[0].addr, b[1].addr];
    let p = Proxy::start(
        &config(&servers, 2)
            .lb("s", "strategy", "leastConn")
            .to_toml(),
    );
    let (main, admin) = (p.addr("main"), p.addr("traefik"));
    // 20 long-lived connections, one after the other: the kernel spreads
    // them over both workers (SO_REUSEPORT), and each goes to the server
    // with fewer, whichever worker counted those: exactly 10 and 10.
    let mut held: Vec<(TcpStream, u8)> = (0..20).map(|_| reach(main)).collect();
    assert_eq!((count(&held, b'A'), count(&held, b'B')), (10, 10));
    wait_load(admin, servers[0], (10, 0));
    wait_load(admin, servers[1], (10, 0));
    // Close every connection on A, then B, in turn: the next ten each time
    // all go to the emptied server, and the other keeps its ten.
    for (name, addr, other) in [
        (b'A', servers[0], servers[1]),
        (b'B', servers[1], servers[0]),
    ] {
        held.retain(|(_, n)| *n != name);
        wait_load(admin, addr, (0, 0));
        let fresh: Vec<(TcpStream, u8)> = (0..10).map(|_| reach(main)).collect();
        assert_eq!(count(&fresh, name), 10, "all ten to the emptied server");
        held.extend(fresh);
        wait_load(admin, addr, (10, 0));
        wait_load(admin, other, (10, 0));
    }
    // Equal again: the next two split one and one.
    let two: Vec<(TcpStream, u8)> = (0..2).map(|_| reach(main)).collect();
    assert_eq!((count(&two, b'A'), count(&two, b'B')), (1, 1));
    held.extend(two);
    // Every connection still works end to end.
    for (s, _) in held.iter_mut() {
        s.write_all(b"ping").unwrap();
        let mut r = [0u8; 4];
        s.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"ping");
    }
}

/// Which server each of 127.0.0.1 ..= 127.0.0.100 reaches (one connection
/// each, closed at once).
fn owners(to: SocketAddr) -> Vec<u8> {
    (1..=100)
        .map(|i| greeted(connect_from(&format!("127.0.0.{i}"), to)).1)
        .collect()
}

fn spread(owners: &[u8]) -> [usize; 3] {
    [b'A', b'B', b'C'].map(|n| owners.iter().filter(|&&o| o == n).count())
}

#[test]
fn hrw_keeps_each_client_ip_on_its_server_and_a_lost_server_moves_only_its_own() {
    let mut b = named_backends(3);
    let servers = [b[0].addr, b[1].addr, b[2].addr];
    let cfg = config(&servers, 2).lb("s", "strategy", "hrw").to_toml();
    let p = Proxy::start(&cfg);
    let main = p.addr("main");
    let first = owners(main);
    let counts = spread(&first);
    eprintln!("hrw: 100 client IPs over A, B, C: {counts:?}");
    // Roughly even: 33 expected each (a binomial's sd is 4.7).
    assert!(counts.iter().all(|&n| (20..=47).contains(&n)), "{counts:?}");
    // The same IP always reaches the same server, whatever worker takes it.
    for _ in 0..2 {
        assert_eq!(owners(main), first);
    }
    // Another instance with the same server list agrees on every client.
    let other = Proxy::start(&cfg);
    assert_eq!(owners(other.addr("main")), first);
    drop(other);
    // So does this one after a reload of the same list.
    p.signal(SIGHUP);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(owners(main), first);

    // C stops (its port refuses): its clients fail over, and only they move;
    // they spread over both others.
    let c = b.pop().unwrap();
    let c_addr = c.addr;
    drop(c);
    // Its listener closes a moment later (until then a dial can still land
    // in its backlog and be reset): wait for a refusal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(c_addr).is_ok() {
        assert!(Instant::now() < deadline, "C still accepts");
        thread::sleep(Duration::from_millis(10));
    }
    let without_c = owners(main);
    for (i, (&was, &is)) in first.iter().zip(&without_c).enumerate() {
        if was == b'C' {
            assert_ne!(is, b'C', "client 127.0.0.{}", i + 1);
        } else {
            assert_eq!(is, was, "client 127.0.0.{} moved off a live server", i + 1);
        }
    }
    let moved: Vec<u8> = first
        .iter()
        .zip(&without_c)
        .filter(|(w, _)| **w == b'C')
        .map(|(_, &i)| i)
        .collect();
    assert!(moved.contains(&b'A') && moved.contains(&b'B'), "{moved:?}");
    // Removing C from the list by a reload gives exactly the same map.
    std::fs::write(
        &p.config_path,
        config(&servers[..2], 2)
            .lb("s", "strategy", "hrw")
            .to_toml(),
    )
    .unwrap();
    p.signal(SIGHUP);
    p.wait_logs(2, |l| l.contains("msg=reloaded"));
    assert_eq!(owners(main), without_c);
}

#[test]
fn hrw_hashes_the_proxy_protocol_source_of_a_trusted_sender() {
    let b = named_backends(3);
    let servers = [b[0].addr, b[1].addr, b[2].addr];
    let cfg = config(&servers, 1)
        .lb("s", "strategy", "hrw")
        .entrypoint("pp")
        .set("entryPoints.pp.proxyProtocol", "trustedIPs", ["127.0.0.1"])
        .router_on("viapp", "pp", "HostSNI(`*`)", "s")
        .to_toml();
    let p = Proxy::start(&cfg);
    let (main, pp) = (p.addr("main"), p.addr("pp"));
    let direct = owners(main);
    let via_header = |from: &str, src: usize| {
        let mut s = connect_from(from, pp);
        let header = format!("PROXY TCP4 127.0.0.{src} 127.0.0.1 40000 80\r\n");
        s.write_all(header.as_bytes()).unwrap();
        greeted(s).1
    };
    // From the trusted sender, the header's source decides, exactly as a
    // direct connection from that address.
    for src in 1..=100 {
        assert_eq!(via_header("127.0.0.1", src), direct[src - 1], "src {src}");
    }
    // From an untrusted one, its own address does (the header is stripped).
    let own = direct[50 - 1];
    for src in [3, 40, 77] {
        assert_eq!(via_header("127.0.0.50", src), own);
    }
}

/// A greeting backend that records how many connections it holds at once.
fn counted_backend() -> (Backend, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, pk) = (now.clone(), peak.clone());
    let b = Backend::start(move |mut s| {
        let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
        pk.fetch_max(cur, Ordering::SeqCst);
        let _ = s.write_all(b"A");
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if s.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
        n.fetch_sub(1, Ordering::SeqCst);
    });
    (b, peak)
}

/// Whether the greeting arrives within `wait`: `Some(true)` served,
/// `Some(false)` still waiting, `None` closed by the proxy.
fn served_within(s: &mut TcpStream, wait: Duration) -> Option<bool> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(true),
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Some(false),
        Err(_) => None,
    }
}

#[test]
fn max_conn_queues_a_burst_and_serves_it_as_slots_free_even_across_a_reload() {
    let (backend, peak) = counted_backend();
    let cfg = config(&[backend.addr], 2)
        .lb("s", "maxConn", 2)
        .and("queueTimeout", "60s");
    let p = cfg.start();
    let (main, admin) = (p.addr("main"), p.addr("traefik"));
    // Five clients at once: two served, three queued.
    let mut clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(main).unwrap()).collect();
    wait_load(admin, backend.addr, (2, 3));
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for mut c in clients.drain(..) {
        match served_within(&mut c, Duration::from_millis(300)) {
            Some(true) => served.push(c),
            Some(false) => waiting.push(c),
            None => panic!("a client was closed instead of queued"),
        }
    }
    assert_eq!((served.len(), waiting.len()), (2, 3));
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
    // A reload keeps the two slots and the three waiters.
    p.signal(SIGHUP);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    wait_load(admin, backend.addr, (2, 3));
    // Each close lets exactly one waiter in.
    for left in (0..3).rev() {
        drop(served.remove(0));
        let deadline = Instant::now() + Duration::from_secs(20);
        let i = loop {
            let hit = waiting
                .iter_mut()
                .position(|c| served_within(c, Duration::from_millis(20)) == Some(true));
            if let Some(i) = hit {
                break i;
            }
            assert!(Instant::now() < deadline, "no waiter got the freed slot");
        };
        served.push(waiting.remove(i));
        wait_load(admin, backend.addr, (2, left));
        for c in waiting.iter_mut() {
            assert_eq!(served_within(c, Duration::from_millis(50)), Some(false));
        }
    }
    // All five served, never more than two at once on the server.
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    for c in served.iter_mut() {
        c.write_all(b"ok").unwrap();
        let mut r = [0u8; 2];
        c.read_exact(&mut r).unwrap();
        assert_eq!(&r, b"ok");
    }
}

#[test]
fn a_waiter_past_queue_timeout_is_closed_with_the_outcome_logged_and_counted() {
    let (backend, _) = counted_backend();
    let cfg = config(&[backend.addr], 2)
        .lb("s", "maxConn", 1)
        .and("queueTimeout", "300ms");
    let p = cfg.start();
    let (main, admin) = (p.addr("main"), p.addr("traefik"));
    let (_holder, name) = reach(main);
    assert_eq!(name, b'A');
    let started = Instant::now();
    let mut extra: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(main).unwrap()).collect();
    for c in extra.iter_mut() {
        // Closed without a byte from the server.
        assert_eq!(served_within(c, Duration::from_secs(20)), None);
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    let lines = p.wait_logs(3, |l| {
        l.contains("msg=conn") && l.contains("outcome=queue_timeout")
    });
    for l in &lines {
        assert_eq!(field(l, "server"), Some(backend.addr.to_string()), "{l}");
        assert_eq!(field(l, "up").as_deref(), Some("0"), "{l}");
    }
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
    let m = metrics(admin);
    assert_eq!(
        sample(
            &m,
            "sluicegate_connections_total{entrypoint=\"main\",router=\"r\",outcome=\"queue_timeout\"}"
        ),
        Some(3),
        "{m}"
    );
    wait_load(admin, backend.addr, (1, 0));
}

#[test]
fn a_reload_keeps_the_counts_of_connections_accepted_before_it() {
    let b = named_backends(2);
    let servers = [b[0].addr, b[1].addr];
    let cfg = config(&servers, 2)
        .lb("s", "strategy", "leastConn")
        .to_toml();
    let p = Proxy::start(&cfg);
    let (main, admin) = (p.addr("main"), p.addr("traefik"));
    let mut held: Vec<(TcpStream, u8)> = (0..2).map(|_| reach(main)).collect();
    assert_eq!((count(&held, b'A'), count(&held, b'B')), (1, 1));
    // Only the connection on A stays.
    held.retain(|(_, n)| *n == b'A');
    wait_load(admin, servers[1], (0, 0));
    // A reload with a changed file (a service before `s`, so every server
    // is renumbered): new snapshot, new per-worker balancers.
    let changed = cfg.replace(
        "[tcp.services.s.loadBalancer]",
        &format!(
            "[tcp.services.a.loadBalancer]\nservers = [{{ address = \"{}\" }}]\n[tcp.services.s.loadBalancer]",
            servers[1]
        ),
    );
    assert_ne!(changed, cfg);
    std::fs::write(&p.config_path, changed).unwrap();
    p.signal(SIGHUP);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    // The connection accepted before still counts: the next one goes to B
    // (fresh counts would tie at zero and round robin starts with A).
    wait_load(admin, servers[0], (1, 0));
    let (_on_b, name) = reach(main);
    assert_eq!(name, b'B');
    wait_load(admin, servers[1], (1, 0));
    // And closing it is counted too.
    held.clear();
    wait_load(admin, servers[0], (0, 0));
    let (_next, name) = reach(main);
    assert_eq!(name, b'A');
}
