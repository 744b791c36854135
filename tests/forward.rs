//! Forwarding promises through the real binary, on every driver and
//! forwarding path: exact bytes both ways, half-close both ways, resets passed
//! on as resets, server-speaks-first.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use support::*;

/// Everything on entry point `main` to the one `backend`, over transport `t`
/// with `delay` as its terminationDelay (`None`: Traefik's 100 ms default).
fn config(driver: &str, fwd: &str, backend: SocketAddr, delay: Option<&str>) -> String {
    let c = Cfg::new()
        .entrypoint("main")
        .router_on("all", "main", "HostSNI(`*`)", "svc")
        .service("svc", &[backend])
        .lb("svc", "serversTransport", "t")
        .transport("t", "dialTimeout", "2s")
        .workers(2)
        .runtime(driver, fwd);
    match delay {
        Some(d) => c.transport("t", "terminationDelay", d),
        None => c,
    }
    .to_toml()
}

/// Send `data` and read the echo concurrently; returns what came back.
fn echo_roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&out).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let (got, err) = read_to_end(&mut s);
    writer.join().unwrap();
    assert!(err.is_none(), "read error: {err:?}");
    got
}

#[test]
fn exact_bytes_both_ways_1k_and_64m() {
    let echo = Backend::echo();
    for &(driver, fwd) in VARIANTS {
        // The echo of the last bytes follows the client's FIN: give it more
        // than the default 100 ms terminationDelay on a loaded machine.
        let p = Proxy::start(&config(driver, fwd, echo.addr, Some("30s")));
        for (len, seed) in [(1024usize, 1u64), (64 << 20, 2)] {
            let data = pattern(len, seed);
            let got = echo_roundtrip(p.addr("main"), &data);
            assert_eq!(got.len(), data.len(), "{driver}/{fwd} length for {len}");
            assert_eq!(
                checksum(&got),
                checksum(&data),
                "{driver}/{fwd} checksum {len}"
            );
        }
        let lines = p.wait_conns(2);
        for l in &lines {
            assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
        }
        let big = lines
            .iter()
            .find(|l| field(l, "up").as_deref() == Some(&(64u64 << 20).to_string()))
            .unwrap_or_else(|| panic!("no 64 MiB access line: {lines:?}"));
        assert_eq!(field(big, "down"), Some((64u64 << 20).to_string()));
    }
}

#[test]
fn half_close_client_first_then_backend_answers() {
    // Client sends 1 MiB then FIN; the backend reads to EOF, then answers
    // 8 MiB; the client gets all of it, then EOF.
    let answer = pattern(8 << 20, 7);
    let expect = checksum(&answer);
    let backend = Backend::start(move |mut s| {
        let (got, err) = read_to_end(&mut s);
        assert!(err.is_none());
        assert_eq!(checksum(&got), checksum(&pattern(1 << 20, 3)));
        s.write_all(&pattern(8 << 20, 7)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, Some("30s")));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.write_all(&pattern(1 << 20, 3)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, err) = read_to_end(&mut s);
        assert!(err.is_none(), "{driver}/{fwd}: {err:?}");
        assert_eq!(got.len(), answer.len(), "{driver}/{fwd}");
        assert_eq!(checksum(&got), expect, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }
}

#[test]
fn half_close_backend_first_then_client_answers() {
    // The mirror: the backend sends 1 MiB and FIN first; the client reads to
    // EOF, then sends 8 MiB; the backend checks every byte.
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        s.write_all(&pattern(1 << 20, 11)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, _) = read_to_end(&mut s);
        tx.lock().unwrap().send(checksum(&got)).unwrap();
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, Some("30s")));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        let (got, err) = read_to_end(&mut s);
        assert!(err.is_none());
        assert_eq!(
            checksum(&got),
            checksum(&pattern(1 << 20, 11)),
            "{driver}/{fwd}"
        );
        s.write_all(&pattern(8 << 20, 12)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let sum = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(sum, checksum(&pattern(8 << 20, 12)), "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }
}

#[test]
fn termination_delay_closes_after_first_fin() {
    // The backend never finishes after the client's FIN: the proxy closes
    // both sides once terminationDelay has passed.
    let backend = Backend::start(|mut s| {
        let _ = read_to_end(&mut s);
        thread::sleep(Duration::from_secs(10));
    });
    let p = Proxy::start(&config("io_uring", "copy", backend.addr, Some("200ms")));
    let mut s = TcpStream::connect(p.addr("main")).unwrap();
    s.write_all(b"bye").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = std::time::Instant::now();
    let (_, err) = read_to_end(&mut s);
    // Cut short on purpose: the client must see a reset, never a clean EOF.
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ConnectionReset));
    assert!(t.elapsed() < Duration::from_secs(5));
    let l = &p.wait_conns(1)[0];
    assert_eq!(
        field(l, "outcome").as_deref(),
        Some("termination_delay"),
        "{l}"
    );
}

