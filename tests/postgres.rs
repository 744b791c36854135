//! PostgreSQL through SNI passthrough (README.md, PostgreSQL row): libpq opens
//! with an 8-byte SSLRequest in clear, the proxy answers `S`, routes on the
//! ClientHello's SNI, asks the chosen backend for TLS itself and replays the
//! hello, so the TLS session runs from psql to the server untouched.
//!
//! Real PostgreSQL 15 clusters with `ssl = on`, reached by real psql and
//! pgbench; small fake backends for the refusal and byte-exact cases.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use sluicegate::wire::postgres::{GSSENC_REQUEST, SSL_REQUEST};
use support::hello::capture;
use support::openssl::Pki;
use support::pg::{self, psql, PgCluster};
use support::process::run;
use support::*;

/// A passthrough router `name` on entrypoint `pg` to one server.
fn pg_router(c: Cfg, name: &str, rule: &str, backend: SocketAddr) -> Cfg {
    c.router_on(name, "pg", rule, name)
        .router_tls(name)
        .and("passthrough", true)
        .service(name, &[backend])
}

/// Entry point `pg`. Some clients here half-close before the last reply:
/// a generous terminationDelay keeps a late one on a loaded machine.
fn pg_entrypoint() -> Cfg {
    Cfg::new().entrypoint("pg").termination_delay("30s")
}

/// libpq connection string through the proxy: SNI `host`, TCP to 127.0.0.1,
/// TLS verified against the test CA *and* the name (verify-full), which only
/// the real server's certificate can satisfy.
fn conninfo(host: &str, port: u16, ca: &std::path::Path) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} \
         user=postgres dbname=postgres",
        ca.display()
    )
}

/// Checks the access-log line of a finished real libpq session.
///
/// libpq and the server each send a TLS close_notify and close at once;
/// whichever closes with the other's close_notify still unread makes Linux
/// send a RST, and the proxy passes a reset on as a reset (RELIABILITY.md,
/// promise 2). So a finished session is logged `closed`, `client_reset` or
/// `backend_reset` by timing alone; what is checked is that it was routed
/// and forwarded both ways (no early outcome).
fn assert_session_forwarded(l: &str, router: &str) {
    assert_eq!(field(l, "router").as_deref(), Some(router), "{l}");
    let outcome = field(l, "outcome").unwrap_or_default();
    assert!(
        ["closed", "client_reset", "backend_reset"].contains(&outcome.as_str()),
        "{l}"
    );
    for dir in ["up", "down"] {
        let n: u64 = field(l, dir).unwrap().parse().unwrap();
        assert!(n > 0, "{dir}: {l}");
    }
}

/// A cluster whose certificate names `host`, holding a marker table.
fn cluster(pki: &Pki, host: &str, marker: &str) -> PgCluster {
    let (crt, key) = pki.leaf(host, &[host]);
    let c = PgCluster::start(&crt, &key);
    c.sql(&format!(
        "create table marker(name text); insert into marker values ('{marker}')"
    ));
    c
}

