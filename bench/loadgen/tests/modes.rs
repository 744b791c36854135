//! Runs every loadgen mode briefly (≤ 2 s each) against the built echo/sink
//! servers on ephemeral ports and checks the reported figures are sane.
//! No assertion depends on speed beyond "something happened".

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sluicegate-loadgen");

/// A backend process; killed (by its PID) when dropped, also on test failure.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(kind: &str) -> Server {
        let mut child = Command::new(BIN)
            .args([kind, "--listen", "127.0.0.1:0", "--duration", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("bad first line {line:?}"))
            .to_string();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the loadgen; returns the parsed JSON line (asserts exit 0).
fn run(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("--json-only")
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--json-only prints exactly one line: {stdout}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("bad JSON {e}: {}", lines[0]))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing or not an integer in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing or not a number in {v}"))
}

fn assert_clean(v: &Value) {
    assert_eq!(u(v, "errors"), 0, "errors in {v}");
    assert_eq!(u(v, "connect_errors"), 0, "connect errors in {v}");
    assert_eq!(u(v, "verify_failures"), 0, "verify failures in {v}");
}

fn assert_latency(v: &Value) {
    let (p50, p99, p999) = (f(v, "p50_us"), f(v, "p99_us"), f(v, "p999_us"));
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= p999,
        "latency percentiles {p50} {p99} {p999} in {v}"
    );
}

#[test]
fn pingpong_closed_loop_echoes_every_byte() {
    let echo = Server::start("echo-server");
    let v = run(&[
        "pingpong",
        "--target",
        &echo.addr,
        "--conns",
        "4",
        "--size",
        "1000",
        "--duration",
        "1",
    ]);
    assert_eq!(v["mode"], "pingpong");
    assert_eq!(v["loop"], "closed");
    assert_clean(&v);
    let n = u(&v, "requests");
    assert!(n > 0, "no requests: {v}");
    assert_eq!(
        u(&v, "bytes_echoed"),
        n * 1000,
        "every request's bytes came back: {v}"
    );
    assert!(f(&v, "rps") > 0.0);
    assert_latency(&v);
}

#[test]
fn pingpong_large_messages_with_partial_writes() {
    let echo = Server::start("echo-server");
    // 1 MiB does not fit in a loopback socket buffer in one write: exercises partial
    // writes while the echo comes back.
    let v = run(&[
        "pingpong",
        "--target",
        &echo.addr,
        "--conns",
        "2",
        "--size",
        "1048576",
        "--duration",
        "1",
        "--threads",
        "2",
    ]);
    assert_clean(&v);
    let n = u(&v, "requests");
    assert!(n > 0, "no requests: {v}");
    assert_eq!(u(&v, "bytes_echoed"), n * 1_048_576);
}

#[test]
fn pingpong_open_loop_keeps_the_offered_rate() {
    let echo = Server::start("echo-server");
    let v = run(&[
        "pingpong",
        "--target",
        &echo.addr,
        "--conns",
        "8",
        "--duration",
        "1",
        "--rate",
        "2000",
    ]);
    assert_eq!(v["loop"], "open");
    assert_clean(&v);
    assert_eq!(f(&v, "offered_rps"), 2000.0);
    let n = u(&v, "requests");
    // An echo on loopback keeps up with 2000/s; allow slack for a busy CI machine.
    assert!(
        (1000..=2001).contains(&n),
        "requests {n} at 2000/s for 1 s: {v}"
    );
    assert_latency(&v);
}

#[test]
fn pingpong_detects_corrupted_replies() {
    // A backend that flips a bit in every reply.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                buf[0] ^= 1;
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let v = run(&[
        "pingpong",
        "--target",
        &addr,
        "--conns",
        "1",
        "--size",
        "64",
        "--duration",
        "0.5",
    ]);
    assert!(u(&v, "verify_failures") > 0, "corruption not detected: {v}");
    assert_eq!(
        u(&v, "requests"),
        0,
        "a corrupted reply must not count as a request: {v}"
    );
}

