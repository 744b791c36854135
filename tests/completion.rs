//! The completion forwarding path (`runtime.forwarding = "completion"`, io_uring
//! only) under the conditions that only it has: a shared provided-buffer ring
//! that runs dry (ENOBUFS), short SENDs to a slow reader, and a reset that
//! arrives while SENDs are still queued. The common promises (exact bytes,
//! half-close, resets, terminationDelay) run on it through `VARIANTS` in
//! tests/forward.rs and tests/passthrough.rs.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use support::*;

/// Everything on `main` to `backend` on the completion path. The echoes
/// come back after the clients' FIN: a generous terminationDelay keeps a
/// late one on a loaded machine.
fn config(backend: SocketAddr, workers: usize) -> String {
    Cfg::new()
        .entrypoint("main")
        .router_on("all", "main", "HostSNI(`*`)", "svc")
        .service("svc", &[backend])
        .termination_delay("30s")
        .workers(workers)
        .runtime("io_uring", "completion")
        .to_toml()
}

/// Connections held open at once in the ENOBUFS test.
const CONNS: usize = 500;
/// Bytes each of them echoes: four 16 KiB buffers' worth, so 500 of them
/// need 250 times what an 8-buffer ring holds.
const PER_CONN: usize = 64 * 1024;

#[test]
fn enobufs_tiny_ring_500_connections_all_byte_exact() {
    let echo = Backend::echo();
    // 8 buffers per worker: the ring is empty most of the time, so receives
    // get ENOBUFS and must wait for buffers instead of failing.
    let p = Proxy::start_with(
        &config(echo.addr, 2),
        &["env", "SLUICEGATE_COMPLETION_BUFFERS=8"],
    );
    let addr = p.addr("main");
    let all_open = Arc::new(Barrier::new(CONNS));
    let results: Vec<_> = (0..CONNS)
        .map(|i| {
            let all_open = all_open.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    // Every connection is open (and idle) before any sends.
                    all_open.wait();
                    let data = pattern(PER_CONN, i as u64 + 1);
                    let mut w = s.try_clone().unwrap();
                    let writer = thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            w.write_all(&data).unwrap();
                            w.shutdown(Shutdown::Write).unwrap();
                        })
                        .unwrap();
                    let (got, err) = read_to_end(&mut s);
                    writer.join().unwrap();
                    (i, got, err)
                })
                .unwrap()
        })
        .collect();
    for h in results {
        let (i, got, err) = h.join().unwrap();
        assert!(err.is_none(), "connection {i}: {err:?}");
        assert_eq!(got.len(), PER_CONN, "connection {i}");
        assert_eq!(
            checksum(&got),
            checksum(&pattern(PER_CONN, i as u64 + 1)),
            "connection {i}"
        );
    }
    let lines = p.wait_conns(CONNS);
    for l in &lines {
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        assert_eq!(field(l, "up").as_deref(), Some("65536"), "{l}");
        assert_eq!(field(l, "down").as_deref(), Some("65536"), "{l}");
    }
    // The path under test did run, with the tiny ring, and it did run dry.
    p.wait_logs(1, |l| {
        l.contains("completion ring ready") && l.contains("buffers=8")
    });
    p.wait_logs(1, |l| l.contains("completion buffers ran out"));
}

/// Bytes the slow reader receives.
const SLOW_TOTAL: usize = 32 << 20;

#[test]
fn short_sends_to_a_slow_reader_keep_every_byte_in_order() {
    // The backend sends 32 MiB as fast as it can; the client reads in small
    // pieces with pauses and a small receive buffer, so the proxy's SENDs to
    // it are short and must resume from their offset.
    let backend = Backend::start(|mut s| {
        let data = pattern(SLOW_TOTAL, 21);
        let _ = s.write_all(&data);
        let _ = s.shutdown(Shutdown::Write);
        let _ = read_to_end(&mut s);
    });
    let p = Proxy::start(&config(backend.addr, 1));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&p.addr("main").into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::with_capacity(SLOW_TOTAL);
    let mut buf = vec![0u8; 7 * 1024 + 13];
    let mut reads = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
        reads += 1;
        // Slow at the start (the proxy's queue fills, sends go short),
        // then fast enough to finish in reasonable time.
        if reads < 400 && reads.is_multiple_of(4) {
            thread::sleep(Duration::from_millis(2));
        }
    }
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(got.len(), SLOW_TOTAL);
    assert_eq!(checksum(&got), checksum(&pattern(SLOW_TOTAL, 21)));
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    assert_eq!(
        field(l, "down").as_deref(),
        Some(SLOW_TOTAL.to_string().as_str()),
        "{l}"
    );
}

