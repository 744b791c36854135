//! Dial errors that are the proxy's own (out of descriptors, buffers, local
//! ports) through the real binary under `prlimit`: the healthy server is not
//! blamed (no passive ejection, no dial-failure count), the warning is rate
//! limited, the failures are counted in /metrics and named in the access
//! log, and service is back as soon as descriptors are free.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// The descriptor limit the proxy runs under: small, so a test fills it fast.
const NOFILE: usize = 64;
/// Connections that fail at dial time while descriptors are exhausted.
const FAILURES: usize = 40;

/// `main` (plain) and `peek` (a passthrough router: connections wait there
/// for a ClientHello) to the echo server, with the admin entrypoint's
/// metrics. The echoes come back after the clients' FIN: a generous
/// terminationDelay keeps a late one on a loaded machine.
fn config(echo: SocketAddr, driver: &str, mode: &str) -> String {
    Cfg::new()
        .entrypoint("main")
        .entrypoint("peek")
        // No routing deadline: the connections held here must stay open for
        // the whole test, however slow the machine (a deadline freeing one
        // descriptor would let a "failing" connection be served).
        .set(
            "entryPoints.peek.transport.respondingTimeouts",
            "readTimeout",
            "0s",
        )
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .router_on("r", "main", "HostSNI(`*`)", "s")
        .router_on("p", "peek", "HostSNI(`x.test`)", "s")
        .router_tls("p")
        .and("passthrough", true)
        .service("s", &[echo])
        .termination_delay("30s")
        .workers(1)
        .runtime(driver, mode)
        .to_toml()
}

/// The proxy's descriptors and what each one is, for failure messages.
fn fd_listing(pid: u32) -> String {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.join("\n")
}

/// Wait until the proxy holds exactly `n` descriptors (a connection that
/// just ended may still be closing); panics, saying what is open, if the
/// count does not settle.
fn settle_fds(pid: u32, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) != n {
        if Instant::now() > deadline {
            panic!(
                "{what}: the proxy holds {} descriptors, expected {n}:\n{}",
                open_fds(pid),
                fd_listing(pid)
            );
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// No thread of the proxy may wait inside a blocking `accept`: Linux
/// reserves the new descriptor's number before it waits, so such a thread
/// holds a slot of the table that `/proc/PID/fd` does not list, and the
/// count this test fills by would be one short of the truth (the accept,
/// not the dial, would then run out: the failure this test once had in CI).
fn assert_no_thread_in_accept(pid: u32, what: &str) {
    // x86_64 system call numbers: accept 43, accept4 288.
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    // Let every thread reach the call it idles in.
    thread::sleep(Duration::from_millis(200));
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let call = std::fs::read_to_string(task.join("syscall")).unwrap_or_default();
        let nr = call.split(' ').next().unwrap_or("");
        assert!(
            nr != "43" && nr != "288",
            "{what}: thread {} waits in accept ({}), holding a hidden descriptor",
            comm.trim(),
            call.trim()
        );
    }
}

/// Descriptors that take a slot under the limit. A descriptor inherited
/// with a number at or above `NOFILE` (a test runner may pass one down)
/// is open but leaves every slot below the limit free, so it does not count.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < NOFILE)
        .count()
}

