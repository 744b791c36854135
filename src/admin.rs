//! The admin endpoints on the admin entrypoint (Traefik's `traefik`
//! entrypoint): `GET /ping`, `GET /metrics` (Prometheus text) and the JSON API
//! `GET /api/tcp/routers[/<name>]`, `GET /api/tcp/services[/<name>]`, each
//! served only when its section (`[ping]`, `[metrics.prometheus]`, `[api]`)
//! is configured.
//!
//! Role: a deliberately tiny HTTP/1.1 server with blocking sockets, off the
//! workers: one request per connection, `Connection: close`. An accept thread
//! hands each connection to a thread of its own, at most `MAX_CONNECTIONS` at
//! a time, so one slow or idle client never delays another (a load balancer's
//! `/ping` must answer while someone holds idle connections open). Every
//! phase is bounded: the request head by size (`MAX_REQUEST`) and an absolute
//! deadline (`REQUEST_DEADLINE`), the response by an absolute deadline
//! (`WRITE_DEADLINE`), the closing drain by bytes and time. At the cap, a new
//! connection takes the slot of the oldest connection that has not yet sent
//! its request head (or is only draining after its response): idle
//! connections are what gets dropped, never a health check that has sent its
//! request. If every slot is busy writing a response, the new connection is
//! closed at once. It only *reads* shared state: the current snapshot, its
//! health flags and the per-worker counters.
//!
//! Owns: the admin listener and its HTTP handling, `/api`'s JSON. May depend
//! on `state`, `metrics`, `model`, `sys` and `log`; nothing depends on it
//! but `engine`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log;
use crate::model::{Admin, ServiceKind};
use crate::state::{Shared, Snapshot};
use crate::sys;

/// Largest request head accepted (request line and headers); admin requests
/// are a line and a few headers, and Prometheus sends about 300 bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once. A scrape, a few health checks and an operator
/// need a handful; 64 leaves room for many checkers while bounding what the
/// port can cost: one thread (`THREAD_STACK`) and two descriptors each (the
/// socket and the accept thread's handle to evict it), plus one response.
pub const MAX_CONNECTIONS: usize = 64;
/// Stack of a connection thread: it parses a head and renders JSON into heap
/// buffers, nothing deep; the 2 MiB default would be 128 MiB of address space
/// at the cap.
const THREAD_STACK: usize = 256 * 1024;
/// Time allowed to receive the whole request head, from accept (absolute: a
/// byte-a-second client gets no more time).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Time allowed to write the whole response, from its first byte (absolute: a
/// client that reads a byte now and then cannot hold a slot for ever). A
/// multi-megabyte `/api` listing takes milliseconds on any real link.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// After the response: bytes of further input (a stray CRLF, a pipelined
/// request) read and discarded before the close, so that the close does not
/// find unread input and reset the connection (which would destroy the
/// response still queued). More than this and the client is abusive.
const DRAIN_MAX: usize = 64 * 1024;
/// ... and how long to wait for the client's FIN after ours. A client that
/// neither closes nor sends gets a normal close at the end (nothing unread,
/// so no reset).
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// Kernel send buffer of an admin connection (Linux doubles it). Autotuning
/// would grow it to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default) for a
/// client that stalls on a large listing: 256 MiB of kernel memory at the
/// cap. This is plenty for a local scrape or listing at full speed.
const SEND_BUFFER: usize = 256 * 1024;
/// Pause after a failed accept (EMFILE...): never spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bind the admin listener (before start-up completes, so an address in use
/// stops start-up) and log it like the TCP entrypoints.
pub fn bind(admin: &Admin) -> io::Result<TcpListener> {
    let l = listen(admin).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "entrypoint {}: cannot listen on {}: {e}",
                admin.entrypoint, admin.address
            ),
        )
    })?;
    let addr = l.local_addr()?;
    let serves: Vec<&str> = [
        (admin.ping, "ping"),
        (admin.metrics, "metrics"),
        (admin.api, "api"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    log!(
        Info,
        "listening",
        entrypoint = admin.entrypoint,
        address = addr,
        serves = serves.join(",")
    );
    Ok(l)
}

/// Listen on the admin address; with `reusePort`, in an SO_REUSEPORT group
/// that another process (a handover's successor) may join. It stays open
/// until the process exits, so `/ping` answers 503 for the whole drain.
fn listen(admin: &Admin) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = admin.address;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(admin.reuse_port)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Serve admin requests on `listener`: an accept thread, and a thread per
/// connection up to `MAX_CONNECTIONS`.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sluicegate-admin".into())
        .spawn(move || accept_loop(listener, shared))
        .map(|_| ())
}

