//! Database high availability through the real binary, against real
//! servers: a PostgreSQL primary with a streaming replica (`pg_basebackup
//! -R`), a Redis master with a replica, and an HTTP endpoint in Patroni's
//! manner. Role-aware health checks (postgres, redis, http), the TCP
//! failover service (reads on the replica, back on the primary when it is
//! gone), `onServerDown = "close"` and `switchoverHold`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::openssl::Pki;
use support::pg::{self, psql, PgCluster};
use support::process::{run, Ran};
use support::redis::RedisServer;
use support::*;

/// `GET path` on the admin entrypoint: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// A health-check transition line of the proxy for `service`/`server`.
fn transition(l: &str, msg: &str, service: &str, server: &str) -> bool {
    l.contains(&format!("msg=\"{msg}\""))
        && field(l, "service").as_deref() == Some(service)
        && field(l, "server").as_deref() == Some(server)
}

fn conninfo(addr: SocketAddr, app: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable application_name={app}",
        addr.port()
    )
}

/// SQL through the proxy; the output, trimmed.
fn sql_via(addr: SocketAddr, sql: &str) -> String {
    psql(&conninfo(addr, "ha-test"), sql)
        .expect_ok("psql through the proxy")
        .stdout
        .trim()
        .to_string()
}

/// The port of the PostgreSQL server a new connection through `addr` reaches.
fn pg_port_via(addr: SocketAddr) -> u16 {
    sql_via(addr, "show port").parse().unwrap()
}

