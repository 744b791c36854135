//! `reusePort` and `requestAcceptGraceTimeout` through the real binary: two
//! processes share a port only when both ask for it; a zero-downtime
//! handover (start B on A's port, SIGTERM A) loses no connection; an
//! entrypoint keeps accepting for its requestAcceptGraceTimeout after
//! SIGTERM while /ping answers 503.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::process::{free_port, run};
use support::*;

const SIGTERM: i32 = 15;

/// One entrypoint `main` on 127.0.0.1:`port` to `backend`, two workers;
/// `lifecycle` are keys of its `transport.lifeCycle` table. The round trips
/// here never half-close: terminationDelay plays no part.
fn config(port: u16, backend: SocketAddr, reuse_port: bool, lifecycle: &[(&str, &str)]) -> Cfg {
    let mut c = Cfg::new()
        .entrypoint_at("main", format!("127.0.0.1:{port}"))
        .and("reusePort", reuse_port)
        .table("entryPoints.main.transport.lifeCycle");
    for (k, v) in lifecycle {
        c = c.and(k, *v);
    }
    c.router_on("r", "main", "HostSNI(`*`)", "s")
        .service("s", &[backend])
        .workers(2)
}

/// Start the binary on `config` and wait for it to exit (it must fail to
/// start): exit code and stderr.
fn start_fails(config: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("reuseport-second");
    let path = dir.write("sluicegate.toml", config);
    let ran = run(
        Command::new(BIN).arg("-c").arg(&path),
        b"",
        Duration::from_secs(20),
    );
    (ran.status.code(), ran.stderr)
}

/// One echo round trip through `addr`: the client's local address.
fn round_trip(addr: SocketAddr, payload: &[u8]) -> SocketAddr {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
    s.local_addr().unwrap()
}

fn conn_lines(p: &Proxy) -> usize {
    p.logs().iter().filter(|l| l.contains("msg=conn")).count()
}

/// reusePort = false (the default): a second process on the same address
/// fails to start, exit code 1, with an error naming the entrypoint, the
/// address and the fix; the first keeps serving. reusePort = true on the
/// first does not let a second process without it in; with it on both, the
/// second starts and the kernel spreads connections over both.
#[test]
fn a_second_process_needs_reuse_port_on_both() {
    let echo = Backend::echo();
    let port = free_port();
    let exclusive = config(port, echo.addr, false, &[]).to_toml();
    let a = Proxy::start(&exclusive);
    assert_eq!(a.addr("main").port(), port);
    let (code, stderr) = start_fails(&exclusive);
    assert_eq!(code, Some(1), "second process must fail; stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "entrypoint main: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("set reusePort = true in each"),
        "the error says how to share the port; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("msg=starting"), "stderr:\n{stderr}");
    // A is untouched: it serves, and its access log shows it.
    let me = round_trip(a.addr("main"), b"still here");
    let line = a.wait_conns(1).pop().unwrap();
    assert_eq!(field(&line, "client").as_deref(), Some(&*me.to_string()));
    drop(a);

    let port = free_port();
    let shared = config(port, echo.addr, true, &[]).to_toml();
    let a = Proxy::start(&shared);
    let (code, stderr) = start_fails(&config(port, echo.addr, false, &[]).to_toml());
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "entrypoint main: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "stderr:\n{stderr}"
    );
    // Both with reusePort: B starts on the same port, and the kernel spreads
    // connections over both processes.
    let b = Proxy::start(&shared);
    assert_eq!(b.addr("main"), a.addr("main"));
    let addr = a.addr("main");
    let mut n = 0;
    while conn_lines(&a) == 0 || conn_lines(&b) == 0 {
        round_trip(addr, b"spread");
        n += 1;
        // Thrown dice: 200 connections all to one of four sockets would
        // mean the port is not shared.
        assert!(n < 200, "a: {} b: {}", conn_lines(&a), conn_lines(&b));
        thread::sleep(Duration::from_millis(2));
    }
}

