//! Active health checks (`[tcp.services.<s>.loadBalancer.healthCheck]`):
//! the checker threads that write the snapshot's health table.
//!
//! Owns: the probes (TCP, TLS, `send`/`expect`, the protocol checks in
//! `health/`), their schedule and the verdict logs. The table they write
//! (`HealthState`, `Verdict`) is `state::health`'s. May depend on `state`
//! (the snapshot: config, TLS configs, the health table), `model`, `wire`
//! and `log`; never on `worker`, `session`, `metrics` or `engine`.
//!
//! Role: the control plane probes servers and flips one `AtomicBool` per
//! server in the snapshot's `HealthState`; workers read those flags with
//! relaxed loads when they pick a server (`Balancer::pick` skips a down server
//! like one already tried). Probes run on plain threads with blocking sockets
//! and timeouts, one thread per checked service: never on a worker, never
//! touching a client connection.
//!
//! Semantics follow Traefik v3.6's TCP health check: connect to the server's
//! address (or its host at `port`) within `timeout`, write `send` if set, and
//! when `expect` is set require the reply to start with it, all within
//! `timeout`. Every server starts healthy; one failed probe marks it down,
//! after which it is probed every `unhealthyInterval`; one good probe brings
//! it back, after which it is probed every `interval`. Two differences, both
//! deliberate: the first probe runs at once instead of one interval after
//! start (a dead server is found in `timeout`, not in 30 s), and a backend
//! behind `proxyProtocol` first gets a PROXY header with the LOCAL command (v2)
//! or `UNKNOWN` (v1), which the PROXY protocol defines for health checks, so
//! `send`/`expect` reach the application. A `tls = true` server is probed
//! through a TLS handshake made with its transport's TLS config (as Traefik
//! dials it), and `send`/`expect` travel inside TLS.
//!
//! Across a reload the new snapshot starts with the verdicts of the old one
//! for the same (service, server address), so a known-dead server does not
//! get traffic while the new checks start up.
//!
//! Extensions (sluicegate's, documented as such; Traefik's keys keep their
//! meaning):
//! - a protocol table instead of `send`/`expect`: `postgres` (startup as
//!   `user` on `database`, trust, cleartext or SCRAM-SHA-256, then
//!   `select pg_is_in_recovery()`, in `health/pg.rs`), `redis` (`AUTH` if a
//!   password is set, then `ROLE`, `health/redis.rs`) or `http` (one
//!   request, the status decides: Patroni's `/primary`, `/replica`,
//!   `health/http.rs`). `mysql` is refused at load with the reason.
//! - the verdict is `down`, `up`, `primary` or `replica`; `role` (`any`,
//!   `primary`, `replica`) says which verdicts make a server pickable. A
//!   healthy server in the other role is "healthy, not in the wanted role"
//!   (a warning, `sluicegate_server_verdict`, `/api` `serverVerdict`), never
//!   "down". Until a role check first answers, its servers are `up` and not
//!   pickable by a `primary`/`replica` service.
//! - `rise`/`fall` (default 1/1, Traefik's): a changed verdict counts once
//!   seen that many probes in a row (`fall` for down, `rise` otherwise); the
//!   first answer of a role check counts at once.
//! - `HealthState::changes` moves whenever a server's pickability does; the
//!   workers close the sessions of servers gone for services with
//!   `onServerDown = "close"` (worker.rs).
//!
//! Probes that speak a protocol hold the password only in memory and on the
//! wire; no message carries it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::log;
use crate::model::{HealthCheck, Probe, ServiceId};

mod http;
mod pg;
mod redis;
use crate::state::health::checked;
use crate::state::{RunningChecks, Snapshot, Verdict};
use crate::wire::proxy_protocol;

/// Stack size of a checker thread: it only holds a socket and a small reply
/// buffer.
const CHECKER_STACK: usize = 128 * 1024;

/// PROXY v1 header for a connection the proxy opened itself.
const PROXY_V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

