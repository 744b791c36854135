//! PostgreSQL sessions the proxy can see (plain TCP, terminated TLS): the
//! startup phase relayed message-aware until ReadyForQuery, the cancel keys
//! it learns, and CancelRequests sent to the server that issued the key.
//!
//! Why: a CancelRequest arrives on a new connection carrying only the
//! backend's process id and secret key. Behind a balancer it would land on
//! any server, which ignores a key it did not issue, and the query keeps
//! running. The proxy sees each session's BackendKeyData, so it remembers
//! which server issued it (one table for the whole process, every worker
//! reads it) until the session ends, and sends each CancelRequest there.
//!
//! What it cannot do: a TLS passthrough session is encrypted end to end, so
//! its key is never seen and its cancel request (which libpq sends on a new
//! connection, itself TLS since PostgreSQL 17 / plain before) is routed like
//! any connection. Keys are per process: several sluicegate instances behind
//! one address each know only their own sessions.

use std::collections::HashMap;
use std::future::{poll_fn, Future as _};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{LazyLock, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::forward::write_all;
use crate::sys;
use crate::wire::postgres::BackendScan;

/// Where a cancel key goes: the server that issued it, and how long its
/// transport allows a dial to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub dial_timeout: Duration,
}

type Keys = HashMap<(u32, Vec<u8>), Target>;

/// Every live session's cancel key, for the whole process. Touched twice
/// per PostgreSQL session (insert, remove) and once per cancel.
static KEYS: LazyLock<Mutex<Keys>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn keys() -> std::sync::MutexGuard<'static, Keys> {
    KEYS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered key; removed from the table when the session ends.
pub struct KeyGuard {
    key: (u32, Vec<u8>),
    target: Target,
}

/// Remember that `target` issued (`pid`, `secret`) for this session.
pub fn register(pid: u32, secret: Vec<u8>, target: Target) -> KeyGuard {
    let key = (pid, secret);
    keys().insert(key.clone(), target);
    KeyGuard { key, target }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut m = keys();
        // Another session may have been given the same key by another server
        // since (only after this one's process ended): leave its entry.
        if m.get(&self.key) == Some(&self.target) {
            m.remove(&self.key);
        }
    }
}

/// The server that issued (`pid`, `secret`), if a live session has it.
pub fn lookup(pid: u32, secret: &[u8]) -> Option<Target> {
    keys().get(&(pid, secret.to_vec())).copied()
}

/// The longest the startup phase (authentication up to ReadyForQuery) is
/// relayed message-aware: PostgreSQL's own `authentication_timeout`
/// default. After it the session is forwarded as bytes, without a key.
pub const STARTUP_RELAY_LIMIT: Duration = Duration::from_secs(60);

/// Bytes moved by `relay_startup`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

/// The client side of a PostgreSQL session: its socket, and the TLS state
/// when the proxy terminated TLS.
pub enum Front<'a> {
    Plain(&'a TcpStream),
    Tls(&'a TcpStream, &'a mut crate::tls::Accepted),
}