/// Bytes the backend sends before its reset: more than the proxy's socket
/// send buffer towards a slow reader can hold, so that when the reset
/// arrives the proxy still has buffers queued and a SEND in flight.
const BEFORE_RESET: usize = 8 << 20;

#[test]
fn reset_in_the_middle_of_a_queued_send_comes_after_the_bytes_before_it() {
    let backend = Backend::start(|mut s| {
        s.write_all(&pattern(BEFORE_RESET, 31)).unwrap();
        // Every byte is in the proxy's hands once our send queue is empty
        // (acknowledged); then abort. (Bounded: reset anyway after 10 s.)
        for _ in 0..2000 {
            if outq(&s) == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let p = Proxy::start(&config(backend.addr, 1));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.connect(&p.addr("main").into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A slow reader all along: the proxy's queue towards us stays full, so
    // the backend's reset arrives while SENDs are queued.
    let mut got = Vec::with_capacity(BEFORE_RESET);
    let mut buf = vec![0u8; 16 * 1024];
    let err = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e),
        }
        thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(got.len(), BEFORE_RESET, "every byte before the reset");
    assert_eq!(checksum(&got), checksum(&pattern(BEFORE_RESET, 31)));
    let err = err.expect("a clean EOF instead of a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
    assert_eq!(
        field(l, "down").as_deref(),
        Some(BEFORE_RESET.to_string().as_str()),
        "{l}"
    );
}

/// Connections of the burst in the ring-memory test, and what each echoes.
const BURST: usize = 100;
const BURST_PER_CONN: usize = 1 << 20;

#[test]
fn a_burst_gives_its_ring_buffers_back_while_another_connection_stays_on_the_ring() {
    // The ring's 1024 x 16 KiB buffers are committed as the kernel fills
    // them. A burst of connections whose clients read late fills the queues
    // (16 buffers per direction) and so the whole ring; once it is over, the
    // buffers' memory must go back although a connection is still open on
    // the ring (it used to go back only with no connection left).
    let echo = Backend::echo();
    let p = Proxy::start(&config(echo.addr, 1));
    let addr = p.addr("main");
    let pid = p.pid();
    let mut keep = TcpStream::connect(addr).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 4];
    keep.write_all(b"keep").unwrap();
    keep.read_exact(&mut b).unwrap();
    thread::sleep(Duration::from_millis(300));
    let base = rss_kb(pid);

    let data = Arc::new(pattern(BURST_PER_CONN, 41));
    let start = Arc::new(Barrier::new(BURST + 1));
    let clients: Vec<_> = (0..BURST)
        .map(|_| {
            let (data, start) = (data.clone(), start.clone());
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let out = data.clone();
                    let writer = thread::Builder::new()
                        .stack_size(128 * 1024)
                        .spawn(move || {
                            w.write_all(&out).unwrap();
                            w.shutdown(Shutdown::Write).unwrap();
                        })
                        .unwrap();
                    // Read only once every client is writing: until then the
                    // echoes queue up in the proxy.
                    start.wait();
                    thread::sleep(Duration::from_millis(500));
                    let (got, err) = read_to_end(&mut s);
                    writer.join().unwrap();
                    assert!(err.is_none(), "{err:?}");
                    assert!(got == *data, "echo differs ({} bytes)", got.len());
                })
                .unwrap()
        })
        .collect();
    start.wait();
    let mut peak = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(rss_kb(pid));
        thread::sleep(Duration::from_millis(20));
    }
    for c in clients {
        c.join().unwrap();
    }
    // The burst did take the ring's memory (8 MiB of its 16 MiB at least).
    assert!(
        peak >= base + 8 * 1024,
        "the burst never filled the ring: RSS {base} kB -> peak {peak} kB"
    );
    // Back to the idle stock (64 buffers, 1 MiB) plus slack, with `keep`
    // still on the ring; trims run every second.
    let bound = base + 4 * 1024;
    let done = std::time::Instant::now();
    let rss = loop {
        let rss = rss_kb(pid);
        if rss <= bound || done.elapsed() > Duration::from_secs(10) {
            break rss;
        }
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "ring memory: RSS {base} kB -> peak {peak} kB -> {rss} kB after {:?}",
        done.elapsed()
    );
    assert!(
        rss <= bound,
        "RSS {rss} kB stays above {base} kB + 4 MiB after the burst (peak {peak} kB)"
    );
    // And the connection that stayed is still forwarded.
    keep.write_all(b"more").unwrap();
    keep.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"more");
}