/// requestAcceptGraceTimeout = 2s: 0.5 s after SIGTERM /ping already answers
/// 503 and a new connection is still served by this process (its access log
/// shows the client); after the grace the entrypoint stops accepting
/// (logged), new connections are refused and the process exits 0.
#[test]
fn request_accept_grace_timeout_keeps_accepting_after_sigterm() {
    let echo = Backend::echo();
    let grace = [("requestAcceptGraceTimeout", "2s"), ("graceTimeOut", "5s")];
    let cfg = config(0, echo.addr, false, &grace)
        .entrypoint("traefik")
        .table("ping")
        .to_toml();
    let mut p = Proxy::start(&cfg);
    let (addr, admin) = (p.addr("main"), p.addr("traefik"));
    assert_eq!(ping(admin), 200);
    p.signal(SIGTERM);
    let stopping = p
        .wait_logs(1, |l| l.contains("msg=stopping"))
        .pop()
        .unwrap();
    assert_eq!(field(&stopping, "accept_grace_ms").as_deref(), Some("2000"));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(ping(admin), 503, "/ping says terminating during the grace");
    assert!(
        !p.logs().iter().any(|l| l.contains("stopped accepting")),
        "closed too early; log:\n{}",
        p.logs().join("\n")
    );
    let me = round_trip(addr, b"accepted during the grace");
    let served = p.wait_logs(1, |l| {
        l.contains("msg=conn") && field(l, "client").as_deref() == Some(&*me.to_string())
    });
    assert_eq!(field(&served[0], "outcome").as_deref(), Some("closed"));
    p.wait_logs(1, |l| {
        l.contains("stopped accepting") && l.contains("entrypoint=main")
    });
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused),
        "no listener after the accept grace"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0));
}

/// Set in the child run inside the network namespace.
const NETNS_ENV: &str = "SLUICEGATE_TEST_IN_NETNS";

/// Runs test `name` again in a network namespace of its own (as root: `unshare
/// -n`), with loopback up and `net.ipv4.tcp_migrate_req = 1` there, so the
/// host's setting is untouched. Returns true when called in that namespace
/// (the caller runs the body); otherwise runs the child, asserts it passed
/// and returns false.
fn in_netns(name: &str) -> bool {
    if std::env::var_os(NETNS_ENV).is_some() {
        return true;
    }
    if !require_tool("unshare", "util-linux") || !require_tool("ip", "iproute2") {
        return false;
    }
    let exe: PathBuf = std::env::current_exe().unwrap();
    let script =
        "ip link set lo up && echo 1 > /proc/sys/net/ipv4/tcp_migrate_req && exec \"$0\" \"$@\"";
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("Operation not permitted") {
        let why = "creating a network namespace needs root (unshare -n)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}: {stderr}");
        }
        note_skip(why);
        return false;
    }
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in its network namespace ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!("{stdout}{stderr}");
    false
}

/// What the client loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    refused: AtomicUsize,
    reset: AtomicUsize,
    short: AtomicUsize,
    other: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self, counter: &AtomicUsize, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(what);
        }
    }

    /// Connect, send 64 bytes, expect them back, close.
    fn one(&self, addr: SocketAddr, seed: u64) {
        let payload = pattern(64, seed);
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return self.failed(&self.refused, format!("connect: {e}"))
            }
            Err(e) => return self.failed(&self.other, format!("connect: {e}")),
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut back = vec![0u8; payload.len()];
        let r = s.write_all(&payload).and_then(|_| s.read_exact(&mut back));
        match r {
            Ok(()) if back == payload => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => self.failed(&self.short, "echo differs".into()),
            Err(e) => match e.kind() {
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                    self.failed(&self.reset, format!("round trip: {e}"))
                }
                ErrorKind::UnexpectedEof => self.failed(&self.short, format!("round trip: {e}")),
                _ => self.failed(&self.other, format!("round trip: {e}")),
            },
        }
    }
}