#[test]
fn psql_reaches_two_clusters_by_server_name_with_tls_end_to_end() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let prod = cluster(&pki, "db.prod.test", "prod");
    let staging = cluster(&pki, "db.staging.test", "staging");
    let prod_addr = SocketAddr::from(([127, 0, 0, 1], prod.port));
    let staging_addr = SocketAddr::from(([127, 0, 0, 1], staging.port));
    let c = pg_router(
        pg_entrypoint(),
        "pg-prod",
        "HostSNI(`db.prod.test`)",
        prod_addr,
    );
    let cfg = pg_router(c, "pg-staging", "HostSNI(`db.staging.test`)", staging_addr).to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port();

    // The marker says which cluster answered; pg_stat_ssl says the session
    // the server sees is encrypted (the proxy never decrypted it).
    let sql = "select m.name || ' ' || s.ssl || ' ' || s.version from marker m, pg_stat_ssl s \
               where s.pid = pg_backend_pid()";
    let mut n = 0;
    for (host, router, marker) in [
        ("db.prod.test", "pg-prod", "prod"),
        ("db.staging.test", "pg-staging", "staging"),
    ] {
        let ran = psql(&conninfo(host, port, &pki.ca), sql);
        assert!(ran.ok(), "psql {host}: {}\n{}", ran.stderr, prod.log());
        let out = ran.stdout.trim();
        assert!(
            out.starts_with(&format!("{marker} true TLSv1.")),
            "{host}: {out}"
        );
        n += 1;
        assert_session_forwarded(&p.wait_conns(n)[n - 1], router);
    }

    // An unknown name: answered `S`, then closed on the hello.
    let ran = psql(&conninfo("db.nope.test", port, &pki.ca), "select 1");
    assert!(!ran.ok(), "db.nope.test must not connect: {}", ran.stdout);
    n += 1;
    let l = &p.wait_conns(n)[n - 1];
    assert_eq!(field(l, "outcome").as_deref(), Some("no_route"), "{l}");

    // A plain (sslmode=disable) client on an entrypoint with only TLS
    // routers: its StartupMessage is not TLS, so it is closed and counted.
    let plain = format!("host=127.0.0.1 port={port} sslmode=disable user=postgres dbname=postgres");
    let ran = psql(&plain, "select 1");
    assert!(!ran.ok(), "a plain client must not connect: {}", ran.stdout);
    n += 1;
    let l = &p.wait_conns(n)[n - 1];
    assert_eq!(field(l, "outcome").as_deref(), Some("not_tls"), "{l}");
}

#[test]
fn pgbench_through_the_passthrough_route_runs_clean() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let prod = cluster(&pki, "db.prod.test", "prod");
    let prod_addr = SocketAddr::from(([127, 0, 0, 1], prod.port));
    let cfg = pg_router(
        pg_entrypoint(),
        "pg-prod",
        "HostSNI(`db.prod.test`)",
        prod_addr,
    )
    .to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port().to_string();
    let pgbench = |args: &[&str]| {
        run(
            Command::new("pgbench")
                .args(args)
                .env("PGHOST", "db.prod.test")
                .env("PGHOSTADDR", "127.0.0.1")
                .env("PGPORT", &port)
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &pki.ca)
                .env("PGUSER", "postgres")
                .env("PGDATABASE", "postgres")
                .env("PGCONNECT_TIMEOUT", "10"),
            b"",
            Duration::from_secs(60),
        )
    };
    pgbench(&["-i", "-s", "1", "-q"]).expect_ok("pgbench -i");
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 200;
    let ran = pgbench(&[
        "-c",
        &CLIENTS.to_string(),
        "-j",
        "2",
        "-t",
        &PER_CLIENT.to_string(),
    ])
    .expect_ok("pgbench run");
    let total = CLIENTS * PER_CLIENT;
    assert!(
        ran.stdout.contains(&format!(
            "number of transactions actually processed: {total}/{total}"
        )),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("number of failed transactions: 0 (0.000%)"),
        "{}",
        ran.stdout
    );
    println!("pgbench through the proxy:\n{}", ran.stdout);
    // Every connection pgbench made (init, setup, the 4 clients) went
    // through the prod router.
    for l in &p.wait_conns(CLIENTS + 2) {
        assert_session_forwarded(l, "pg-prod");
    }
    assert_eq!(
        prod.sql("select count(*) from pgbench_history"),
        total.to_string()
    );
}

/// A raw client conversation: GSSENCRequest (expect `N`), SSLRequest
/// (expect `S`), TLS to `name` verified against `ca`, StartupMessage, one
/// query; prints the query's first column and the TLS version.
const PY_GSSENC_CLIENT: &str = r#"
import socket, ssl, struct, sys
port, name, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(struct.pack("!II", 8, 80877104))
assert s.recv(1) == b"N", "GSSENCRequest not refused"
s.sendall(struct.pack("!II", 8, 80877103))
assert s.recv(1) == b"S", "SSLRequest not accepted"
t = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=name)

def exact(n):
    b = b""
    while len(b) < n:
        c = t.recv(n - len(b))
        assert c, "EOF"
        b += c
    return b

def until_ready():
    msgs = []
    while True:
        head = exact(5)
        body = exact(struct.unpack("!I", head[1:])[0] - 4)
        assert head[:1] != b"E", body
        msgs.append((head[:1], body))
        if head[:1] == b"Z":
            return msgs

