//! Traefik's YAML, static and dynamic, through the real binary: a
//! `traefik.yml` named with `-c`, a `[providers.file] directory` mixing
//! `.yml`, `.yaml` and `.toml` files, live traffic through the routers the
//! YAML defines, reload of a YAML file on SIGHUP, and errors as
//! `FILE:LINE:COL` exactly as for TOML.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::process::{run, Ran};
use support::*;

fn check(path: &Path) -> Ran {
    run(
        Command::new(BIN).arg("check").arg("-c").arg(path),
        b"",
        Duration::from_secs(20),
    )
}

/// One round trip through an echo route; `None` when the proxy closes.
fn echo(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg).ok()?;
    let mut b = vec![0u8; msg.len()];
    s.read_exact(&mut b).ok()?;
    Some(b)
}

/// The static file, in the shape of a Traefik `traefik.yml`.
fn static_yaml(dir: &str) -> String {
    format!(
        r#"# traefik.yml
entryPoints:
  postgres:
    address: "127.0.0.1:0"
    transport:
      respondingTimeouts:
        readTimeout: 5s
  redis:
    address: 127.0.0.1:0
providers:
  file:
    directory: {dir}
    watch: false
tcpServersTransport:
  terminationDelay: 30s
"#
    )
}

#[test]
fn a_traefik_yml_with_mixed_dynamic_files_routes_traffic() {
    let pg = Backend::echo();
    let redis = Backend::greeting(b"+PONG\r\n");
    let dir = TempDir::new("yaml-routes");
    let path = dir.write("traefik.yml", &static_yaml("dynamic"));
    std::fs::create_dir_all(dir.0.join("dynamic")).unwrap();
    // Routers in YAML; one service in YAML (`.yaml`), one in TOML.
    dir.write(
        "dynamic/routers.yml",
        r#"tcp:
  routers:
    pg:
      entryPoints: [postgres]
      rule: HostSNI(`*`)
      service: pg
    redis:
      entryPoints:
        - redis
      rule: "HostSNI(`*`)"
      service: redis
      middlewares: [local-only]
  middlewares:
    local-only:
      ipAllowList:
        sourceRange:
          - 127.0.0.1/32
"#,
    );
    dir.write(
        "dynamic/pg.yaml",
        &format!(
            "tcp:\n  services:\n    pg:\n      loadBalancer:\n        servers:\n          - address: \"{}\"\n",
            pg.addr
        ),
    );
    dir.write(
        "dynamic/redis.toml",
        &format!(
            "[tcp.services.redis.loadBalancer]\nservers = [{{ address = \"{}\" }}]\n",
            redis.addr
        ),
    );

    let c = check(&path).expect_ok("check traefik.yml");
    assert!(
        c.stdout.contains("pg") && c.stdout.contains("redis"),
        "{}",
        c.stdout
    );

    let p = Proxy::start_file(&path);
    assert_eq!(
        echo(p.addr("postgres"), b"select 1").as_deref(),
        Some(&b"select 1"[..]),
        "the YAML router forwards to the YAML service"
    );
    let mut s = TcpStream::connect(p.addr("redis")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 7];
    s.read_exact(&mut b).unwrap();
    assert_eq!(
        &b, b"+PONG\r\n",
        "YAML router with a middleware, TOML service"
    );
    let logs = p.wait_conns(1);
    assert_eq!(
        field(&logs[0], "router").as_deref(),
        Some("pg"),
        "{}",
        logs[0]
    );
}

#[test]
fn a_yaml_dynamic_file_reloads_on_sighup() {
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let dir = TempDir::new("yaml-reload");
    let path = dir.write(
        "traefik.yaml",
        "entryPoints:\n  db:\n    address: 127.0.0.1:0\nproviders:\n  file:\n    filename: dynamic.yml\n",
    );
    let dynamic = |to: SocketAddr| {
        format!(
            "tcp:\n  routers:\n    r:\n      rule: HostSNI(`*`)\n      service: s\n  services:\n    s:\n      loadBalancer:\n        servers:\n          - address: {to}\n"
        )
    };
    let dyn_path = dir.write("dynamic.yml", &dynamic(a.addr));
    let p = Proxy::start_file(&path);
    let first = |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        one[0]
    };
    assert_eq!(first(p.addr("db")), b'A');
    std::fs::write(&dyn_path, dynamic(b.addr)).unwrap();
    p.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if first(p.addr("db")) == b'B' {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload of the YAML file not seen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken edit is refused with its position; the running config stays.
    std::fs::write(&dyn_path, "tcp:\n  routers:\n    r: [unclosed\n").unwrap();
    p.signal(libc::SIGHUP);
    let failed = p.wait_logs(1, |l| l.contains("reload failed"));
    assert!(
        failed[0].contains("dynamic.yml:") && failed[0].contains("YAML syntax error"),
        "{}",
        failed[0]
    );
    assert_eq!(first(p.addr("db")), b'B', "the running config is kept");
}