/// The zero-downtime handover, in a network namespace with
/// `net.ipv4.tcp_migrate_req = 1`: A serves a port with reusePort and
/// requestAcceptGraceTimeout = 1s; four client threads loop connecting and
/// doing an echo round trip; B starts on the same port; A gets SIGTERM,
/// keeps accepting for a second, closes its listeners (their accept queues
/// move to B) and exits 0; the loop goes on after A is gone. Not one
/// connection is refused, reset or short, and the two access logs together
/// hold exactly the connections the clients completed, some in each.
#[test]
fn handover_to_a_second_process_loses_no_connection() {
    if !in_netns("handover_to_a_second_process_loses_no_connection") {
        return;
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
            .unwrap()
            .trim(),
        "1"
    );
    let echo = Backend::echo();
    let port = free_port();
    let cfg = config(
        port,
        echo.addr,
        true,
        &[("requestAcceptGraceTimeout", "1s"), ("graceTimeOut", "5s")],
    )
    .to_toml();
    let mut a = Proxy::start(&cfg);
    assert!(
        !a.logs().iter().any(|l| l.contains("tcp_migrate_req")),
        "no warning when tcp_migrate_req = 1"
    );
    let addr = a.addr("main");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let (tally, stop) = (tally.clone(), stop.clone());
            thread::spawn(move || {
                let mut seed = t << 32;
                while !stop.load(Ordering::Relaxed) {
                    seed += 1;
                    tally.one(addr, seed);
                }
            })
        })
        .collect();
    let wait_ok = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while tally.ok.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the client loop is stuck");
            thread::sleep(Duration::from_millis(5));
        }
    };
    wait_ok(500);
    let b = Proxy::start(&cfg);
    // B is in the group: it serves some of the loop's connections.
    b.wait_conns(20);
    a.signal(SIGTERM);
    a.wait_logs(1, |l| {
        l.contains("stopped accepting") && l.contains("entrypoint=main")
    });
    assert_eq!(a.wait_exit(Duration::from_secs(20)), Some(0), "A exits 0");
    let after_a = tally.ok.load(Ordering::Relaxed);
    wait_ok(after_a + 2000);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let errors = tally.errors.lock().unwrap().join("\n");
    let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    assert_eq!(count(&tally.refused), 0, "refused:\n{errors}");
    assert_eq!(count(&tally.reset), 0, "reset:\n{errors}");
    assert_eq!(count(&tally.short), 0, "short:\n{errors}");
    assert_eq!(count(&tally.other), 0, "other errors:\n{errors}");
    let ok = count(&tally.ok);
    let served_a = conn_lines(&a);
    assert!(served_a >= 500, "A served {served_a}");
    let served_b = b.wait_conns(ok - served_a).len();
    assert_eq!(
        served_a + served_b,
        ok,
        "every completed connection logged once"
    );
    assert!(
        a.logs()
            .iter()
            .all(|l| !l.contains("msg=conn") || field(l, "outcome").as_deref() == Some("closed")),
        "A cut nothing"
    );
    eprintln!("handover: {ok} round trips, A served {served_a}, B {served_b}");
}

/// Without `net.ipv4.tcp_migrate_req = 1`, a reusePort entrypoint warns at
/// start, naming the setting (here: a namespace where it is 0).
#[test]
fn reuse_port_warns_without_tcp_migrate_req() {
    if !in_netns("reuse_port_warns_without_tcp_migrate_req") {
        return;
    }
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "0").unwrap();
    let echo = Backend::echo();
    let p = Proxy::start(&config(0, echo.addr, true, &[]).to_toml());
    let warn = p
        .logs()
        .into_iter()
        .find(|l| l.contains("tcp_migrate_req is 0"))
        .unwrap_or_else(|| panic!("no warning; log:\n{}", p.logs().join("\n")));
    assert!(warn.contains("level=warn"), "{warn}");
    assert!(warn.contains("set net.ipv4.tcp_migrate_req = 1"), "{warn}");
    let quiet = Proxy::start(&config(0, echo.addr, false, &[]).to_toml());
    assert!(
        !quiet.logs().iter().any(|l| l.contains("tcp_migrate_req")),
        "no warning without reusePort"
    );
}

