//! Workers: one thread per core, each with its own monoio runtime, its own
//! SO_REUSEPORT listener per entrypoint and its own copy of the selection
//! state. Nothing mutable is shared on the hot path: a worker loads the
//! published snapshot (an `Arc`) when the generation counter moves, and each
//! connection keeps the snapshot it was accepted with until it closes.
//!
//! Lifecycle of a worker: bind (done by `Engine::bind` on the main thread so
//! errors stop start-up) → run accept loops → on stop: the control plane
//! shuts each entrypoint's listeners down (pending accepts fail) at once, or
//! after its `requestAcceptGraceTimeout` (it accepts until then), the worker
//! waits for its connections, each up to its own entrypoint's `graceTimeOut`
//! after that (Traefik's meaning), then cuts the ones left (`forward::Cutoff`: a
//! reset, never a clean end, for what was still moving) and returns once they
//! are closed (at most `CUT_SETTLE` after the last cut). `Shared::cut_now`
//! ends the drain at once the same way.
//!
//! Owns: binding the listeners, each worker thread's runtime and accept
//! loops, its live-connection registry, the drain and the `onServerDown`
//! cuts. May depend on `state` (the snapshot and the shared flags it reads),
//! `session`, `metrics`, `notify`, `forward`, `completion`, `model`, `sys`
//! and `log`. Only `engine` depends on it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::forward::Cutoff;
use crate::model::{Config, Driver, EntryPointId};
use crate::state::{Listeners, Shared, WorkerSnap, MAX_ENTRYPOINT_SLOTS};
use crate::{log, session, sys};

/// Listen backlog (clamped by net.core.somaxconn).
const BACKLOG: i32 = 4096;
/// First pause after an accept error such as EMFILE; doubles up to the max.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a worker looks at the stop flag.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// How often a draining worker looks at its connections' deadlines (and at
/// `cut_now`): a cut is late by at most this.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Longest wait after the last cut for the cut connections to apply their
/// resets and close; a worker returns then even if some have not (their
/// sockets are closed when the runtime is dropped).
const CUT_SETTLE: Duration = Duration::from_secs(1);
/// Connections accepted per readiness wake-up before yielding to others.
const ACCEPT_BURST: usize = 64;
/// io_uring submission queue size: enough for thousands of pending polls.
const RING_ENTRIES: u32 = 4096;

/// Bind one socket per entrypoint per worker, all in one SO_REUSEPORT group
/// (the kernel spreads new connections over the workers). With port 0 the
/// first socket picks the port and the others join it, so all workers share
/// one ephemeral port (tests rely on this).
///
/// Whether another process may join the group is `reusePort`:
///
/// - `false` (Traefik's default): the first socket is bound and listening
///   *without* SO_REUSEPORT, so the bind fails with EADDRINUSE if anything
///   listens on the address, and while it listens so does any other socket's
///   bind without SO_REUSEPORT. Only then is SO_REUSEPORT set on it (the
///   kernel checks the option of each bound socket at every later bind, and
///   makes the first listener of the address the group's first member when
///   the next one listens), and the other workers' sockets join. There is no
///   window in which the address is free: a probe socket closed before the
///   group is bound would leave one, in which a second process could probe
///   too, and both would then share the port silently. What the kernel
///   cannot tell apart is our workers and another process of the same user
///   that sets SO_REUSEPORT itself (a `reusePort = true` sluicegate or
///   Traefik): such a process can still join once there are two workers or
///   more. With one worker the socket stays exclusive, as Traefik's.
/// - `true`: every socket has SO_REUSEPORT from the start, so other processes
///   of the same user with `reusePort = true` listen on the same address and
///   the kernel spreads connections over all of them (canary, zero-downtime
///   handover). A process without it still gets EADDRINUSE.
pub fn bind_all(cfg: &Config, workers: usize) -> io::Result<Vec<Listeners>> {
    let mut per_worker: Vec<Listeners> = (0..workers).map(|_| Vec::new()).collect();
    for (ei, ep) in cfg.enumerate_entrypoints() {
        for (slot, sock) in per_worker.iter_mut().zip(bind_entrypoint(ep, workers)?) {
            slot.push((ei, sock));
        }
    }
    if cfg.entrypoints.iter().any(|e| e.reuse_port) {
        warn_without_migration();
    }
    Ok(per_worker)
}