/// Where a connection is; the accept thread may evict one only in `HEAD`
/// (nothing asked yet) or `DRAIN` (already answered). Transitions out of
/// those two are compare-and-swap, so an eviction and the connection's own
/// progress never both win: a response that started is never cut by one.
const HEAD: u8 = 0;
const WRITE: u8 = 1;
const DRAIN: u8 = 2;
const EVICTED: u8 = 3;

/// Threads of evicted connections that have not exited yet may hold slots
/// beyond `MAX_CONNECTIONS` for an instant (each exits as soon as its read
/// sees the shutdown); past this many, a flood of connects is closed at once
/// instead of outrunning those exits, so threads and descriptors stay
/// bounded by `MAX_CONNECTIONS + EVICTING_MAX`.
const EVICTING_MAX: usize = MAX_CONNECTIONS;

struct Slot {
    id: u64,
    phase: Arc<AtomicU8>,
    /// A second handle on the connection, for the accept thread to shut it
    /// down (which wakes the connection thread's blocking read).
    evict: TcpStream,
}

/// The connections being served, in accept order (oldest first).
type Slots = Arc<Mutex<Vec<Slot>>>;

fn lock(slots: &Slots) -> std::sync::MutexGuard<'_, Vec<Slot>> {
    // Nothing panics while holding the lock; a poisoned list is still valid.
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots: Slots = Arc::new(Mutex::new(Vec::with_capacity(
        MAX_CONNECTIONS + EVICTING_MAX,
    )));
    let mut next_id = 0u64;
    // Wait in poll, then accept without blocking: a thread parked in a
    // blocking accept holds a reserved descriptor slot the whole time (see
    // `sys::wait_readable`), which would leave the data path one short.
    // Accepted sockets do not inherit O_NONBLOCK on Linux; they stay blocking.
    let nonblocking = listener.set_nonblocking(true).is_ok();
    loop {
        if nonblocking && sys::wait_readable(listener.as_fd()).is_err() {
            std::thread::sleep(ACCEPT_BACKOFF);
            continue;
        }
        let (s, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let phase = Arc::new(AtomicU8::new(HEAD));
        // Out of descriptors for the handle: this connection is dropped
        // (closed) and the next accept may fare better.
        let Ok(evict) = s.try_clone() else { continue };
        if !admit(
            &slots,
            Slot {
                id,
                phase: phase.clone(),
                evict,
            },
        ) {
            // Every slot is writing a response: close at once (a FIN, no
            // bytes read, so no reset); the client may retry.
            continue;
        }
        // Created before the thread so that a failed spawn (the closure is
        // dropped unrun) frees the slot too.
        let registered = Registered {
            slots: slots.clone(),
            id,
        };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("sluicegate-admin-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _registered = registered;
                if let Err(e) = handle(s, &shared, &phase) {
                    // An eviction is the cap working, not a failure.
                    if phase.load(Ordering::Acquire) != EVICTED {
                        log!(Warn, "admin request failed", client = peer, error = e);
                    }
                }
            });
    }
}