#[test]
fn backend_reset_mid_stream_is_passed_on_as_reset() {
    // The backend resets only once the client holds every byte: a sleep
    // instead would race the proxy on a loaded machine (the backend's own
    // kernel discards what it had not sent yet when it resets).
    let (received_tx, received_rx) = std::sync::mpsc::channel::<()>();
    let received_rx = std::sync::Mutex::new(received_rx);
    let backend = Backend::start(move |mut s| {
        s.write_all(&pattern(1 << 20, 5)).unwrap();
        let _ = received_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        let sock = socket2::SockRef::from(&s);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, None));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = vec![0u8; 1 << 20];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{driver}/{fwd}: every byte before the reset: {e}"));
        received_tx.send(()).unwrap();
        let (rest, err) = read_to_end(&mut s);
        assert!(rest.is_empty(), "{driver}/{fwd}: bytes after the reply");
        assert_eq!(checksum(&got), checksum(&pattern(1 << 20, 5)));
        let err = err.unwrap_or_else(|| panic!("{driver}/{fwd}: clean EOF instead of a reset"));
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
    }
}

#[test]
fn client_reset_is_passed_on_to_backend() {
    // The backend tells when the first bytes have arrived (the proxy is then
    // surely connected to it), and then how its read ended.
    let (arrived_tx, arrived_rx) = std::sync::mpsc::channel::<()>();
    let arrived_tx = std::sync::Mutex::new(arrived_tx);
    let (tx, rx) = std::sync::mpsc::channel::<Option<ErrorKind>>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        arrived_tx.lock().unwrap().send(()).unwrap();
        let (_, err) = read_to_end(&mut s);
        tx.lock().unwrap().send(err.map(|e| e.kind())).unwrap();
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, None));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.write_all(b"partial request").unwrap();
        arrived_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{driver}/{fwd}: the request never reached the backend"));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, Some(ErrorKind::ConnectionReset), "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("client_reset"), "{l}");
    }
}

#[test]
fn server_speaks_first_greeting_arrives_without_client_bytes() {
    let backend = Backend::greeting(b"J\0\0\0\x0a5.7.0-mysql-like greeting\0");
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, None));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"J\0\0\0\x0a5.7.0"),
            "{driver}/{fwd}: {:?}",
            &buf[..n]
        );
    }
}

#[test]
fn slow_reader_gets_every_byte_of_a_finished_reply() {
    // The backend writes 16 MiB and closes cleanly; the client keeps its
    // write side open and reads at ~8 MB/s. terminationDelay (Traefik's
    // 100 ms) expires while MiBs are still queued towards the client: the
    // direction that finished must keep every byte (no reset), and the
    // access log counts what the client received.
    const LEN: usize = 16 << 20;
    let reply = std::sync::Arc::new(pattern(LEN, 21));
    let backend = Backend::start(move |mut s| {
        let _ = s.write_all(&reply);
        let _ = s.shutdown(Shutdown::Write);
    });
    let expect = checksum(&pattern(LEN, 21));
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, Some("100ms")));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (got, err) = read_throttled(&mut s, 8_000_000);
        assert!(
            err.is_none(),
            "{driver}/{fwd}: {err:?} after {} of {LEN} bytes",
            got.len()
        );
        assert_eq!(got.len(), LEN, "{driver}/{fwd}: bytes lost");
        assert_eq!(checksum(&got), expect, "{driver}/{fwd}");
        let l = &p.wait_conns(1)[0];
        assert_eq!(
            field(l, "down"),
            Some(LEN.to_string()),
            "{driver}/{fwd}: {l}"
        );
    }
}