/// One entrypoint's listeners, one per worker (see `bind_all`).
pub fn bind_entrypoint(
    ep: &crate::model::EntryPoint,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut socks = Vec::with_capacity(workers);
    {
        let mut addr = ep.address;
        let mut v6only = ep.v6only;
        let first = match bind_one(addr, v6only, ep.reuse_port) {
            // `:port` means both families; on a host without IPv6 use IPv4.
            Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_missing(&e) => {
                addr = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
                v6only = false;
                bind_one(addr, v6only, ep.reuse_port)
            }
            other => other,
        }
        .map_err(|e| listen_error(&ep.name, addr, ep.reuse_port, e))?;
        addr = first.local_addr()?;
        if workers > 1 && !ep.reuse_port {
            // Exclusive until now; let our other workers join.
            socket2::SockRef::from(&first)
                .set_reuse_port(true)
                .map_err(|e| listen_error(&ep.name, addr, false, e))?;
        }
        socks.push(first);
        for _ in 1..workers {
            let sock =
                bind_one(addr, v6only, true).map_err(|e| listen_error(&ep.name, addr, true, e))?;
            socks.push(sock);
        }
        log!(
            Info,
            "listening",
            entrypoint = ep.name,
            address = addr,
            workers = workers,
            reuse_port = ep.reuse_port
        );
    }
    Ok(socks)
}

/// Where Linux (5.14+) says whether a closing listener's accept queue moves
/// to another socket of its SO_REUSEPORT group (per network namespace).
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// With `reusePort`, another process takes over the connections this one
/// stops accepting; but connections already in this process's accept queues
/// when its listeners close are reset by the kernel unless
/// `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+) moves them to the other
/// listeners. No user-space drain closes that gap: new connections keep
/// being hashed to a socket until it leaves the group, and leaving the group
/// is the close. The setting belongs to the operator (it is per network
/// namespace and changes every program's listeners), so it is only checked.
fn warn_without_migration() {
    let value = std::fs::read_to_string(MIGRATE_REQ);
    if value.as_ref().map(|v| v.trim() == "1").ok() != Some(true) {
        let seen = match &value {
            Ok(v) => format!("is {}", v.trim()),
            Err(_) => "is missing (Linux before 5.14)".to_string(),
        };
        log!(
            Warn,
            &format!(
                "reusePort: net.ipv4.tcp_migrate_req {seen}: connections waiting in this process's accept queues when it stops accepting are reset instead of passed to the other processes on the port; set net.ipv4.tcp_migrate_req = 1"
            ),
            sysctl = "net.ipv4.tcp_migrate_req"
        );
    }
}

fn listen_error(ep: &str, addr: SocketAddr, reuse_port: bool, e: io::Error) -> io::Error {
    let hint = match (e.raw_os_error() == Some(libc::EADDRINUSE), reuse_port) {
        (false, _) => "",
        (true, false) => {
            " (another process listens there; to share the address between processes, set reusePort = true in each)"
        }
        (true, true) => {
            " (another process listens there without SO_REUSEPORT, or as another user)"
        }
    };
    io::Error::new(
        e.kind(),
        format!("entrypoint {ep}: cannot listen on {addr}: {e}{hint}"),
    )
}

fn ipv6_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

fn bind_one(addr: SocketAddr, v6only: bool, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        sock.set_only_v6(v6only)?;
    }
    sock.set_nodelay(true)?;
    // Inherited by every accepted client socket (sys.rs), as TCP_NODELAY is.
    sys::set_client_keepalive(&sock)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    // Non-blocking: the epoll driver calls accept() after a readiness edge and
    // must get EAGAIN, not block the worker, once the queue is empty.
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Which driver a worker actually runs on (logged at start).
pub fn driver_name(d: Driver) -> &'static str {
    match d {
        Driver::IoUring => "io_uring",
        Driver::Epoll => "epoll",
        Driver::Auto => {
            if monoio::utils::detect_uring() {
                "io_uring"
            } else {
                "epoll"
            }
        }
    }
}

