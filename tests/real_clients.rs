//! Real servers and real clients through the real binary, as a new user
//! would try it: redis-cli and
//! redis-benchmark against redis-server, an SMTP server that speaks first,
//! and the guide's "Multiple Services on One Port" example with TLS clients.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::openssl::{s_client, subject, Pki, SServer};
use support::process::{free_port, run, wait_listening, ChildGuard, Ran};
use support::redis::RedisServer;
use support::*;

/// One entrypoint, one plain catch-all router to `backend`.
fn catch_all_config(backend: SocketAddr) -> String {
    Cfg::new()
        .entrypoint("main")
        .router_on("all", "main", "HostSNI(`*`)", "svc")
        .service("svc", &[backend])
        // A client may close its side before the last reply has come back.
        .termination_delay("30s")
        .to_toml()
}

fn redis_cli(port: u16, args: &[&str]) -> Ran {
    run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        b"",
        Duration::from_secs(20),
    )
}

/// `total_commands_processed` from the server's INFO, asked directly.
fn commands_processed(redis_port: u16) -> u64 {
    let info = redis_cli(redis_port, &["info", "stats"]).expect_ok("redis-cli info");
    info.stdout
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn redis_cli_and_redis_benchmark_through_a_catch_all_entrypoint() {
    if !require_tool("redis-server", "redis-server") || !require_tool("redis-cli", "redis-tools") {
        return;
    }
    let redis = RedisServer::start();
    let p = Proxy::start(&catch_all_config(SocketAddr::from((
        [127, 0, 0, 1],
        redis.port,
    ))));
    let port = p.addr("main").port();

    let set = redis_cli(port, &["set", "k", "v"]).expect_ok("redis-cli set");
    assert_eq!(set.stdout.trim(), "OK");
    let get = redis_cli(port, &["get", "k"]).expect_ok("redis-cli get");
    assert_eq!(get.stdout.trim(), "v");
    for l in &p.wait_conns(2) {
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }

    const CLIENTS: usize = 50;
    const REQUESTS: u64 = 20_000;
    let before = commands_processed(redis.port);
    let bench = run(
        Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            &CLIENTS.to_string(),
            "-n",
            &REQUESTS.to_string(),
            "-t",
            "get,set",
            "-q",
        ]),
        b"",
        Duration::from_secs(60),
    )
    .expect_ok("redis-benchmark");
    // -q prints one summary line per test once all its requests are
    // answered (progress lines end with \r).
    let summaries: Vec<&str> = bench
        .stdout
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .collect();
    println!("redis-benchmark through the proxy: {summaries:?}");
    for test in ["SET:", "GET:"] {
        assert!(
            summaries.iter().any(|l| l.starts_with(test)),
            "no {test} summary: {}",
            bench.stdout
        );
    }
    assert!(
        !bench.stdout.contains("Error") && !bench.stderr.contains("Error"),
        "{}\n{}",
        bench.stdout,
        bench.stderr
    );
    // Every request reached the server (plus redis-benchmark's own CONFIG
    // GETs and our INFO).
    let served = commands_processed(redis.port) - before;
    assert!(
        served > 2 * REQUESTS,
        "{served} commands for {} requests",
        2 * REQUESTS
    );
    // And every connection of the benchmark was counted: two tests of 50
    // clients, each one closed cleanly.
    let lines = p.wait_conns(2 + 2 * CLIENTS);
    for l in &lines {
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }
}

/// smtplib connects (reading the greeting before it sends a byte), sends one
/// message and quits; prints the greeting's code.
const PY_SMTP_CLIENT: &str = r#"
import smtplib, sys
s = smtplib.SMTP(timeout=5)
code, banner = s.connect("127.0.0.1", int(sys.argv[1]))
print(code)
s.sendmail("a@example.test", ["b@example.test"], "Subject: hi\r\n\r\nbody via sluicegate\r\n")
s.quit()
"#;

