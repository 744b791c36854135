//! The PostgreSQL front door through the real binary, against
//! real PostgreSQL 15 clusters and real clients (psql, psycopg's libpq):
//! cancel requests sent to the server that issued the key, routing by the
//! StartupMessage (PgDatabase, PgUser, PgParam) with rewrites, and the
//! ErrorResponse a malformed or unroutable startup packet gets.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::pg::{self, psql, PgCluster};
use support::process::run;
use support::*;

/// Entry point `pg`. The sessions here are PostgreSQL's (request, reply):
/// no reply follows a client's FIN, so terminationDelay plays no part.
fn pg_entrypoint() -> Cfg {
    Cfg::new().entrypoint("pg")
}

fn addr(c: &PgCluster) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], c.port))
}

/// A plain router `name` on `pg` with `rule`, to its own service `name`
/// balancing over `servers`.
fn route(c: Cfg, name: &str, rule: &str, servers: &[SocketAddr]) -> Cfg {
    c.router_on(name, "pg", rule, name).service(name, servers)
}

/// `route`, with an empty `postgres` table on the router (routing by the
/// StartupMessage with nothing rewritten).
fn pg_route(c: Cfg, name: &str, rule: &str, servers: &[SocketAddr]) -> Cfg {
    route(c, name, rule, servers).table(&format!("tcp.routers.{name}.postgres"))
}

fn conninfo(port: u16, user: &str, db: &str, extra: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} dbname={db} sslmode=disable {extra}")
}

/// psycopg: `n` sessions with the libpq `conninfo` (argv 1), each runs
/// `select pg_sleep(30)` and calls `cancel_safe()` 0.3 s later from another
/// thread; prints, per session, the server port it reached and the seconds
/// from the cancel call to QueryCanceled. statement_timeout (5 s) bounds a
/// cancel that went astray, which then shows as a 5 s delay.
const CANCEL_SCRIPT: &str = r#"
import sys, time, threading, psycopg
conninfo, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    conn = psycopg.connect(
        conninfo + " user=postgres dbname=postgres options='-c statement_timeout=5000'",
        autocommit=True)
    server = conn.execute("select inet_server_port()").fetchone()[0]
    started = []
    def cancel():
        time.sleep(0.3)
        started.append(time.monotonic())
        conn.cancel_safe()
    t = threading.Thread(target=cancel)
    t.start()
    try:
        conn.execute("select pg_sleep(30)")
        print(f"{server} not-cancelled", flush=True)
    except psycopg.errors.QueryCanceled as e:
        took = time.monotonic() - started[0]
        print(f"{server} {took:.3f} {str(e).strip().splitlines()[0]}", flush=True)
    t.join()
    conn.close()
"#;

#[test]
fn cancel_reaches_the_server_that_runs_the_query_behind_a_balancer() {
    if !pg::available() || !pg::psycopg_available() {
        return;
    }
    let a = pg::plain_cluster();
    let b = pg::plain_cluster();
    let cfg = pg_route(pg_entrypoint(), "db", "HostSNI(`*`)", &[addr(&a), addr(&b)]).to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port();
    const N: usize = 20;
    let ran = pg::python(
        CANCEL_SCRIPT,
        &[
            &format!("host=127.0.0.1 port={port} sslmode=disable"),
            &N.to_string(),
        ],
        Duration::from_secs(240),
    )
    .expect_ok("psycopg cancel script");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), N, "{}", ran.stdout);
    let mut servers = std::collections::HashSet::new();
    for l in &lines {
        let mut f = l.splitn(3, ' ');
        let server: u16 = f.next().unwrap().parse().unwrap();
        let took: f64 = f.next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"));
        let msg = f.next().unwrap_or("");
        assert!(
            took < 1.0,
            "cancelled only after {took} s: {l}\n{}",
            ran.stdout
        );
        // The user's cancel, not the statement_timeout safety net.
        assert_eq!(msg, "canceling statement due to user request", "{l}");
        servers.insert(server);
    }
    // Both servers ran queries, so a cancel sent to a random one would
    // have missed about half of them.
    assert_eq!(
        servers,
        [a.port, b.port].into_iter().collect(),
        "{}",
        ran.stdout
    );
    // Each cancel connection was sent on to a server.
    let cancels = p.wait_logs(N, |l| {
        field(l, "outcome").as_deref() == Some("pg_cancel_forwarded")
    });
    assert_eq!(cancels.len(), N);
    assert!(!p.logs().iter().any(|l| l.contains("pg_cancel_unknown_key")));
}