impl Front<'_> {
    fn stream(&self) -> &TcpStream {
        match self {
            Front::Plain(s) | Front::Tls(s, _) => s,
        }
    }

    /// Append what the client sent to `out` without waiting: `Some(0)` at
    /// its close, `None` when nothing is there now.
    fn try_read(&mut self, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        match self {
            Front::Plain(s) => {
                let mut b = [0u8; 8192];
                match sys::recv(sys::fd(s), &mut b) {
                    Ok(n) => {
                        out.extend_from_slice(&b[..n]);
                        Ok(Some(n))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Front::Tls(s, a) => a.try_read_plain(s, out),
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Front::Plain(s) => write_all(s, data).await,
            Front::Tls(s, a) => a.write_plain(s, data).await,
        }
    }

    /// Read until `out` holds at least `min_len` bytes, before `deadline`.
    pub async fn fill(
        &mut self,
        out: &mut Vec<u8>,
        min_len: usize,
        deadline: Option<Instant>,
    ) -> Result<(), crate::peek::PeekError> {
        use crate::peek::PeekError;
        while out.len() < min_len {
            match self.try_read(out) {
                Ok(Some(0)) | Err(_) => return Err(PeekError::ClientClosed),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let ready = self.stream().readable(false);
                    let r = match deadline {
                        Some(d) => {
                            let left = d.saturating_duration_since(Instant::now());
                            monoio::time::timeout(left, ready)
                                .await
                                .map_err(|_| PeekError::Timeout)?
                        }
                        None => ready.await,
                    };
                    r.map_err(|_| PeekError::ClientClosed)?;
                }
            }
        }
        Ok(())
    }
}

/// Relay both directions between `client` and `backend`, looking at the
/// backend's messages with `scan`, until the startup is over (ReadyForQuery,
/// an ErrorResponse, non-PostgreSQL bytes), either side closes, or
/// `STARTUP_RELAY_LIMIT` passes. Every byte is passed on unchanged; what
/// remains is for the ordinary forwarding.
pub async fn relay_startup(
    client: &mut Front<'_>,
    backend: &TcpStream,
    scan: &mut BackendScan,
) -> io::Result<Moved> {
    let deadline = Instant::now() + STARTUP_RELAY_LIMIT;
    let mut moved = Moved::default();
    let mut buf = vec![0u8; 8192];
    let mut up = Vec::new();
    let bfd = sys::fd(backend);
    while !scan.done {
        let mut idle = true;
        match sys::recv(bfd, &mut buf) {
            Ok(0) => return Ok(moved),
            Ok(n) => {
                scan.feed(&buf[..n]);
                client.write_all(&buf[..n]).await?;
                moved.down += n as u64;
                idle = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if scan.done {
            break;
        }
        up.clear();
        match client.try_read(&mut up)? {
            Some(0) => return Ok(moved),
            Some(n) => {
                write_all(backend, &up).await?;
                moved.up += n as u64;
                idle = false;
            }
            None => {}
        }
        if idle {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(moved);
            }
            if monoio::time::timeout(left, either_readable(client.stream(), backend))
                .await
                .is_err()
            {
                return Ok(moved);
            }
        }
    }
    Ok(moved)
}

/// Ready when either socket is readable (or failed: the next recv says so).
async fn either_readable(a: &TcpStream, b: &TcpStream) {
    let mut ra = pin!(a.readable(false));
    let mut rb = pin!(b.readable(false));
    poll_fn(|cx| {
        if ra.as_mut().poll(cx).is_ready() || rb.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// How a CancelRequest ended (the access-log outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelEnd {
    /// Sent to the server that issued the key.
    Forwarded,
    /// No live session has this key: closed, as a server closes a cancel
    /// connection whatever the key.
    UnknownKey,
    /// The issuing server could not be reached or written to.
    Failed,
}

impl CancelEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelEnd::Forwarded => "pg_cancel_forwarded",
            CancelEnd::UnknownKey => "pg_cancel_unknown_key",
            CancelEnd::Failed => "pg_cancel_failed",
        }
    }
}

/// How long the proxy waits for the server to close a forwarded cancel
/// connection (it does once it has signalled the backend process, at once).
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Send the cancel `request` (its bytes as the client sent them) to the
/// server that issued (`pid`, `secret`), then close when the server does.
/// The client gets nothing back either way, as from PostgreSQL itself.
pub async fn forward_cancel(pid: u32, secret: &[u8], request: &[u8]) -> CancelEnd {
    let Some(target) = lookup(pid, secret) else {
        return CancelEnd::UnknownKey;
    };
    let limit = if target.dial_timeout.is_zero() {
        crate::model::DEFAULT_DIAL_TIMEOUT
    } else {
        target.dial_timeout
    };
    let stream = match monoio::time::timeout(limit, TcpStream::connect_addr(target.addr)).await {
        Ok(Ok(s)) => s,
        _ => return CancelEnd::Failed,
    };
    let fd = sys::fd(&stream);
    if sys::set_nonblocking(fd).is_err() || write_all(&stream, request).await.is_err() {
        return CancelEnd::Failed;
    }
    // Wait for the server's close, so the cancel is delivered before the
    // client sees its own connection end (libpq waits for that EOF too).
    let mut b = [0u8; 64];
    let wait = async {
        loop {
            match sys::recv(fd, &mut b) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stream.readable(false).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    };
    let _ = monoio::time::timeout(CANCEL_WAIT, wait).await;
    CancelEnd::Forwarded
}