/// Take a slot for a new connection: a free one, else the oldest idle or
/// draining connection's. `false`: none can be had.
fn admit(slots: &Slots, slot: Slot) -> bool {
    let mut list = lock(slots);
    if list.len() >= MAX_CONNECTIONS + EVICTING_MAX {
        return false;
    }
    let live = list
        .iter()
        .filter(|s| s.phase.load(Ordering::Acquire) != EVICTED)
        .count();
    if live >= MAX_CONNECTIONS {
        let evicted = list.iter().find(|s| {
            [HEAD, DRAIN].into_iter().any(|from| {
                s.phase
                    .compare_exchange(from, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
        });
        match evicted {
            // Its thread sees EOF (or an error) and exits, freeing the slot.
            Some(old) => {
                let _ = old.evict.shutdown(Shutdown::Both);
            }
            None => return false,
        }
    }
    list.push(slot);
    true
}

/// A connection's slot, given back when its thread ends.
struct Registered {
    slots: Slots,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut list = lock(&self.slots);
        if let Some(i) = list.iter().position(|s| s.id == self.id) {
            list.remove(i);
        }
    }
}

/// One request on one connection.
fn handle(mut s: TcpStream, shared: &Shared, phase: &AtomicU8) -> io::Result<()> {
    let resp = match read_head(&mut s) {
        Ok(head) => match parse_request_line(&head) {
            Some((method, target)) => respond(method, target, shared),
            None => Response::text(400, "bad request\n"),
        },
        Err(HeadError::TooLarge) => Response::text(431, "request header too large\n"),
        Err(HeadError::Timeout) => Response::text(408, "request timeout\n"),
        Err(HeadError::Io(e)) => return Err(e),
    };
    if phase
        .compare_exchange(HEAD, WRITE, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Evicted while the head arrived: the socket is already shut down.
        return Ok(());
    }
    let _ = socket2::SockRef::from(&s).set_send_buffer_size(SEND_BUFFER);
    if let Err(e) = write_all_by(&mut s, &resp.encode(), Instant::now() + WRITE_DEADLINE) {
        // A response cut by its deadline must not end like a complete one:
        // the close resets instead of sending FIN.
        let _ = sys::set_linger_zero(s.as_fd());
        return Err(e);
    }
    // Our FIN after the response, then read what the client still sends (a
    // stray CRLF, a pipelined request) until its FIN: closing a socket with
    // unread input sends a reset, and a reset destroys the part of the
    // response still queued in the kernel.
    let _ = s.shutdown(Shutdown::Write);
    phase.store(DRAIN, Ordering::Release);
    drain(&mut s);
    Ok(())
}

/// `write_all` within an absolute deadline.
fn write_all_by(s: &mut TcpStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response not read within the write deadline",
            ));
        }
        s.set_write_timeout(Some(left))?;
        match s.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            // The deadline check above ends the loop.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read and discard input until EOF, `DRAIN_MAX` bytes or `DRAIN_DEADLINE`.
fn drain(s: &mut TcpStream) {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    let mut buf = [0u8; 4096];
    let mut budget = DRAIN_MAX;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) if n >= budget => return,
            Ok(n) => budget -= n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

enum HeadError {
    TooLarge,
    Timeout,
    Io(io::Error),
}