/// Start the checks of `snap` (`state::StartChecks`: `Shared::reload`
/// stops the previous snapshot's and calls this for the new one).
pub fn start(snap: Arc<Snapshot>) -> RunningChecks {
    Box::new(Checks::start(snap))
}

/// The running checker threads of one snapshot; dropping it stops them.
pub struct Checks {
    stop: Arc<Stop>,
}

impl Checks {
    /// One thread per health-checked service of `snap`.
    pub fn start(snap: Arc<Snapshot>) -> Checks {
        let stop = Arc::new(Stop::default());
        for (si, svc) in snap.config.enumerate_services() {
            match checked(&svc.kind) {
                Some((lb, _)) if !lb.servers.is_empty() => {}
                _ => continue,
            }
            let (snap, stop) = (snap.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("sluicegate-hc".into())
                .stack_size(CHECKER_STACK)
                .spawn(move || check_service(&snap, si, &stop));
            if let Err(e) = spawned {
                // The servers keep their current verdicts: traffic still
                // flows, only the checks are missing, so say so loudly.
                log!(
                    Error,
                    "cannot start health checks",
                    service = svc.name,
                    error = e
                );
            }
        }
        Checks { stop }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// A stop flag a sleeping checker wakes up for.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleep until `deadline`; true when stopped meanwhile.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stopped {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Probe the servers of service `si` until stopped, each on its own
/// schedule, one at a time (a server that hangs delays the others of the
/// same service by at most `timeout`, like Traefik's sequential checks).
fn check_service(snap: &Snapshot, si: ServiceId, stop: &Stop) {
    let svc = snap.config.service(si);
    let Some((lb, hc)) = checked(&svc.kind) else {
        return;
    };
    let start = Instant::now();
    let mut due = vec![start; lb.servers.len()];
    // Per server: a verdict seen but not applied yet, and how many times in
    // a row; whether the server has been probed once.
    let mut pending: Vec<Option<(Verdict, u32)>> = vec![None; lb.servers.len()];
    let mut first_done = vec![false; lb.servers.len()];
    let mut probed = vec![false; lb.servers.len()];
    loop {
        let Some((i, &when)) = due.iter().enumerate().min_by_key(|(_, &t)| t) else {
            return;
        };
        if stop.sleep_until(when) {
            return;
        }
        let server = &lb.servers[i];
        let result = if server.tls {
            // The handshake is part of the check, with the transport's TLS
            // config: a server whose certificate no longer verifies is down.
            match snap.tls.probe_tls(lb.transport, &server.address_text) {
                Ok(tls) => probe(server.address, hc, lb.proxy_protocol, Some(&tls)),
                Err(e) => Err(ProbeError::Tls(e)),
            }
        } else {
            probe(server.address, hc, lb.proxy_protocol, None)
        };
        if stop.is_set() {
            return;
        }
        let id = snap.health.id(si, i);
        let was = snap.health.verdict(id);
        let seen = result.as_ref().map_or(Verdict::Down, |v| *v);
        // Rise/fall: a new verdict counts once it is seen `rise` (healthy)
        // or `fall` (down) times in a row. The first answer of a role check
        // counts at once: until then the role is unknown.
        let apply = if seen == was {
            pending[i] = None;
            false
        } else {
            let n = match pending[i] {
                Some((v, n)) if v == seen => n + 1,
                _ => 1,
            };
            pending[i] = Some((seen, n));
            let need = if seen == Verdict::Down {
                hc.fall
            } else {
                hc.rise
            };
            let unknown = was == Verdict::Up
                && matches!(hc.probe, Probe::Postgres { .. } | Probe::Redis { .. })
                && !first_done[i];
            n >= need || unknown
        };
        first_done[i] = true;
        if apply {
            pending[i] = None;
            snap.health.set(id, seen);
            let pickable = seen.pickable(hc.role);
            match &result {
                Err(why) => log!(
                    Warn,
                    "server unhealthy",
                    service = svc.name,
                    server = server.address_text,
                    verdict = seen.as_str(),
                    reason = why
                ),
                Ok(_) if pickable => log!(
                    Info,
                    "server healthy",
                    service = svc.name,
                    server = server.address_text,
                    verdict = seen.as_str()
                ),
                // Answers, but not in the role this service wants: not
                // "down", and said so.
                Ok(_) => log!(
                    Warn,
                    "server healthy, not in the wanted role",
                    service = svc.name,
                    server = server.address_text,
                    verdict = seen.as_str(),
                    role = hc.role.as_str()
                ),
            }
        }
        // After the log line: whoever sees the count drop sees the verdict's
        // line before its own.
        if !std::mem::replace(&mut probed[i], true) {
            snap.health.first_verdict_done();
        }
        let now_down = snap.health.verdict(id) == Verdict::Down;
        due[i] = Instant::now()
            + if now_down {
                hc.unhealthy_interval
            } else {
                hc.interval
            };
    }
}

/// Why a probe failed (the `reason` of the log line).
#[derive(Debug)]
pub enum ProbeError {
    /// The TCP connection could not be made (refused, unreachable, timeout).
    Connect(io::Error),
    /// Writing the PROXY header or `send` failed.
    Send(io::Error),
    /// No complete reply within the timeout.
    Timeout,
    /// The server closed after this many bytes of the reply.
    Closed(usize),
    /// Reading the reply failed (e.g. a reset).
    Read(io::Error),
    /// The reply does not start with `expect`.
    Unexpected,
    /// The TLS handshake with a `tls = true` server failed.
    Tls(String),
    /// The server answered in its protocol, but not as a healthy server
    /// does (an error reply, a refused login, a bad HTTP status, ...).
    Refused(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Send(e) => write!(f, "send: {e}"),
            ProbeError::Timeout => f.write_str("timeout waiting for the reply"),
            ProbeError::Closed(n) => write!(f, "closed after {n} bytes of the reply"),
            ProbeError::Read(e) => write!(f, "read: {e}"),
            ProbeError::Unexpected => f.write_str("unexpected reply"),
            ProbeError::Tls(e) => write!(f, "tls: {e}"),
            ProbeError::Refused(e) => f.write_str(e),
        }
    }
}

/// The client config and name a probe of a `tls = true` server uses.
pub type ProbeTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// The probe's connection: plain, or TLS over it.
enum ProbeConn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl ProbeConn {
    fn sock(&self) -> &TcpStream {
        match self {
            ProbeConn::Plain(s) => s,
            ProbeConn::Tls(t) => t.get_ref(),
        }
    }
}

impl Read for ProbeConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ProbeConn::Plain(s) => s.read(buf),
            ProbeConn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for ProbeConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ProbeConn::Plain(s) => s.write(buf),
            ProbeConn::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ProbeConn::Plain(s) => s.flush(),
            ProbeConn::Tls(t) => t.flush(),
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One health probe of the server at `addr`, bounded by `hc.timeout` in all.
/// With `tls`, the TLS handshake comes first (after any PROXY header, which
/// precedes TLS as on a proxied connection) and the conversation goes inside
/// it. The verdict is `Up` for checks that do not tell a role.
pub fn probe(
    addr: SocketAddr,
    hc: &HealthCheck,
    proxy_protocol: Option<crate::model::ProxyVersion>,
    tls: Option<&ProbeTls>,
) -> Result<Verdict, ProbeError> {
    let deadline = Instant::now() + hc.timeout;
    let target = hc.port.map_or(addr, |p| SocketAddr::new(addr.ip(), p));
    let mut s = TcpStream::connect_timeout(&target, hc.timeout).map_err(ProbeError::Connect)?;
    let header: &[u8] = match proxy_protocol {
        Some(crate::model::ProxyVersion::V1) => PROXY_V1_UNKNOWN,
        Some(crate::model::ProxyVersion::V2) => &proxy_protocol::encode_v2_local(),
        None => &[],
    };
    let mut out: Vec<u8> = Vec::new();
    match &tls {
        // The header in clear, before the handshake.
        Some(_) if !header.is_empty() => {
            let left = remaining(deadline).ok_or(ProbeError::Timeout)?;
            s.set_write_timeout(Some(left)).map_err(ProbeError::Send)?;
            s.write_all(header).map_err(send_error)?;
        }
        Some(_) => {}
        None => out.extend_from_slice(header),
    }
    let s = match tls {
        None => ProbeConn::Plain(s),
        Some((config, name)) => {
            let mut conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
            while conn.is_handshaking() {
                let left = remaining(deadline).ok_or(ProbeError::Timeout)?;
                s.set_read_timeout(Some(left)).map_err(ProbeError::Read)?;
                s.set_write_timeout(Some(left)).map_err(ProbeError::Send)?;
                match conn.complete_io(&mut s) {
                    Ok((0, 0)) if conn.is_handshaking() => return Err(ProbeError::Closed(0)),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if timed_out(&e) => return Err(ProbeError::Timeout),
                    Err(e) => return Err(ProbeError::Tls(e.to_string())),
                }
            }
            ProbeConn::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
        }
    };
    let mut c = Timed {
        conn: s,
        deadline,
        pending: out,
    };
    match &hc.probe {
        Probe::Tcp => send_expect(&mut c, hc),
        Probe::Postgres {
            user,
            database,
            password,
        } => crate::health::pg::probe(&mut c, user, database, password.as_ref()),
        Probe::Redis { username, password } => {
            crate::health::redis::probe(&mut c, username.as_deref(), password.as_ref())
        }
        Probe::Http {
            method,
            path,
            host,
            status,
        } => {
            let host = host.clone().unwrap_or_else(|| target.to_string());
            crate::health::http::probe(&mut c, method, path, &host, *status)
        }
    }
}

fn send_error(e: io::Error) -> ProbeError {
    if timed_out(&e) {
        ProbeError::Timeout
    } else {
        ProbeError::Send(e)
    }
}

/// The probe's connection with the probe's deadline applied to every read
/// and write, and the PROXY header (plain connections) sent with the first
/// write.
pub struct Timed {
    conn: ProbeConn,
    deadline: Instant,
    pending: Vec<u8>,
}

impl Timed {
    /// Write all of `data` (after any pending header) before the deadline.
    pub fn send(&mut self, data: &[u8]) -> Result<(), ProbeError> {
        let mut out = std::mem::take(&mut self.pending);
        out.extend_from_slice(data);
        if out.is_empty() {
            return Ok(());
        }
        let left = remaining(self.deadline).ok_or(ProbeError::Timeout)?;
        self.conn
            .sock()
            .set_write_timeout(Some(left))
            .map_err(ProbeError::Send)?;
        self.conn
            .write_all(&out)
            .and_then(|()| self.conn.flush())
            .map_err(send_error)
    }

    /// One read before the deadline; `Closed(0)` at the end of the stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, ProbeError> {
        loop {
            let left = remaining(self.deadline).ok_or(ProbeError::Timeout)?;
            self.conn
                .sock()
                .set_read_timeout(Some(left))
                .map_err(ProbeError::Read)?;
            match self.conn.read(buf) {
                Ok(0) => return Err(ProbeError::Closed(0)),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(ProbeError::Timeout),
                // A TLS server that closes without close_notify, or an alert.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ProbeError::Closed(0))
                }
                Err(e) => return Err(ProbeError::Read(e)),
            }
        }
    }

