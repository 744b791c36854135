//! Process lifecycle through the real binary: SIGTERM drain, EMFILE backoff,
//! the `check` command, SIGHUP reload.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Everything on `main` to `backend`, two workers. Backends here finish
/// their replies with a FIN while the client still reads: a generous
/// terminationDelay keeps the open direction from being cut meanwhile.
fn one_service(backend: std::net::SocketAddr) -> Cfg {
    Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[backend])
        .termination_delay("30s")
        .workers(2)
}

#[test]
fn sigterm_drains_open_streams_then_exits_zero() {
    // Each backend connection sends 20 chunks of 16 KiB, 50 ms apart (~1 s).
    let backend = Backend::start(|mut s| {
        for i in 0..20u64 {
            if s.write_all(&pattern(16 * 1024, 100 + i)).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = s.shutdown(Shutdown::Write);
        let _ = read_to_end(&mut s);
    });
    let mut expect = Vec::new();
    for i in 0..20u64 {
        expect.extend_from_slice(&pattern(16 * 1024, 100 + i));
    }
    let cfg = one_service(backend.addr)
        .set("entryPoints.main.transport.lifeCycle", "graceTimeOut", "5s")
        .to_toml();
    let mut p = Proxy::start(&cfg);
    let addr = p.addr("main");
    let streams: Vec<_> = (0..30)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap();
            (s, first[0])
        })
        .collect();
    p.signal(15);
    p.wait_logs(1, |l| l.contains("msg=stopping"));
    let t = Instant::now();
    // New connections are refused once stopping.
    thread::sleep(Duration::from_millis(200));
    let refused = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
    if let Ok(mut s) = refused {
        // Accepted by the kernel before the listener shut down: it must not be
        // served (EOF or reset, no bytes).
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (got, _) = read_to_end(&mut s);
        assert!(got.is_empty());
    }
    let handles: Vec<_> = streams
        .into_iter()
        .map(|(mut s, first)| {
            thread::spawn(move || {
                let (mut got, err) = read_to_end(&mut s);
                got.insert(0, first);
                (got, err.is_none())
            })
        })
        .collect();
    for h in handles {
        let (got, clean) = h.join().unwrap();
        assert!(clean);
        assert_eq!(
            checksum(&got),
            checksum(&expect),
            "stream finished byte-exact"
        );
    }
    let code = p.wait_exit(Duration::from_secs(7));
    assert_eq!(code, Some(0), "exit 0 within grace + 1 s");
    assert!(t.elapsed() < Duration::from_secs(7));
}

#[test]
fn emfile_pauses_accepting_without_spinning_and_recovers() {
    if !require_tool("prlimit", "util-linux") {
        return;
    }
    let echo = Backend::echo();
    let cfg = one_service(echo.addr).workers(1).to_toml();
    let p = Proxy::start_with(&cfg, &["prlimit", "--nofile=64"]);
    let addr = p.addr("main");
    // More clients than descriptors: some stay in the backlog.
    let mut clients: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    assert!(clients.len() >= 60);
    p.wait_logs(1, |l| l.contains("msg=\"accept failed\""));
    let before = p.cpu_ticks();
    thread::sleep(Duration::from_secs(1));
    let used = p.cpu_ticks() - before;
    // Clock ticks are 1/100 s: a spinning accept loop would burn ~100.
    assert!(
        used < 30,
        "accept loop must back off, used {used} ticks in 1 s"
    );
    // Closing clients frees descriptors; service resumes.
    clients.clear();
    thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        if s.read_exact(&mut b).is_ok() && &b == b"ping" {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume");
    }
}

#[test]
fn check_prints_summary_and_rejects_invalid_configs() {
    let out = Command::new(BIN)
        .args(["check", "-c", "config/sluicegate.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("entrypoint") || text.contains("Entry"),
        "{text}"
    );
    let mut n = 0;
    for e in std::fs::read_dir("config/invalid").unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        let src = std::fs::read_to_string(&path).unwrap();
        let expects: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(str::trim)
            .collect();
        assert!(
            !expects.is_empty(),
            "{} lacks a `# expect:` line",
            path.display()
        );
        let out = Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        for expect in &expects {
            assert!(
                err.contains(expect),
                "{}: expected `{expect}` in:\n{err}",
                path.display()
            );
        }
        assert!(
            err.contains(&*path.to_string_lossy()),
            "message names the file: {err}"
        );
    }
    assert!(n >= 10, "at least 10 invalid examples, found {n}");
}

#[test]
fn invalid_config_exits_nonzero_before_binding() {
    let dir = TempDir::new("bad");
    let path = dir.write("bad.toml", "[entryPoints.x]\nadress = \":1\"\n");
    let out = Command::new(BIN).arg("-c").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2:1:"), "{err}");
}