#[test]
fn smtp_server_speaks_first_through_a_catch_all_entrypoint() {
    if !require_tool("python3", "python3") {
        return;
    }
    // Python 3.11's smtpd (Debian 12): a real SMTP server, which greets
    // first. Python 3.12 removed the module.
    let has_smtpd = run(
        Command::new("python3").args(["-W", "ignore", "-c", "import smtpd"]),
        b"",
        Duration::from_secs(20),
    )
    .ok();
    if !has_smtpd {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "python3 has no smtpd module (Debian 12's python3 3.11 has it)"
        );
        note_skip("python3 has no smtpd module");
        return;
    }
    let dir = TempDir::new("smtp");
    let out_path = dir.0.join("smtpd.out");
    let smtp_port = free_port();
    let _smtpd = ChildGuard::spawn(
        Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-u",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
            ])
            .arg(format!("127.0.0.1:{smtp_port}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null()),
    );
    wait_listening(smtp_port, Duration::from_secs(20));
    let p = Proxy::start(&catch_all_config(SocketAddr::from((
        [127, 0, 0, 1],
        smtp_port,
    ))));

    let t = Instant::now();
    let ran = run(
        Command::new("python3").args(["-c", PY_SMTP_CLIENT, &p.addr("main").port().to_string()]),
        b"",
        Duration::from_secs(20),
    )
    .expect_ok("smtplib client");
    assert_eq!(
        ran.stdout.lines().next(),
        Some("220"),
        "greeting: {}",
        ran.stdout
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The message reached the server through the proxy.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.contains("body via sluicegate") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "smtpd did not log the message: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
}

/// Replace `from` (which must occur) with `to` in the example's text.
fn substitute(text: &mut String, from: &str, to: &str) {
    assert!(
        text.contains(from),
        "the example no longer contains {from:?}"
    );
    *text = text.replace(from, to);
}

#[test]
fn guide_example_multiple_services_on_one_port_with_real_tls_clients() {
    if !require_tool("openssl", "openssl")
        || !require_tool("redis-server", "redis-server")
        || !require_tool("redis-cli", "redis-tools")
    {
        return;
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples/08-multiple-services-one-port.toml");
    let mut cfg = std::fs::read_to_string(&example).unwrap();

    let pki = Pki::new();
    let (pg_crt, pg_key) = pki.leaf("postgres.example.com", &["postgres.example.com"]);
    let (my_crt, my_key) = pki.leaf("mysql.example.com", &["mysql.example.com"]);
    let (rd_crt, rd_key) = pki.leaf("redis.example.com", &["redis.example.com"]);
    let pg = SServer::start(&pg_crt, &pg_key);
    let mysql = SServer::start(&my_crt, &my_key);
    // Redis with TLS is a real TLS backend for the redis name.
    let redis = RedisServer::start_tls(&rd_crt, &rd_key, &pki.ca);

    // The committed example, with test addresses in place of its own.
    substitute(&mut cfg, "\":9000\"", "\"127.0.0.1:0\"");
    substitute(&mut cfg, "10.0.0.5:5432", &pg.addr.to_string());
    substitute(&mut cfg, "10.0.0.8:3306", &mysql.addr.to_string());
    substitute(
        &mut cfg,
        "10.0.0.7:6379",
        &format!("127.0.0.1:{}", redis.port),
    );
    let p = Proxy::start(&cfg);
    let addr = p.addr("tcp-generic");

    let mut n = 0;
    for (name, router) in [
        ("postgres.example.com", "db-postgres"),
        ("mysql.example.com", "db-mysql"),
    ] {
        let ran = s_client(addr, name, &pki.ca, &format!("to {name}\nCLOSE\n"));
        assert!(ran.ok(), "{name}: {}\n{}", ran.stdout, ran.stderr);
        assert_eq!(subject(&ran), Some(format!("CN = {name}").as_str()));
        let reversed: String = format!("to {name}").chars().rev().collect();
        assert!(ran.stdout.lines().any(|l| l == reversed), "{}", ran.stdout);
        n += 1;
        let l = &p.wait_conns(n)[n - 1];
        assert_eq!(field(l, "router").as_deref(), Some(router), "{l}");
        assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    }

    // openssl s_client speaking RESP to the real TLS redis behind the name.
    let ran = s_client(addr, "redis.example.com", &pki.ca, "PING\r\nQUIT\r\n");
    assert!(ran.ok(), "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(subject(&ran), Some("CN = redis.example.com"));
    assert!(ran.stdout.contains("+PONG"), "{}", ran.stdout);
    n += 1;
    let l = &p.wait_conns(n)[n - 1];
    assert_eq!(field(l, "router").as_deref(), Some("db-redis"), "{l}");

    // redis-cli with TLS and SNI, verifying the certificate, end to end.
    let tls = |args: &[&str]| {
        let mut all = vec!["--tls", "--sni", "redis.example.com", "--cacert"];
        all.push(pki.ca.to_str().unwrap());
        all.extend_from_slice(args);
        redis_cli(addr.port(), &all)
    };
    assert_eq!(
        tls(&["set", "k", "v"])
            .expect_ok("redis-cli --tls set")
            .stdout
            .trim(),
        "OK"
    );
    assert_eq!(
        tls(&["get", "k"])
            .expect_ok("redis-cli --tls get")
            .stdout
            .trim(),
        "v"
    );
    for l in &p.wait_conns(n + 2)[n..] {
        assert_eq!(field(l, "router").as_deref(), Some("db-redis"), "{l}");
    }
}