    /// Fill `buf` exactly.
    pub fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), ProbeError> {
        let mut got = 0;
        while got < buf.len() {
            match self.recv(&mut buf[got..]) {
                Ok(n) => got += n,
                Err(ProbeError::Closed(_)) => return Err(ProbeError::Closed(got)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Traefik's check: `send`, then the reply must start with `expect`.
fn send_expect(c: &mut Timed, hc: &HealthCheck) -> Result<Verdict, ProbeError> {
    c.send(&hc.send)?;
    if hc.expect.is_empty() {
        return Ok(Verdict::Up);
    }
    let mut reply = vec![0u8; hc.expect.len()];
    let mut got = 0;
    while got < reply.len() {
        match c.recv(&mut reply[got..]) {
            Ok(n) => {
                got += n;
                // Fail on the first wrong byte rather than wait for the rest.
                if reply[..got] != hc.expect[..got] {
                    return Err(ProbeError::Unexpected);
                }
            }
            Err(ProbeError::Closed(_)) => return Err(ProbeError::Closed(got)),
            Err(e) => return Err(e),
        }
    }
    Ok(Verdict::Up)
}

/// Time left before `deadline`, `None` when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use std::net::TcpListener;
    use std::thread;

    fn hc(send: &str, expect: &str, timeout_ms: u64) -> HealthCheck {
        HealthCheck {
            port: None,
            interval: Duration::from_secs(1),
            unhealthy_interval: Duration::from_secs(1),
            timeout: Duration::from_millis(timeout_ms),
            send: send.as_bytes().to_vec(),
            expect: expect.as_bytes().to_vec(),
            probe: Probe::Tcp,
            role: Role::Any,
            rise: 1,
            fall: 1,
        }
    }

    /// A one-connection server: reads what the probe sends (up to `expect_in`
    /// bytes), records it, then writes `reply` (in one byte pieces, to show
    /// that split replies are reassembled) and keeps the socket open a while.
    fn server(expect_in: usize, reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = vec![0u8; expect_in];
            s.read_exact(&mut got).unwrap();
            for b in reply {
                let _ = s.write_all(&[*b]);
                thread::sleep(Duration::from_millis(2));
            }
            thread::sleep(Duration::from_millis(300));
            got
        });
        (addr, h)
    }

    #[test]
    fn send_expect_matches_a_prefix_of_a_split_reply() {
        let (addr, h) = server(5, b"+PONG\r\nmore");
        probe(addr, &hc("PING\n", "+PONG", 1000), None, None).unwrap();
        assert_eq!(h.join().unwrap(), b"PING\n");
    }

    #[test]
    fn wrong_reply_fails_at_the_first_wrong_byte() {
        let (addr, _h) = server(5, b"-ERR");
        let e = probe(addr, &hc("PING\n", "+PONG", 1000), None, None).unwrap_err();
        assert!(matches!(e, ProbeError::Unexpected), "{e}");
    }

    #[test]
    fn silence_is_a_timeout_within_the_limit() {
        let (addr, _h) = server(5, b"");
        let t = Instant::now();
        let e = probe(addr, &hc("PING\n", "+PONG", 150), None, None).unwrap_err();
        assert!(matches!(e, ProbeError::Timeout), "{e}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(140) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[test]
    fn refused_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = probe(addr, &hc("", "", 500), None, None).unwrap_err();
        assert!(matches!(e, ProbeError::Connect(_)), "{e}");
    }

    #[test]
    fn proxy_protocol_backends_get_a_local_header_first() {
        let (addr, h) = server(16 + 4, b"OK");
        probe(
            addr,
            &hc("PING", "OK", 1000),
            Some(crate::model::ProxyVersion::V2),
            None,
        )
        .unwrap();
        let got = h.join().unwrap();
        assert_eq!(got[..16], proxy_protocol::encode_v2_local());
        assert_eq!(&got[16..], b"PING");
        let (addr, h) = server(PROXY_V1_UNKNOWN.len(), b"");
        probe(
            addr,
            &hc("", "", 1000),
            Some(crate::model::ProxyVersion::V1),
            None,
        )
        .unwrap();
        assert_eq!(h.join().unwrap(), PROXY_V1_UNKNOWN);
    }
}
