//! Workers: one thread per core, each with its own monoio runtime, its own
//! SO_REUSEPORT listener per entrypoint and its own copy of the selection
//! state. Nothing mutable is shared on the hot path: a worker loads the
//! published snapshot (an `Arc`) when the generation counter moves, and each
//! connection keeps the snapshot it was accepted with until it closes.
//!
//! Lifecycle of a worker: bind (done by `Engine::bind` on the main thread so
//! errors stop start-up) → run accept loops → on stop: the control thread
//! shuts the listeners down (pending accepts fail), the worker waits for its
//! connections, each up to its own entrypoint's `graceTimeOut` from the stop
//! (Traefik's meaning), then cuts the ones left (`forward::Cutoff`: a
//! reset, never a clean end, for what was still moving) and returns once they
//! are closed (at most `CUT_SETTLE` after the last cut). `Shared::cut_now`
//! ends the drain at once the same way.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::balance::Balancer;
use crate::forward::Cutoff;
use crate::model::{Config, Driver};
use crate::route::RouteTable;
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

/// An immutable, compiled configuration shared by all workers.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub tls: crate::tls::TlsState,
    /// Active health-check verdicts, one flag per server (by ServerId); the
    /// control plane's checkers write them, workers read them when picking.
    pub health: crate::health::HealthState,
}

impl Snapshot {
    /// Compile routes and load certificates. Errors (a missing certificate
    /// file, a key that does not match) are one message per line.
    pub fn new(config: Config) -> Result<Snapshot, String> {
        let routes = RouteTable::new(&config);
        let tls = crate::tls::TlsState::build(&config).map_err(|e| e.join("\n"))?;
        let health = crate::health::HealthState::new(&config);
        Ok(Snapshot {
            config,
            routes,
            tls,
            health,
        })
    }
}

/// State shared between the control thread and the workers.
pub struct Shared {
    snapshot: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    stopping: AtomicBool,
    /// `cut_now`: end the drain at once.
    cut_all: AtomicBool,
    listener_fds: Mutex<Vec<RawFd>>,
    /// `inFlightConn`: open connections per (middleware, client IP). Only
    /// touched by routers that use the middleware.
    pub in_flight: Mutex<HashMap<(usize, IpAddr), u32>>,
    /// Every worker's counters (summed by `/metrics`).
    pub metrics: crate::metrics::Registry,
    /// The health checkers of the current snapshot (`health::restart`).
    pub health_checks: Mutex<Option<crate::health::Checks>>,
}

impl Shared {
    pub fn new(snap: Snapshot) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: Mutex::new(Arc::new(snap)),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            cut_all: AtomicBool::new(false),
            listener_fds: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
            metrics: crate::metrics::Registry::default(),
            health_checks: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publish a new snapshot; workers pick it up within `HOUSEKEEPING`.
    pub fn publish(&self, snap: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Stop accepting everywhere: shutting a listening socket down makes its
    /// pending accept fail at once (io_uring and epoll alike), and new
    /// connection attempts are refused.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for &fd in self
            .listener_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = crate::sys::shutdown(fd, std::net::Shutdown::Both);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// End the drain at once (a second stop signal, SIGQUIT): stop accepting
    /// if not yet stopped, then every worker cuts all its live connections
    /// within `DRAIN_POLL` (a direction still moving is reset, one that had
    /// finished keeps its bytes) and returns once they are closed (at most
    /// `CUT_SETTLE` later). Does not wait: the main thread's join of the
    /// workers does.
    pub fn cut_now(&self) {
        self.cut_all.store(true, Ordering::Release);
        self.stop();
    }

    fn cut_requested(&self) -> bool {
        self.cut_all.load(Ordering::Acquire)
    }
}

/// One worker's view of a snapshot: the shared config plus its own balancer.
pub struct WorkerSnap {
    pub snap: Arc<Snapshot>,
    pub balancer: RefCell<Balancer>,
}

impl WorkerSnap {
    fn new(snap: Arc<Snapshot>) -> Rc<WorkerSnap> {
        let balancer = RefCell::new(Balancer::new(&snap.config));
        Rc::new(WorkerSnap { snap, balancer })
    }
}

/// Listening sockets for one worker: `(entrypoint index, socket)`.
pub type Listeners = Vec<(usize, std::net::TcpListener)>;

/// Bind one SO_REUSEPORT socket per entrypoint per worker. With port 0 the
/// first socket picks the port and the others join it, so all workers share
/// one ephemeral port (tests rely on this).
pub fn bind_all(cfg: &Config, workers: usize) -> io::Result<Vec<Listeners>> {
    let mut per_worker: Vec<Listeners> = (0..workers).map(|_| Vec::new()).collect();
    for (ei, ep) in cfg.entrypoints.iter().enumerate() {
        let mut addr = ep.address;
        let mut v6only = ep.v6only;
        // SO_REUSEPORT would let a second sluicegate (or anything else of the
        // same user) share a port silently: probe once without it, so a port
        // already in use is an error, as operators expect.
        if addr.port() != 0 {
            let probe = match probe_bind(addr, v6only) {
                // `:port` means both families; on a host without IPv6 use IPv4.
                Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_missing(&e) => {
                    addr = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
                    v6only = false;
                    probe_bind(addr, v6only)
                }
                other => other,
            };
            probe.map_err(|e| listen_error(&ep.name, addr, e))?;
        }
        for slot in per_worker.iter_mut() {
            let sock = bind_one(addr, v6only).map_err(|e| listen_error(&ep.name, addr, e))?;
            addr = sock.local_addr()?;
            slot.push((ei, sock));
        }
        log!(
            Info,
            "listening",
            entrypoint = ep.name,
            address = addr,
            workers = workers
        );
    }
    Ok(per_worker)
}

fn listen_error(ep: &str, addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("entrypoint {ep}: cannot listen on {addr}: {e}"),
    )
}

