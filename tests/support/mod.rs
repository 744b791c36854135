//! Test support: start the real binary on ephemeral ports, and small real
//! backends (echo, greeting, reset, half-close, refused, blackhole).
//! Every process and thread started here is stopped by a guard's Drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sluicegate");

/// A unique scratch directory under the system temp dir (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sluicegate-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The proxy under test: the real binary with a real config file.
pub struct Proxy {
    child: Child,
    /// The config file the proxy was started with (tests rewrite it to reload).
    pub config_path: PathBuf,
    pub addrs: HashMap<String, SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: Option<TempDir>,
}

impl Proxy {
    /// Start with `config` (TOML, usually `Cfg::to_toml`), written as it is:
    /// nothing is added to it. Entry points should listen on port 0; their
    /// real addresses are read from the `msg=listening` log lines.
    pub fn start(config: &str) -> Proxy {
        Self::start_with(config, &[])
    }

    /// Start under a wrapper command (e.g. `["prlimit", "--nofile=64"]`).
    pub fn start_with(config: &str, wrapper: &[&str]) -> Proxy {
        let dir = TempDir::new("proxy");
        let path = dir.write("sluicegate.toml", config);
        Self::spawn(path, Some(dir), wrapper)
    }

    /// Start with a config file the test wrote itself (e.g. next to the
    /// certificates its relative paths name); it is used as it is.
    pub fn start_file(path: &std::path::Path) -> Proxy {
        Self::spawn(path.to_path_buf(), None, &[])
    }

    /// `start_file` under a wrapper command (e.g. `["env", "VAR=value"]`).
    pub fn start_file_with(path: &std::path::Path, wrapper: &[&str]) -> Proxy {
        Self::spawn(path.to_path_buf(), None, wrapper)
    }