#[test]
fn churn_counts_connections() {
    let echo = Server::start("echo-server");
    let v = run(&[
        "churn",
        "--target",
        &echo.addr,
        "--conns",
        "4",
        "--duration",
        "1",
        "--size",
        "100",
    ]);
    assert_eq!(v["mode"], "churn");
    assert_clean(&v);
    let n = u(&v, "connections");
    assert!(n > 0, "no connections: {v}");
    assert_eq!(u(&v, "bytes_echoed"), n * 100);
    assert!(f(&v, "cps") > 0.0);
    assert_latency(&v);
}

#[test]
fn idle_reports_memory_per_connection() {
    let echo = Server::start("echo-server");
    let pid = echo.child.id().to_string();
    let v = run(&[
        "idle", "--target", &echo.addr, "--conns", "200", "--hold", "0.2", "--settle", "0.1",
        "--pid", &pid,
    ]);
    assert_eq!(v["mode"], "idle");
    assert_clean(&v);
    assert_eq!(u(&v, "opened"), 200);
    assert!(
        u(&v, "rss_before_kib") > 0 && u(&v, "rss_after_kib") > 0,
        "{v}"
    );
    assert!(
        v["rss_per_conn_kib"].is_number(),
        "per-connection figure present: {v}"
    );
    assert!(f(&v, "exchange_p50_us") > 0.0);
}

#[test]
fn idle_without_pid_still_runs() {
    let echo = Server::start("echo-server");
    let v = run(&[
        "idle", "--target", &echo.addr, "--conns", "10", "--hold", "0.1", "--settle", "0",
    ]);
    assert_clean(&v);
    assert_eq!(u(&v, "opened"), 10);
    assert!(v["rss_per_conn_kib"].is_null());
}

#[test]
fn bulk_up_down_both() {
    let sink = Server::start("sink-server");
    for (dir, up, down) in [
        ("up", true, false),
        ("down", false, true),
        ("both", true, true),
    ] {
        let v = run(&[
            "bulk",
            "--target",
            &sink.addr,
            "--streams",
            "2",
            "--duration",
            "0.5",
            "--direction",
            dir,
        ]);
        assert_eq!(v["mode"], "bulk");
        assert_clean(&v);
        assert_eq!(u(&v, "streams_alive"), 2, "{v}");
        assert_eq!(u(&v, "bytes_up") > 0, up, "{dir}: {v}");
        assert_eq!(u(&v, "bytes_down") > 0, down, "{dir}: {v}");
        assert!(f(&v, "gbps") > 0.0);
    }
}

#[test]
fn bulk_both_through_echo() {
    let echo = Server::start("echo-server");
    let v = run(&[
        "bulk",
        "--target",
        &echo.addr,
        "--streams",
        "1",
        "--duration",
        "0.5",
        "--direction",
        "both",
    ]);
    assert_clean(&v);
    assert!(u(&v, "bytes_down") > 0 && u(&v, "bytes_up") > 0, "{v}");
}

#[test]
fn readable_line_and_json_line() {
    let echo = Server::start("echo-server");
    let out = Command::new(BIN)
        .args([
            "pingpong",
            "--target",
            &echo.addr,
            "--conns",
            "1",
            "--duration",
            "0.2",
            "--label",
            "direct",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2, "{s}");
    assert!(
        lines[0].starts_with("mode=pingpong") && lines[0].contains("rps="),
        "{s}"
    );
    let v: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["label"], "direct");
}

#[test]
fn bounds_are_enforced() {
    for args in [
        vec!["pingpong", "--target", "127.0.0.1:9", "--conns", "0"],
        vec!["pingpong", "--target", "127.0.0.1:9", "--conns", "20000"],
        vec!["churn", "--target", "127.0.0.1:9", "--duration", "0"],
        vec!["bulk", "--target", "127.0.0.1:9", "--duration", "100000"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should be refused");
    }
}

#[test]
fn unreachable_target_fails_cleanly() {
    // Bind then drop to get a port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let out = Command::new(BIN)
        .args([
            "pingpong",
            "--target",
            &target,
            "--conns",
            "1",
            "--duration",
            "0.2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Churn keeps retrying and reports the connect errors.
    let v = run(&[
        "churn",
        "--target",
        &target,
        "--conns",
        "1",
        "--duration",
        "0.3",
    ]);
    assert_eq!(u(&v, "connections"), 0);
    assert!(u(&v, "connect_errors") > 0, "{v}");
}