params = b"user\0postgres\0database\0postgres\0\0"
t.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
assert until_ready()[0] == (b"R", b"\0\0\0\0"), "no AuthenticationOk"
q = b"select name from marker\0"
t.sendall(b"Q" + struct.pack("!I", 4 + len(q)) + q)
for typ, body in until_ready():
    if typ == b"D":
        n = struct.unpack("!I", body[2:6])[0]
        print(body[6:6 + n].decode())
t.sendall(b"X\0\0\0\x04")
print(t.version())
"#;

#[test]
fn gssenc_request_gets_n_then_the_ssl_request_reaches_postgres() {
    if !pg::available() || !require_tool("python3", "python3") {
        return;
    }
    let pki = Pki::new();
    let prod = cluster(&pki, "db.prod.test", "prod");
    let prod_addr = SocketAddr::from(([127, 0, 0, 1], prod.port));
    let cfg = pg_router(
        pg_entrypoint(),
        "pg-prod",
        "HostSNI(`db.prod.test`)",
        prod_addr,
    )
    .to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port().to_string();
    let ca = pki.ca.to_str().unwrap();
    let ran = run(
        Command::new("python3").args(["-c", PY_GSSENC_CLIENT, &port, "db.prod.test", ca]),
        b"",
        Duration::from_secs(30),
    )
    .expect_ok("python GSSENC client");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert_eq!(lines[0], "prod");
    assert!(lines[1].starts_with("TLSv1."), "{}", lines[1]);
    assert_session_forwarded(&p.wait_conns(1)[0], "pg-prod");
}

/// A fake PostgreSQL backend: reads the proxy's SSLRequest, answers `reply`;
/// after `S` it records the rest of the stream (the replayed hello and what
/// followed) until EOF, then writes `TAG`.
struct FakePg {
    backend: Backend,
    rx: Mutex<mpsc::Receiver<(Vec<u8>, Vec<u8>)>>,
}

impl FakePg {
    fn start(reply: u8) -> FakePg {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let backend = Backend::start(move |mut s| {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut request = [0u8; 8];
            if s.read_exact(&mut request).is_err() {
                return;
            }
            let _ = s.write_all(&[reply]);
            let mut rest = Vec::new();
            if reply == b'S' {
                let _ = s.read_to_end(&mut rest);
                let _ = s.write_all(b"TAG");
            }
            let _ = tx.lock().unwrap().send((request.to_vec(), rest));
        });
        FakePg {
            backend,
            rx: Mutex::new(rx),
        }
    }

    fn next(&self) -> (Vec<u8>, Vec<u8>) {
        self.rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20))
            .expect("the fake backend got no connection")
    }
}

/// Send `first`, expect the one-byte answer `want`.
fn ask(s: &mut TcpStream, first: &[u8], want: u8) {
    s.write_all(first).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0] as char, want as char);
}

