//! KV providers against real stores: a fleet of three sluicegate processes
//! following one etcd (changes reach all three, deleting the last router is
//! applied, a 50-key transaction is applied whole, the fleet keeps serving
//! while the store is down and resyncs when it is back, the applied
//! revision is the same in every instance's /metrics), and a real Redis
//! (an expiring key is noticed).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::redis::RedisServer;
use support::*;

/// The first byte a plain client gets through `addr`, `None` when the proxy
/// closes without one (no route).
fn first_byte(addr: SocketAddr) -> Option<u8> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// Waits until every proxy serves `want` (or closes, for `None`); the time
/// it took.
fn until_all(proxies: &[&Proxy], want: Option<u8>, what: &str) -> Duration {
    let t = Instant::now();
    for p in proxies {
        while first_byte(p.addr("db")) != want {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{what}: still not {want:?}; log:\n{}",
                p.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    t.elapsed()
}

/// Entry points `db` and `traefik` (metrics, API) with the KV provider
/// `provider` (`etcd`, `redis`) at `endpoint`. The clients here read a
/// greeting and never half-close: terminationDelay plays no part.
fn static_config(provider: &str, endpoint: &str) -> String {
    Cfg::new()
        .entrypoint("db")
        .entrypoint("traefik")
        .table("metrics.prometheus")
        .table("api")
        .set(&format!("providers.{provider}"), "endpoints", [endpoint])
        .to_toml()
}

fn applied_revision(p: &Proxy) -> String {
    metrics(p.addr("traefik"))
        .lines()
        .find(|l| l.starts_with("sluicegate_kv_applied_revision{"))
        .unwrap_or("")
        .to_string()
}

/// Traefik's KV layout for one router -> one service -> `servers`.
fn route(server: &[SocketAddr]) -> Vec<(String, String)> {
    let mut kv = vec![
        (
            "traefik/tcp/routers/r/rule".to_string(),
            "HostSNI(`*`)".to_string(),
        ),
        ("traefik/tcp/routers/r/service".into(), "s".into()),
        ("traefik/tcp/routers/r/entrypoints/0".into(), "db".into()),
    ];
    for (i, a) in server.iter().enumerate() {
        kv.push((
            format!("traefik/tcp/services/s/loadbalancer/servers/{i}/address"),
            a.to_string(),
        ));
    }
    kv
}

fn as_refs(kv: &[(String, String)]) -> Vec<(&str, &str)> {
    kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn a_fleet_follows_one_etcd() {
    if !require_tool("etcd", "etcd-server") {
        return;
    }
    let mut etcd = Etcd::start();
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    etcd.txn(&[], &as_refs(&route(&[a.addr])));
    let cfg = static_config("etcd", &etcd.endpoint());
    let fleet: Vec<Proxy> = (0..3).map(|_| Proxy::start(&cfg)).collect();
    let all: Vec<&Proxy> = fleet.iter().collect();
    until_all(&all, Some(b'A'), "start");

    // A change reaches every instance.
    etcd.put(
        "traefik/tcp/services/s/loadbalancer/servers/0/address",
        &b.addr.to_string(),
    );
    let took = until_all(&all, Some(b'B'), "change");
    eprintln!("kv: a change reached all 3 instances in {took:?}");
    let revs: Vec<String> = all.iter().map(|p| applied_revision(p)).collect();
    assert!(!revs[0].is_empty(), "{}", metrics(all[0].addr("traefik")));
    assert!(revs.iter().all(|r| *r == revs[0]), "{revs:?}");
    // The same revision in the API.
    let rev: String = revs[0].rsplit(' ').next().unwrap().to_string();
    for p in &all {
        let body = http_get(p.addr("traefik"), "/api/providers");
        let want = format!(
            "[{{\"provider\":\"etcd://{}/traefik\",\"appliedRevision\":{rev}}}]",
            etcd.endpoint()
        );
        assert!(body.ends_with(&want), "{body}");
    }

    // A 50-server service and its router, swapped in one transaction while
    // clients connect: every connection sees the old config or the new one,
    // and no reload ever fails (half a transaction would be a service
    // without servers or a router without its service).
    let servers: Vec<SocketAddr> = (0..50).map(|_| a.addr).collect();
    let new = route(&servers);
    etcd.txn(&[], &as_refs(&new));
    let t = Instant::now();
    let mut seen_a = false;
    while t.elapsed() < Duration::from_secs(3) {
        for p in &all {
            match first_byte(p.addr("db")) {
                Some(b'A') => seen_a = true,
                Some(b'B') => {}
                other => panic!("mid-transaction state {other:?}"),
            }
        }
    }
    assert!(seen_a, "the transaction was applied");
    for p in &all {
        assert!(
            !p.logs().iter().any(|l| l.contains("reload failed")),
            "{}",
            p.logs().join("\n")
        );
    }

    // Deleting the last router is applied (Traefik ignores it).
    etcd.txn(&["traefik/"], &[]);
    until_all(&all, None, "last router deleted");

    // The store goes away: the fleet keeps serving what it had, says so once,
    // and resyncs when the store is back (a change made meanwhile is seen).
    etcd.txn(&[], &as_refs(&route(&[a.addr])));
    until_all(&all, Some(b'A'), "re-added");
    etcd.stop();
    for p in &all {
        p.wait_logs(1, |l| l.contains("kv store unreachable"));
    }
    for p in &all {
        assert_eq!(first_byte(p.addr("db")), Some(b'A'), "serves while down");
    }
    etcd.restart();
    etcd.put(
        "traefik/tcp/services/s/loadbalancer/servers/0/address",
        &b.addr.to_string(),
    );
    let took = until_all(&all, Some(b'B'), "after the store restarted");
    eprintln!("kv: after a store restart, a change reached all 3 in {took:?}");
    for p in &all {
        assert!(p
            .logs()
            .iter()
            .any(|l| l.contains("kv store reachable again")));
    }

    // A bad value is refused with its position in the KV listing; the
    // running configuration stays.
    etcd.put("traefik/tcp/routers/r/rule", "HostSNI(`*`) || Nope(`x`)");
    let failed = all[0].wait_logs(1, |l| l.contains("reload failed"));
    assert!(
        failed[0].contains(&format!("etcd://{}/traefik:", etcd.endpoint()))
            && failed[0].contains("invalid rule"),
        "{}",
        failed[0]
    );
    assert_eq!(first_byte(all[0].addr("db")), Some(b'B'));
}

#[test]
fn a_redis_provider_notices_an_expiring_key() {
    if !require_tool("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start();
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let redis_cmd = |args: &[&str]| {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(cmd.as_bytes()).unwrap();
        let mut b = [0u8; 64];
        let n = s.read(&mut b).unwrap();
        assert!(
            !b[..n].starts_with(b"-"),
            "{}",
            String::from_utf8_lossy(&b[..n])
        );
    };
    for (k, v) in route(&[a.addr]) {
        redis_cmd(&["SET", &k, &v]);
    }
    // A second router for B whose rule key expires.
    redis_cmd(&[
        "SET",
        "traefik/tcp/routers/b/rule",
        "ClientIP(`127.0.0.2`)",
        "PX",
        "1500",
    ]);
    redis_cmd(&["SET", "traefik/tcp/routers/b/service", "sb"]);
    redis_cmd(&[
        "SET",
        "traefik/tcp/services/sb/loadbalancer/servers/0/address",
        &b.addr.to_string(),
    ]);
    let p = Proxy::start(&static_config(
        "redis",
        &format!("127.0.0.1:{}", redis.port),
    ));
    let from2 = || {
        let mut s = connect_from("127.0.0.2", p.addr("db"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok().map(|_| b[0])
    };
    assert_eq!(from2(), Some(b'B'), "{}", p.logs().join("\n"));
    assert_eq!(first_byte(p.addr("db")), Some(b'A'));
    // The rule expires: router `b` is incomplete (no rule), which is an
    // error, so the running config is kept and the error says why...
    let failed = p.wait_logs(1, |l| l.contains("reload failed"));
    assert!(failed[0].contains("has no `rule`"), "{}", failed[0]);
    // ...until the rest of it goes too; then only `r` is left.
    redis_cmd(&["DEL", "traefik/tcp/routers/b/service"]);
    let t = Instant::now();
    while from2() != Some(b'A') {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            p.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        applied_revision(&p).starts_with("sluicegate_kv_applied_revision{provider=\"redis://"),
        "{}",
        metrics(p.addr("traefik"))
    );
}