/// Wait until the proxy holds at least `n` descriptors.
fn wait_fds(pid: u32, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds(pid);
        if now >= n || Instant::now() > deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// One echo round trip through the proxy; the connection stays open.
fn echo_once(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").ok()?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).ok()?;
    (&b == b"ping").then_some(s)
}

#[test]
fn running_out_of_descriptors_at_dial_does_not_blame_the_server() {
    if !require_tool("prlimit", "util-linux") {
        return;
    }
    let echo = Backend::echo();
    for (driver, mode) in VARIANTS {
        let what = format!("{driver}/{mode}");
        let nofile = format!("--nofile={NOFILE}");
        let p = Proxy::start_with(&config(echo.addr, driver, mode), &["prlimit", &nofile]);
        let (main, peek, admin) = (p.addr("main"), p.addr("peek"), p.addr("traefik"));
        let pid = p.pid();
        assert_no_thread_in_accept(pid, &what);

        // Fill the descriptor table to exactly one below the limit, so that
        // the next connection is accepted (the last descriptor) and its dial
        // finds none. Proxied echo connections take two or more descriptors
        // each; connections waiting for a ClientHello take exactly one.
        let mut held = Vec::new();
        let mut per_echo = 2;
        loop {
            let fds = open_fds(pid);
            let gap = (NOFILE - 1).saturating_sub(fds);
            if gap == 0 {
                break;
            }
            if gap >= per_echo {
                let s = echo_once(main).unwrap_or_else(|| {
                    panic!(
                        "{what}: echo failed at {fds} fds; log:\n{}",
                        p.logs().join("\n")
                    )
                });
                per_echo = per_echo.max(open_fds(pid) - fds);
                held.push(s);
            } else {
                held.push(TcpStream::connect(peek).unwrap());
                wait_fds(pid, fds + 1);
            }
        }
        assert_eq!(open_fds(pid), NOFILE - 1, "{what}");

        // Every new connection now fails at dial time with EMFILE, and the
        // proxy says so at once by closing it: a client left waiting would be
        // a hang (and a sign the accept, not the dial, ran out).
        let t = Instant::now();
        for i in 0..FAILURES {
            settle_fds(pid, NOFILE - 1, &what);
            let mut s = TcpStream::connect(main).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"ping");
            let mut b = [0u8; 4];
            let asked = Instant::now();
            match s.read_exact(&mut b) {
                Ok(()) => panic!(
                    "{what}: connection {i} was served with no descriptor to spare; fds:\n{}\nlog:\n{}",
                    fd_listing(pid),
                    p.logs().join("\n")
                ),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!(
                        "{what}: connection {i} left waiting {:?} instead of being closed; fds:\n{}\nlog:\n{}",
                        asked.elapsed(),
                        fd_listing(pid),
                        p.logs().join("\n")
                    )
                }
                Err(_) => {}
            }
        }
        let elapsed = t.elapsed();
        // The held connections are still open: every access-log line so far
        // is one of the failures.
        let ended = p.wait_conns(FAILURES);
        let logs = p.logs();
        assert!(
            !logs.iter().any(|l| l.contains("server ejected")),
            "{what}: a healthy server was ejected for our own EMFILE"
        );
        for l in &ended {
            assert_eq!(
                field(l, "outcome").as_deref(),
                Some("local_resource_exhausted"),
                "{what}: {l}"
            );
        }
        assert!(ended[0].contains("Too many open files"), "{}", ended[0]);
        let warnings: Vec<&String> = logs
            .iter()
            .filter(|l| l.contains("local resource exhausted"))
            .collect();
        assert!(!warnings.is_empty(), "{what}: the shortage is logged");
        assert!(
            warnings[0].contains("kind=emfile"),
            "{what}: {}",
            warnings[0]
        );
        // One line per second at most (LOCAL_ERROR_LOG_PERIOD), however many
        // connections failed.
        assert!(
            warnings.len() as u64 <= elapsed.as_secs() + 2 && warnings.len() < FAILURES / 4,
            "{what}: {} warnings for {FAILURES} failures in {elapsed:?}",
            warnings.len()
        );
        eprintln!(
            "{what}: {FAILURES} dial failures in {elapsed:?}, {} warning line(s)",
            warnings.len()
        );
        assert!(
            !logs.iter().any(|l| l.contains("msg=\"dial failed\"")),
            "{what}: no per-connection dial-failure warning"
        );

        // Descriptors free again: served at once, no cool-down.
        drop(held);
        wait_fds_below(pid, NOFILE / 2);
        assert!(
            echo_once(main).is_some(),
            "{what}: not served right after descriptors were freed"
        );
        let m = metrics(admin);
        let counted = sample(
            &m,
            "sluicegate_local_resource_errors_total{kind=\"emfile\"}",
        );
        assert!(
            counted.is_some_and(|n| n >= FAILURES as u64),
            "{what}: counted {counted:?}\n{m}"
        );
        assert!(
            !m.contains("sluicegate_server_dial_failures_total{"),
            "{what}: the server is not charged with our failures\n{m}"
        );
    }
}

fn wait_fds_below(pid: u32, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) >= n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}
