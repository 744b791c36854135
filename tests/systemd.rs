//! Running under systemd, through the real binary: the service-manager
//! notifications (a unix datagram socket of the test's own stands in for
//! systemd's `NOTIFY_SOCKET`), the journal log format (`JOURNAL_STREAM` set
//! to what fd 2 really is), and the unit file (`systemd-analyze verify`).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

/// Bound for "the process reacts" waits: far above any healthy reaction.
const REACT: Duration = Duration::from_secs(20);

/// The service manager's end: a datagram socket (a path, or an abstract
/// name) and a thread that records every datagram with its arrival time.
struct NotifySocket {
    /// `NOTIFY_SOCKET`'s value.
    env: String,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    _dir: TempDir,
}

impl NotifySocket {
    fn path() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Self::serve(sock, path.to_str().unwrap().to_string(), dir)
    }

    fn abstract_name() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sluicegate-test-notify-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Self::serve(sock, format!("@{name}"), TempDir::new("notify"))
    }

    fn serve(sock: UnixDatagram, env: String, dir: TempDir) -> NotifySocket {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        got.lock().unwrap().push((Instant::now(), text));
                    }
                }
            });
        }
        NotifySocket {
            env,
            got,
            stop,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Wait until a datagram satisfies `pred`; returns it and its arrival.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> (Instant, String) {
        let deadline = Instant::now() + REACT;
        loop {
            if let Some(hit) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|(_, m)| pred(m))
                .cloned()
            {
                return hit;
            }
            assert!(
                Instant::now() < deadline,
                "no datagram {what} after {REACT:?}; got {:?}",
                self.all()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The phase messages in order: every READY/RELOADING/STOPPING line.
    fn phases(&self) -> Vec<String> {
        phases(&self.all())
    }

    /// Wait until the phase sequence is `want` exactly (failing at once if
    /// it goes anywhere else).
    fn wait_phases(&self, want: &[&str]) {
        let deadline = Instant::now() + REACT;
        loop {
            let got = self.phases();
            if got == want {
                return;
            }
            assert!(
                got.len() <= want.len() && got.iter().zip(want).all(|(g, w)| g == w),
                "phases {got:?}, want {want:?}; datagrams {:?}",
                self.all()
            );
            assert!(
                Instant::now() < deadline,
                "phases {got:?} after {REACT:?}, want {want:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn count(&self, line: &str) -> usize {
        self.all()
            .iter()
            .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l == line)
            .count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn phases(datagrams: &[String]) -> Vec<String> {
    datagrams
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| {
            ["READY=", "RELOADING=", "STOPPING="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect()
}

/// CLOCK_MONOTONIC in µs, read by another program (Python's
/// `time.clock_gettime`), the clock systemd compares MONOTONIC_USEC with.
fn monotonic_usec() -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// One proxied echo connection, proved working, held open.
fn hold(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s
}

/// An echo service behind entrypoint `main`; `servers` are its addresses,
/// health-checked with a 1 s timeout when `checked`. The echo exchanges
/// here never half-close: terminationDelay plays no part.
fn config(servers: &[SocketAddr], checked: bool) -> String {
    let c = Cfg::new()
        .entrypoint("main")
        .set(
            "entryPoints.main.transport.lifeCycle",
            "graceTimeOut",
            "10s",
        )
        .router("r", "HostSNI(`*`)", "echo")
        .service("echo", servers);
    let c = if checked {
        c.set(
            "tcp.services.echo.loadBalancer.healthCheck",
            "interval",
            "30s",
        )
        .and("timeout", "1s")
    } else {
        c
    };
    c.to_toml()
}

/// The whole life of a notified service: READY only after the first health
/// verdicts (a blackholed server takes its whole 1 s timeout to be found
/// down), status lines with connection counts, RELOADING=1 with the
/// monotonic clock and READY=1 around a good and a failed reload, STOPPING=1
/// with the open connections at SIGTERM, and nothing after it.
#[test]
fn ready_after_health_verdicts_then_reloads_then_stopping() {
    if !require_tool("python3", "python3") {
        return;
    }
    let echo = Backend::echo();
    let hole = Blackhole::new();
    let ns = NotifySocket::path();
    let notify_env = format!("NOTIFY_SOCKET={}", ns.env);
    let mut p = Proxy::start_with(
        &config(&[echo.addr, hole.addr], true),
        &["env", &notify_env],
    );

    let (_, ready) = ns.wait("READY=1", |m| m.starts_with("READY=1"));
    assert_eq!(
        ready, "READY=1\nSTATUS=serving; connections: 0 open, 0 accepted",
        "readiness comes with the first status"
    );
    // Before it, the service said what it waited for.
    let first = ns.all()[0].clone();
    assert!(
        first.starts_with("STATUS=starting; waiting for the first health verdicts of "),
        "first datagram: {first:?}"
    );
    // The blackhole's verdict was logged before the readiness line (one
    // pipe, so its order is the proxy's order).
    p.wait_logs(1, |l| l.contains("msg=ready"));
    let logs = p.logs();
    let down = logs
        .iter()
        .position(|l| l.contains("server unhealthy") && l.contains(&hole.addr.to_string()));
    let ready_at = logs.iter().position(|l| l.contains("msg=ready")).unwrap();
    assert!(
        down.is_some_and(|d| d < ready_at),
        "the down verdict must come before readiness:\n{}",
        logs.join("\n")
    );
    assert_eq!(ns.phases(), ["READY=1"]);

    // Status: the held connection is counted (the blackhole is down, so
    // the connection goes to the echo server).
    let client = hold(p.addr("main"));
    ns.wait("status with one open connection", |m| {
        m == "STATUS=serving; connections: 1 open, 1 accepted"
    });

    // A good reload: RELOADING=1 with CLOCK_MONOTONIC of its start.
    let before = monotonic_usec();
    p.signal(SIGHUP);
    ns.wait_phases(&["READY=1", "RELOADING=1", "READY=1"]);
    let after = monotonic_usec();
    let reloading: Vec<String> = ns
        .all()
        .into_iter()
        .filter(|m| m.starts_with("RELOADING=1"))
        .collect();
    assert_eq!(reloading.len(), 1, "{reloading:?}");
    let usec: u64 = reloading[0]
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("RELOADING datagram: {:?}", reloading[0]))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC {usec} outside [{before}, {after}]"
    );
    p.wait_logs(1, |l| l.contains("msg=reloaded"));

    // A failed reload ends with READY=1 too: the old config serves.
    std::fs::write(&p.config_path, "[entryPoints.main\n").unwrap();
    p.signal(SIGHUP);
    ns.wait_phases(&[
        "READY=1",
        "RELOADING=1",
        "READY=1",
        "RELOADING=1",
        "READY=1",
    ]);
    p.wait_logs(1, |l| l.contains("reload failed"));
    // A second connection, closed again before the stop.
    drop(hold(p.addr("main")));
    ns.wait("status after the second connection ended", |m| {
        m == "STATUS=serving; connections: 1 open, 2 accepted"
    });

    // SIGTERM: STOPPING=1 at once, with the connection still open.
    p.signal(SIGTERM);
    let (_, stopping) = ns.wait("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    assert_eq!(stopping, "STOPPING=1\nSTATUS=draining; connections: 1 open");
    drop(client);
    assert_eq!(p.wait_exit(REACT), Some(0));
    assert_eq!(
        ns.phases(),
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
}

/// No health checks: READY=1 is the very first datagram; an abstract socket
/// name (`@...`) works; SIGTERM gives STOPPING=1 and a clean exit.
#[test]
fn ready_at_once_without_health_checks_on_an_abstract_socket() {
    let echo = Backend::echo();
    let ns = NotifySocket::abstract_name();
    let notify_env = format!("NOTIFY_SOCKET={}", ns.env);
    let mut p = Proxy::start_with(&config(&[echo.addr], false), &["env", &notify_env]);
    ns.wait("READY=1", |m| m.starts_with("READY=1"));
    assert_eq!(
        ns.all()[0],
        "READY=1\nSTATUS=serving; connections: 0 open, 0 accepted"
    );
    drop(hold(p.addr("main")));
    p.signal(SIGTERM);
    ns.wait_phases(&["READY=1", "STOPPING=1"]);
    assert_eq!(p.wait_exit(REACT), Some(0));
    assert_eq!(ns.count("WATCHDOG=1"), 0, "no watchdog was asked for");
}

/// WATCHDOG_USEC = 1 s: a ping every 0.5 s while the workers run (counted
/// over a few seconds, generous bounds both ways); with WATCHDOG_PID naming
/// another process, none.
#[test]
fn watchdog_pings_every_half_period_for_our_pid_only() {
    let echo = Backend::echo();
    let ns = NotifySocket::path();
    let notify_env = format!("NOTIFY_SOCKET={}", ns.env);
    // `sh` sets WATCHDOG_PID to its own PID, which `exec` hands to the proxy.
    let p = Proxy::start_with(
        &config(&[echo.addr], false),
        &[
            "env",
            &notify_env,
            "WATCHDOG_USEC=1000000",
            "sh",
            "-c",
            "export WATCHDOG_PID=$$; exec \"$0\" \"$@\"",
        ],
    );
    let (ready_at, _) = ns.wait("READY=1", |m| m.starts_with("READY=1"));
    thread::sleep(Duration::from_secs(4));
    let window = ready_at.elapsed();
    let pings = ns.count("WATCHDOG=1");
    let most = (window.as_millis() / 500) as usize + 2;
    assert!(
        (4..=most).contains(&pings),
        "{pings} pings in {window:?} (want 4..={most}): {:?}",
        ns.all()
    );
    drop(p);

    let ns = NotifySocket::path();
    let notify_env = format!("NOTIFY_SOCKET={}", ns.env);
    let _p = Proxy::start_with(
        &config(&[echo.addr], false),
        &[
            "env",
            &notify_env,
            "WATCHDOG_USEC=1000000",
            "WATCHDOG_PID=1",
        ],
    );
    ns.wait("READY=1", |m| m.starts_with("READY=1"));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(ns.count("WATCHDOG=1"), 0, "{:?}", ns.all());
}

/// stderr is the journal when JOURNAL_STREAM names it: no `ts=`, a syslog
/// priority per level (info, warn from a failed health check, error from a
/// failed reload). Naming another stream keeps plain logfmt.
#[test]
fn journal_format_only_when_journal_stream_is_fd_2() {
    let refused = refused_addr();
    // `stat -L /proc/self/fd/2` in the wrapper's shell: the device and inode
    // of the very pipe the proxy's stderr is, as systemd would set them.
    let mut p = Proxy::start_with(
        &config(&[refused], true),
        &[
            "sh",
            "-c",
            "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$0\" \"$@\"",
        ],
    );
    p.wait_logs(1, |l| l.contains("server unhealthy"));
    std::fs::write(&p.config_path, "[entryPoints.main\n").unwrap();
    p.signal(SIGHUP);
    p.wait_logs(1, |l| l.contains("reload failed"));
    p.signal(SIGTERM);
    assert_eq!(p.wait_exit(REACT), Some(0));
    let logs = p.logs();
    let mut seen = [false; 3];
    for l in &logs {
        let (i, prefix) = if l.starts_with("<6>level=info msg=") {
            (0, "<6>")
        } else if l.starts_with("<4>level=warn msg=") {
            (1, "<4>")
        } else if l.starts_with("<3>level=error msg=") {
            (2, "<3>")
        } else {
            panic!("not a journal line: {l:?}\n{}", logs.join("\n"));
        };
        assert!(!l.contains(" ts="), "{prefix} line with a timestamp: {l}");
        seen[i] = true;
    }
    assert_eq!(seen, [true, true, true], "{}", logs.join("\n"));

    // Another stream's numbers (systemd's, before stderr was redirected).
    let p = Proxy::start_with(&config(&[refused], false), &["env", "JOURNAL_STREAM=1:1"]);
    let logs = p.logs();
    assert!(!logs.is_empty());
    for l in &logs {
        assert!(l.starts_with("ts="), "logfmt expected: {l}");
        assert!(l.contains(" level=info msg="), "{l}");
    }
}

/// The unit passes `systemd-analyze verify` (with ExecStart pointing at the
/// binary under test, since /usr/bin/sluicegate is not installed here; man
/// page lookup off for the same reason), and states what the brief of the
/// service promises.
#[test]
fn unit_file_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dist/sluicegate.service"
    ))
    .unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=sluicegate",
        "ExecStart=/usr/bin/sluicegate -c /etc/sluicegate/sluicegate.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line:?}");
    }
    // TimeoutStopSec above the shipped config's graceTimeOut.
    let secs = |key: &str, text: &str| -> u64 {
        let l = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no {key}"));
        let v = l.split('=').nth(1).unwrap().trim().trim_matches('"');
        v.trim_end_matches('s').parse().unwrap()
    };
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/sluicegate.toml"))
            .unwrap();
    assert!(secs("TimeoutStopSec", &unit) > secs("graceTimeOut", &shipped));

    if !require_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = TempDir::new("unit");
    let path = dir.write(
        "sluicegate.service",
        &unit.replace("/usr/bin/sluicegate", BIN),
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
