//! A real two-node Patroni cluster for tests: one etcd (v3 API) and two
//! Patroni daemons, each running PostgreSQL 15 from Debian. Node 1 listens
//! on 127.0.0.1, node 2 on 127.0.0.2, on the same PostgreSQL port and the
//! same REST port (as on two machines), so a proxy's health check with one
//! `port` reaches each node's REST API at its server's address. Node 1
//! bootstraps and leads; node 2 is its streaming replica.
//!
//! Patroni refuses nothing as root, but PostgreSQL does: as root the
//! daemons run as user `postgres`. On drop the daemons get SIGTERM (Patroni
//! stops its PostgreSQL), then any PostgreSQL left is stopped at once.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pg::{as_owner, is_root, PG_BIN};
use super::process::{free_port, run, wait_listening, ChildGuard};
use super::TempDir;

/// Whether patroni, patronictl and etcd are installed (and PostgreSQL).
pub fn available() -> bool {
    super::pg::available()
        && super::require_tool("patroni", "patroni")
        && super::require_tool("patronictl", "patroni")
        && super::require_tool("etcd", "etcd-server")
}

pub struct Patroni {
    /// PostgreSQL port of both nodes (127.0.0.1 and 127.0.0.2).
    pub pg_port: u16,
    /// REST API port of both nodes.
    pub rest_port: u16,
    config: [PathBuf; 2],
    daemons: Vec<ChildGuard>,
    _etcd: ChildGuard,
    dir: TempDir,
}

/// A port free on both 127.0.0.1 and 127.0.0.2.
fn port_on_both() -> u16 {
    for _ in 0..50 {
        let port = free_port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A command that runs as the PostgreSQL owner.
fn owned(prog: &str) -> Command {
    let mut c = Command::new(prog);
    if is_root() {
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
    }
    // The test's own directory may be closed to that user (a checkout in a
    // 0700 directory, as CI makes): Patroni then never finishes its
    // bootstrap ("could not change directory ... Permission denied").
    c.current_dir("/");
    c.stdin(Stdio::null());
    c
}

/// `GET path` on a node's REST API: the status (0 when it does not answer).
pub fn rest_status(node: usize, port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect((format!("127.0.0.{node}").as_str(), port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn status_within(node: usize, port: u16, path: &str, want: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while rest_status(node, port, path) != want {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn wait_status(node: usize, port: u16, path: &str, want: u16, limit: Duration) {
    assert!(
        status_within(node, port, path, want, limit),
        "node {node}: {path} never answered {want}"
    );
}

impl Patroni {
    /// A two-node cluster, node 1 the leader. Ports come from `free_port`
    /// (bound, then released) while other tests pick theirs too, so a start
    /// that does not come up is retried once on fresh ports; a second
    /// failure panics with both nodes' logs.
    pub fn start() -> Patroni {
        let mut last = String::new();
        for attempt in 1..=2 {
            match Self::try_start() {
                Ok(p) => return p,
                Err(e) => {
                    eprintln!("patroni start attempt {attempt} failed: {e}");
                    last = e;
                }
            }
        }
        panic!("patroni did not start: {last}");
    }

    fn try_start() -> Result<Patroni, String> {
        let dir = TempDir::new("patroni");
        let (client, peer) = (free_port(), free_port());
        let (pg_port, rest_port) = (port_on_both(), port_on_both());
        // Owned by the PostgreSQL user before etcd (run as that user) makes its
        // data directory in it.
        if is_root() {
            run(
                Command::new("chown").arg("postgres:postgres").arg(&dir.0),
                b"",
                Duration::from_secs(10),
            )
            .expect_ok("chown");
        }
        let etcd = ChildGuard::spawn(
            owned("etcd")
                .arg("--name")
                .arg("e")
                .arg("--data-dir")
                .arg(dir.0.join("etcd"))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(format!("e=http://127.0.0.1:{peer}"))
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_listening(client, Duration::from_secs(30));
        let config = [1, 2].map(|n| {
            let sock = dir.0.join(format!("s{n}"));
            std::fs::create_dir_all(&sock).unwrap();
            let yml = format!(
                r#"scope: sg
name: n{n}
restapi:
  listen: 127.0.0.{n}:{rest_port}
  connect_address: 127.0.0.{n}:{rest_port}
etcd3:
  host: 127.0.0.1:{client}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    postgresql:
      parameters:
        fsync: "off"
        synchronous_commit: "off"
        full_page_writes: "off"
  initdb:
    - encoding: UTF8
  pg_hba:
    - host replication replicator 127.0.0.0/8 trust
    - host all all 127.0.0.0/8 trust
postgresql:
  listen: 127.0.0.{n}:{pg_port}
  connect_address: 127.0.0.{n}:{pg_port}
  data_dir: {data}
  bin_dir: {PG_BIN}
  pgpass: {pgpass}
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pg}}
  parameters:
    unix_socket_directories: {sock}
"#,
                data = dir.0.join(format!("d{n}")).display(),
                pgpass = dir.0.join(format!("pgpass{n}")).display(),
                sock = sock.display(),
            );
            dir.write(&format!("n{n}.yml"), &yml)
        });
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir.0),
                b"",
                Duration::from_secs(10),
            )
            .expect_ok("chown");
        }
        let mut cluster = Patroni {
            pg_port,
            rest_port,
            config: config.clone(),
            daemons: Vec::new(),
            _etcd: etcd,
            dir,
        };
        for (i, path) in config.iter().enumerate() {
            let log = std::fs::File::create(cluster.dir.0.join(format!("n{}.log", i + 1))).unwrap();
            cluster.daemons.push(ChildGuard::spawn(
                owned("patroni")
                    .arg(path)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            ));
            let (path, want) = if i == 0 {
                ("/primary", 200)
            } else {
                ("/replica", 200)
            };
            if !status_within(i + 1, rest_port, path, want, Duration::from_secs(60)) {
                return Err(format!(
                    "node {}: {path} never answered {want}; logs:\n{}",
                    i + 1,
                    cluster.logs()
                ));
            }
        }
        Ok(cluster)
    }

    /// `patronictl switchover --candidate n{to} --force`.
    pub fn switchover(&self, to: usize) -> String {
        let r = run(
            owned("patronictl").arg("-c").arg(&self.config[0]).args([
                "switchover",
                "--candidate",
                &format!("n{to}"),
                "--force",
            ]),
            b"",
            Duration::from_secs(60),
        );
        r.expect_ok("patronictl switchover").stdout
    }

    /// Wait until node `n` is the leader and the other a running replica.
    pub fn wait_leader(&self, n: usize, limit: Duration) {
        wait_status(n, self.rest_port, "/primary", 200, limit);
        wait_status(3 - n, self.rest_port, "/replica", 200, limit);
    }

    /// Both nodes' Patroni logs (for failure messages).
    pub fn logs(&self) -> String {
        [1, 2]
            .map(|n| {
                std::fs::read_to_string(self.dir.0.join(format!("n{n}.log"))).unwrap_or_default()
            })
            .join("\n----\n")
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        // SIGTERM: Patroni stops its PostgreSQL, then exits.
        for d in &self.daemons {
            let _ = Command::new("kill").arg(d.pid().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for d in &mut self.daemons {
            while Instant::now() < deadline && matches!(d.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is still running (a daemon that was killed) stops now.
        for n in [1, 2] {
            let data = self.dir.0.join(format!("d{n}"));
            if data.join("postmaster.pid").exists() {
                let _ = as_owner(&format!(
                    "{PG_BIN}/pg_ctl -D {} -m immediate -w stop",
                    data.display()
                ));
            }
        }
    }
}