#[test]
fn sighup_reload_switches_backend_and_bad_config_keeps_old() {
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let p = Proxy::start(&one_service(a.addr).to_toml());
    let addr = p.addr("main");
    let who = || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut c = [0u8; 1];
        s.read_exact(&mut c).unwrap();
        c[0]
    };
    assert_eq!(who(), b'A');
    // Same entrypoints (the listeners stay), new backend.
    std::fs::write(&p.config_path, one_service(b.addr).to_toml()).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(who(), b'B');
    // A broken config is refused; the running one stays.
    std::fs::write(&p.config_path, "[tcp.routers.r]\nrule = \"HostSNI(`*`\"\n").unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("reload failed"));
    assert_eq!(who(), b'B');
}

/// A backend steered by the client's first byte: `s` streams 32 MiB slowly
/// (64 KiB every 20 ms: far longer than the grace time), `f` writes
/// `FINISHED_LEN` bytes at once and closes its side.
fn steered_backend(finished: std::sync::Arc<Vec<u8>>) -> Backend {
    Backend::start(move |mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'f' {
            let _ = s.write_all(&finished);
            let _ = s.shutdown(Shutdown::Write);
            let _ = read_to_end(&mut s);
            return;
        }
        let chunk = pattern(64 * 1024, 7);
        for _ in 0..512 {
            if s.write_all(&chunk).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Small enough to fit in the proxy's send queue and the client's receive
/// buffer, so the reply has been passed on whole (FIN included) well before
/// the grace time ends, although the client has read only part of it.
const FINISHED_LEN: usize = 1 << 20;

#[test]
fn drain_end_resets_cut_streams_and_keeps_finished_replies() {
    // graceTimeOut 1 s; at its end: 5 clients mid-download must get a reset
    // (never a clean EOF: a truncated reply must not look complete); a client
    // whose reply had been passed on whole (backend FIN forwarded) but who
    // reads slowly gets every byte and a clean EOF; a client still before
    // routing (no ClientHello yet) is reset. The log says how many were cut;
    // the exit code stays 0.
    let finished = std::sync::Arc::new(pattern(FINISHED_LEN, 9));
    let backend = steered_backend(finished.clone());
    let cfg = Cfg::new()
        .entrypoint("main")
        .set("entryPoints.main.transport.lifeCycle", "graceTimeOut", "1s")
        .entrypoint("tls")
        .set("entryPoints.tls.transport.lifeCycle", "graceTimeOut", "1s")
        .router_on("r", "main", "HostSNI(`*`)", "s")
        .router_on("t", "tls", "HostSNI(`x.test`)", "s")
        .router_tls("t")
        .and("passthrough", true)
        .service("s", &[backend.addr])
        // The finished replies end with the backend's FIN while the clients
        // still read: only the grace may cut them, not terminationDelay.
        .termination_delay("30s")
        .workers(2)
        .to_toml();
    let mut p = Proxy::start(&cfg);
    let streams: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr("main")).unwrap();
            s.write_all(b"s").unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap();
            s
        })
        .collect();
    let mut fin = TcpStream::connect(p.addr("main")).unwrap();
    fin.write_all(b"f").unwrap();
    let mut first = [0u8; 1];
    fin.read_exact(&mut first).unwrap();
    let mut peeking = TcpStream::connect(p.addr("tls")).unwrap();
    peeking
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    thread::sleep(Duration::from_millis(300));

    p.signal(15);
    let downloads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                read_to_end(&mut s)
            })
        })
        .collect();
    // ~300 kB/s: most of the reply is still queued when the grace time ends.
    let (mut got, err) = read_throttled(&mut fin, 300_000);
    got.insert(0, first[0]);
    assert!(
        err.is_none(),
        "finished reply: {err:?} after {} bytes",
        got.len()
    );
    assert_eq!(got.len(), FINISHED_LEN, "finished reply: bytes lost");
    assert!(got == *finished, "finished reply differs");
    for d in downloads {
        let (got, err) = d.join().unwrap();
        let err = err.unwrap_or_else(|| {
            panic!(
                "a stream cut by the drain ended with a clean EOF after {} bytes",
                got.len()
            )
        });
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
    }
    let mut b = [0u8; 1];
    let r = peeking.read(&mut b);
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "a connection cut before routing is reset"
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let logs = p.logs();
    let cut: usize = logs
        .iter()
        .filter(|l| l.contains("drain ended"))
        .map(|l| field(l, "cut").unwrap().parse::<usize>().unwrap())
        .sum();
    // 5 streams, the finished reply (its client→backend side was still
    // open) and the one before routing.
    assert_eq!(cut, 7, "{logs:#?}");
    let drain_cut: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("msg=conn") && l.contains("outcome=drain_cut"))
        .collect();
    assert_eq!(drain_cut.len(), 7, "{logs:#?}");
    assert!(
        drain_cut
            .iter()
            .any(|l| field(l, "entrypoint").as_deref() == Some("tls")),
        "{drain_cut:#?}"
    );
    let finished_line = drain_cut
        .iter()
        .find(|l| field(l, "down") == Some(FINISHED_LEN.to_string()))
        .unwrap_or_else(|| panic!("no line counts the finished reply: {drain_cut:#?}"));
    assert_eq!(field(finished_line, "up").as_deref(), Some("1"));
}