#[test]
fn a_cancel_with_an_unknown_key_is_closed_without_reaching_a_server() {
    if !pg::available() {
        return;
    }
    let a = pg::plain_cluster();
    let cfg = pg_route(pg_entrypoint(), "db", "HostSNI(`*`)", &[addr(&a)]).to_toml();
    let p = Proxy::start(&cfg);
    let mut s = TcpStream::connect(p.addr("pg")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // CancelRequest: length 16, code 80877102, pid 4242, key 0x01020304.
    s.write_all(&[
        0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 1, 2, 3, 4,
    ])
    .unwrap();
    let (got, _) = read_to_end(&mut s);
    assert!(got.is_empty(), "{got:?}");
    let l = p.wait_conns(1);
    assert_eq!(
        field(&l[0], "outcome").as_deref(),
        Some("pg_cancel_unknown_key")
    );
}

/// Two clusters behind one plain port: `orders` lives on A; users
/// `report*` and application `etl` go to B; database `legacy` is A's
/// `orders` under another name, and `etl` connects as B's `loader`.
#[test]
fn startup_routing_picks_the_cluster_by_database_user_and_parameter_with_rewrites() {
    if !pg::available() {
        return;
    }
    let a = pg::plain_cluster();
    let b = pg::plain_cluster();
    a.sql("create database orders");
    b.sql("create role report_ro login; create role loader login");
    let c = route(
        pg_entrypoint(),
        "orders",
        "PgDatabase(`orders`)",
        &[addr(&a)],
    );
    let c = route(c, "legacy", "PgDatabase(`legacy`)", &[addr(&a)]).set(
        "tcp.routers.legacy.postgres",
        "database",
        "orders",
    );
    let c = route(c, "reports", "PgUser(`report*`)", &[addr(&b)]);
    let etl = "PgParam(`application_name`, `etl`) && PgDatabase(`postgres`)";
    let cfg = route(c, "etl", etl, &[addr(&b)])
        .set("tcp.routers.etl.postgres", "user", "loader")
        .to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port();
    let sql = "select inet_server_port() || ' ' || current_database() || ' ' || current_user";
    let cases = [
        (
            "postgres",
            "orders",
            "",
            "orders",
            a.port,
            "orders postgres",
        ),
        (
            "postgres",
            "legacy",
            "",
            "legacy",
            a.port,
            "orders postgres",
        ),
        (
            "report_ro",
            "postgres",
            "",
            "reports",
            b.port,
            "postgres report_ro",
        ),
        (
            "postgres",
            "postgres",
            "application_name=etl",
            "etl",
            b.port,
            "postgres loader",
        ),
    ];
    for (i, (user, db, extra, router, server, want)) in cases.iter().enumerate() {
        let ran = psql(&conninfo(port, user, db, extra), sql);
        assert!(ran.ok(), "{user}@{db}: {}", ran.stderr);
        assert_eq!(ran.stdout.trim(), format!("{server} {want}"), "{user}@{db}");
        let l = p.wait_conns(i + 1);
        assert_eq!(field(&l[i], "router").as_deref(), Some(*router), "{}", l[i]);
    }
    // No router for this database: the client reads why, in PostgreSQL's
    // error format, and no server is dialed.
    let ran = psql(&conninfo(port, "postgres", "nothing", ""), "select 1");
    assert!(!ran.ok());
    assert!(
        ran.stderr
            .contains("no route for database \"nothing\" and user \"postgres\""),
        "{}",
        ran.stderr
    );
    let l = p.wait_conns(cases.len() + 1);
    let last = &l[cases.len()];
    assert_eq!(
        field(last, "outcome").as_deref(),
        Some("no_route"),
        "{last}"
    );
    assert_eq!(field(last, "server").as_deref(), Some("-"), "{last}");
}

/// The ErrorResponse a server sends before closing, built by hand here:
/// 'E', length, then S/V FATAL, C sqlstate, M message, each NUL-ended.
fn expected_error(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (f, v) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(f);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}

#[test]
fn malformed_startup_packets_get_an_error_response_08p01() {
    // A fake backend: a malformed packet must never reach it.
    let backend = Backend::echo();
    let cfg = pg_route(pg_entrypoint(), "db", "HostSNI(`*`)", &[backend.addr]).to_toml();
    let p = Proxy::start(&cfg);
    let mut big = 20_000u32.to_be_bytes().to_vec();
    big.extend([0, 3, 0, 0]);
    big.extend(vec![b'a'; 2000]);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "protocol 2.0",
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            "unsupported frontend protocol (only 3.x is spoken)",
        ),
        (
            "no terminator",
            [&[0u8, 0, 0, 17, 0, 3, 0, 0][..], b"user\0bob\0"].concat(),
            "startup packet is not terminated by a NUL byte",
        ),
        (
            "over the cap",
            big,
            "startup packet is longer than 10000 bytes",
        ),
        (
            "parameter without value",
            [&[0u8, 0, 0, 13, 0, 3, 0, 0][..], b"user\0"].concat(),
            "startup parameter has no value",
        ),
    ];
    for (i, (what, bytes, why)) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(p.addr("pg")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let (got, err) = read_to_end(&mut s);
        let want = expected_error("08P01", &format!("invalid startup packet: {why}"));
        assert_eq!(
            got,
            want,
            "{what}: {err:?} {:?}",
            String::from_utf8_lossy(&got)
        );
        let l = p.wait_conns(i + 1);
        assert_eq!(
            field(&l[i], "outcome").as_deref(),
            Some("pg_bad_startup"),
            "{what}"
        );
    }
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn a_silent_client_is_closed_at_the_read_timeout_before_any_dial() {
    let backend = Backend::echo();
    let c = pg_entrypoint().set(
        "entryPoints.pg.transport.respondingTimeouts",
        "readTimeout",
        "1s",
    );
    let cfg = route(c, "db", "PgUser(`*`)", &[backend.addr]).to_toml();
    let p = Proxy::start(&cfg);
    let mut s = TcpStream::connect(p.addr("pg")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Half a startup packet, then silence.
    s.write_all(&[0, 0, 0, 40, 0, 3]).unwrap();
    let mut b = [0u8; 16];
    let start = std::time::Instant::now();
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    let l = p.wait_conns(1);
    assert_eq!(field(&l[0], "outcome").as_deref(), Some("read_timeout"));
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn postgres_routing_on_a_passthrough_router_is_a_config_error() {
    let dir = TempDir::new("pgcheck");
    let cfg = dir.write(
        "c.toml",
        "[entryPoints.pg]\naddress = \"127.0.0.1:0\"\n\
         [tcp.routers.db]\nrule = \"HostSNI(`db.test`) && PgDatabase(`orders`)\"\nservice = \"s\"\n\
         [tcp.routers.db.tls]\npassthrough = true\n\
         [tcp.services.s.loadBalancer]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
    );
    let ran = run(
        std::process::Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&cfg),
        b"",
        Duration::from_secs(30),
    );
    assert!(!ran.ok());
    let want = format!(
        "{}:4:8: router `db`: PostgreSQL routing (PgDatabase, PgUser, PgParam, a `postgres` table) reads the StartupMessage, which a TLS passthrough router never sees",
        cfg.display()
    );
    assert!(ran.stderr.contains(&want), "{}", ran.stderr);
}

/// Routers that terminate TLS for `db.test` and route by the StartupMessage
/// read inside TLS: `orders` to A, every other database to B (both
/// services of two servers for the cancel test: A+B).
fn tls_config(pki: &support::openssl::Pki, orders: &[SocketAddr], other: &[SocketAddr]) -> String {
    let (crt, key) = pki.leaf("db.test", &["db.test"]);
    let c = pg_entrypoint().cert(&crt, &key);
    let c = route(
        c,
        "orders",
        "HostSNI(`db.test`) && PgDatabase(`orders`)",
        orders,
    )
    .router_tls("orders");
    route(c, "other", "HostSNI(`db.test`) && PgUser(`*`)", other)
        .router_tls("other")
        .to_toml()
}

fn tls_conninfo(port: u16, ca: &std::path::Path) -> String {
    format!(
        "host=db.test hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={}",
        ca.display()
    )
}

#[test]
fn terminated_tls_routes_by_the_startup_message_read_inside_tls() {
    if !pg::available() {
        return;
    }
    let pki = support::openssl::Pki::new();
    let a = pg::plain_cluster();
    let b = pg::plain_cluster();
    a.sql("create database orders");
    let p = Proxy::start(&tls_config(&pki, &[addr(&a)], &[addr(&b)]));
    let port = p.addr("pg").port();
    // psql 15: SSLRequest, then TLS verified against the proxy's
    // certificate for db.test; the server sees a plain session.
    let sql = "select inet_server_port() || ' ' || current_database() || ' ' || s.ssl \
               from pg_stat_ssl s where s.pid = pg_backend_pid()";
    for (i, (db, server, router)) in [("orders", a.port, "orders"), ("postgres", b.port, "other")]
        .into_iter()
        .enumerate()
    {
        let ran = psql(
            &format!("{} user=postgres dbname={db}", tls_conninfo(port, &pki.ca)),
            sql,
        );
        assert!(ran.ok(), "{db}: {}", ran.stderr);
        assert_eq!(ran.stdout.trim(), format!("{server} {db} false"));
        let l = p.wait_conns(i + 1);
        assert_eq!(field(&l[i], "router").as_deref(), Some(router), "{}", l[i]);
    }
}

#[test]
fn cancel_through_terminated_tls_reaches_the_right_server() {
    if !pg::available() || !pg::psycopg_available() {
        return;
    }
    let pki = support::openssl::Pki::new();
    let a = pg::plain_cluster();
    let b = pg::plain_cluster();
    let p = Proxy::start(&tls_config(&pki, &[addr(&a)], &[addr(&a), addr(&b)]));
    let port = p.addr("pg").port();
    const N: usize = 10;
    // cancel_safe sends the CancelRequest encrypted, as the session was.
    let ran = pg::python(
        CANCEL_SCRIPT,
        &[&tls_conninfo(port, &pki.ca), &N.to_string()],
        Duration::from_secs(240),
    )
    .expect_ok("psycopg cancel script over TLS");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), N, "{}", ran.stdout);
    let mut servers = std::collections::HashSet::new();
    for l in &lines {
        let mut f = l.splitn(3, ' ');
        servers.insert(f.next().unwrap().parse::<u16>().unwrap());
        let took: f64 = f.next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"));
        assert!(took < 1.0, "{l}");
        assert_eq!(
            f.next(),
            Some("canceling statement due to user request"),
            "{l}"
        );
    }
    assert_eq!(servers.len(), 2, "{}", ran.stdout);
    let cancels = p.wait_logs(N, |l| {
        field(l, "outcome").as_deref() == Some("pg_cancel_forwarded")
    });
    assert_eq!(cancels.len(), N);
}