#[test]
fn gssenc_then_ssl_request_replays_only_the_hello_to_the_backend() {
    let fake = FakePg::start(b'S');
    let cfg = pg_router(
        pg_entrypoint(),
        "pg",
        "HostSNI(`db.prod.example.com`)",
        fake.backend.addr,
    )
    .to_toml();
    let p = Proxy::start(&cfg);
    let mut hello = capture("openssl_sni.bin");
    hello.extend_from_slice(b"\x17\x03\x03\x00\x03abc");

    let mut s = TcpStream::connect(p.addr("pg")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ask(&mut s, &GSSENC_REQUEST, b'N');
    ask(&mut s, &SSL_REQUEST, b'S');
    s.write_all(&hello).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s).0, b"TAG");
    // The backend got the proxy's own SSLRequest, then exactly the client's
    // TLS bytes: neither request of the client leaks through.
    let (request, rest) = fake.next();
    assert_eq!(request, SSL_REQUEST);
    assert!(rest == hello, "replayed stream differs");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("closed"), "{l}");
    assert_eq!(field(l, "up"), Some(hello.len().to_string()), "{l}");

    // CVE-2021-23214: bytes sent behind the SSLRequest before its answer
    // would be read as if they came over TLS. Closed, never answered.
    let mut s = TcpStream::connect(p.addr("pg")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut injected = SSL_REQUEST.to_vec();
    injected.extend_from_slice(b"\x00\x00\x00\x09\x00\x03\x00\x00\x00");
    s.write_all(&injected).unwrap();
    assert!(
        read_to_end(&mut s).0.is_empty(),
        "no S for an injected request"
    );
    let l = &p.wait_conns(2)[1];
    assert_eq!(
        field(l, "outcome").as_deref(),
        Some("pg_bytes_after_request"),
        "{l}"
    );
    assert_eq!(
        fake.backend
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn backend_answering_n_to_the_ssl_request_closes_the_client() {
    let fake = FakePg::start(b'N');
    let cfg = pg_router(pg_entrypoint(), "pg", "HostSNI(`*`)", fake.backend.addr).to_toml();
    let p = Proxy::start(&cfg);

    // Raw client: it was told `S` and sent its hello; the backend then
    // refused TLS, so the client is closed without a byte.
    let mut s = TcpStream::connect(p.addr("pg")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ask(&mut s, &SSL_REQUEST, b'S');
    s.write_all(&capture("openssl_sni.bin")).unwrap();
    assert!(read_to_end(&mut s).0.is_empty());
    assert_eq!(fake.next().0, SSL_REQUEST);
    let l = &p.wait_conns(1)[0];
    assert_eq!(
        field(l, "outcome").as_deref(),
        Some("backend_refused_tls"),
        "{l}"
    );
    assert_eq!(field(l, "router").as_deref(), Some("pg"), "{l}");
    let warn = &p.wait_logs(1, |l| l.contains("postgres backend refused TLS"))[0];
    assert_eq!(
        field(warn, "reason").as_deref(),
        Some("backend_tls_refused"),
        "{warn}"
    );

    // Real psql sees a failed connection, not a plain-text session.
    if require_tool("psql", "postgresql-client") {
        let port = p.addr("pg").port();
        let ran = psql(
            &format!("host=db.test hostaddr=127.0.0.1 port={port} sslmode=require user=postgres"),
            "select 1",
        );
        assert!(!ran.ok(), "psql must fail: {}", ran.stdout);
        let l = &p.wait_conns(2)[1];
        assert_eq!(
            field(l, "outcome").as_deref(),
            Some("backend_refused_tls"),
            "{l}"
        );
    }
}

/// A TLS client is only ever offered to TLS routers (as Traefik): with a
/// plain catch-all on the same entrypoint, psql asking for TLS with a name
/// no TLS router knows is answered `S` and closed (`no_route`), not handed
/// as raw TLS bytes to the catch-all's server; a plain psql still reaches
/// the catch-all, and a known name its TLS router.
#[test]
fn an_unknown_name_never_falls_back_to_the_plain_catch_all() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let db = cluster(&pki, "db.prod.test", "prod");
    let addr = SocketAddr::from(([127, 0, 0, 1], db.port));
    let cfg = pg_router(pg_entrypoint(), "pg-tls", "HostSNI(`db.prod.test`)", addr)
        .router_on("pg-plain", "pg", "HostSNI(`*`)", "pg-plain")
        .service("pg-plain", &[addr])
        .to_toml();
    let p = Proxy::start(&cfg);
    let port = p.addr("pg").port();

    let ran = psql(&conninfo("db.nope.test", port, &pki.ca), "select 1");
    assert!(!ran.ok(), "db.nope.test must not connect: {}", ran.stdout);
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "outcome").as_deref(), Some("no_route"), "{l}");
    assert_eq!(
        field(l, "router").as_deref(),
        Some("-"),
        "routed nowhere: {l}"
    );

    let ran = psql(&conninfo("db.prod.test", port, &pki.ca), "select 'tls'");
    assert!(ran.ok(), "known name: {}", ran.stderr);
    assert_session_forwarded(&p.wait_conns(2)[1], "pg-tls");

    let plain = format!("host=127.0.0.1 port={port} sslmode=disable user=postgres dbname=postgres");
    let ran = psql(
        &plain,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    );
    assert!(ran.ok(), "plain client: {}\n{}", ran.stderr, db.log());
    assert_eq!(ran.stdout.trim(), "f", "a plain session, by the catch-all");
    assert_session_forwarded(&p.wait_conns(3)[2], "pg-plain");
}