/// Run one worker to completion (blocking the calling thread).
pub fn run(id: usize, driver: Driver, shared: Arc<Shared>, listeners: Listeners) -> io::Result<()> {
    let use_uring = driver_name(driver) == "io_uring";
    if use_uring {
        let mut rt = match uring_runtime(true) {
            Ok(rt) => rt,
            // Kernels before 6.0 lack SINGLE_ISSUER / COOP_TASKRUN.
            Err(_) => uring_runtime(false)?,
        };
        crate::completion::enable_on_this_thread();
        rt.block_on(worker_main(id, shared, listeners))
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?;
        rt.block_on(worker_main(id, shared, listeners))
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// An io_uring runtime. COOP_TASKRUN (completions are processed when the
/// worker enters the kernel anyway, without an interrupt per completion) and
/// SINGLE_ISSUER (one thread owns the ring) measured +35% requests/s on
/// redis-benchmark GET -c 50 through the proxy (38k → 51k, PERFORMANCE.md).
fn uring_runtime(tuned: bool) -> io::Result<UringRuntime> {
    let mut urb = io_uring::IoUring::builder();
    if tuned {
        urb.setup_coop_taskrun().setup_single_issuer();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

/// This worker's live connections: entrypoint and cut signal of each, in
/// slots reused through a free list (registration is O(1) per connection).
#[derive(Default)]
struct Registry {
    slots: Vec<Option<(EntryPointId, Rc<Cutoff>)>>,
    free: Vec<usize>,
    live: usize,
}

thread_local! {
    /// Live connections on this worker (for the drain on stop).
    static LIVE: RefCell<Registry> = RefCell::new(Registry::default());
}

fn live_count() -> usize {
    LIVE.with(|r| r.borrow().live)
}

/// Registers a live connection (its entrypoint and cut signal) for as long
/// as it exists.
pub struct LiveGuard {
    slot: usize,
    cut: Rc<Cutoff>,
}

impl LiveGuard {
    fn new(ep: EntryPointId) -> LiveGuard {
        let cut = Cutoff::new();
        let slot = LIVE.with(|r| {
            let mut r = r.borrow_mut();
            r.live += 1;
            let entry = Some((ep, cut.clone()));
            match r.free.pop() {
                Some(i) => {
                    r.slots[i] = entry;
                    i
                }
                None => {
                    r.slots.push(entry);
                    r.slots.len() - 1
                }
            }
        });
        LiveGuard { slot, cut }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        LIVE.with(|r| {
            let mut r = r.borrow_mut();
            r.live -= 1;
            if let Some(s) = r.slots.get_mut(self.slot) {
                *s = None;
                r.free.push(self.slot);
            }
        });
    }
}

/// Cut the live connections whose drain time is over (all of them with
/// `all`); returns how many were cut now, how many of those were still
/// working (not already closing), and whether some are left to cut later.
fn cut_due(all: bool, deadlines: &[Instant], now: Instant) -> (usize, usize, bool) {
    let mut due = Vec::new();
    let mut waiting = false;
    LIVE.with(|r| {
        for (ep, cut) in r.borrow().slots.iter().flatten() {
            if cut.is_cut() {
                continue;
            }
            // An entrypoint the stop-time snapshot does not know: cut now.
            if all || deadlines.get(ep.index()).is_none_or(|d| now >= *d) {
                due.push(cut.clone());
            } else {
                waiting = true;
            }
        }
    });
    // Outside the registry's borrow: a cut wakes its task (never runs it).
    let working = due.iter().filter(|c| c.cut()).count();
    (due.len(), working, waiting)
}

/// Cut the live connections of removed entrypoints whose deadline passed;
/// how many were still working.
fn cut_removed(removed: &[(EntryPointId, Instant)], now: Instant) -> usize {
    let mut due = Vec::new();
    LIVE.with(|r| {
        for (ep, cut) in r.borrow().slots.iter().flatten() {
            if !cut.is_cut() && removed.iter().any(|(e, d)| e == ep && now >= *d) {
                due.push(cut.clone());
            }
        }
    });
    due.iter().filter(|c| c.cut()).count()
}

/// `onServerDown = "close"`: cut this worker's sessions whose server is no
/// longer pickable in the current snapshot (marked down, lost the role its
/// service wants, or removed by a reload), whatever snapshot they were
/// accepted under: sessions carry their (service, server) by name. Looks
/// only when the snapshot or a verdict changed (`seen`), so a quiet worker
/// pays two atomic loads per housekeeping tick; a cut lands within
/// `HOUSEKEEPING` of the verdict.
fn close_gone_servers(id: usize, shared: &Shared, seen: &mut (u64, u64)) {
    // The generation first: a publish in between is then seen next tick.
    let generation = shared.generation();
    let snap = shared.current();
    let now = (generation, snap.health.changes());
    if *seen == now {
        return;
    }
    *seen = now;
    let cfg = &snap.config;
    if !cfg
        .services
        .iter()
        .any(|s| s.on_server_down == crate::model::OnServerDown::Close)
    {
        return;
    }
    let gone = |svc: &str, server: &str| -> bool {
        let Some(si) = cfg.service_id(svc) else {
            // The service itself is gone: no policy says close; keep.
            return false;
        };
        let s = cfg.service(si);
        let crate::model::ServiceKind::LoadBalancer(lb) = &s.kind else {
            return false;
        };
        if s.on_server_down != crate::model::OnServerDown::Close {
            return false;
        }
        match lb.servers.iter().position(|x| x.address_text == server) {
            None => true,
            Some(i) => !snap.health.is_up(snap.health.id(si, i)),
        }
    };
    let mut due = Vec::new();
    LIVE.with(|r| {
        for (_, cut) in r.borrow().slots.iter().flatten() {
            if !cut.is_cut() && cut.target_is(gone) {
                due.push(cut.clone());
            }
        }
    });
    if due.is_empty() {
        return;
    }
    // Outside the registry's borrow: a cut wakes its task (never runs it).
    let mut by_service: HashMap<String, u64> = HashMap::new();
    for cut in &due {
        if cut.cut_server_down() {
            cut.target_is(|svc, _| {
                *by_service.entry(svc.to_string()).or_default() += 1;
                true
            });
        }
    }
    for (svc, n) in by_service {
        crate::metrics::server_down_closed(&svc, n);
        log!(
            Warn,
            "sessions closed: server down",
            worker = id,
            service = svc,
            closed = n
        );
    }
}

/// This worker's current snapshot, refreshed when the control plane publishes
/// a new one (checked at every accept: one atomic load).
struct Current {
    seen: Cell<u64>,
    snap: RefCell<Rc<WorkerSnap>>,
}

impl Current {
    fn get(&self, shared: &Shared) -> Rc<WorkerSnap> {
        let g = shared.generation();
        if g != self.seen.get() {
            self.seen.set(g);
            let next = self.snap.borrow().renew(shared.current());
            *self.snap.borrow_mut() = next;
        }
        self.snap.borrow().clone()
    }
}

async fn worker_main(id: usize, shared: Arc<Shared>, listeners: Listeners) -> io::Result<()> {
    crate::metrics::registry().register_worker(MAX_ENTRYPOINT_SLOTS);
    let current = Rc::new(Current {
        seen: Cell::new(shared.generation()),
        snap: RefCell::new(WorkerSnap::new(shared.current())),
    });
    let mut mine: Vec<EntryPointId> = listeners.iter().map(|(ep, _)| *ep).collect();
    for (ep, std_listener) in listeners {
        let listener = TcpListener::from_std(std_listener)?;
        monoio::spawn(accept_loop(
            id,
            ep,
            listener,
            current.clone(),
            shared.clone(),
        ));
    }
    let mut trimmed = Instant::now();
    let mut seen_health = (u64::MAX, u64::MAX);
    let mut drained: Vec<(EntryPointId, Instant)> = Vec::new();
    while !shared.stopping() {
        monoio::time::sleep(HOUSEKEEPING).await;
        // Entrypoints a reload added, and connections of removed ones whose
        // drain time is over.
        for (ep, std_listener) in shared.take_pending(id) {
            match TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    mine.push(ep);
                    monoio::spawn(accept_loop(
                        id,
                        ep,
                        listener,
                        current.clone(),
                        shared.clone(),
                    ));
                }
                Err(e) => log!(
                    Error,
                    "cannot accept on an added entrypoint",
                    worker = id,
                    error = e
                ),
            }
        }
        // A removed entrypoint has no listener: once this worker has cut its
        // connections after the deadline, none can come back, so it is
        // done here and later ticks skip it.
        let mut removed = shared.removal_deadlines();
        removed.retain(|r| !drained.contains(r));
        if !removed.is_empty() {
            let now = Instant::now();
            let cut = cut_removed(&removed, now);
            drained.extend(removed.iter().filter(|(_, d)| now >= *d));
            if cut > 0 {
                log!(
                    Warn,
                    "removed entrypoint drained: connections cut",
                    worker = id,
                    cut = cut
                );
            }
        }
        crate::notify::worker_alive(id);
        close_gone_servers(id, &shared, &mut seen_health);
        if trimmed.elapsed() >= crate::forward::POOL_TRIM_PERIOD {
            trimmed = Instant::now();
            crate::forward::trim_pools();
        }
    }
    // Drain: each entrypoint accepts for its requestAcceptGraceTimeout from
    // the stop (the control plane closes it then), and each connection
    // finishes on its own up to its entrypoint's graceTimeOut after that
    // (Traefik counts graceTimeOut from the end of the accept grace), then
    // is cut.
    let stopped = shared.stopped_at().unwrap_or_else(Instant::now);
    let deadlines: Vec<Instant> = shared
        .current()
        .config
        .entrypoints
        .iter()
        .map(|e| stopped + e.accept_grace + e.grace_timeout)
        .collect();
    let mut cut_total = 0usize;
    let mut last_cut: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let (n, working, waiting) = cut_due(shared.cut_requested(), &deadlines, now);
        if n > 0 {
            last_cut = Some(now);
        }
        cut_total += working;
        // Still accepting somewhere (requestAcceptGraceTimeout): more
        // connections may come, however few are open now.
        let accepting = mine.iter().any(|&ep| !shared.is_closed(ep));
        if live_count() == 0 && !accepting {
            break;
        }
        // Everything is cut: the resets take a poll or two; do not wait for
        // ever on a connection that does not end.
        if !waiting && !accepting && last_cut.is_some_and(|t| now.duration_since(t) >= CUT_SETTLE) {
            break;
        }
        monoio::time::sleep(DRAIN_POLL).await;
    }
    if cut_total > 0 {
        log!(
            Warn,
            &format!("drain ended: {cut_total} connections cut"),
            worker = id,
            cut = cut_total
        );
    }
    log!(
        Info,
        "worker stopped",
        worker = id,
        open_connections_closed = live_count()
    );
    Ok(())
}

async fn accept_loop(
    id: usize,
    ep: EntryPointId,
    listener: TcpListener,
    current: Rc<Current>,
    shared: Arc<Shared>,
) {
    let lfd = sys::listener_fd(&listener);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut errors: u64 = 0;
    loop {
        // Readiness, then drain the backlog with non-blocking accept4 (up to
        // a burst): one wake-up serves many connecting clients, and the
        // sockets come out non-blocking already (HAProxy's way). Only a poll
        // is ever in flight, so stopping cancels nothing that matters.
        let ready = listener.readable(false).await;
        if shared.is_closed(ep) {
            break;
        }
        let mut failure = ready.err();
        if failure.is_none() {
            for _ in 0..ACCEPT_BURST {
                match sys::accept4(lfd) {
                    Ok((std_stream, peer)) => {
                        // Accepted, even in the instant the listener shuts
                        // down: served (and drained) like any other; closing
                        // it would end a connection the client saw open.
                        backoff = ACCEPT_BACKOFF_MIN;
                        let stream = match monoio::net::TcpStream::from_std(std_stream) {
                            Ok(s) => s,
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        };
                        let ws = current.get(&shared);
                        crate::metrics::accepted(ep);
                        let guard = LiveGuard::new(ep);
                        let shared = shared.clone();
                        monoio::spawn(async move {
                            session::serve(&ws, ep, &stream, peer, &shared, &guard.cut).await;
                            drop(stream);
                            drop(guard);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A client that reset while in the backlog: next one.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some(e) = failure {
            if shared.is_closed(ep) {
                break;
            }
            errors += 1;
            crate::metrics::accept_error(ep);
            // EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays
            // in the backlog; pause this worker's accepting instead of
            // spinning or exiting, and count it.
            if errors == 1 || errors.is_power_of_two() {
                log!(
                    Warn,
                    "accept failed",
                    worker = id,
                    error = e,
                    count = errors,
                    pause_ms = backoff.as_millis()
                );
            }
            monoio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
        }
    }
}