/// Read until the blank line that ends the head, within `MAX_REQUEST` bytes
/// and `REQUEST_DEADLINE` (absolute: a byte-a-second client gets no more time).
fn read_head(s: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let want = chunk.len().min(MAX_REQUEST - buf.len());
        match s.read(&mut chunk[..want]) {
            Ok(0) => {
                return Err(HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the end of the request",
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `(method, path)` of `GET /path?query HTTP/1.x`; the query is dropped.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// HEAD: headers only.
    head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            if self.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Route one request.
fn respond(method: &str, path: &str, shared: &Shared) -> Response {
    let snap = shared.current();
    let admin = snap.config.admin.as_ref();
    let on = |f: fn(&Admin) -> bool| admin.is_some_and(f);
    let not_found = || Response::text(404, "404 page not found\n");
    let mut resp = match path {
        "/ping" if on(|a| a.ping) => {
            // Traefik's terminating status: load balancers in front stop
            // sending while open connections drain.
            if shared.stopping() {
                Response::text(503, "Service Unavailable")
            } else {
                Response::text(200, "OK")
            }
        }
        "/metrics" if on(|a| a.metrics) => {
            let mut r = Response::text(200, "");
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r.body = crate::metrics::registry().render(&snap).into_bytes();
            r
        }
        "/api/providers" if on(|a| a.api) => Response::json(200, providers_json(&snap)),
        "/api/tcp/routers" if on(|a| a.api) => Response::json(200, routers_json(&snap, None)),
        "/api/tcp/services" if on(|a| a.api) => Response::json(200, services_json(&snap, None)),
        p if on(|a| a.api) && p.starts_with("/api/tcp/") => {
            let rest = &p["/api/tcp/".len()..];
            let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
            let name = percent_decode(name);
            // Traefik qualifies names with their provider; there is one here.
            let name = name.strip_suffix("@file").unwrap_or(&name);
            let one = match kind {
                "routers" => one_item(routers_json(&snap, Some(name)), "router"),
                "services" => one_item(services_json(&snap, Some(name)), "service"),
                _ => None,
            };
            match one {
                Some(r) => r,
                None => not_found(),
            }
        }
        _ => not_found(),
    };
    if resp.status == 404 {
        return resp;
    }
    match method {
        "GET" => resp,
        "HEAD" => {
            resp.head_only = true;
            resp
        }
        _ => Response::text(405, "method not allowed\n"),
    }
}

/// The single element of a one-name listing, or a Traefik-style 404.
fn one_item(list: String, what: &str) -> Option<Response> {
    let inner = list.strip_prefix('[')?.strip_suffix(']')?;
    Some(if inner.is_empty() {
        Response::json(404, format!("{{\"message\":\"{what} not found\"}}"))
    } else {
        Response::json(200, inner.to_string())
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `[{"name":..., "entryPoints":[...], "rule":..., "priority":..., "service":...,
/// "middlewares":[...], "tls":{"passthrough":..,"options":..}, "status":"enabled",
/// "provider":"file"}]`, sorted by name (Traefik's field names and order).
/// `/api/providers` (sluicegate's own): the KV reads the running
/// configuration was built from, so operators can compare a fleet.
fn providers_json(snap: &Snapshot) -> String {
    let mut out = String::from("[");
    for (i, (provider, rev)) in snap.config.kv_revisions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"provider\":");
        json_str(&mut out, provider);
        out.push_str(&format!(",\"appliedRevision\":{rev}}}"));
    }
    out.push(']');
    out
}

fn routers_json(snap: &Snapshot, only: Option<&str>) -> String {
    let cfg = &snap.config;
    let mut routers: Vec<_> = cfg
        .routers
        .iter()
        .filter(|r| only.is_none_or(|n| r.name == n))
        .collect();
    routers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::from("[");
    for (i, r) in routers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json_str(&mut out, &r.name);
        out.push_str(",\"entryPoints\":");
        json_list(
            &mut out,
            r.entrypoints
                .iter()
                .map(|&e| cfg.entrypoint(e).name.as_str()),
        );
        out.push_str(",\"rule\":");
        json_str(&mut out, &r.rule_text);
        out.push_str(&format!(",\"priority\":{},\"service\":", r.priority));
        json_str(&mut out, &cfg.service(r.service).name);
        if !r.middlewares.is_empty() {
            out.push_str(",\"middlewares\":");
            json_list(
                &mut out,
                r.middlewares
                    .iter()
                    .map(|&m| cfg.middleware(m).name.as_str()),
            );
        }
        if let Some(t) = &r.tls {
            out.push_str(&format!(
                ",\"tls\":{{\"passthrough\":{},\"options\":",
                t.passthrough
            ));
            json_str(&mut out, &cfg.tls_options(t.options).name);
            out.push('}');
        }
        out.push_str(",\"status\":\"enabled\",\"provider\":\"file\"}");
    }
    out.push(']');
    out
}

/// Services with their servers, weights and health (`serverStatus`: UP or
/// DOWN per server address, as Traefik shows it), sorted by name.
fn services_json(snap: &Snapshot, only: Option<&str>) -> String {
    let cfg = &snap.config;
    let mut services: Vec<(crate::model::ServiceId, &crate::model::Service)> = cfg
        .enumerate_services()
        .filter(|(_, s)| only.is_none_or(|n| s.name == n))
        .collect();
    services.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let mut out = String::from("[");
    for (n, (si, svc)) in services.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json_str(&mut out, &svc.name);
        match &svc.kind {
            ServiceKind::LoadBalancer(lb) => {
                out.push_str(",\"type\":\"loadbalancer\",\"loadBalancer\":{\"servers\":[");
                for (i, s) in lb.servers.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"address\":");
                    json_str(&mut out, &s.address_text);
                    out.push_str(&format!(",\"weight\":{}", s.weight));
                    if s.tls {
                        out.push_str(",\"tls\":true");
                    }
                    out.push('}');
                }
                out.push(']');
                if let Some(hc) = &lb.health_check {
                    out.push_str(",\"healthCheck\":{\"interval\":");
                    json_str(&mut out, &duration(hc.interval));
                    out.push_str(",\"unhealthyInterval\":");
                    json_str(&mut out, &duration(hc.unhealthy_interval));
                    out.push_str(",\"timeout\":");
                    json_str(&mut out, &duration(hc.timeout));
                    if let Some(p) = hc.port {
                        out.push_str(&format!(",\"port\":{p}"));
                    }
                    for (key, v) in [("send", &hc.send), ("expect", &hc.expect)] {
                        if !v.is_empty() {
                            out.push_str(&format!(",\"{key}\":"));
                            json_str(&mut out, &String::from_utf8_lossy(v));
                        }
                    }
                    // Extensions, only when used, so a Traefik check reads
                    // as Traefik shows it (never the password).
                    let kind = match &hc.probe {
                        crate::model::Probe::Tcp => None,
                        crate::model::Probe::Postgres { .. } => Some("postgres"),
                        crate::model::Probe::Redis { .. } => Some("redis"),
                        crate::model::Probe::Http { .. } => Some("http"),
                    };
                    if let Some(kind) = kind {
                        out.push_str(&format!(
                            ",\"check\":\"{kind}\",\"role\":\"{}\"",
                            hc.role.as_str()
                        ));
                    }
                    if (hc.rise, hc.fall) != (1, 1) {
                        out.push_str(&format!(",\"rise\":{},\"fall\":{}", hc.rise, hc.fall));
                    }
                    out.push('}');
                }
                if svc.on_server_down == crate::model::OnServerDown::Close {
                    out.push_str(",\"onServerDown\":\"close\"");
                }
                if let Some(h) = svc.hold {
                    out.push_str(",\"switchoverHold\":");
                    json_str(&mut out, &duration(h));
                }
                out.push_str("},\"serverStatus\":{");
                for (i, s) in lb.servers.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_str(&mut out, &s.address_text);
                    let up = snap.health.is_up(snap.health.id(*si, i));
                    out.push_str(if up { ":\"UP\"" } else { ":\"DOWN\"" });
                }
                // Extension: the verdict behind UP/DOWN, so a healthy
                // replica of a primary-only service is not shown as dead.
                let finds_role = lb.health_check.as_ref().is_some_and(|hc| {
                    matches!(
                        hc.probe,
                        crate::model::Probe::Postgres { .. } | crate::model::Probe::Redis { .. }
                    )
                });
                if finds_role {
                    out.push_str("},\"serverVerdict\":{");
                    for (i, s) in lb.servers.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        json_str(&mut out, &s.address_text);
                        let v = snap.health.verdict(snap.health.id(*si, i));
                        out.push_str(&format!(":\"{}\"", v.as_str()));
                    }
                }
                out.push('}');
            }
            ServiceKind::Weighted(children) if svc.failover && children.len() == 2 => {
                out.push_str(",\"type\":\"failover\",\"failover\":{\"service\":");
                json_str(&mut out, &cfg.service(children[0].service).name);
                out.push_str(",\"fallback\":");
                json_str(&mut out, &cfg.service(children[1].service).name);
                out.push('}');
            }
            ServiceKind::Weighted(children) => {
                out.push_str(",\"type\":\"weighted\",\"weighted\":{\"services\":[");
                for (i, c) in children.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"name\":");
                    json_str(&mut out, &cfg.service(c.service).name);
                    out.push_str(&format!(",\"weight\":{}}}", c.weight));
                }
                out.push_str("]}");
            }
        }
        out.push_str(",\"usedBy\":");
        let mut used: Vec<&str> = cfg
            .routers
            .iter()
            .filter(|r| r.service == *si)
            .map(|r| r.name.as_str())
            .collect();
        used.sort_unstable();
        json_list(&mut out, used.into_iter());
        out.push_str(",\"status\":\"enabled\",\"provider\":\"file\"}");
    }
    out.push(']');
    out
}