#[test]
fn grace_timeout_is_per_entrypoint() {
    // Two entrypoints, graceTimeOut 1 s and 10 s, one long stream on each:
    // at the stop, the first is reset after about 1 s while the second goes
    // on and finishes byte-exact.
    let chunks = 100u64;
    let backend = Backend::start(move |mut s| {
        for i in 0..chunks {
            if s.write_all(&pattern(32 * 1024, 200 + i)).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(30));
        }
        let _ = s.shutdown(Shutdown::Write);
        let _ = read_to_end(&mut s);
    });
    let mut expect = Vec::new();
    for i in 0..chunks {
        expect.extend_from_slice(&pattern(32 * 1024, 200 + i));
    }
    let cfg = Cfg::new()
        .entrypoint("short")
        .set(
            "entryPoints.short.transport.lifeCycle",
            "graceTimeOut",
            "1s",
        )
        .entrypoint("long")
        .set(
            "entryPoints.long.transport.lifeCycle",
            "graceTimeOut",
            "10s",
        )
        .router("r", "HostSNI(`*`)", "s")
        .and("entryPoints", ["short", "long"])
        .service("s", &[backend.addr])
        // Replies end with the backend's FIN while the clients still read.
        .termination_delay("30s")
        .workers(2)
        .to_toml();
    let mut p = Proxy::start(&cfg);
    let start = |ep: &str| {
        let mut s = TcpStream::connect(p.addr(ep)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut first = [0u8; 1];
        s.read_exact(&mut first).unwrap();
        thread::spawn(move || {
            let (mut got, err) = read_to_end(&mut s);
            got.insert(0, first[0]);
            (got, err, Instant::now())
        })
    };
    let short = start("short");
    let long = start("long");
    p.signal(15);
    let stopped = Instant::now();
    let (got_s, err_s, end_s) = short.join().unwrap();
    let (got_l, err_l, end_l) = long.join().unwrap();
    let err_s = err_s.unwrap_or_else(|| {
        panic!(
            "the 1 s entrypoint's stream ended cleanly after {} of {} bytes",
            got_s.len(),
            expect.len()
        )
    });
    assert_eq!(err_s.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(got_s.len() < expect.len());
    assert!(err_l.is_none(), "the 10 s entrypoint's stream: {err_l:?}");
    assert!(got_l == expect, "the 10 s entrypoint's stream differs");
    assert!(end_s < end_l, "the 1 s stream was cut first");
    eprintln!(
        "short cut after {:?}, long finished after {:?}",
        end_s - stopped,
        end_l - stopped
    );
    assert_eq!(p.wait_exit(Duration::from_secs(15)), Some(0));
}

/// Seconds left on a keep-alive timer as `ss -o` prints it (`2min59sec`,
/// `59sec`, `1min`); `None` for another form.
fn ss_timer_secs(timer: &str) -> Option<u64> {
    let (min, rest) = match timer.split_once("min") {
        Some((m, rest)) => (m.parse::<u64>().ok()?, rest),
        None => (0, timer),
    };
    let sec = match rest.split_once("sec") {
        Some((s, _)) => s.split('.').next()?.parse::<u64>().ok()?,
        None if rest.is_empty() || rest.ends_with("ms") => 0,
        None => return None,
    };
    Some(min * 60 + sec)
}

#[test]
fn accepted_client_sockets_have_traefiks_keepalive_on_both_drivers() {
    // Traefik's effective client keep-alive: idle 3 min (interval 15 s and
    // 9 probes are not shown by ss; sys.rs's unit test reads them back).
    if !require_tool("ss", "iproute2") {
        return;
    }
    let echo = Backend::echo();
    for driver in ["io_uring", "epoll"] {
        let cfg = one_service(echo.addr)
            .set("runtime", "driver", driver)
            .to_toml();
        let p = Proxy::start(&cfg);
        let port = p.addr("main").port();
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Accepted and forwarding: the echo came back through the proxy.
        s.write_all(b"ka").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        let me = s.local_addr().unwrap().to_string();
        let out = Command::new("ss")
            .args(["-tnoH", "state", "established"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).to_string();
        // The proxy's side of this client's connection.
        let line = out
            .lines()
            .find(|l| l.split_whitespace().any(|f| f == me))
            .unwrap_or_else(|| panic!("{driver}: no socket to {me} in:\n{out}"));
        let timer = line
            .split("timer:(keepalive,")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .unwrap_or_else(|| panic!("{driver}: no keep-alive timer: {line}"));
        let left = ss_timer_secs(timer).unwrap_or_else(|| panic!("{driver}: {line}"));
        assert!(
            (150..=180).contains(&left),
            "{driver}: keep-alive fires in {left} s, want 3 min: {line}"
        );
    }
}
