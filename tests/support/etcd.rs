//! A real etcd (Debian `etcd-server`) for tests: one member on free loopback
//! ports with its own data directory, killed on drop; restartable on the
//! same ports and data. Keys are written through etcd's JSON gateway.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::process::{free_port, ChildGuard};
use super::TempDir;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct Etcd {
    pub port: u16,
    peer: u16,
    child: Option<ChildGuard>,
    dir: TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            port: free_port(),
            peer: free_port(),
            child: None,
            dir: TempDir::new("etcd"),
        };
        e.restart();
        e
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the member (its data stays).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts the member again on the same ports and data; returns when it answers.
    pub fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        self.child = Some(ChildGuard::spawn(
            Command::new("etcd")
                .arg("--name=t")
                .arg(format!("--data-dir={}", self.dir.0.join("data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=t={peer}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.call("/v3/kv/range", r#"{"key":"AA=="}"#).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POST to the gateway; the response body.
    pub fn call(&self, path: &str, body: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if !out.starts_with("HTTP/1.1 200") {
            return Err(out);
        }
        Ok(out)
    }

    fn put_op(k: &str, v: &str) -> String {
        format!(
            r#"{{"requestPut":{{"key":"{}","value":"{}"}}}}"#,
            B64.encode(k),
            B64.encode(v)
        )
    }

    fn delete_op(prefix: &str) -> String {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        format!(
            r#"{{"requestDeleteRange":{{"key":"{}","range_end":"{}"}}}}"#,
            B64.encode(prefix),
            B64.encode(&end)
        )
    }

    /// One transaction: delete everything under each prefix, then the puts.
    pub fn txn(&self, delete_prefixes: &[&str], puts: &[(&str, &str)]) {
        let ops: Vec<String> = delete_prefixes
            .iter()
            .map(|p| Self::delete_op(p))
            .chain(puts.iter().map(|(k, v)| Self::put_op(k, v)))
            .collect();
        let body = format!(r#"{{"success":[{}]}}"#, ops.join(","));
        self.call("/v3/kv/txn", &body).expect("etcd txn");
    }

    pub fn put(&self, k: &str, v: &str) {
        self.txn(&[], &[(k, v)]);
    }
}