/// psycopg (libpq >= 17): one query with `conninfo`; prints the result or
/// the connection error.
const QUERY_SCRIPT: &str = r#"
import sys, psycopg
try:
    with psycopg.connect(sys.argv[1]) as conn:
        print(conn.execute(sys.argv[2]).fetchone()[0])
except psycopg.OperationalError as e:
    print("ERROR", str(e).strip().replace("\n", " | "))
    sys.exit(3)
"#;

fn libpq_version() -> u32 {
    let ran = pg::python(
        "import psycopg; print(psycopg.pq.version())",
        &[],
        Duration::from_secs(30),
    )
    .expect_ok("psycopg version");
    ran.stdout.trim().parse().unwrap()
}

/// A protocol 3.0 StartupMessage for user and database `postgres`.
fn startup_packet() -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    body.extend(b"user\0postgres\0database\0postgres\0\0");
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// PostgreSQL 17's direct TLS through passthrough to PostgreSQL 15, which
/// knows only the SSLRequest opening: with `postgresSSLRequest` on the
/// service the proxy sends one first, then the client's ClientHello, so the handshake completes with the server's own
/// certificate and the session works (a rustls client offering ALPN
/// `postgresql`, as libpq 17 does). libpq itself then refuses the session:
/// it requires the server to have negotiated ALPN `postgresql`, which a
/// server older than 17 never does and a passthrough proxy cannot add (the
/// handshake is the server's); the test pins that message, so the README
/// can say why direct TLS to an older server needs termination.
#[test]
fn direct_tls_passthrough_to_postgres_15_gets_an_sslrequest_first() {
    if !pg::available() {
        return;
    }
    let pki = support::openssl::Pki::new();
    let (crt, key) = pki.leaf("db.prod.test", &["db.prod.test"]);
    let a = PgCluster::start(&crt, &key);
    let c = route(
        pg_entrypoint(),
        "prod",
        "HostSNI(`db.prod.test`)",
        &[addr(&a)],
    )
    .router_tls("prod")
    .and("passthrough", true);
    let direct = c.to_toml();
    let cfg = c.lb("prod", "postgresSSLRequest", true).to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port();

    let mut config = (*support::tls::client_config(&pki.ca, None, &[])).clone();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let t =
        support::tls::TlsStream::connect(p.addr("pg"), "db.prod.test", std::sync::Arc::new(config))
            .expect("direct TLS handshake with the PostgreSQL 15 server");
    assert_eq!(t.peer_names(), ["db.prod.test"]);
    t.write_all(&startup_packet()).unwrap();
    // AuthenticationOk ('R', length 8, code 0: trust) first, and the
    // startup ends with ReadyForQuery ('Z', length 5, idle).
    let mut reply = t.read_exact_len(9).unwrap();
    while !reply.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        reply.extend(t.read_some().unwrap());
    }
    assert!(
        reply.starts_with(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]),
        "{reply:?}"
    );
    drop(t);

    if !pg::psycopg_available() {
        return;
    }
    assert!(
        libpq_version() >= 170000,
        "psycopg's libpq has no sslnegotiation=direct"
    );
    let conninfo = format!(
        "host=db.prod.test hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} sslnegotiation=direct user=postgres dbname=postgres",
        pki.ca.display()
    );
    let ran = pg::python(
        QUERY_SCRIPT,
        &[&conninfo, "select 1"],
        Duration::from_secs(30),
    );
    assert!(
        ran.stdout.contains(
            "direct SSL connection was established without ALPN protocol negotiation extension"
        ),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    // The server saw a TLS session, not a ClientHello read as a startup packet.
    assert!(
        !a.log().contains("invalid length of startup packet"),
        "{}",
        a.log()
    );
    drop(p);

    // Without it the hello is replayed as it is (right for 17+ servers):
    // PostgreSQL 15 reads it as a startup packet and the handshake fails.
    let p = Proxy::start(&direct);
    let mut config = (*support::tls::client_config(&pki.ca, None, &[])).clone();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let r =
        support::tls::TlsStream::connect(p.addr("pg"), "db.prod.test", std::sync::Arc::new(config));
    assert!(r.is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !a.log().contains("invalid length of startup packet")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        a.log().contains("invalid length of startup packet"),
        "{}",
        a.log()
    );
}