/// Bytes in a socket's send queue not yet acknowledged (SIOCOUTQ).
fn outq(s: &TcpStream) -> usize {
    use std::os::fd::AsFd;
    sluicegate::sys::unsent_bytes(s.as_fd()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The handover (`forwarding = "auto"` on io_uring): a connection that turns
// into a bulk flow leaves the completion ring, whole, for the readiness
// path (adaptive splice), with the bytes it had received but not sent.

/// The handovers counted by the proxy behind `admin` so far.
fn handovers(admin: SocketAddr) -> u64 {
    sample(&metrics(admin), "sluicegate_completion_handovers_total")
        .expect("a handover counter in /metrics")
}

/// Everything on `main` to `backend`, with the admin entrypoint (metrics).
fn hybrid_config(driver: &str, fwd: &str, backend: SocketAddr, delay: &str) -> String {
    Cfg::new()
        .entrypoint("main")
        .admin()
        .router_on("all", "main", "HostSNI(`*`)", "svc")
        .service("svc", &[backend])
        .termination_delay(delay)
        .workers(2)
        .runtime(driver, fwd)
        .to_toml()
}

/// The variants the handover tests run on; only io_uring/auto hands over.
const HYBRID_VARIANTS: &[(&str, &str)] = &[
    ("io_uring", "auto"),
    ("io_uring", "completion"),
    ("epoll", "auto"),
];

fn hands_over(driver: &str, fwd: &str) -> bool {
    (driver, fwd) == ("io_uring", "auto")
}

/// Bytes of the stalled echo.
const ECHO_TOTAL: usize = 64 << 20;

#[test]
fn echo_64m_through_the_handover_while_the_echo_peer_has_stopped_reading() {
    // The echo backend stops reading whenever its own write blocks; the
    // client writes 64 MiB and does not read at all until its writes have
    // stalled: by then the proxy holds queued bytes both ways, a SEND
    // blocked in each direction. The run rule is switched off (knob), so
    // the handover starts exactly then, by the both-ways back-up rule; it
    // must not wait for either peer to read (the deadlock this guards
    // against), and every byte must come back in order.
    let echo = Backend::echo();
    let data = Arc::new(pattern(ECHO_TOTAL, 77));
    let want = checksum(&data);
    for &(driver, fwd) in HYBRID_VARIANTS {
        let p = Proxy::start_with(
            &hybrid_config(driver, fwd, echo.addr, "30s"),
            &["env", "SLUICEGATE_COMPLETION_BULK_RUN=1000000000000"],
        );
        let admin = p.addr("traefik");
        let before = handovers(admin);
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut w = s.try_clone().unwrap();
        let writer = {
            let (data, written) = (data.clone(), written.clone());
            thread::spawn(move || {
                for chunk in data.chunks(256 * 1024) {
                    w.write_all(chunk).unwrap();
                    written.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                }
                w.shutdown(Shutdown::Write).unwrap();
            })
        };
        // Wait until the writer makes no progress (everything between us
        // and the echo is full), bounded.
        let mut last = usize::MAX;
        for _ in 0..100 {
            thread::sleep(Duration::from_millis(100));
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            if now == last || now == ECHO_TOTAL {
                break;
            }
            last = now;
        }
        assert!(
            last < ECHO_TOTAL,
            "{driver}/{fwd}: the writes never stalled (nothing queued)"
        );
        let (got, err) = read_to_end(&mut s);
        writer.join().unwrap();
        assert!(err.is_none(), "{driver}/{fwd}: {err:?}");
        assert_eq!(got.len(), ECHO_TOTAL, "{driver}/{fwd}");
        assert_eq!(checksum(&got), want, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        assert_eq!(field(l, "up"), Some(ECHO_TOTAL.to_string()), "{l}");
        assert_eq!(field(l, "down"), Some(ECHO_TOTAL.to_string()), "{l}");
        let n = handovers(admin) - before;
        if hands_over(driver, fwd) {
            assert_eq!(n, 1, "{driver}/{fwd}: the echo was handed over");
        } else {
            assert_eq!(n, 0, "{driver}/{fwd}: no handover");
        }
    }
}

/// The backend of the conversation tests: one command line per request.
/// `p` → `pong\n`; `k` → a 16 KiB reply; `m` → a 128 KiB reply; `b` → a
/// 64 MiB reply (seed 91). At the client's FIN it passes a FIN on.
fn conversation_backend() -> Backend {
    let big = Arc::new(pattern(BIG, 91));
    let k16 = Arc::new(pattern(16 * 1024, 92));
    let k128 = Arc::new(pattern(128 * 1024, 93));
    Backend::start(move |s| {
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::BufRead::read_line(&mut r, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let reply: &[u8] = match line.trim() {
                "p" => b"pong\n",
                "k" => &k16,
                "m" => &k128,
                "b" => &big,
                _ => b"?\n",
            };
            if w.write_all(reply).is_err() {
                return;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    })
}

/// The 64 MiB reply of the conversation backend.
const BIG: usize = 64 << 20;

/// Send `cmd` and read exactly `len` bytes of reply.
fn ask(s: &mut TcpStream, cmd: &str, len: usize) -> Vec<u8> {
    s.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    let mut got = vec![0u8; len];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reply to {cmd:?}: {e}"));
    got
}

#[test]
fn small_exchanges_then_64m_down_then_small_again_hands_over_once() {
    let backend = conversation_backend();
    let p = Proxy::start(&hybrid_config("io_uring", "auto", backend.addr, "30s"));
    let admin = p.addr("traefik");
    assert_eq!(handovers(admin), 0);
    // A pure request/response connection, replies up to 128 KiB (16 KiB
    // ones fill a ring buffer exactly): never handed over.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (mut up, mut down) = (0usize, 0usize);
    for i in 0..300 {
        let (cmd, len) = match i % 3 {
            0 => ("p", 5),
            1 => ("k", 16 * 1024),
            _ if i % 30 == 2 => ("m", 128 * 1024),
            _ => ("k", 16 * 1024),
        };
        let got = ask(&mut s, cmd, len);
        if len > 5 {
            let seed = if len == 16 * 1024 { 92 } else { 93 };
            assert_eq!(checksum(&got), checksum(&pattern(len, seed)), "reply {i}");
        }
        up += 2;
        down += len;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, err) = read_to_end(&mut s);
    assert!(rest.is_empty() && err.is_none(), "{err:?}");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    assert_eq!(field(l, "up"), Some(up.to_string()), "{l}");
    assert_eq!(field(l, "down"), Some(down.to_string()), "{l}");
    assert_eq!(handovers(admin), 0, "a request/response connection");

    // Small exchanges, a 64 MiB reply, small exchanges again.
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    for _ in 0..20 {
        assert_eq!(ask(&mut s, "p", 5), b"pong\n");
    }
    assert_eq!(handovers(admin), 0, "not before the bulk reply");
    let got = ask(&mut s, "b", BIG);
    assert_eq!(checksum(&got), checksum(&pattern(BIG, 91)));
    for _ in 0..20 {
        assert_eq!(ask(&mut s, "p", 5), b"pong\n");
    }
    let got = ask(&mut s, "k", 16 * 1024);
    assert_eq!(checksum(&got), checksum(&pattern(16 * 1024, 92)));
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, err) = read_to_end(&mut s);
    assert!(rest.is_empty() && err.is_none(), "{err:?}");
    let lines = p.wait_conns(2);
    let l = &lines[1];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    assert_eq!(field(l, "up"), Some((42 * 2).to_string()), "{l}");
    assert_eq!(
        field(l, "down"),
        Some((40 * 5 + BIG + 16 * 1024).to_string()),
        "{l}"
    );
    assert_eq!(handovers(admin), 1, "the bulk reply was handed over");
}

#[test]
fn half_close_after_a_handover_passes_every_byte_and_the_fin() {
    // The backend streams 8 MiB (handed over), then reads the client's
    // 1 MiB to its FIN and answers with the checksum of what it got, then
    // closes: the client's FIN was passed on after all its bytes, and the
    // backend's direction kept flowing after it.
    const DOWN: usize = 8 << 20;
    const UP: usize = 1 << 20;
    let backend = Backend::start(|mut s| {
        s.write_all(&pattern(DOWN, 61)).unwrap();
        let (got, _) = read_to_end(&mut s);
        s.write_all(&checksum(&got).to_be_bytes()).unwrap();
        let _ = s.shutdown(Shutdown::Write);
    });
    for &(driver, fwd) in HYBRID_VARIANTS {
        let p = Proxy::start(&hybrid_config(driver, fwd, backend.addr, "30s"));
        let admin = p.addr("traefik");
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = vec![0u8; DOWN];
        s.read_exact(&mut got).unwrap();
        assert_eq!(
            checksum(&got),
            checksum(&pattern(DOWN, 61)),
            "{driver}/{fwd}"
        );
        s.write_all(&pattern(UP, 62)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (rest, err) = read_to_end(&mut s);
        assert!(err.is_none(), "{driver}/{fwd}: {err:?}");
        assert_eq!(
            rest,
            checksum(&pattern(UP, 62)).to_be_bytes(),
            "{driver}/{fwd}: the backend got every byte before the FIN"
        );
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        assert_eq!(field(l, "up"), Some(UP.to_string()), "{l}");
        assert_eq!(field(l, "down"), Some((DOWN + 8).to_string()), "{l}");
        assert_eq!(
            handovers(admin),
            u64::from(hands_over(driver, fwd)),
            "{driver}/{fwd}"
        );
    }
}

#[test]
fn a_reset_after_a_handover_stays_a_reset_after_every_byte_before_it() {
    let backend = Backend::start(|mut s| {
        s.write_all(&pattern(BEFORE_RESET, 71)).unwrap();
        // Every byte is in the proxy's hands once our queue is empty;
        // then abort (bounded: reset anyway after 10 s).
        for _ in 0..2000 {
            if outq(&s) == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    for &(driver, fwd) in HYBRID_VARIANTS {
        let p = Proxy::start(&hybrid_config(driver, fwd, backend.addr, "30s"));
        let admin = p.addr("traefik");
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Slow at first, so the reset arrives while bytes are queued.
        let mut got = Vec::with_capacity(BEFORE_RESET);
        let mut buf = vec![0u8; 64 * 1024];
        let err = loop {
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
            if got.len() < 2 << 20 {
                thread::sleep(Duration::from_millis(2));
            }
        };
        assert_eq!(got.len(), BEFORE_RESET, "{driver}/{fwd}: every byte");
        assert_eq!(checksum(&got), checksum(&pattern(BEFORE_RESET, 71)));
        let err = err.unwrap_or_else(|| panic!("{driver}/{fwd}: a clean EOF, not a reset"));
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
        assert_eq!(field(l, "down"), Some(BEFORE_RESET.to_string()), "{l}");
        assert_eq!(
            handovers(admin),
            u64::from(hands_over(driver, fwd)),
            "{driver}/{fwd}"
        );
    }
}

#[test]
fn a_client_reset_after_a_handover_is_passed_on_as_a_reset() {
    // The backend streams; the client reads 1 MiB (handed over by then)
    // and aborts: the backend sees a reset, not a clean end.
    let (tx, rx) = std::sync::mpsc::channel::<Option<ErrorKind>>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        let chunk = pattern(64 * 1024, 81);
        let err = loop {
            if let Err(e) = s.write_all(&chunk) {
                break Some(e.kind());
            }
        };
        let _ = tx.lock().unwrap().send(err);
    });
    let p = Proxy::start(&hybrid_config("io_uring", "auto", backend.addr, "30s"));
    let admin = p.addr("traefik");
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = vec![0u8; 1 << 20];
    s.read_exact(&mut got).unwrap();
    assert_eq!(handovers(admin), 1);
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let err = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        matches!(
            err,
            Some(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "{err:?}"
    );
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("client_reset"), "{l}");
}

#[test]
fn a_slow_reader_of_a_finished_bulk_reply_after_a_handover_loses_nothing() {
    // 16 MiB, then the backend's FIN; terminationDelay is 100 ms, the
    // client reads at ~8 MB/s: the finished direction keeps every byte.
    const LEN: usize = 16 << 20;
    let reply = Arc::new(pattern(LEN, 41));
    let backend = Backend::start(move |mut s| {
        let _ = s.write_all(&reply);
        let _ = s.shutdown(Shutdown::Write);
    });
    let expect = checksum(&pattern(LEN, 41));
    for &(driver, fwd) in HYBRID_VARIANTS {
        let p = Proxy::start(&hybrid_config(driver, fwd, backend.addr, "100ms"));
        let admin = p.addr("traefik");
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (got, err) = read_throttled(&mut s, 8_000_000);
        assert!(err.is_none(), "{driver}/{fwd}: {err:?} after {}", got.len());
        assert_eq!(got.len(), LEN, "{driver}/{fwd}: bytes lost");
        assert_eq!(checksum(&got), expect, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(
            field(l, "down"),
            Some(LEN.to_string()),
            "{driver}/{fwd}: {l}"
        );
        assert_eq!(
            handovers(admin),
            u64::from(hands_over(driver, fwd)),
            "{driver}/{fwd}"
        );
    }
}