fn ipv6_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Bind (and drop) a socket without SO_REUSEPORT: fails if the port is taken.
fn probe_bind(addr: SocketAddr, v6only: bool) -> io::Result<()> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(v6only)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1)?;
    Ok(())
}

fn bind_one(addr: SocketAddr, v6only: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(v6only)?;
    }
    sock.set_nodelay(true)?;
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
    slots: Vec<Option<(usize, Rc<Cutoff>)>>,
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
    fn new(ep: usize) -> LiveGuard {
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
            if all || deadlines.get(*ep).is_none_or(|d| now >= *d) {
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

/// This worker's current snapshot, refreshed when the control plane publishes
/// a new one (checked at every accept: one atomic load).
struct Current {
    seen: Cell<u64>,
    snap: RefCell<Rc<WorkerSnap>>,
}

impl Current {
    fn get(&self, shared: &Shared) -> Rc<WorkerSnap> {
        let g = shared.generation.load(Ordering::Acquire);
        if g != self.seen.get() {
            self.seen.set(g);
            *self.snap.borrow_mut() = WorkerSnap::new(shared.current());
        }
        self.snap.borrow().clone()
    }
}

async fn worker_main(id: usize, shared: Arc<Shared>, listeners: Listeners) -> io::Result<()> {
    let entrypoints = shared.current().config.entrypoints.len();
    shared.metrics.register_worker(entrypoints);
    let current = Rc::new(Current {
        seen: Cell::new(shared.generation.load(Ordering::Acquire)),
        snap: RefCell::new(WorkerSnap::new(shared.current())),
    });
    for (ep, std_listener) in listeners {
        shared
            .listener_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std_listener.as_raw_fd());
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
    while !shared.stopping() {
        monoio::time::sleep(HOUSEKEEPING).await;
        crate::notify::worker_alive(id);
        if trimmed.elapsed() >= crate::forward::POOL_TRIM_PERIOD {
            trimmed = Instant::now();
            crate::forward::trim_pools();
        }
    }
    // Drain: each connection finishes on its own up to its entrypoint's
    // graceTimeOut from now, then is cut.
    let stopped = Instant::now();
    let deadlines: Vec<Instant> = shared
        .current()
        .config
        .entrypoints
        .iter()
        .map(|e| stopped + e.grace_timeout)
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
        if live_count() == 0 {
            break;
        }
        // Everything is cut: the resets take a poll or two; do not wait for
        // ever on a connection that does not end.
        if !waiting && last_cut.is_some_and(|t| now.duration_since(t) >= CUT_SETTLE) {
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
    ep: usize,
    listener: TcpListener,
    current: Rc<Current>,
    shared: Arc<Shared>,
) {
    let lfd = listener.as_raw_fd();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut errors: u64 = 0;
    'outer: loop {
        // Readiness, then drain the backlog with non-blocking accept4 (up to
        // a burst): one wake-up serves many connecting clients, and the
        // sockets come out non-blocking already (HAProxy's way). Only a poll
        // is ever in flight, so stopping cancels nothing that matters.
        let ready = listener.readable(false).await;
        if shared.stopping() {
            break;
        }
        let mut failure = ready.err();
        if failure.is_none() {
            for _ in 0..ACCEPT_BURST {
                match sys::accept4(lfd) {
                    Ok((std_stream, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        if shared.stopping() {
                            // Accepted in the instant of stopping: refuse it.
                            drop(std_stream);
                            break 'outer;
                        }
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
                            session::serve(ws, ep, stream, peer, &shared, &guard.cut).await;
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
            if shared.stopping() {
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