/// Termination takes both openings on one port: psycopg's libpq with
/// `sslnegotiation=direct` (ALPN `postgresql`, which the proxy negotiates
/// for its PostgreSQL routers) and psql 15 with an SSLRequest; both are
/// routed by the database inside TLS to PostgreSQL 15.
#[test]
fn direct_tls_and_sslrequest_terminated_on_one_port() {
    if !pg::available() || !pg::psycopg_available() {
        return;
    }
    assert!(
        libpq_version() >= 170000,
        "psycopg's libpq has no sslnegotiation=direct"
    );
    let pki = support::openssl::Pki::new();
    let a = pg::plain_cluster();
    let b = pg::plain_cluster();
    a.sql("create database orders");
    let p = Proxy::start(&tls_config(&pki, &[addr(&a)], &[addr(&b)]));
    let port = p.addr("pg").port();
    let sql = "select inet_server_port() || ' ' || current_database()";
    for (db, server) in [("orders", a.port), ("postgres", b.port)] {
        let direct = format!(
            "{} sslnegotiation=direct user=postgres dbname={db}",
            tls_conninfo(port, &pki.ca)
        );
        let ran = pg::python(QUERY_SCRIPT, &[&direct, sql], Duration::from_secs(30));
        assert_eq!(
            ran.stdout.trim(),
            format!("{server} {db}"),
            "{}",
            ran.stderr
        );
        let classic = format!("{} user=postgres dbname={db}", tls_conninfo(port, &pki.ca));
        let ran = psql(&classic, sql);
        assert_eq!(
            ran.stdout.trim(),
            format!("{server} {db}"),
            "{}",
            ran.stderr
        );
    }
}