/// Every error carries the YAML file's own line and column.
#[test]
fn yaml_errors_point_at_file_line_and_column() {
    let dir = TempDir::new("yaml-errors");
    let path = dir.write(
        "traefik.yml",
        "entryPoints:\n  db:\n    address: 127.0.0.1:0\nproviders:\n  file:\n    filename: dynamic.yaml\n",
    );
    dir.write(
        "dynamic.yaml",
        r#"tcp:
  routers:
    r:
      rule: HostSNI(`*`) || Bogus(`x`)
      service: s
      priorty: 3
  services:
    s:
      loadBalancer:
        servers:
          - address: [1, 2]
"#,
    );
    let r = check(&path);
    assert!(!r.ok(), "{}", r.stdout);
    let f = dir.0.join("dynamic.yaml").display().to_string();
    for want in [
        // `Bogus` is the 17th byte of the rule, which starts at column 13.
        format!("{f}:4:29: invalid rule"),
        format!("{f}:6:7: unknown key `priorty` in [tcp.routers.r] (did you mean `priority`?)"),
        format!("{f}:11:22: `tcp.services.s.loadBalancer.servers[0].address` must be a string, not array"),
    ] {
        assert!(r.stderr.contains(&want), "missing {want:?} in:\n{}", r.stderr);
    }

    // Syntax errors: the parser's position, named as YAML.
    std::fs::write(dir.0.join("dynamic.yaml"), "tcp:\n  routers: {a: 1\n").unwrap();
    let r = check(&path);
    assert!(!r.ok());
    assert!(
        r.stderr.contains(&format!("{f}:3:")) && r.stderr.contains("YAML syntax error"),
        "{}",
        r.stderr
    );

    // A second document in one file (Traefik reads one).
    let bad = dir.write(
        "two.yml",
        "entryPoints:\n  db:\n    address: x\n---\nfoo: 1\n",
    );
    let r = check(&bad);
    assert!(
        r.stderr
            .contains("two.yml:4:1: YAML syntax error: more than one YAML document"),
        "{}",
        r.stderr
    );
}

/// YAML's own abuse: an alias bomb is refused quickly and in bounded
/// memory, deep nesting is refused, not a stack overflow.
#[test]
fn yaml_alias_bombs_and_deep_nesting_are_refused() {
    let dir = TempDir::new("yaml-abuse");
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb += &format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        );
    }
    let path = dir.write("bomb.yml", &bomb);
    let r = check(&path);
    assert!(!r.ok());
    assert!(
        r.stderr.contains("aliases expand to more than"),
        "{}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(10), "{:?}", r.elapsed);

    let deep = dir.write("deep.yml", &format!("a: {}", "[".repeat(200_000)));
    let r = check(&deep);
    assert!(!r.ok());
    assert!(
        r.stderr.contains("deep.yml:1:")
            && (r.stderr.contains("nested more than 128") || r.stderr.contains("recursion limit")),
        "{}",
        r.stderr
    );
}

/// Every example ships in both syntaxes, and each YAML twin is the same
/// configuration: `check` prints the same summary for both (all but the
/// line naming the file).
#[test]
fn every_example_reads_the_same_in_yaml_and_toml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let toml = e.unwrap().path();
        if toml.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let yaml = toml.with_extension("yml");
        assert!(yaml.exists(), "{} has no YAML twin", toml.display());
        let summary = |p: &Path| {
            let r = check(p).expect_ok(&p.display().to_string());
            r.stdout.lines().skip(1).collect::<Vec<_>>().join("\n")
        };
        let (t, y) = (summary(&toml), summary(&yaml));
        assert!(t.contains("routers ("), "{t}");
        assert_eq!(t, y, "{} and its YAML twin differ", toml.display());
        n += 1;
    }
    assert!(n >= 9, "only {n} examples found");
}

/// A watched `directory`: deleting a file that is not the newest one is a
/// change too (the directory's own mtime moves; the newest entry's does not).
#[test]
fn a_watched_directory_sees_an_older_file_deleted() {
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let dir = TempDir::new("yaml-watch");
    std::fs::create_dir_all(dir.0.join("dyn")).unwrap();
    let path = dir.write(
        "traefik.yml",
        "entryPoints:\n  a:\n    address: 127.0.0.1:0\n  b:\n    address: 127.0.0.1:0\nproviders:\n  file:\n    directory: dyn\n    watch: true\n",
    );
    let route = |name: &str, to: SocketAddr| {
        format!(
            "tcp:\n  routers:\n    {name}:\n      entryPoints: [{name}]\n      rule: HostSNI(`*`)\n      service: {name}\n  services:\n    {name}:\n      loadBalancer:\n        servers:\n          - address: {to}\n"
        )
    };
    let old = dir.write("dyn/a.yml", &route("a", a.addr));
    dir.write("dyn/b.yml", &route("b", b.addr));
    // a.yml an hour older than b.yml.
    let ran = Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(ran.success());
    let p = Proxy::start_file(&path);
    let first = |addr| {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).ok().map(|_| one[0])
    };
    assert_eq!(first(p.addr("a")), Some(b'A'));
    std::fs::remove_file(&old).unwrap();
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(
        first(p.addr("a")),
        None,
        "the deleted file's router is gone"
    );
    assert_eq!(first(p.addr("b")), Some(b'B'));
}
