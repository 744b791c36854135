//! A real PostgreSQL 15 cluster for tests: initdb in a scratch directory, TLS
//! on with a certificate from the test CA, started on a free port of
//! 127.0.0.1 and stopped (`pg_ctl -m immediate stop`) on drop.
//!
//! PostgreSQL refuses to run as root: as root, every server command runs as
//! user `postgres` (the scratch directory is handed to it); as another user,
//! directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{free_port, run, Ran};
use super::TempDir;

/// Where Debian installs the PostgreSQL 15 server programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// initdb and start both finish in about a second; a loaded CI machine gets
/// far more.
const PG_LIMIT: Duration = Duration::from_secs(60);

/// Whether the server programs and clients are installed: like
/// `require_tool`, a failure naming the package under CI=true, a loud skip
/// otherwise.
pub fn available() -> bool {
    if !Path::new(PG_BIN).join("initdb").exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{PG_BIN}/initdb is missing: install the Debian package `postgresql`");
        }
        super::note_skip(&format!(
            "{PG_BIN}/initdb not found (Debian package `postgresql`)"
        ));
        return false;
    }
    super::require_tool("psql", "postgresql-client") && super::require_tool("pgbench", "postgresql")
}

pub fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Run a shell command line as the PostgreSQL owner.
pub fn as_owner(script: &str) -> Ran {
    let mut cmd = if is_root() {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    run(&mut cmd, b"", PG_LIMIT)
}

fn chown_owner(path: &Path) {
    if is_root() {
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
            b"",
            PG_LIMIT,
        )
        .expect_ok("chown to postgres");
    }
}

pub struct PgCluster {
    pub port: u16,
    data: PathBuf,
    // Dropped after the server is stopped (field order).
    dir: TempDir,
}

impl PgCluster {
    /// A cluster with `ssl = on` serving `cert`/`key`, trust authentication
    /// for user `postgres` from 127.0.0.1, and durability turned off (tests
    /// need speed, not crash safety).
    pub fn start(cert: &Path, key: &Path) -> PgCluster {
        let dir = TempDir::new("pg");
        // TempDir is 0755 under /tmp; the owner needs to create `data` in it.
        chown_owner(&dir.0);
        let data = dir.0.join("data");
        as_owner(&format!(
            "{PG_BIN}/initdb --no-sync -D {} -A trust -U postgres",
            data.display()
        ))
        .expect_ok("initdb");
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 40\n",
            dir.0.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        chown_owner(&data);
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let cluster = PgCluster { port, data, dir };
        as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -l {}/log -w -t 50 start",
            cluster.data.display(),
            cluster.dir.0.display()
        ))
        .expect_ok("pg_ctl start");
        cluster
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`: standby.signal
    /// and primary_conninfo written by the backup), on its own free port,
    /// started and hot-standby (it answers reads, refuses writes). The
    /// certificate and settings come with the backup; port and socket
    /// directory are set again after them (the last setting wins).
    pub fn replica_of(primary: &PgCluster) -> PgCluster {
        let dir = TempDir::new("pg-replica");
        chown_owner(&dir.0);
        let data = dir.0.join("data");
        as_owner(&format!(
            "{PG_BIN}/pg_basebackup -h 127.0.0.1 -p {} -U postgres -D {} -R -X stream --no-sync",
            primary.port,
            data.display()
        ))
        .expect_ok("pg_basebackup");
        let port = free_port();
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.0.display()
        ));
        std::fs::write(&conf_path, text).unwrap();
        chown_owner(&data);
        let cluster = PgCluster { port, data, dir };
        as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -l {}/log -w -t 50 start",
            cluster.data.display(),
            cluster.dir.0.display()
        ))
        .expect_ok("pg_ctl start replica");
        cluster
    }

    /// Put `line` first in pg_hba.conf (first match wins) and reload.
    pub fn hba_first(&self, line: &str) {
        let path = self.data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{line}\n{text}")).unwrap();
        assert_eq!(self.sql("select pg_reload_conf()"), "t");
    }

    /// `pg_ctl promote -w`: the replica leaves recovery and takes writes.
    pub fn promote(&self) {
        as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -w -t 50 promote",
            self.data.display()
        ))
        .expect_ok("pg_ctl promote");
    }

    /// Stop now (`-m immediate`, as a crash would); start again with `start_again`.
    pub fn stop(&self) {
        as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -m immediate -w stop",
            self.data.display()
        ))
        .expect_ok("pg_ctl stop");
    }

    /// Start a stopped cluster again on its port.
    pub fn start_again(&self) {
        as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -l {}/log -w -t 50 start",
            self.data.display(),
            self.dir.0.display()
        ))
        .expect_ok("pg_ctl start again");
    }

    /// Run SQL directly against this cluster (no proxy, no TLS).
    pub fn sql(&self, sql: &str) -> String {
        psql(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
                self.port
            ),
            sql,
        )
        .expect_ok("psql direct")
        .stdout
        .trim()
        .to_string()
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_owner(&format!(
            "{PG_BIN}/pg_ctl -D {} -m immediate -w stop",
            self.data.display()
        ));
    }
}

/// `psql CONNINFO -XAt -c SQL` (unaligned, tuples only), bounded in time.
pub fn psql(conninfo: &str, sql: &str) -> Ran {
    run(
        Command::new("psql")
            .args([
                conninfo,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "10"),
        b"",
        Duration::from_secs(30),
    )
}

/// Whether Python's psycopg 3 (PyPI `psycopg[binary]`, which ships its own
/// libpq) is importable by `python3`: like `require_tool`, a failure naming
/// the package under CI=true (scripts/test.sh installs it), a loud skip
/// otherwise.
pub fn psycopg_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 cannot import psycopg: install the PyPI package `psycopg[binary]` (scripts/test.sh does)");
        }
        super::note_skip("python3 cannot import psycopg (PyPI `psycopg[binary]`)");
    }
    ok
}

/// Run a Python script (psycopg tests) with `args`, bounded in time.
pub fn python(script: &str, args: &[&str], limit: Duration) -> Ran {
    run(
        Command::new("python3").arg("-c").arg(script).args(args),
        b"",
        limit,
    )
}

/// A cluster without TLS certificates of its own choosing: a throwaway
/// certificate from a fresh test CA (the sessions these tests make are plain).
pub fn plain_cluster() -> PgCluster {
    let pki = super::openssl::Pki::new();
    let (crt, key) = pki.leaf("pg.test", &["pg.test"]);
    PgCluster::start(&crt, &key)
}
