//! A real redis-server for tests, on a free port of 127.0.0.1, without
//! persistence, killed on drop. Optionally TLS-only with a test certificate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, ChildGuard};
use super::TempDir;

pub struct RedisServer {
    pub port: u16,
    _child: ChildGuard,
    _dir: TempDir,
}

impl RedisServer {
    /// Plain redis on a free port; returns once it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Plain redis with more server arguments (e.g. `--requirepass`);
    /// returns once it answers PING (`-NOAUTH` counts: it is up).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let port_s = port.to_string();
        let mut args = vec!["--port", port_s.as_str()];
        args.extend_from_slice(extra);
        let server = Self::spawn(&args, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let mut b = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut b).is_ok()
                    && (&b == b"+PONG\r\n" || &b == b"-NOAUTH")
                {
                    return server;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// TLS-only redis (`--port 0 --tls-port`), clients not authenticated.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let port = free_port();
        let p = |x: &Path| x.to_str().unwrap().to_string();
        let server = Self::spawn(
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &p(cert),
                "--tls-key-file",
                &p(key),
                "--tls-ca-cert-file",
                &p(ca),
                "--tls-auth-clients",
                "no",
            ],
            port,
        );
        super::process::wait_listening(port, Duration::from_secs(20));
        server
    }

    fn spawn(args: &[&str], port: u16) -> RedisServer {
        let dir = TempDir::new("redis");
        let child = ChildGuard::spawn(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir.0)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        RedisServer {
            port,
            _child: child,
            _dir: dir,
        }
    }
}
