//! `[providers.kubernetesCRD]`: the guide's Kubernetes manifests, copied
//! verbatim into tests/fixtures/k8s/, read from a watched directory by the
//! real binary, with the Services they name mapped to local servers in the
//! static configuration. Each manifest is exercised with a real client:
//! psql against real PostgreSQL clusters (plain, passthrough, SNI routing),
//! a rustls client for termination with a Secret, redis-cli and openssl
//! s_client for the multiplexed port, counted connections for weights and
//! load balancing, a PROXY v2 reading backend, source addresses for the
//! allow list (changed live through the watched directory). Errors point
//! into the manifest files (`FILE:LINE:COL`).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::openssl::{s_client, subject, Pki, SServer};
use support::pg::{self, psql, PgCluster};
use support::process::{run, Ran};
use support::redis::RedisServer;
use support::tls::{client_config, Ca, TlsStream};
use support::*;

/// Traefik's router (and service) name for a route `HostSNI(`*`)` of
/// IngressRouteTCP `name` in `default`: `<ns>-<name>-<10 bytes of
/// sha256("HostSNI(`*`)"), hex>` (printf 'HostSNI(`*`)' | sha256sum).
fn catch_all_name(name: &str) -> String {
    format!("default-{name}-673acf455cb2dab0b43a")
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/k8s")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A static configuration and its manifest directory.
struct Setup {
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    /// The guide's entrypoints (on ephemeral ports), the provider reading
    /// `manifests/` (watched), `extra` static TOML (Service mappings), and
    /// the manifests as files.
    fn new(manifests: &[(&str, &str)], extra: &str) -> Setup {
        let dir = TempDir::new("k8s");
        std::fs::create_dir_all(dir.0.join("manifests")).unwrap();
        for (name, text) in manifests {
            dir.write(&format!("manifests/{name}"), text);
        }
        let config = dir.write(
            "sluicegate.toml",
            &format!(
                r#"[entryPoints.postgres]
address = "127.0.0.1:0"
[entryPoints.redis]
address = "127.0.0.1:0"
[entryPoints.tcp-generic]
address = "127.0.0.1:0"

[providers.kubernetesCRD]
directory = "manifests"
watch = true
{extra}
[tcpServersTransport]
terminationDelay = "30s"
"#
            ),
        );
        Setup { dir, config }
    }

    fn start(&self) -> Proxy {
        Proxy::start_file(&self.config)
    }

    fn check(&self) -> Ran {
        run(
            Command::new(BIN).arg("check").arg("-c").arg(&self.config),
            b"",
            Duration::from_secs(20),
        )
    }

    fn manifest(&self, name: &str) -> PathBuf {
        self.dir.0.join("manifests").join(name)
    }
}

/// `[providers.kubernetesCRD.services."<key>"]` to `servers`.
fn map(key: &str, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[providers.kubernetesCRD.services.\"{key}\"]\nservers = [{}]\n",
        list.join(", ")
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

/// libpq through the proxy: SNI and certificate check for `host`, TCP to
/// 127.0.0.1:`port`.
fn verify_full(host: &str, port: u16, ca: &Path) -> String {
    format!(
        "host={host} hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={} \
         user=postgres dbname=postgres",
        ca.display()
    )
}

/// Which cluster answered, whether the server saw TLS.
const MARKER_SQL: &str = "select m.name || ' ' || s.ssl from marker m, pg_stat_ssl s \
                          where s.pid = pg_backend_pid()";

#[test]
fn basic_route_psql_reaches_the_mapped_service_and_other_kinds_are_skipped() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let db = cluster(&pki, "postgres.default.test", "basic");
    // The guide's static ConfigMap and Traefik's own Service sit in the same
    // directory, as in a chart: they are not routing objects and are skipped.
    let s = Setup::new(
        &[
            (
                "postgres-tcp-route.yaml",
                &fixture("postgres-tcp-route.yaml"),
            ),
            (
                "traefik-tcp-config.yaml",
                &fixture("traefik-tcp-config.yaml"),
            ),
            (
                "traefik-tcp-service.yaml",
                &fixture("traefik-tcp-service.yaml"),
            ),
        ],
        &map("default/postgres-service", &[local(db.port)]),
    );
    let check = s.check();
    assert!(check.ok(), "{}\n{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("routers (1):"), "{}", check.stdout);
    let p = s.start();
    let plain = format!(
        "host=127.0.0.1 port={} sslmode=disable user=postgres dbname=postgres",
        p.addr("postgres").port()
    );
    let ran = psql(&plain, MARKER_SQL);
    assert!(ran.ok(), "psql: {}\n{}", ran.stderr, db.log());
    assert_eq!(ran.stdout.trim(), "basic false");
    let l = &p.wait_conns(1)[0];
    assert_eq!(field(l, "router"), Some(catch_all_name("postgres")), "{l}");
}

#[test]
fn tls_passthrough_keeps_tls_from_psql_to_the_server() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let db = cluster(&pki, "postgres.default.test", "passthrough");
    let s = Setup::new(
        &[("tls-passthrough.yaml", &fixture("tls-passthrough.yaml"))],
        &map("default/postgres-service", &[local(db.port)]),
    );
    let p = s.start();
    let port = p.addr("postgres").port();
    let ran = psql(
        &verify_full("postgres.default.test", port, &pki.ca),
        MARKER_SQL,
    );
    assert!(ran.ok(), "psql: {}\n{}", ran.stderr, db.log());
    // The server itself saw the TLS session: the proxy did not decrypt it.
    assert_eq!(ran.stdout.trim(), "passthrough true");
    let l = &p.wait_conns(1)[0];
    assert_eq!(
        field(l, "router"),
        Some(catch_all_name("postgres-tls")),
        "{l}"
    );
}

#[test]
fn sni_routing_sends_each_host_name_to_its_database() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new();
    let prod = cluster(&pki, "db.prod.example.com", "prod");
    let staging = cluster(&pki, "db.staging.example.com", "staging");
    let s = Setup::new(
        &[("sni-routing.yaml", &fixture("sni-routing.yaml"))],
        &(map("default/postgres-prod", &[local(prod.port)])
            + &map("default/postgres-staging:5432", &[local(staging.port)])),
    );
    let p = s.start();
    let port = p.addr("postgres").port();
    // The guide's own client commands, with hostaddr for the local proxy.
    for (host, marker) in [
        ("db.prod.example.com", "prod"),
        ("db.staging.example.com", "staging"),
    ] {
        let ran = psql(&verify_full(host, port, &pki.ca), MARKER_SQL);
        assert!(ran.ok(), "psql {host}: {}", ran.stderr);
        assert_eq!(ran.stdout.trim(), format!("{marker} true"), "{host}");
    }
    let conns = p.wait_conns(2);
    assert_eq!(
        field(&conns[0], "router").as_deref(),
        Some("default-postgres-prod-8762a3521664e38b5bdf"),
        "{}",
        conns[0]
    );
    assert!(
        field(&conns[1], "router")
            .unwrap()
            .starts_with("default-postgres-staging-"),
        "{}",
        conns[1]
    );
    let ran = psql(
        &verify_full("db.dev.example.com", port, &pki.ca),
        "select 1",
    );
    assert!(!ran.ok(), "no route for db.dev: {}", ran.stdout);
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn termination_with_a_secret_serves_its_certificate() {
    let ca = Ca::new("k8s test CA");
    let (crt, key) = ca.leaf(&["postgres.internal.example.com"], false);
    let manifest = fixture("tcp-tls-secret.yaml")
        .replace("<base64-encoded-certificate>", &b64(&crt))
        .replace("<base64-encoded-private-key>", &b64(&key));
    let backend = Backend::echo();
    let s = Setup::new(
        &[("tcp-tls-secret.yaml", &manifest)],
        &map("default/postgres-service", &[backend.addr]),
    );
    let p = s.start();
    let ca_file = s.dir.write("ca.crt", &ca.pem);
    let c = TlsStream::connect(
        p.addr("postgres"),
        "postgres.internal.example.com",
        client_config(&ca_file, None, &[]),
    )
    .expect("TLS handshake with the Secret's certificate");
    assert_eq!(c.peer_names(), vec!["postgres.internal.example.com"]);
    let (got, err) = c.exchange(b"through the terminated route".to_vec());
    assert_eq!(got, b"through the terminated route", "{err:?}");
    // The backend got plaintext: one connection, from the proxy.
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The guide's manifest as printed, placeholders and all: the error is
    // at the Secret's value.
    let verbatim = Setup::new(
        &[("tcp-tls-secret.yaml", &fixture("tcp-tls-secret.yaml"))],
        &map("default/postgres-service", &[backend.addr]),
    );
    let ran = verbatim.check();
    assert!(!ran.ok());
    let file = verbatim.manifest("tcp-tls-secret.yaml");
    assert_eq!(
        ran.stderr.lines().next().unwrap_or(""),
        format!(
            "{}:9:12: `data.tls.crt`: Secret data must be base64: Invalid symbol 60, offset 0.",
            file.display()
        ),
        "{}",
        ran.stderr
    );
}

/// Reads what a greeting backend says first.
fn greeting_of(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    let n = c.read(&mut b).unwrap();
    String::from_utf8_lossy(&b[..n]).into_owned()
}

#[test]
fn weighted_routing_splits_connections_90_10() {
    let primary = Backend::greeting(b"primary");
    let replica = Backend::greeting(b"replica");
    let s = Setup::new(
        &[("tcp-weighted.yaml", &fixture("tcp-weighted.yaml"))],
        // One worker: one smooth weighted round robin, so the split is exact.
        &(map("default/postgres-primary", &[primary.addr])
            + &map("default/postgres-replica", &[replica.addr])
            + "[runtime]\nworkers = 1\n"),
    );
    let p = s.start();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..100 {
        *counts.entry(greeting_of(p.addr("postgres"))).or_insert(0) += 1;
    }
    assert_eq!(counts.get("primary"), Some(&90), "{counts:?}");
    assert_eq!(counts.get("replica"), Some(&10), "{counts:?}");
}

#[test]
fn load_balancing_spreads_over_the_services_endpoints() {
    let pods = [
        Backend::greeting(b"pod-0"),
        Backend::greeting(b"pod-1"),
        Backend::greeting(b"pod-2"),
    ];
    let addrs: Vec<SocketAddr> = pods.iter().map(|b| b.addr).collect();
    // The manifest's Deployment is skipped; its Service says port 6379 exists.
    let s = Setup::new(
        &[("tcp-load-balance.yaml", &fixture("tcp-load-balance.yaml"))],
        &(map("default/redis-service", &addrs) + "[runtime]\nworkers = 1\n"),
    );
    let p = s.start();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        *counts.entry(greeting_of(p.addr("redis"))).or_insert(0) += 1;
    }
    for pod in ["pod-0", "pod-1", "pod-2"] {
        assert_eq!(counts.get(pod), Some(&10), "{counts:?}");
    }
}

/// Whether the route answers an echo from `from` (`None`: the proxy's own
/// address choice).
fn echoes(addr: SocketAddr, from: Option<&str>) -> bool {
    let mut c = match from {
        Some(f) => connect_from(f, addr),
        None => TcpStream::connect(addr).unwrap(),
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if c.write_all(b"ping").is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    c.read_exact(&mut b).is_ok() && &b == b"ping"
}

#[test]
fn allow_list_refuses_outside_sources_and_follows_the_watched_manifest() {
    let backend = Backend::echo();
    let s = Setup::new(
        &[("tcp-middleware.yaml", &fixture("tcp-middleware.yaml"))],
        &map("default/postgres-service", &[backend.addr]),
    );
    let p = s.start();
    let ep = p.addr("postgres");
    // 127.0.0.1 is in neither 10.0.0.0/8 nor 192.168.1.0/24.
    assert!(!echoes(ep, None));
    assert_eq!(
        backend.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let l = &p.wait_conns(1)[0];
    assert_eq!(
        field(l, "router"),
        Some(catch_all_name("postgres-restricted")),
        "{l}"
    );

    // `kubectl apply` of a wider allow list: the watched directory reloads.
    let path = s.manifest("tcp-middleware.yaml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "      - 192.168.1.0/24\n",
        "      - 192.168.1.0/24\n      - 127.0.0.2/32\n",
    );
    std::fs::write(&path, text).unwrap();
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !echoes(ep, Some("127.0.0.2")) {
        assert!(Instant::now() < deadline, "127.0.0.2 never allowed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!echoes(ep, Some("127.0.0.1")));
}

#[test]
fn multiplexed_port_routes_three_tls_services_by_name() {
    if !require_tool("redis-server", "redis-server") || !require_tool("redis-cli", "redis-tools") {
        return;
    }
    let pki = Pki::new();
    let (pg_crt, pg_key) = pki.leaf("postgres.example.com", &["postgres.example.com"]);
    let (my_crt, my_key) = pki.leaf("mysql.example.com", &["mysql.example.com"]);
    let (rd_crt, rd_key) = pki.leaf("redis.example.com", &["redis.example.com"]);
    let pg = SServer::start(&pg_crt, &pg_key);
    let mysql = SServer::start(&my_crt, &my_key);
    let redis = RedisServer::start_tls(&rd_crt, &rd_key, &pki.ca);
    let s = Setup::new(
        &[("multiplexed-tcp.yaml", &fixture("multiplexed-tcp.yaml"))],
        &(map("default/postgres-service", &[pg.addr])
            + &map("default/mysql-service", &[mysql.addr])
            + &map("default/redis-service", &[local(redis.port)])),
    );
    let p = s.start();
    let addr = p.addr("tcp-generic");
    for name in ["postgres.example.com", "mysql.example.com"] {
        let ran = s_client(addr, name, &pki.ca, &format!("to {name}\nCLOSE\n"));
        assert!(ran.ok(), "{name}: {}\n{}", ran.stdout, ran.stderr);
        assert_eq!(subject(&ran), Some(format!("CN = {name}").as_str()));
        let reversed: String = format!("to {name}").chars().rev().collect();
        assert!(ran.stdout.lines().any(|l| l == reversed), "{}", ran.stdout);
    }
    let ran = run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(["--tls", "--sni", "redis.example.com", "--cacert"])
            .arg(&pki.ca)
            .arg("ping"),
        b"",
        Duration::from_secs(20),
    );
    assert_eq!(ran.stdout.trim(), "PONG", "{}", ran.stderr);
    let conns = p.wait_conns(3);
    for (l, name) in conns.iter().zip(["db-postgres", "db-mysql", "db-redis"]) {
        assert!(
            field(l, "router")
                .unwrap_or_default()
                .starts_with(&format!("default-{name}-")),
            "{l}"
        );
    }
}

#[test]
fn service_proxy_protocol_v2_carries_the_client_address() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s| {
        // Signature (12), version/command, family, length (2), then the
        // TCP4 addresses (12).
        let mut header = [0u8; 28];
        if s.read_exact(&mut header).is_ok() {
            let _ = tx.lock().unwrap().send(header.to_vec());
            let _ = s.write_all(b"ok");
        }
    });
    let s = Setup::new(
        &[("tcp-health-check.yaml", &fixture("tcp-health-check.yaml"))],
        &map("default/postgres-service", &[backend.addr]),
    );
    let p = s.start();
    let mut c = TcpStream::connect(p.addr("postgres")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = c.local_addr().unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
    let h = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(h[12], 0x21, "version 2, PROXY");
    assert_eq!(h[13], 0x11, "TCP over IPv4");
    assert_eq!(&h[16..20], &[127, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([h[24], h[25]]), client.port());
    assert_eq!(
        u16::from_be_bytes([h[26], h[27]]),
        p.addr("postgres").port()
    );
}

/// An IngressRouteTCP in `apps` naming things in `db`.
const CROSS_NAMESPACE: &str = r#"apiVersion: traefik.containo.us/v1alpha1
kind: MiddlewareTCP
metadata:
  name: office
  namespace: db
spec:
  ipAllowList:
    sourceRange: [127.0.0.1/32]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: pg
  namespace: apps
spec:
  entryPoints: [postgres]
  routes:
    - match: HostSNI(`*`)
      middlewares:
        - name: office
          namespace: db
      services:
        - name: postgres
          namespace: db
          port: 5432
"#;

#[test]
fn cross_namespace_references_need_allow_cross_namespace() {
    let backend = Backend::echo();
    let mapping = map("db/postgres", &[backend.addr]);
    let s = Setup::new(&[("cross.yaml", CROSS_NAMESPACE)], &mapping);
    let ran = s.check();
    assert!(!ran.ok());
    let f = s.manifest("cross.yaml").display().to_string();
    assert_eq!(
        ran.stderr,
        format!(
            "{f}:21:22: middleware `db/office` is in another namespace than `apps`: set allowCrossNamespace = true in [providers.kubernetesCRD] to allow it\n\
             {f}:24:22: Service `db/postgres` is in another namespace than `apps`: set allowCrossNamespace = true in [providers.kubernetesCRD] to allow it\n"
        )
    );
    // Allowed: the route reaches the Service and applies db's middleware.
    let allowed = Setup::new(
        &[("cross.yaml", CROSS_NAMESPACE)],
        &format!("allowCrossNamespace = true\n{mapping}"),
    );
    let p = allowed.start();
    assert!(echoes(p.addr("postgres"), Some("127.0.0.1")));
    assert!(!echoes(p.addr("postgres"), Some("127.0.0.2")));
    let l = &p.wait_conns(2)[0];
    assert_eq!(
        field(l, "router"),
        Some("apps-pg-673acf455cb2dab0b43a".into()),
        "{l}"
    );
}

#[test]
fn errors_point_into_the_manifests() {
    // The guide's termination example asks Let's Encrypt for a certificate,
    // from a resolver the static configuration must define.
    let s = Setup::new(
        &[("tls-termination.yaml", &fixture("tls-termination.yaml"))],
        &map("default/redis-service", &[refused_addr()]),
    );
    let ran = s.check();
    assert!(!ran.ok());
    let f = s.manifest("tls-termination.yaml").display().to_string();
    assert_eq!(
        ran.stderr,
        format!("{f}:17:19: unknown certificate resolver `letsencrypt`: no [certificatesResolvers] is defined in the main file\n")
    );

    // No mapping: the Service's cluster DNS name, resolved at load.
    let s = Setup::new(
        &[(
            "postgres-tcp-route.yaml",
            &fixture("postgres-tcp-route.yaml"),
        )],
        "",
    );
    let ran = s.check();
    let f = s.manifest("postgres-tcp-route.yaml").display().to_string();
    let first = ran.stderr.lines().next().unwrap_or("").to_string();
    assert!(
        first.starts_with(&format!(
            "{f}:13:17: service `{}`: `postgres-service.default.svc.cluster.local:5432`: cannot resolve `postgres-service.default.svc.cluster.local`",
            catch_all_name("postgres")
        )),
        "{}",
        ran.stderr
    );

    // A Secret that is not there, a port the Service does not have, an
    // unknown key in a spec.
    let broken = r#"apiVersion: v1
kind: Service
metadata:
  name: redis
spec:
  ports:
    - port: 6379
---
apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: r
spec:
  entryPoints: [redis]
  routes:
    - match: HostSNI(`redis.example.com`)
      services:
        - name: redis
          port: 6380
          weigth: 2
  tls:
    secretName: missing
"#;
    let s = Setup::new(&[("broken.yaml", broken)], "");
    let ran = s.check();
    let f = s.manifest("broken.yaml").display().to_string();
    assert_eq!(
        ran.stderr,
        format!(
            "{f}:19:17: Service `default/redis` has no port 6380\n\
             {f}:20:11: unknown key `weigth` in [spec.routes[0].services[0]] (did you mean `weight`?)\n\
             {f}:22:17: Secret `default/missing` is not defined in the manifests\n"
        )
    );
}

/// Termination with the default TLSStore's certificate and a TLSOption,
/// re-encrypted to the backend through a ServersTransportTCP whose CA is a
/// Secret (`stringData`), the objects spread over both API groups and a
/// `kind: List` (what `kubectl get -o yaml` writes).
fn store_options_transport(cert_b64: &str, key_b64: &str, backend_ca: &str) -> String {
    let ca = backend_ca
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: default-cert
  namespace: edge
type: kubernetes.io/tls
data:
  tls.crt: {cert_b64}
  tls.key: {key_b64}
---
apiVersion: v1
kind: Secret
metadata:
  name: backend-ca
  namespace: edge
stringData:
  ca.crt: |
{ca}
---
apiVersion: traefik.io/v1alpha1
kind: TLSStore
metadata:
  name: default
  namespace: edge
spec:
  defaultCertificate:
    secretName: default-cert
---
apiVersion: v1
kind: List
items:
  - apiVersion: traefik.containo.us/v1alpha1
    kind: TLSOption
    metadata:
      name: modern
      namespace: edge
    spec:
      minVersion: VersionTLS13
  - apiVersion: traefik.containo.us/v1alpha1
    kind: ServersTransportTCP
    metadata:
      name: backend.tls
      namespace: edge
    spec:
      dialTimeout: 5s
      tls:
        serverName: backend.internal
        rootCAs:
          - secret: backend-ca
---
apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: edge
  namespace: edge
spec:
  entryPoints: [tcp-generic]
  routes:
    - match: HostSNI(`*`)
      services:
        - name: backend
          port: 443
          tls: true
          serversTransport: backend.tls
  tls:
    options:
      name: modern
"#
    )
}

#[test]
fn tls_store_options_and_servers_transport_from_manifests() {
    let ca = Ca::new("edge CA");
    let (crt, key) = ca.leaf(&["edge.example.com"], false);
    let pki = Pki::new();
    let (be_crt, be_key) = pki.leaf("backend.internal", &["backend.internal"]);
    let backend = SServer::start(&be_crt, &be_key);
    let backend_ca = std::fs::read_to_string(&pki.ca).unwrap();
    let s = Setup::new(
        &[(
            "edge.yaml",
            &store_options_transport(&b64(&crt), &b64(&key), &backend_ca),
        )],
        &map("edge/backend", &[backend.addr]),
    );
    let check = s.check();
    assert!(check.ok(), "{}", check.stderr);
    assert!(
        check.stdout.contains("edge-backend-tls"),
        "the transport keeps Traefik's normalized name: {}",
        check.stdout
    );
    let p = s.start();
    let ca_file = s.dir.write("edge-ca.crt", &ca.pem);
    let addr = p.addr("tcp-generic");
    // TLSOption `modern`: TLS 1.2 is refused.
    let old = TlsStream::connect(
        addr,
        "edge.example.com",
        client_config(&ca_file, None, &[&rustls::version::TLS12]),
    );
    assert!(old.is_err(), "TLS 1.2 must be refused by minVersion");
    let c = TlsStream::connect(addr, "edge.example.com", client_config(&ca_file, None, &[]))
        .expect("TLS 1.3 with the store's default certificate");
    assert_eq!(c.peer_names(), vec!["edge.example.com"]);
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // s_server -rev answers each line reversed, over the verified
    // re-encrypted connection (serverName and the CA from the Secret).
    c.write_all(b"k8s edge\n").unwrap();
    let got = c.read_exact_len(9).unwrap();
    assert_eq!(got, b"egde s8k\n");
}

#[test]
fn a_traefik_yml_names_the_provider_and_the_guides_empty_section_is_explained() {
    let backend = Backend::echo();
    let dir = TempDir::new("k8s-yml");
    std::fs::create_dir_all(dir.0.join("manifests")).unwrap();
    dir.write(
        "manifests/postgres-tcp-route.yaml",
        &fixture("postgres-tcp-route.yaml"),
    );
    let cfg = dir.write(
        "traefik.yml",
        &format!(
            r#"entryPoints:
  postgres:
    address: "127.0.0.1:0"
providers:
  kubernetesCRD:
    directory: manifests
    services:
      default/postgres-service:
        servers: ["{}"]
tcpServersTransport:
  terminationDelay: 30s
"#,
            backend.addr
        ),
    );
    let p = Proxy::start_file(&cfg);
    assert!(echoes(p.addr("postgres"), None));

    // The guide's static configuration says `kubernetesCRD: {}` (the API).
    let empty = dir.write(
        "empty.yml",
        "entryPoints:\n  postgres:\n    address: \"127.0.0.1:0\"\nproviders:\n  kubernetesCRD: {}\n",
    );
    let ran = run(
        Command::new(BIN).arg("check").arg("-c").arg(&empty),
        b"",
        Duration::from_secs(20),
    );
    assert_eq!(
        ran.stderr,
        format!(
            "{}:5:18: [providers.kubernetesCRD] needs `directory`, the manifest files to read (sluicegate does not read the Kubernetes API)\n",
            empty.display()
        )
    );
}

#[test]
fn provider_options_namespaces_ingress_class_external_names_json_and_v2_rules() {
    let manifests = [
        (
            "external.json",
            r#"{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "legacy", "namespace": "prod"},
 "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"name": "pg", "port": 5432}]}}
"#,
        ),
        (
            "routes.yaml",
            r#"apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: legacy
  namespace: prod
spec:
  entryPoints: [postgres]
  routes:
    - match: HostSNI(`a.example.com`, `b.example.com`)
      syntax: v2
      priority: 7
      services:
        - name: legacy
          port: pg
  tls:
    passthrough: true
---
apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: other-class
  namespace: prod
  annotations:
    kubernetes.io/ingress.class: nginx
spec:
  routes:
    - match: HostSNI(`*`)
      services:
        - name: nowhere
          port: 1
---
apiVersion: traefik.io/v1alpha1
kind: IngressRouteTCP
metadata:
  name: elsewhere
  namespace: staging
spec:
  routes:
    - match: HostSNI(`*`)
      services:
        - name: nowhere
          port: 1
"#,
        ),
    ];
    // Without allowExternalNameServices the ExternalName Service is refused.
    let s = Setup::new(&manifests, "namespaces = [\"prod\"]\n");
    let ran = s.check();
    let f = s.manifest("routes.yaml").display().to_string();
    assert_eq!(
        ran.stderr,
        format!("{f}:13:17: Service `prod/legacy` is an ExternalName Service: set allowExternalNameServices = true in [providers.kubernetesCRD] to use it (as Traefik)\n")
    );
    // Allowed: only the `prod` route of the default class is read; its v2
    // rule (two names) and priority are kept; the port name `pg` is the
    // Service's 5432.
    let s = Setup::new(
        &manifests,
        "namespaces = [\"prod\"]\nallowExternalNameServices = true\n",
    );
    let ran = s.check();
    assert!(ran.ok(), "{}", ran.stderr);
    assert!(ran.stdout.contains("routers (1):"), "{}", ran.stdout);
    let router = ran
        .stdout
        .lines()
        .find(|l| l.contains("prod-legacy-"))
        .unwrap_or_default()
        .to_string();
    assert!(router.contains("prio 7"), "{router}");
    assert!(
        router.contains("HostSNI(`a.example.com`, `b.example.com`)"),
        "{router}"
    );
    assert!(
        ran.stdout
            .contains("ruleSyntax v2; in v3: HostSNI(`a.example.com`) || HostSNI(`b.example.com`)"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.trim().starts_with("localhost:5432 (")),
        "{}",
        ran.stdout
    );
}

/// Sets a file's modification time `secs` seconds in the past.
fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn deleting_an_older_manifest_removes_its_routes() {
    let redis = Backend::echo();
    let pg = Backend::echo();
    let s = Setup::new(
        &[
            ("tcp-load-balance.yaml", &fixture("tcp-load-balance.yaml")),
            (
                "postgres-tcp-route.yaml",
                &fixture("postgres-tcp-route.yaml"),
            ),
        ],
        &(map("default/redis-service", &[redis.addr])
            + &map("default/postgres-service", &[pg.addr])),
    );
    // The file removed is not the directory's newest entry.
    age(&s.manifest("tcp-load-balance.yaml"), 60);
    let p = s.start();
    assert!(echoes(p.addr("redis"), None));
    assert!(echoes(p.addr("postgres"), None));
    std::fs::remove_file(s.manifest("tcp-load-balance.yaml")).unwrap();
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert!(
        !echoes(p.addr("redis"), None),
        "the deleted route still serves"
    );
    assert!(echoes(p.addr("postgres"), None));
}