/// `check` reads both keys (no "ignored" warning any more), prints them in
/// the summary, and a bad requestAcceptGraceTimeout is an error at its value.
#[test]
fn check_reads_reuse_port_and_request_accept_grace_timeout() {
    let echo = Backend::echo();
    let dir = TempDir::new("reuseport-check");
    let good = dir.write(
        "good.toml",
        &config(
            5432,
            echo.addr,
            true,
            &[("requestAcceptGraceTimeout", "2s"), ("graceTimeOut", "5s")],
        )
        .to_toml(),
    );
    let ran = run(
        Command::new(BIN).arg("check").arg("-c").arg(&good),
        b"",
        Duration::from_secs(20),
    )
    .expect_ok("check");
    assert!(!ran.stderr.contains("warning"), "stderr:\n{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("graceTimeOut 5s requestAcceptGraceTimeout 2s  reusePort"),
        "stdout:\n{}",
        ran.stdout
    );
    let text = config(
        5432,
        echo.addr,
        true,
        &[("requestAcceptGraceTimeout", "soon")],
    )
    .to_toml();
    let line = text
        .lines()
        .position(|l| l.starts_with("requestAcceptGraceTimeout"))
        .unwrap()
        + 1;
    let bad = dir.write("bad.toml", &text);
    let ran = run(
        Command::new(BIN).arg("check").arg("-c").arg(&bad),
        b"",
        Duration::from_secs(20),
    );
    assert_eq!(ran.status.code(), Some(1));
    let prefix = format!("{}:{line}:29: ", bad.display());
    assert!(
        ran.stderr.starts_with(&prefix) && ran.stderr.contains("requestAcceptGraceTimeout"),
        "want {prefix}...; stderr:\n{}",
        ran.stderr
    );
}

/// SIGQUIT during a long requestAcceptGraceTimeout ends it at once: the
/// listener closes, the open connection is cut and the process exits 0,
/// long before the 60 s the grace would have lasted.
#[test]
fn sigquit_ends_the_accept_grace_at_once() {
    let echo = Backend::echo();
    let cfg = config(
        0,
        echo.addr,
        false,
        &[
            ("requestAcceptGraceTimeout", "60s"),
            ("graceTimeOut", "60s"),
        ],
    )
    .to_toml();
    let mut p = Proxy::start(&cfg);
    let addr = p.addr("main");
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    held.write_all(b"held").unwrap();
    let mut b = [0u8; 4];
    held.read_exact(&mut b).unwrap();
    p.signal(SIGTERM);
    p.wait_logs(1, |l| l.contains("msg=stopping"));
    round_trip(addr, b"still accepting");
    p.signal(3);
    assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(p
        .logs()
        .iter()
        .any(|l| l.contains("stopped accepting") && l.contains("entrypoint=main")));
    let (_, err) = read_to_end(&mut held);
    assert_eq!(
        err.map(|e| e.kind()),
        Some(ErrorKind::ConnectionReset),
        "the open connection is cut"
    );
}

/// Listeners are bound once: a reload that flips reusePort is refused (the
/// running config stays), as one that moves an address is.
#[test]
fn a_reload_cannot_flip_reuse_port() {
    let echo = Backend::echo();
    let p = Proxy::start(&config(0, echo.addr, false, &[]).to_toml());
    std::fs::write(&p.config_path, config(0, echo.addr, true, &[]).to_toml()).unwrap();
    p.signal(1);
    let refused = p
        .wait_logs(1, |l| l.contains("reload refused"))
        .pop()
        .unwrap();
    assert!(refused.contains("reusePort"), "{refused}");
    assert!(!p.logs().iter().any(|l| l.contains("msg=reloaded")));
    round_trip(p.addr("main"), b"old config serves");
}

/// The admin entrypoint follows its own reusePort: a successor process can
/// serve /ping on the same address only when it is set.
#[test]
fn the_admin_entrypoint_shares_its_port_only_with_reuse_port() {
    let echo = Backend::echo();
    let (port, admin_port) = (free_port(), free_port());
    let with_admin = |reuse: bool| {
        config(port, echo.addr, true, &[])
            .entrypoint_at("traefik", format!("127.0.0.1:{admin_port}"))
            .and("reusePort", reuse)
            .table("ping")
            .to_toml()
    };
    let a = Proxy::start(&with_admin(false));
    let (code, stderr) = start_fails(&with_admin(false));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "entrypoint traefik: cannot listen on 127.0.0.1:{admin_port}: Address already in use"
        )),
        "stderr:\n{stderr}"
    );
    drop(a);
    let a = Proxy::start(&with_admin(true));
    let b = Proxy::start(&with_admin(true));
    assert_eq!(a.addr("traefik"), b.addr("traefik"));
    assert_eq!(ping(b.addr("traefik")), 200);
}
