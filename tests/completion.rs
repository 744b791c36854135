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

/// Bytes in a socket's send queue not yet acknowledged (SIOCOUTQ).
fn outq(s: &TcpStream) -> usize {
    use std::os::fd::AsFd;
    sluicegate::sys::unsent_bytes(s.as_fd()).unwrap_or(0)
}