#[test]
fn a_reply_cut_by_termination_delay_is_reset_and_counts_what_arrived() {
    // The client half-closes at once; the backend streams 64 MiB, far more
    // than the client (reading slowly) takes before terminationDelay cuts
    // the still-open direction: the client must see a reset (a cut reply
    // never looks complete), and `down=` must not count the bytes the reset
    // destroyed in the proxy's queue.
    // Made once: generating 64 MiB in a debug build outlasts the delay.
    let reply = std::sync::Arc::new(pattern(64 << 20, 31));
    let backend = Backend::start(move |mut s| {
        let _ = s.write_all(&reply);
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, Some("300ms")));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.write_all(b"go").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (got, err) = read_throttled(&mut s, 8_000_000);
        assert_eq!(
            err.map(|e| e.kind()),
            Some(ErrorKind::ConnectionReset),
            "{driver}/{fwd}: after {} bytes",
            got.len()
        );
        assert!(got.len() < 64 << 20, "{driver}/{fwd}: nothing was cut");
        let l = &p.wait_conns(1)[0];
        assert_eq!(
            field(l, "outcome").as_deref(),
            Some("termination_delay"),
            "{l}"
        );
        let down: usize = field(l, "down").unwrap().parse().unwrap();
        assert!(
            down <= got.len(),
            "{driver}/{fwd}: down={down} but the client received {}",
            got.len()
        );
        eprintln!("{driver}/{fwd}: down={down} received={}", got.len());
        assert_eq!(field(l, "up").as_deref(), Some("2"), "{l}");
    }
}

#[test]
fn a_reset_passed_on_after_the_drain_wait_counts_only_what_arrived() {
    // The backend sends 2 MiB (all of it fits in the proxy's send queue and
    // the client's receive buffer) and resets; the client reads nothing for
    // 3 s, longer than the proxy waits (2 s) for its queue to drain before
    // it passes the reset on. What was still queued then is lost, and
    // `down=` must not count it.
    let reply = std::sync::Arc::new(pattern(2 << 20, 51));
    let backend = Backend::start(move |mut s| {
        // The client's "go" arrives through the proxy: only then is the
        // proxy surely connected (a reset racing its connect would be a
        // dial failure, not the case under test).
        let mut go = [0u8; 2];
        if s.read_exact(&mut go).is_err() {
            return;
        }
        let _ = s.write_all(&reply);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    for &(driver, fwd) in VARIANTS {
        let p = Proxy::start(&config(driver, fwd, backend.addr, None));
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"go").unwrap();
        thread::sleep(Duration::from_secs(3));
        let (got, err) = read_to_end(&mut s);
        assert_eq!(
            err.map(|e| e.kind()),
            Some(ErrorKind::ConnectionReset),
            "{driver}/{fwd}"
        );
        let l = &p.wait_conns(1)[0];
        assert_eq!(field(l, "outcome").as_deref(), Some("backend_reset"), "{l}");
        let down: usize = field(l, "down").unwrap().parse().unwrap();
        assert!(
            down <= got.len(),
            "{driver}/{fwd}: down={down} but the client received {}",
            got.len()
        );
        eprintln!("{driver}/{fwd}: down={down} received={}", got.len());
        assert!(got.len() < 2 << 20, "{driver}/{fwd}: nothing was lost");
    }
}