    fn spawn(path: PathBuf, dir: Option<TempDir>, wrapper: &[&str]) -> Proxy {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("-c")
            .arg(&path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn sluicegate");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let logs = logs.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("SLUICEGATE_TEST_LOG").is_some() {
                        eprintln!("proxy: {line}");
                    }
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("msg=listening") {
                        let ep = field(&line, "entrypoint").unwrap();
                        let addr = field(&line, "address").unwrap().parse().unwrap();
                        addrs.insert(ep, addr);
                    }
                    if line.contains("msg=starting") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let all = logs.lock().unwrap().join("\n");
                    panic!("proxy did not start; its log:\n{all}");
                }
            }
        }
        Proxy {
            child,
            config_path: path,
            addrs,
            logs,
            _dir: dir,
        }
    }

    /// Replace the config file with `text` atomically (a temporary file
    /// renamed over it), so that a reload racing the write never reads a
    /// truncated file.
    pub fn write_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    pub fn addr(&self, ep: &str) -> SocketAddr {
        *self
            .addrs
            .get(ep)
            .unwrap_or_else(|| panic!("no entrypoint {ep} in {:?}", self.addrs))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system, in clock ticks) the proxy has used so far.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which is in parentheses).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Wait until `n` log lines satisfy `pred` (the proxy's observable
    /// lifecycle: tests wait on events, not sleeps). Panics with the log on
    /// timeout.
    pub fn wait_logs(&self, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hits: Vec<String> = self.logs().into_iter().filter(|l| pred(l)).collect();
            if hits.len() >= n {
                return hits;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited for {n} matching log lines, saw {}; log:\n{}",
                    hits.len(),
                    self.logs().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Access-log lines (`msg=conn`).
    pub fn wait_conns(&self, n: usize) -> Vec<String> {
        self.wait_logs(n, |l| l.contains("msg=conn"))
    }

    pub fn signal(&self, sig: i32) {
        let r = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(r.success());
    }

    /// Wait for exit; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Value of `key=` in a logfmt line (unquoted values only).
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    let v = if let Some(stripped) = rest.strip_prefix('"') {
        stripped.split('"').next()?
    } else {
        rest.split(' ').next()?
    };
    Some(v.to_string())
}

/// A backend: a listener and a thread per connection running `handler`.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
}

impl Backend {
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Self::start_on("127.0.0.1:0", handler)
    }

    pub fn start_on<F>(bind: &str, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Self::try_start_on(bind, handler).unwrap_or_else(|e| panic!("bind {bind}: {e}"))
    }

    /// `start_on`, with the bind error returned (to try another address when
    /// a fixed port is taken).
    pub fn try_start_on<F>(bind: &str, handler: F) -> std::io::Result<Backend>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        // A deep accept queue: std's default backlog (128) overflows when
        // hundreds of proxied connections arrive at once, and the kernel then
        // resets some of them, which tests would blame on the proxy.
        let want: SocketAddr = bind.parse().unwrap();
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(want),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        sock.bind(&want.into())?;
        sock.listen(4096)?;
        let l: TcpListener = sock.into();
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        {
            let stop = stop.clone();
            let accepted = accepted.clone();
            thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let h = handler.clone();
                    thread::spawn(move || h(s));
                }
            });
        }
        Ok(Backend {
            addr,
            stop,
            accepted,
        })
    }

    /// Echo every byte back; pass the FIN on after the last one.
    pub fn echo() -> Backend {
        Backend::start(|mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// Send `greeting` at once on accept (server-speaks-first), then echo.
    pub fn greeting(greeting: &'static [u8]) -> Backend {
        Backend::start(move |mut s| {
            let _ = s.write_all(greeting);
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so the thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// An address where nothing listens: connecting is refused.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A "blackhole": a listener with backlog 1 that never accepts, its queue
/// filled, so further SYNs are dropped and connects hang. Keep it alive.
pub struct Blackhole {
    pub addr: SocketAddr,
    _sock: socket2::Socket,
    _fill: Vec<TcpStream>,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let mut fill = Vec::new();
        for _ in 0..4 {
            if let Ok(c) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                fill.push(c);
            }
        }
        Blackhole {
            addr,
            _sock: s,
            _fill: fill,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift) so checksums are meaningful.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a 64: a checksum that catches reordering, loss and duplication.
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Read until EOF; returns the bytes and the error that ended it, if any.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Connect from a chosen local address (127.0.0.2 etc. are loopback too).
pub fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
    let ip: std::net::IpAddr = local.parse().unwrap();
    s.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// `GET path` on an admin entrypoint: the whole HTTP response.
pub fn http_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let (raw, _) = read_to_end(&mut s);
    String::from_utf8_lossy(&raw).into_owned()
}

/// The `/metrics` page of an admin entrypoint (the whole HTTP response).
pub fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics")
}

/// `GET /ping` on an admin entrypoint: the status code (0 without one).
pub fn ping(admin: SocketAddr) -> u16 {
    let text = http_get(admin, "/ping");
    text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The value of the sample `series` (name and labels exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The runtime variants (driver, forwarding) every forwarding test runs on.
/// `auto` is the default forwarding: on io_uring the completion engine with
/// bulk connections handed over to the readiness pumps (adaptive splice);
/// on epoll the readiness pumps (copy for small messages, splice for bulk
/// flows). io_uring/completion keeps every connection on the completion
/// engine; copy and splice are the readiness pumps alone.
pub const VARIANTS: &[(&str, &str)] = &[
    ("io_uring", "auto"),
    ("io_uring", "copy"),
    ("io_uring", "splice"),
    ("io_uring", "completion"),
    ("epoll", "copy"),
    ("epoll", "auto"),
    ("epoll", "splice"),
];

/// Whether an external tool exists; under CI=true a missing tool is a failure
/// naming its package, locally a loud skip.
pub fn require_tool(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is missing: install the Debian package `{package}`");
        }
        note_skip(&format!("{tool} not found (Debian package `{package}`)"));
    }
    found
}

/// Read everything at about `rate` bytes/s in 16 KiB reads (a slow client):
/// the bytes, and the error that ended the stream, if any (`None`: clean EOF).
pub fn read_throttled<R: Read>(s: &mut R, rate: u64) -> (Vec<u8>, Option<std::io::Error>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
        // Sleep until the bytes read so far match the pace.
        let due = Duration::from_secs_f64(out.len() as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
}

/// Report a skipped test loudly, and append it to the file named by
/// `SLUICEGATE_SKIP_LOG` so `scripts/test.sh` can print how many tests
/// skipped (the test harness hides a passing test's stderr).
pub fn note_skip(why: &str) {
    eprintln!("\n\n*** SKIPPING: {why} ***\n\n");
    if let Ok(path) = std::env::var("SLUICEGATE_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

pub mod cfg;
pub mod etcd;
pub mod hello;
pub mod openssl;
pub mod patroni;
pub mod pebble;
pub mod pg;
pub mod process;
pub mod record;
pub mod redis;
pub mod tls;
pub mod whoami;

#[allow(unused_imports)]
pub use cfg::{Cfg, Raw};

/// Resident memory of process `pid` in kB (VmRSS).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