/// The BackendKeyData ('K') of a startup reply: (pid, key).
fn key_of(reply: &[u8]) -> (u32, Vec<u8>) {
    let mut at = 0;
    while at + 5 <= reply.len() {
        let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().unwrap()) as usize;
        if reply[at] == b'K' {
            let body = &reply[at + 5..at + 1 + len];
            return (
                u32::from_be_bytes(body[..4].try_into().unwrap()),
                body[4..].to_vec(),
            );
        }
        at += 1 + len;
    }
    panic!("no BackendKeyData in {reply:?}");
}

/// A key is remembered while its session lives and forgotten when it ends:
/// a raw client reads the BackendKeyData the proxy passed on, cancels with
/// it during the session (sent on) and after it (unknown key).
#[test]
fn a_cancel_key_lives_as_long_as_its_session() {
    if !pg::available() {
        return;
    }
    let a = pg::plain_cluster();
    let cfg = pg_route(pg_entrypoint(), "db", "HostSNI(`*`)", &[addr(&a)]).to_toml();
    let p = Proxy::start(&cfg);
    let mut session = TcpStream::connect(p.addr("pg")).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    session.write_all(&startup_packet()).unwrap();
    let mut reply = Vec::new();
    let mut b = [0u8; 4096];
    while !reply.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let n = session.read(&mut b).unwrap();
        assert!(n > 0, "{reply:?}");
        reply.extend(&b[..n]);
    }
    let (pid, key) = key_of(&reply);
    let cancel = |p: &Proxy| {
        let mut c = TcpStream::connect(p.addr("pg")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = ((12 + key.len()) as u32).to_be_bytes().to_vec();
        req.extend(80_877_102u32.to_be_bytes());
        req.extend(pid.to_be_bytes());
        req.extend(&key);
        c.write_all(&req).unwrap();
        let (got, _) = read_to_end(&mut c);
        assert!(got.is_empty(), "{got:?}");
    };
    cancel(&p);
    let l = p.wait_conns(1);
    assert_eq!(
        field(&l[0], "outcome").as_deref(),
        Some("pg_cancel_forwarded"),
        "{}",
        l[0]
    );
    // Terminate ('X') and close: the session ends, and so does its key.
    session.write_all(&[b'X', 0, 0, 0, 4]).unwrap();
    let _ = read_to_end(&mut session);
    drop(session);
    let l = p.wait_conns(2);
    assert_eq!(field(&l[1], "router").as_deref(), Some("db"), "{}", l[1]);
    cancel(&p);
    let l = p.wait_conns(3);
    assert_eq!(
        field(&l[2], "outcome").as_deref(),
        Some("pg_cancel_unknown_key"),
        "{}",
        l[2]
    );
}
