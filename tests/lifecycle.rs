//! Process lifecycle through the real binary: SIGTERM drain, EMFILE backoff,
//! the `check` command, SIGHUP reload.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

fn one_service(backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[entryPoints.main]
address = "127.0.0.1:0"
{extra}
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "{backend}"
[runtime]
workers = 2
"#
    )
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
    let cfg = one_service(
        backend.addr,
        "[entryPoints.main.transport.lifeCycle]\ngraceTimeOut = \"5s\"",
    );
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
    let cfg = one_service(echo.addr, "").replace("workers = 2", "workers = 1");
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
    let p = Proxy::start(&one_service(a.addr, ""));
    let addr = p.addr("main");
    let who = || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut c = [0u8; 1];
        s.read_exact(&mut c).unwrap();
        c[0]
    };
    assert_eq!(who(), b'A');
    // Same entrypoints (the listeners stay), new backend.
    std::fs::write(&p.config_path, one_service(b.addr, "")).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(who(), b'B');
    // A broken config is refused; the running one stays.
    std::fs::write(&p.config_path, "[tcp.routers.r]\nrule = \"HostSNI(`*`\"\n").unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("reload failed"));
    assert_eq!(who(), b'B');
}
