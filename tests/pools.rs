//! Pools give back what a burst took: after a burst of
//! connections with a 16 MiB `bufferSize`, the proxy's resident memory and
//! its pipe descriptors return to a bounded idle level within seconds, on
//! both drivers and every forwarding mode.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Connections in the burst.
const BURST: usize = 40;
/// Bytes each burst connection moves each way.
const PER_CONN: usize = 8 << 20;
/// Resident memory allowed above the pre-burst level once idle (see the
/// README's pool bound: 1 MiB of spare buffers and 2 pipes per worker, plus
/// allocator and kernel slack).
const IDLE_RSS_ABOVE_BASELINE_KB: u64 = 24 * 1024;
/// How long the pools may take to give back a burst (two trim periods of
/// 1 s, plus a loaded machine).
const SETTLE: Duration = Duration::from_secs(8);

/// Everything on `main` to `backend`. The echoes come back after the
/// clients' FIN: a generous terminationDelay keeps a late one on a loaded
/// machine.
fn config(driver: &str, fwd: &str, buffer: &str, backend: SocketAddr) -> String {
    Cfg::new()
        .entrypoint("main")
        .router_on("all", "main", "HostSNI(`*`)", "svc")
        .service("svc", &[backend])
        .termination_delay("30s")
        .workers(2)
        .runtime(driver, fwd)
        .and("bufferSize", buffer)
        .to_toml()
}

fn pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy().starts_with("pipe:"))
        .count()
}

#[test]
fn burst_memory_and_pipes_return_to_the_idle_level() {
    let echo = Backend::echo();
    // One pattern for every connection: generating and checksumming 320 MiB
    // per variant in a debug build would dominate the test's time.
    let data = std::sync::Arc::new(pattern(PER_CONN, 8));
    // `auto` with 16 MiB buffers never fills one, so it only copies; with
    // 64 KiB buffers it splices bulk flows and takes pipes.
    for &(driver, fwd, buffer) in &[
        ("io_uring", "copy", "16MiB"),
        ("io_uring", "splice", "16MiB"),
        ("io_uring", "auto", "16MiB"),
        ("io_uring", "auto", "64KiB"),
        ("epoll", "copy", "16MiB"),
        ("epoll", "splice", "16MiB"),
        ("epoll", "auto", "16MiB"),
        ("epoll", "auto", "64KiB"),
    ] {
        let p = Proxy::start(&config(driver, fwd, buffer, echo.addr));
        let addr = p.addr("main");
        let pid = p.pid();
        // Pipes that are not the pool's (stderr to this test).
        let own_pipes = pipe_fds(pid);
        // One small exchange first, so the baseline includes what any
        // connection sets up once (runtime, first allocations).
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"warm").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        drop(s);
        thread::sleep(Duration::from_millis(300));
        let base_rss = rss_kb(pid);
        let base_pipes = pipe_fds(pid);

        let clients: Vec<_> = (0..BURST)
            .map(|_| {
                let data = data.clone();
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let out = data.clone();
                    let writer = thread::spawn(move || {
                        w.write_all(&out).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let (got, err) = read_to_end(&mut s);
                    writer.join().unwrap();
                    assert!(err.is_none(), "{err:?}");
                    assert!(got == *data, "echo differs ({} bytes)", got.len());
                })
            })
            .collect();
        let mut peak_rss = 0;
        let mut peak_pipes = 0;
        while !clients.iter().all(|c| c.is_finished()) {
            peak_rss = peak_rss.max(rss_kb(pid));
            peak_pipes = peak_pipes.max(pipe_fds(pid));
            thread::sleep(Duration::from_millis(20));
        }
        for c in clients {
            c.join().unwrap();
        }
        p.wait_conns(BURST + 1);
        // 2 workers x IDLE_KEEP (2) pipes x 2 descriptors.
        let idle_pipes = own_pipes + 2 * 2 * 2;
        let done = Instant::now();
        let (rss, pipes) = loop {
            let (rss, pipes) = (rss_kb(pid), pipe_fds(pid));
            let ok = rss <= base_rss + IDLE_RSS_ABOVE_BASELINE_KB && pipes <= idle_pipes;
            if ok || done.elapsed() > SETTLE {
                break (rss, pipes);
            }
            thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "{driver}/{fwd}/{buffer}: RSS {base_rss} kB -> peak {peak_rss} kB -> idle {rss} kB after {:?}; \
             pipe fds {base_pipes} -> peak {peak_pipes} -> idle {pipes}",
            done.elapsed()
        );
        assert!(
            rss <= base_rss + IDLE_RSS_ABOVE_BASELINE_KB,
            "{driver}/{fwd}/{buffer}: RSS {rss} kB stays above {base_rss} kB + {IDLE_RSS_ABOVE_BASELINE_KB} kB (peak {peak_rss} kB)"
        );
        assert!(
            pipes <= idle_pipes,
            "{driver}/{fwd}/{buffer}: {pipes} pipe fds stay open (idle level {idle_pipes}, peak {peak_pipes})"
        );
    }
}