/// Poll `f` until it returns true, up to `limit`; false on timeout.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The two role services over the same servers, a failover for reads, and
/// writes with `onServerDown = "close"` and a hold.
fn pg_config(a: u16, b: u16, pw_file: &std::path::Path) -> String {
    let servers = [format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")];
    let mut c = Cfg::new()
        .entrypoint("writes")
        .entrypoint("reads")
        .entrypoint("traefik")
        .table("api")
        .table("metrics.prometheus")
        .router_on("w", "writes", "HostSNI(`*`)", "primary")
        .router_on("r", "reads", "HostSNI(`*`)", "reads")
        .set("tcp.services.reads.failover", "service", "replica")
        .and("fallback", "primary")
        .lb("primary", "onServerDown", "close")
        .and("switchoverHold", "30s");
    for role in ["primary", "replica"] {
        c = c.table(&format!("tcp.services.{role}.loadBalancer"));
        for s in &servers {
            c = c.server(role, s);
        }
        c = c
            .set(
                &format!("tcp.services.{role}.loadBalancer.healthCheck"),
                "interval",
                "200ms",
            )
            .and("timeout", "3s")
            .and("role", role)
            .set(
                &format!("tcp.services.{role}.loadBalancer.healthCheck.postgres"),
                "user",
                "health",
            )
            .and("database", "postgres")
            .and("passwordFile", pw_file);
    }
    c.to_toml()
}

/// psql kept open on stdin: a session that stays connected.
struct Session {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Session {
    fn open(addr: SocketAddr, app: &str) -> Session {
        let mut child = Command::new("psql")
            .args([&conninfo(addr, app), "-X", "-A", "-t", "-q"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Session { child, out }
    }

    fn query(&mut self, sql: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql};").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sessions of `app` on `cluster`, asked directly.
fn sessions_of(cluster: &PgCluster, app: &str) -> u32 {
    cluster
        .sql(&format!(
            "select count(*) from pg_stat_activity where application_name = '{app}'"
        ))
        .parse()
        .unwrap()
}

#[test]
fn postgres_primary_and_replica_reads_fail_over_writes_follow_and_old_sessions_close() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("pg", &["pg"]);
    let a = PgCluster::start(&crt, &key);
    // The check logs in as `health` with SCRAM-SHA-256 (the hba line comes
    // first, so it wins over initdb's trust lines); the replica inherits
    // role, password and hba with the base backup.
    a.sql("create role health login password 'h3alth pw'");
    a.sql("create table t(v int)");
    a.hba_first("host all health 127.0.0.1/32 scram-sha-256");
    let b = PgCluster::replica_of(&a);
    assert_eq!(b.sql("select pg_is_in_recovery()"), "t");
    let dir = TempDir::new("ha-pg");
    let pw = dir.write("pw", "h3alth pw\n");
    let p = Proxy::start(&pg_config(a.port, b.port, &pw));
    let (writes, reads, admin) = (p.addr("writes"), p.addr("reads"), p.addr("traefik"));
    let sa = format!("127.0.0.1:{}", a.port);
    let sb = format!("127.0.0.1:{}", b.port);

    // First verdicts: A primary, B replica, each "healthy, not in the
    // wanted role" for the other service (not down).
    p.wait_logs(1, |l| transition(l, "server healthy", "primary", &sa));
    p.wait_logs(1, |l| transition(l, "server healthy", "replica", &sb));
    let other = "server healthy, not in the wanted role";
    let line = p.wait_logs(1, |l| transition(l, other, "primary", &sb));
    assert_eq!(field(&line[0], "verdict").as_deref(), Some("replica"));
    let line = p.wait_logs(1, |l| transition(l, other, "replica", &sa));
    assert_eq!(field(&line[0], "verdict").as_deref(), Some("primary"));

    // Writes land on the primary, reads on the replica.
    assert_eq!(pg_port_via(writes), a.port);
    sql_via(writes, "insert into t values (1)");
    assert_eq!(pg_port_via(reads), b.port);
    assert_eq!(sql_via(reads, "select pg_is_in_recovery()"), "t");
    assert!(
        eventually(Duration::from_secs(20), || sql_via(
            reads,
            "select count(*) from t"
        ) == "1"),
        "the row written through `writes` never reached the replica"
    );

    // /api and /metrics tell the verdict, not only UP/DOWN.
    let (_, api) = get(admin, "/api/tcp/services/primary");
    assert!(
        api.contains(&format!(
            "\"serverStatus\":{{\"{sa}\":\"UP\",\"{sb}\":\"DOWN\"}},\"serverVerdict\":{{\"{sa}\":\"primary\",\"{sb}\":\"replica\"}}"
        )),
        "{api}"
    );
    assert!(
        api.contains("\"check\":\"postgres\",\"role\":\"primary\""),
        "{api}"
    );
    assert!(!api.contains("h3alth"), "the password is shown: {api}");
    let (_, api) = get(admin, "/api/tcp/services/reads");
    assert!(
        api.contains(
            "\"type\":\"failover\",\"failover\":{\"service\":\"replica\",\"fallback\":\"primary\"}"
        ),
        "{api}"
    );
    let (_, metrics) = get(admin, "/metrics");
    for l in [
        format!("sluicegate_server_up{{service=\"primary\",server=\"{sb}\"}} 0"),
        format!("sluicegate_server_verdict{{service=\"primary\",server=\"{sb}\",verdict=\"replica\"}} 1"),
        format!("sluicegate_server_verdict{{service=\"primary\",server=\"{sb}\",verdict=\"down\"}} 0"),
        format!("sluicegate_server_up{{service=\"replica\",server=\"{sb}\"}} 1"),
    ] {
        assert!(has_line(&metrics, &l), "missing `{l}` in:\n{metrics}");
    }

    // The replica stops: reads fall back to the primary.
    b.stop();
    let down = p.wait_logs(1, |l| transition(l, "server unhealthy", "replica", &sb));
    assert_eq!(field(&down[0], "verdict").as_deref(), Some("down"));
    assert_eq!(pg_port_via(reads), a.port);
    assert_eq!(sql_via(reads, "select count(*) from t"), "1");
    // It comes back: reads return to it.
    b.start_again();
    p.wait_logs(2, |l| transition(l, "server healthy", "replica", &sb));
    assert_eq!(pg_port_via(reads), b.port);

    // An open write session on A, seen by A.
    let mut s = Session::open(writes, "ha-session");
    assert_eq!(s.query("show port"), a.port.to_string());
    assert_eq!(sessions_of(&a, "ha-session"), 1);

    // A is fenced (its check login refused in A's own pg_hba.conf, which
    // is not replicated, as an orchestrator fences a primary it gives up
    // on): it is marked down for `primary`, and the proxy resets the open
    // session, which A itself would have kept.
    a.hba_first("host all health 127.0.0.1/32 reject");
    let down = p.wait_logs(1, |l| transition(l, "server unhealthy", "primary", &sa));
    assert!(
        field(&down[0], "reason")
            .unwrap()
            .starts_with("postgres: 28000"),
        "{}",
        down[0]
    );
    let closed = p.wait_logs(1, |l| l.contains("msg=\"sessions closed: server down\""));
    assert_eq!(field(&closed[0], "service").as_deref(), Some("primary"));
    assert!(
        eventually(Duration::from_secs(10), || sessions_of(&a, "ha-session")
            == 0),
        "the session on the old primary is still open"
    );
    // Its access-log line says why it ended.
    p.wait_logs(1, |l| {
        l.contains("msg=conn")
            && l.contains("outcome=server_down")
            && field(l, "server").as_deref() == Some(sa.as_str())
    });
    drop(s);

    // No primary now: a new write connection waits (switchoverHold)
    // instead of being refused...
    let t_wait = Instant::now();
    let held = thread::spawn(move || {
        let port = pg_port_via(writes);
        sql_via(writes, "insert into t values (2)");
        (port, Instant::now())
    });
    thread::sleep(Duration::from_millis(800));
    assert!(!held.is_finished(), "a write was served with no primary");
    // ...until the replica is promoted; the write lands on it.
    b.promote();
    let promoted = Instant::now();
    let (port, done) = held.join().unwrap();
    assert_eq!(port, b.port);
    let follow = done.duration_since(promoted);
    let waited = done.duration_since(t_wait);
    eprintln!(
        "ha: writes followed the promoted replica {} ms after pg_ctl promote returned (held {} ms in all)",
        follow.as_millis(),
        waited.as_millis()
    );
    assert!(follow < Duration::from_secs(10), "{follow:?}");
    p.wait_logs(1, |l| transition(l, "server healthy", "primary", &sb));
    // A is stopped for good: writes stay on B, reads fall back to it too
    // (no replica is left).
    a.stop();
    assert_eq!(pg_port_via(writes), b.port);
    assert_eq!(sql_via(writes, "select count(*) from t"), "2");
    assert!(eventually(Duration::from_secs(10), || pg_port_via(reads) == b.port));
    let (_, metrics) = get(admin, "/metrics");
    for l in [
        "sluicegate_service_hold_total{service=\"primary\",outcome=\"timeout\"} 0",
        "sluicegate_server_down_sessions_closed_total{service=\"primary\"} 1",
    ] {
        assert!(has_line(&metrics, l), "missing `{l}` in:\n{metrics}");
    }
    let served = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("sluicegate_service_hold_total{service=\"primary\",outcome=\"served\"} ")
        })
        .unwrap_or_else(|| panic!("no hold count in:\n{metrics}"));
    // The held connection (show port; the insert after it found the new
    // primary at once); psql's reset of the closed session may have been
    // held too.
    assert!(
        (1..=2).contains(&served.parse::<u32>().unwrap()),
        "{served}"
    );
}

#[test]
fn a_wrong_postgres_password_is_down_with_the_servers_reason_and_never_logged() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("pg", &["pg"]);
    let a = PgCluster::start(&crt, &key);
    a.sql("create role health login password 'right'");
    a.hba_first("host all health 127.0.0.1/32 scram-sha-256");
    let dir = TempDir::new("ha-pw");
    let pw = dir.write("pw", "wrong-secret\n");
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .table("tcp.services.s.loadBalancer")
        .server("s", format!("127.0.0.1:{}", a.port))
        .set(
            "tcp.services.s.loadBalancer.healthCheck",
            "interval",
            "200ms",
        )
        .set(
            "tcp.services.s.loadBalancer.healthCheck.postgres",
            "user",
            "health",
        )
        .and("passwordFile", &pw)
        .to_toml();
    let p = Proxy::start(&cfg);
    let down = p.wait_logs(1, |l| l.contains("msg=\"server unhealthy\""));
    assert!(
        field(&down[0], "reason")
            .unwrap()
            .starts_with("postgres: 28P01 password authentication failed for user"),
        "{}",
        down[0]
    );
    // No server: refused at once (no hold configured).
    let r = psql(&conninfo(p.addr("main"), "x"), "select 1");
    assert!(!r.ok());
    assert!(p.wait_conns(1)[0].contains("outcome=no_server"));
    assert!(!p.logs().iter().any(|l| l.contains("wrong-secret")));
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

fn redis_port_via(addr: SocketAddr) -> u16 {
    let info = redis_cli(addr.port(), &["info", "server"]).expect_ok("info server");
    info.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("tcp_port:"))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn redis_role_check_moves_writes_to_the_new_master_and_closes_sessions_on_the_old() {
    if !require_tool("redis-server", "redis-server") || !require_tool("redis-cli", "redis-tools") {
        return;
    }
    let a = RedisServer::start();
    let b = RedisServer::start();
    redis_cli(b.port, &["replicaof", "127.0.0.1", &a.port.to_string()]).expect_ok("replicaof");
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "w")
        .lb("w", "onServerDown", "close")
        .server("w", format!("127.0.0.1:{}", a.port))
        .server("w", format!("127.0.0.1:{}", b.port))
        .set(
            "tcp.services.w.loadBalancer.healthCheck",
            "interval",
            "100ms",
        )
        .and("timeout", "2s")
        .and("role", "primary")
        .and("redis", true)
        .to_toml();
    let p = Proxy::start(&cfg);
    let main = p.addr("main");
    let (sa, sb) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );
    p.wait_logs(1, |l| transition(l, "server healthy", "w", &sa));
    let other = p.wait_logs(1, |l| {
        transition(l, "server healthy, not in the wanted role", "w", &sb)
    });
    assert_eq!(field(&other[0], "verdict").as_deref(), Some("replica"));
    for _ in 0..4 {
        assert_eq!(redis_port_via(main), a.port);
    }
    assert_eq!(
        redis_cli(main.port(), &["set", "k", "1"])
            .expect_ok("set")
            .stdout
            .trim(),
        "OK"
    );
    // An open session on the master.
    let mut s = TcpStream::connect(main).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    // Switchover: the replica becomes master, the old master its replica.
    redis_cli(b.port, &["replicaof", "no", "one"]).expect_ok("replicaof no one");
    redis_cli(a.port, &["replicaof", "127.0.0.1", &b.port.to_string()]).expect_ok("demote");
    let t = Instant::now();
    p.wait_logs(1, |l| transition(l, "server healthy", "w", &sb));
    let demoted = p.wait_logs(1, |l| {
        transition(l, "server healthy, not in the wanted role", "w", &sa)
    });
    assert_eq!(field(&demoted[0], "verdict").as_deref(), Some("replica"));
    // The session on the demoted master is closed by the proxy (a reset or
    // an end, never a reply).
    let mut rest = [0u8; 16];
    match s.read(&mut rest) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the old session is still open: {:?}", &rest[..n]),
    }
    assert!(
        eventually(Duration::from_secs(10), || redis_port_via(main) == b.port),
        "writes did not follow"
    );
    eprintln!(
        "ha: redis writes followed the new master {} ms after the switch",
        t.elapsed().as_millis()
    );
    assert_eq!(
        redis_cli(main.port(), &["set", "k", "2"])
            .expect_ok("set")
            .stdout
            .trim(),
        "OK"
    );
    assert_eq!(
        redis_cli(main.port(), &["get", "k"])
            .expect_ok("get")
            .stdout
            .trim(),
        "2"
    );
}

