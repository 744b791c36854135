//! Entrypoints added, removed and moved by a reload, without a restart,
//! through the real binary with two workers: a new
//! entrypoint binds on every worker and serves; a removed one stops
//! accepting at once while its open connections finish within its
//! graceTimeOut (then they are reset); a moved one is removed and added; an
//! entrypoint that cannot listen keeps the running config; and clients of
//! the entrypoints that stay never see a failure.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::process::free_port;
use support::*;

/// Entry points `eps` on fixed ports (1 s grace each), all routed to `echo`
/// (its one server written as an inline table).
fn config(eps: &[(&str, u16)], echo: SocketAddr) -> String {
    let mut c = Cfg::new();
    for (name, port) in eps {
        c = c.entrypoint_at(name, format!("127.0.0.1:{port}")).set(
            &format!("entryPoints.{name}.transport.lifeCycle"),
            "graceTimeOut",
            "1s",
        );
    }
    let server = format!("[{{ address = \"{echo}\" }}]");
    c.router("r", "HostSNI(`*`)", "s")
        .lb("s", "servers", Raw(&server))
        .workers(2)
        .termination_delay("30s")
        .to_toml()
}

fn echo_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

fn reload(p: &Proxy, text: &str, n: usize) {
    std::fs::write(&p.config_path, text).unwrap();
    p.signal(libc::SIGHUP);
    let done = p.wait_logs(n, |l| {
        l.contains("msg=reloaded") || l.contains("reload refused") || l.contains("reload failed")
    });
    assert!(done[n - 1].contains("msg=reloaded"), "{}", done[n - 1]);
}

#[test]
fn entrypoints_come_and_go_on_reload_and_the_others_never_notice() {
    let echo = Backend::echo();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let p = Proxy::start(&config(&[("a", a), ("b", b)], echo.addr));

    // Clients of `a` loop for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if echo_ok(a) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // An open session on `b`, which the next reloads remove.
    let mut held = TcpStream::connect(("127.0.0.1", b)).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"one!").unwrap();
    let mut got = [0u8; 4];
    held.read_exact(&mut got).unwrap();

    // Add `c`.
    reload(&p, &config(&[("a", a), ("b", b), ("c", c)], echo.addr), 1);
    let t = Instant::now();
    while !echo_ok(c) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{}",
            p.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(p
        .logs()
        .iter()
        .any(|l| l.contains("entrypoint added") && l.contains("entrypoint=c")));
    // On both workers: many connections all served (the kernel spreads
    // them over the two listeners of the group).
    assert!((0..50).all(|_| echo_ok(c)));

    // Remove `b`: new connections are refused at once; the open one still
    // works within b's graceTimeOut (1 s), then it is cut.
    reload(&p, &config(&[("a", a), ("c", c)], echo.addr), 2);
    let removed_at = Instant::now();
    assert!(
        TcpStream::connect(("127.0.0.1", b)).is_err(),
        "b must stop accepting"
    );
    held.write_all(b"two!").unwrap();
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"two!", "an open session of b finishes its work");
    let (_, err) = read_to_end(&mut held);
    let cut_after = removed_at.elapsed();
    assert!(
        err.is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "cut with a reset once b's grace is over"
    );
    assert!(
        cut_after >= Duration::from_millis(800) && cut_after < Duration::from_secs(5),
        "{cut_after:?}"
    );

    // Move `c` to another port: the old one closes, the new one serves.
    let c2 = free_port();
    reload(&p, &config(&[("a", a), ("c", c2)], echo.addr), 3);
    let t = Instant::now();
    while !echo_ok(c2) {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(TcpStream::connect(("127.0.0.1", c)).is_err());

    // A port already taken: the reload is refused, nothing changes.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    std::fs::write(
        &p.config_path,
        config(&[("a", a), ("c", c2), ("d", taken)], echo.addr),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    let refused = p.wait_logs(1, |l| l.contains("reload refused"));
    assert!(
        refused[0].contains("entrypoint d: cannot listen on 127.0.0.1:"),
        "{}",
        refused[0]
    );
    assert!(echo_ok(c2) && echo_ok(a));

    // `b` comes back on its port (its old slot).
    reload(&p, &config(&[("a", a), ("b", b), ("c", c2)], echo.addr), 5);
    let t = Instant::now();
    while !echo_ok(b) {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("entrypoint a during 4 reloads: {ok} round trips, {failed} failed");
    assert_eq!(failed, 0, "clients of a saw failures");
    assert!(ok > 100, "{ok}");
}