/// Go-style short durations as Traefik prints them: `5s`, `500ms`, `1m30s`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m0s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

fn json_list<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, s);
    }
    out.push(']');
}

/// A JSON string literal (RFC 8259 escapes).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /ping HTTP/1.0"),
            Some(("GET", "/ping"))
        );
        for bad in [
            &b"GET /ping"[..],
            b"GET ping HTTP/1.1",
            b"GET / HTTP/2 x",
            b"\xff / HTTP/1.1",
            b"",
        ] {
            assert_eq!(
                parse_request_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}é`");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é`\"");
    }

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (500, "500ms"),
            (1000, "1s"),
            (30_000, "30s"),
            (60_000, "1m0s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
        ];
        for (ms, want) in cases {
            assert_eq!(duration(Duration::from_millis(ms)), want);
        }
    }

    /// `n` connected pairs: (the server side, the client side).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                (l.accept().unwrap().0, c)
            })
            .collect()
    }

    fn slot(id: u64, server: &TcpStream, phase: u8) -> (Slot, Arc<AtomicU8>) {
        let phase = Arc::new(AtomicU8::new(phase));
        let slot = Slot {
            id,
            phase: phase.clone(),
            evict: server.try_clone().unwrap(),
        };
        (slot, phase)
    }

    /// The client side sees the server shut the connection (EOF at once).
    fn shut(client: &TcpStream) -> bool {
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        matches!((&*client).read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_gives_way() {
        let conns = pairs(MAX_CONNECTIONS + 3);
        let slots: Slots = Arc::new(Mutex::new(Vec::new()));
        let mut phases = Vec::new();
        for (i, (server, _)) in conns[..MAX_CONNECTIONS].iter().enumerate() {
            // The two oldest are writing a response: never evicted.
            let (s, p) = slot(i as u64, server, if i < 2 { WRITE } else { HEAD });
            assert!(admit(&slots, s));
            phases.push(p);
        }
        // One more: the oldest idle one (the third) is shut down.
        let (s, _) = slot(100, &conns[MAX_CONNECTIONS].0, HEAD);
        assert!(admit(&slots, s));
        assert_eq!(phases[2].load(Ordering::Acquire), EVICTED);
        assert!(shut(&conns[2].1));
        assert!(!shut(&conns[0].1) && !shut(&conns[3].1));
        // Its slot is held until its thread ends; then only writers are left
        // besides the newest: with every slot writing, a newcomer is refused.
        Registered {
            slots: slots.clone(),
            id: 2,
        };
        for s in lock(&slots).iter() {
            s.phase.store(WRITE, Ordering::Release);
        }
        let (s, _) = slot(101, &conns[MAX_CONNECTIONS + 1].0, HEAD);
        assert!(!admit(&slots, s));
        assert_eq!(lock(&slots).len(), MAX_CONNECTIONS);
        // A connection that finished its response (draining) gives way too.
        lock(&slots)[5].phase.store(DRAIN, Ordering::Release);
        let (s, _) = slot(102, &conns[MAX_CONNECTIONS + 2].0, HEAD);
        assert!(admit(&slots, s));
        assert_eq!(lock(&slots)[5].phase.load(Ordering::Acquire), EVICTED);
    }

    #[test]
    fn evicted_connections_that_linger_bound_the_total() {
        let conns = pairs(1);
        let server = &conns[0].0;
        let slots: Slots = Arc::new(Mutex::new(Vec::new()));
        // Every earlier connection was evicted but its thread has not ended.
        for i in 0..(MAX_CONNECTIONS + EVICTING_MAX) as u64 {
            lock(&slots).push(slot(i, server, EVICTED).0);
        }
        assert!(!admit(&slots, slot(1000, server, HEAD).0));
        Registered {
            slots: slots.clone(),
            id: 7,
        };
        assert!(admit(&slots, slot(1001, server, HEAD).0));
    }

    #[test]
    fn percent_decoding_of_names() {
        assert_eq!(percent_decode("r%40file"), "r@file");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%4"), "bad%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