/// An HTTP health endpoint in Patroni's manner on `ip:port`: answers every
/// request with the status in `status` and records request heads.
struct HttpHealth {
    status: Arc<AtomicU16>,
    heads: Arc<Mutex<Vec<String>>>,
}

fn http_health(l: TcpListener) -> HttpHealth {
    let status = Arc::new(AtomicU16::new(200));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (st, hd) = (status.clone(), heads.clone());
    thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(c.read(&mut b), Ok(1)) {
                head.push(b[0]);
            }
            hd.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let code = st.load(Ordering::SeqCst);
            let _ = write!(
                c,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    HttpHealth { status, heads }
}

fn tagged(ip: &str, tag: &'static [u8]) -> Backend {
    Backend::start_on(&format!("{ip}:0"), move |mut s| {
        let _ = s.write_all(tag);
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    })
}

fn who(addr: SocketAddr) -> char {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    b[0] as char
}

#[test]
fn http_check_follows_a_patroni_style_primary_endpoint_with_rise_and_fall() {
    let a = tagged("127.0.0.1", b"A");
    let b = tagged("127.0.0.2", b"B");
    // The same check port on both addresses (Patroni's 8008 on each node).
    let (la, lb) = (0..20)
        .find_map(|_| {
            let la = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = la.local_addr().unwrap().port();
            TcpListener::bind(("127.0.0.2", port))
                .ok()
                .map(|lb| (la, lb))
        })
        .expect("a port free on 127.0.0.1 and 127.0.0.2");
    let port = la.local_addr().unwrap().port();
    let (ha, hb) = (http_health(la), http_health(lb));
    hb.status.store(503, Ordering::SeqCst);
    let cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[a.addr, b.addr])
        .set("tcp.services.s.loadBalancer.healthCheck", "port", port)
        .and("interval", "50ms")
        .and("timeout", "1s")
        .and("rise", 3)
        .and("fall", 2)
        .set(
            "tcp.services.s.loadBalancer.healthCheck.http",
            "method",
            "GET",
        )
        .and("path", "/primary")
        .and("status", 200)
        .to_toml();
    let p = Proxy::start(&cfg);
    let main = p.addr("main");
    let down = p.wait_logs(1, |l| l.contains("msg=\"server unhealthy\""));
    assert_eq!(field(&down[0], "server"), Some(b.addr.to_string()));
    assert_eq!(
        field(&down[0], "reason").as_deref(),
        Some("http: status 503")
    );
    let s: String = (0..4).map(|_| who(main)).collect();
    assert_eq!(s, "AAAA");
    let head = ha.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with(&format!(
            "GET /primary HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        )),
        "{head:?}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head:?}");

    // Switch: B answers 200, A 503. Fall = 2 and rise = 3: it takes that
    // many probes in a row, counted in the probe log of each server.
    let before_a = ha.heads.lock().unwrap().len();
    let before_b = hb.heads.lock().unwrap().len();
    hb.status.store(200, Ordering::SeqCst);
    ha.status.store(503, Ordering::SeqCst);
    let up = p.wait_logs(1, |l| l.contains("msg=\"server healthy\""));
    assert_eq!(field(&up[0], "server"), Some(b.addr.to_string()));
    assert!(hb.heads.lock().unwrap().len() - before_b >= 3);
    p.wait_logs(1, |l| {
        l.contains("msg=\"server unhealthy\"") && field(l, "server") == Some(a.addr.to_string())
    });
    assert!(ha.heads.lock().unwrap().len() - before_a >= 2);
    let s: String = (0..4).map(|_| who(main)).collect();
    assert_eq!(s, "BBBB");
}

/// `sluicegate check -c FILE` on `text`: the error lines.
fn check_errors(text: &str) -> String {
    let dir = TempDir::new("ha-check");
    let path = dir.write("c.toml", text);
    let r = run(
        Command::new(support::BIN).arg("check").arg("-c").arg(&path),
        b"",
        Duration::from_secs(30),
    );
    assert!(!r.ok(), "check accepted:\n{text}");
    r.stderr.replace(&path.display().to_string(), "c.toml")
}

#[test]
fn check_explains_the_ha_keys_it_refuses() {
    let base = r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
servers = [{ address = "127.0.0.1:5432" }]
"#;
    let cases = [
        (
            "[tcp.services.s.loadBalancer.healthCheck]\nrole = \"primary\"\n",
            "c.toml:10:8: `tcp.services.s.loadBalancer.healthCheck.role` needs a check that finds the role (postgres or redis); with http, the endpoint decides (Patroni's /primary, /replica)",
        ),
        (
            "[tcp.services.s.loadBalancer.healthCheck]\nmysql = {}\n",
            "c.toml:10:1: `tcp.services.s.loadBalancer.healthCheck.mysql` is not supported: a MySQL/MariaDB check",
        ),
        (
            "[tcp.services.s.loadBalancer.healthCheck]\nsend = \"x\"\n[tcp.services.s.loadBalancer.healthCheck.postgres]\n",
            "c.toml:9:1: `tcp.services.s.loadBalancer.healthCheck`: `send`/`expect` belong to the plain TCP check",
        ),
        (
            "[tcp.services.s.loadBalancer.healthCheck.redis]\npasswordEnv = \"SLUICEGATE_HA_TEST_UNSET\"\n",
            "c.toml:10:15: `tcp.services.s.loadBalancer.healthCheck.redis.passwordEnv`: environment variable SLUICEGATE_HA_TEST_UNSET is not set",
        ),
        (
            "[tcp.services.s.loadBalancer.healthCheck]\nrise = 0\n",
            "c.toml:10:8: `tcp.services.s.loadBalancer.healthCheck.rise` must be from 1 to 100",
        ),
        (
            "[tcp.services.f.failover]\nservice = \"s\"\n",
            "c.toml:9:1: [tcp.services.f.failover] needs `fallback`",
        ),
    ];
    for (extra, want) in cases {
        let errors = check_errors(&format!("{base}{extra}"));
        assert!(errors.contains(want), "want `{want}` in:\n{errors}");
    }
    // onServerDown has two values.
    let errors = check_errors(&base.replace(
        "[tcp.services.s.loadBalancer]\n",
        "[tcp.services.s.loadBalancer]\nonServerDown = \"shutdown\"\n",
    ));
    assert!(
        errors.contains("c.toml:8:16: `tcp.services.s.loadBalancer.onServerDown` must be \"keep\" or \"close\", not \"shutdown\""),
        "{errors}"
    );
}

/// A backend that greets with `tag`, then echoes.
fn tagged_echo(ip: &str, tag: &'static [u8]) -> Backend {
    Backend::start_on(&format!("{ip}:0"), move |mut s| {
        let _ = s.write_all(tag);
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// A session through `addr`: its greeting tag.
fn open_tagged(addr: SocketAddr) -> (TcpStream, char) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    (s, b[0] as char)
}

/// Whether the session still echoes.
fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// Whether the proxy ended the session (end of stream or reset) within the
/// read timeout.
fn ended(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 8];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn close_cuts_sessions_of_removed_and_down_servers_even_from_an_earlier_config_keep_does_not() {
    let a = tagged_echo("127.0.0.1", b"A");
    let b = tagged_echo("127.0.0.2", b"B");
    let (la, lb) = (0..20)
        .find_map(|_| {
            let la = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = la.local_addr().unwrap().port();
            TcpListener::bind(("127.0.0.2", port))
                .ok()
                .map(|lb| (la, lb))
        })
        .expect("a port free on 127.0.0.1 and 127.0.0.2");
    let port = la.local_addr().unwrap().port();
    let (ha, hb) = (http_health(la), http_health(lb));
    // `http` as an inline table, as Traefik's docs write it.
    let cfg = |close_servers: &[SocketAddr]| {
        Cfg::new()
            .entrypoint("close")
            .entrypoint("keep")
            .router_on("c", "close", "HostSNI(`*`)", "c")
            .router_on("k", "keep", "HostSNI(`*`)", "k")
            .lb("c", "onServerDown", "close")
            .service("c", close_servers)
            .set("tcp.services.c.loadBalancer.healthCheck", "port", port)
            .and("interval", "50ms")
            .and("http", Raw("{ path = \"/health\" }"))
            .service("k", &[a.addr])
            .set("tcp.services.k.loadBalancer.healthCheck", "port", port)
            .and("interval", "50ms")
            .and("http", Raw("{ path = \"/health\" }"))
            .workers(2)
            .to_toml()
    };
    let both = [a.addr, b.addr];
    let p = Proxy::start(&cfg(&both));
    let (close, keep) = (p.addr("close"), p.addr("keep"));
    // Two workers, each with its own rotation: open sessions until one is
    // on A and one on B (the others close at once).
    let (mut ca, mut cb) = (None, None);
    let mut dropped = 0;
    for _ in 0..20 {
        let (s, t) = open_tagged(close);
        match t {
            'A' if ca.is_none() => ca = Some(s),
            'B' if cb.is_none() => cb = Some(s),
            _ => dropped += 1,
        }
    }
    // The dropped ones have ended before anything is cut.
    p.wait_conns(dropped);
    let (mut ca, mut cb) = (ca.expect("no session on A"), cb.expect("no session on B"));
    let (mut k, tk) = open_tagged(keep);
    assert_eq!(tk, 'A');
    assert!(echoes(&mut ca) && echoes(&mut cb) && echoes(&mut k));

    // A reload removes A from `c`: its session there is closed, the one on
    // B stays, and `k` (keep, A still in it) is untouched.
    std::fs::write(&p.config_path, cfg(&[b.addr])).unwrap();
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert!(ended(&mut ca), "the session on the removed server stayed");
    let a_addr = a.addr.to_string();
    p.wait_logs(1, |l| {
        l.contains("msg=conn")
            && l.contains("outcome=server_down")
            && field(l, "server").as_deref() == Some(a_addr.as_str())
    });
    assert!(echoes(&mut cb) && echoes(&mut k));
    let (_, t) = open_tagged(close);
    assert_eq!(t, 'B');

    // B goes down: its session, accepted under the first config, is closed
    // by the verdict of the checks the reload started.
    hb.status.store(503, Ordering::SeqCst);
    assert!(ended(&mut cb), "the session on the down server stayed");
    // A goes down: `k` keeps its session (Traefik's behaviour).
    ha.status.store(503, Ordering::SeqCst);
    p.wait_logs(1, |l| {
        l.contains("msg=\"server unhealthy\"") && field(l, "service").as_deref() == Some("k")
    });
    thread::sleep(Duration::from_millis(200));
    assert!(echoes(&mut k), "keep closed a session");
    let closed: u64 = p
        .logs()
        .iter()
        .filter(|l| l.contains("msg=\"sessions closed: server down\""))
        .map(|l| field(l, "closed").unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(closed, 2);
}

#[test]
fn redis_check_authenticates_as_an_acl_user_and_a_wrong_password_is_down() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    // The check's user may run ROLE only; clients need the default password.
    let r = RedisServer::start_with(&[
        "--requirepass",
        "client-pw",
        "--user",
        "health",
        "on",
        ">check pw",
        "+role",
    ]);
    let dir = TempDir::new("ha-redis-auth");
    let good = dir.write("good", "check pw\n");
    let bad = dir.write("bad", "not it\n");
    let cfg = |pw: &std::path::Path| {
        Cfg::new()
            .entrypoint("main")
            .router("r", "HostSNI(`*`)", "s")
            .table("tcp.services.s.loadBalancer")
            .server("s", format!("127.0.0.1:{}", r.port))
            .set(
                "tcp.services.s.loadBalancer.healthCheck",
                "interval",
                "100ms",
            )
            .and("role", "primary")
            .set(
                "tcp.services.s.loadBalancer.healthCheck.redis",
                "username",
                "health",
            )
            .and("passwordFile", pw)
            .to_toml()
    };
    let p = Proxy::start(&cfg(&good));
    let up = p.wait_logs(1, |l| l.contains("msg=\"server healthy\""));
    assert_eq!(field(&up[0], "verdict").as_deref(), Some("primary"));
    drop(p);
    let p = Proxy::start(&cfg(&bad));
    let down = p.wait_logs(1, |l| l.contains("msg=\"server unhealthy\""));
    assert!(
        down[0].contains(
            r#"reason="redis: AUTH answered \"-WRONGPASS invalid username-password pair"#
        ),
        "{}",
        down[0]
    );
    assert!(!p.logs().iter().any(|l| l.contains("not it")));
}

/// The address of the PostgreSQL server a new connection through `addr`
/// reaches (`inet_server_addr()`): 127.0.0.1 is node 1, 127.0.0.2 node 2.
fn pg_host_via(addr: SocketAddr) -> String {
    sql_via(addr, "select host(inet_server_addr())")
}

#[test]
fn patroni_switchover_moves_writes_behind_the_http_check() {
    if !support::patroni::available() {
        return;
    }
    let cluster = support::patroni::Patroni::start();
    let (pg_port, rest) = (cluster.pg_port, cluster.rest_port);
    let svc = |c: Cfg, name: &str, path: &str| {
        let hc = format!("tcp.services.{name}.loadBalancer.healthCheck");
        c.table(&format!("tcp.services.{name}.loadBalancer"))
            .server(name, format!("127.0.0.1:{pg_port}"))
            .server(name, format!("127.0.0.2:{pg_port}"))
            .set(&hc, "port", rest)
            .and("interval", "100ms")
            .and("timeout", "2s")
            .and("http", Raw(&format!("{{ path = {path:?} }}")))
    };
    let c = Cfg::new()
        .entrypoint("writes")
        .entrypoint("reads")
        .router_on("w", "writes", "HostSNI(`*`)", "primary")
        .router_on("r", "reads", "HostSNI(`*`)", "reads")
        .set("tcp.services.reads.failover", "service", "replica")
        .and("fallback", "primary")
        .lb("primary", "onServerDown", "close")
        .and("switchoverHold", "30s");
    let c = svc(c, "primary", "/primary");
    let cfg = svc(c, "replica", "/replica").to_toml();
    let p = Proxy::start(&cfg);
    let (writes, reads) = (p.addr("writes"), p.addr("reads"));
    let n1 = format!("127.0.0.1:{pg_port}");
    let n2 = format!("127.0.0.2:{pg_port}");
    p.wait_logs(1, |l| {
        l.contains("msg=\"server unhealthy\"")
            && field(l, "server").as_deref() == Some(n2.as_str())
            && field(l, "service").as_deref() == Some("primary")
    });
    assert_eq!(pg_host_via(writes), "127.0.0.1");
    assert!(eventually(Duration::from_secs(10), || pg_host_via(reads)
        == "127.0.0.2"));
    sql_via(writes, "create table w(i int, at text)");

    // One writer, a new connection per write (as pgbench -C), through the
    // switchover: each write either lands (and says where) or fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut results: Vec<(Instant, Result<String, String>)> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = psql(
                    &conninfo(writes, "ha-writer"),
                    &format!("insert into w values ({i}, host(inet_server_addr())) returning at"),
                );
                // The returned row, then psql's "INSERT 0 1".
                let out = if r.ok() {
                    Ok(r.stdout.lines().next().unwrap_or("").trim().to_string())
                } else {
                    Err(r.stderr.trim().to_string())
                };
                results.push((Instant::now(), out));
            }
            results
        })
    };
    thread::sleep(Duration::from_millis(1000));
    let t0 = Instant::now();
    let out = cluster.switchover(2);
    let switched = Instant::now();
    cluster.wait_leader(2, Duration::from_secs(60));
    // Writes keep going a while on the new primary.
    assert!(
        eventually(Duration::from_secs(30), || pg_host_via(writes)
            == "127.0.0.2"),
        "writes did not follow; patroni:\n{out}\n{}",
        cluster.logs()
    );
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let results = writer.join().unwrap();
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let last_old = results
        .iter()
        .rev()
        .find(|(_, r)| r.as_deref() == Ok("127.0.0.1"))
        .map(|(t, _)| *t);
    let first_new = results
        .iter()
        .find(|(_, r)| r.as_deref() == Ok("127.0.0.2"))
        .map(|(t, _)| *t)
        .expect("no write landed on the new primary");
    let gap = last_old.map_or(Duration::ZERO, |t| first_new.saturating_duration_since(t));
    eprintln!(
        "ha: patroni switchover: patronictl took {} ms; {} writes, {} failed; no write landed for {} ms (last on n1 to first on n2); first write on n2 {} ms after patronictl started",
        switched.duration_since(t0).as_millis(),
        results.len(),
        failed.len(),
        gap.as_millis(),
        first_new.duration_since(t0).as_millis()
    );
    for f in &failed {
        eprintln!("ha: failed write: {f}");
    }
    // Writes were never split: everything after the first write on n2 went
    // to n2.
    let after: Vec<&str> = results
        .iter()
        .filter(|(t, _)| *t > first_new)
        .filter_map(|(_, r)| r.as_deref().ok())
        .collect();
    assert!(after.iter().all(|a| *a == "127.0.0.2"), "{after:?}");
    // The writer makes one write at a time: the one in flight when the old
    // primary shut down, plus the ones the check had not yet caught up
    // with (at most an interval's worth), may fail; not more.
    assert!(failed.len() <= 10, "{} failed: {failed:?}", failed.len());
    let n = sql_via(writes, "select count(*) from w");
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    assert_eq!(n.parse::<usize>().unwrap(), ok);
    // Reads follow too: the old primary came back as a replica.
    assert!(eventually(Duration::from_secs(30), || pg_host_via(reads)
        == "127.0.0.1"));
    p.wait_logs(1, |l| {
        l.contains("msg=\"server healthy\"")
            && field(l, "service").as_deref() == Some("replica")
            && field(l, "server").as_deref() == Some(n1.as_str())
    });
}

#[test]
fn a_hold_is_bounded_and_counted_when_no_server_comes() {
    // The only server is down by its check: a new connection waits the
    // hold out, then is refused as `no_server`; both holds are counted.
    let dead = refused_addr();
    let cfg = Cfg::new()
        .entrypoint("main")
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .router("r", "HostSNI(`*`)", "s")
        .lb("s", "switchoverHold", "400ms")
        .server("s", dead)
        .set(
            "tcp.services.s.loadBalancer.healthCheck",
            "interval",
            "100ms",
        )
        .to_toml();
    let p = Proxy::start(&cfg);
    p.wait_logs(1, |l| l.contains("msg=\"server unhealthy\""));
    for _ in 0..2 {
        let t = Instant::now();
        let mut s = TcpStream::connect(p.addr("main")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    let conns = p.wait_conns(2);
    assert!(
        conns.iter().all(|l| l.contains("outcome=no_server")),
        "{conns:?}"
    );
    let (_, metrics) = get(p.addr("traefik"), "/metrics");
    for l in [
        "sluicegate_service_hold_total{service=\"s\",outcome=\"served\"} 0",
        "sluicegate_service_hold_total{service=\"s\",outcome=\"timeout\"} 2",
    ] {
        assert!(has_line(&metrics, l), "missing `{l}` in:\n{metrics}");
    }
}

#[test]
fn postgres_check_logs_in_with_trust_cleartext_md5_and_scram() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let (crt, key) = pki.leaf("pg", &["pg"]);
    let a = PgCluster::start(&crt, &key);
    a.sql("create role u_trust login");
    a.sql("create role u_clear login password 'pw clear'");
    a.sql("set password_encryption = 'md5'; create role u_md5 login password 'pw md5'");
    a.sql("create role u_scram login password 'pw scram'");
    for (user, method) in [
        ("u_clear", "password"),
        ("u_md5", "md5"),
        ("u_scram", "scram-sha-256"),
    ] {
        a.hba_first(&format!("host all {user} 127.0.0.1/32 {method}"));
    }
    let dir = TempDir::new("ha-auth");
    let mut cfg = Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", "u_trust");
    for (user, pw) in [
        ("u_trust", None),
        ("u_clear", Some("pw clear")),
        ("u_md5", Some("pw md5")),
        ("u_scram", Some("pw scram")),
    ] {
        cfg = cfg
            .table(&format!("tcp.services.{user}.loadBalancer"))
            .server(user, format!("127.0.0.1:{}", a.port))
            .set(
                &format!("tcp.services.{user}.loadBalancer.healthCheck"),
                "interval",
                "10s",
            )
            .set(
                &format!("tcp.services.{user}.loadBalancer.healthCheck.postgres"),
                "user",
                user,
            )
            .and("database", "postgres");
        if let Some(pw) = pw {
            cfg = cfg.and("passwordFile", dir.write(user, pw));
        }
    }
    let cfg = cfg.to_toml();
    let p = Proxy::start(&cfg);
    for user in ["u_trust", "u_clear", "u_md5", "u_scram"] {
        let l = p.wait_logs(1, |l| {
            l.contains("msg=\"server healthy\"") && field(l, "service").as_deref() == Some(user)
        });
        assert_eq!(
            field(&l[0], "verdict").as_deref(),
            Some("primary"),
            "{user}"
        );
    }
    assert!(
        !p.logs().iter().any(|l| l.contains("unhealthy")),
        "{:?}",
        p.logs()
    );
    // The server saw each method: its log has no failed authentication.
    assert!(!a.log().contains("authentication failed"), "{}", a.log());
}
