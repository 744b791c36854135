//! The program's shared state: what the control plane publishes and every
//! worker, session, checker and the admin endpoint read.
//!
//! Owns: `Snapshot` (one immutable, compiled configuration: routes, TLS,
//! the health table, server loads), `Shared` (the current snapshot, its
//! generation, the stop and drain flags, the listener handles, the running
//! health checks) and `WorkerSnap` (one worker's view: the snapshot plus its
//! own balancer). `Shared::reload` is the one place a snapshot replaces
//! another: it inherits verdicts and loads, publishes, and restarts the
//! health checks.
//!
//! May depend on: `model`, `route`, `balance`, `tls`, `sys`, `log`. Never on
//! `worker`, `session`, `health`, `metrics`, `admin`, `notify` or `engine`:
//! they depend on it (the health checkers are handed in as `StartChecks`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::balance::{Balancer, ServerTable};
use crate::log;
use crate::model::{Config, EntryPointId, MiddlewareId};
use crate::route::RouteTable;

pub mod health;

pub use health::{HealthState, Verdict};

/// An immutable, compiled configuration shared by all workers.
pub struct Snapshot {
    /// The validated configuration: entrypoints, routers, services,
    /// middlewares and transports, read by their typed ids; everything else
    /// is built from it.
    pub config: Config,
    /// The routers compiled per entrypoint, so a connection is matched
    /// without re-reading rules.
    pub routes: RouteTable,
    /// Certificates and TLS server/client configs, loaded once per snapshot
    /// so a handshake never reads a file.
    pub tls: crate::tls::TlsState,
    /// The one numbering of the servers (`ServerId`): balancing, the health
    /// table, the loads and `/metrics` index by it, and a pick resolves
    /// through it to the service, server and transport in one step.
    pub servers: ServerTable,
    /// Active health-check verdicts, one flag per server (by ServerId); the
    /// control plane's checkers write them, workers read them when picking.
    pub health: HealthState,
    /// Open and queued connections per server (by ServerId), shared by every
    /// worker; a reload hands them on (`balance::Loads::inherit`).
    pub loads: crate::balance::Loads,
}

impl Snapshot {
    /// Compile routes and load certificates. Errors (a missing certificate
    /// file, a key that does not match) are one message per line.
    pub fn new(config: Config) -> Result<Snapshot, String> {
        let routes = RouteTable::new(&config);
        let tls = crate::tls::TlsState::build(&config).map_err(|e| e.join("\n"))?;
        let servers = ServerTable::new(&config);
        let health = HealthState::new(&config, &servers);
        let loads = crate::balance::Loads::new(&config);
        Ok(Snapshot {
            config,
            servers,
            routes,
            tls,
            health,
            loads,
        })
    }
}

/// Entrypoint slots a process has over its lifetime: entrypoints added by
/// reloads take new slots (a removed one keeps its slot while it drains, and
/// gives it back to an entrypoint of the same name and address); beyond this
/// a reload that adds one is refused (restart to apply).
pub const MAX_ENTRYPOINT_SLOTS: usize = 256;

/// State shared between the control thread and the workers.
pub struct Shared {
    /// The snapshot new connections are served with (`reload` replaces it).
    snapshot: Mutex<Arc<Snapshot>>,
    /// Bumped on every publish: a worker compares one atomic per accept
    /// instead of locking `snapshot`.
    generation: AtomicU64,
    /// The stop was asked: `/ping` answers 503, reloads are refused and
    /// workers drain.
    stopping: AtomicBool,
    /// When the stop was asked (drain deadlines count from it).
    stopped_at: Mutex<Option<Instant>>,
    /// `cut_now`: end the drain at once.
    cut_all: AtomicBool,
    /// Per entrypoint: its listeners are shut down (accepting is over).
    closed: Vec<AtomicBool>,
    /// A second handle on every worker's listening socket, by entrypoint, to
    /// shut them down from the control plane. Owned here (not raw numbers),
    /// so a descriptor shut down is always the listener: never a number the
    /// worker closed and the kernel gave to a new connection.
    listeners: Mutex<Vec<(EntryPointId, std::net::TcpListener)>>,
    /// Listeners a reload added, per worker id, until the worker takes
    /// them (at its next housekeeping tick).
    pending: Mutex<HashMap<usize, Listeners>>,
    /// Entrypoints a reload removed: their connections are cut at the
    /// deadline (the removed entrypoint's graceTimeOut after the reload).
    removed: Mutex<Vec<(EntryPointId, Instant)>>,
    /// How many workers run (set with their listeners): a reload binds
    /// that many sockets for an added entrypoint.
    workers: std::sync::atomic::AtomicUsize,
    /// `inFlightConn`: open connections per (middleware, client IP). Only
    /// touched by routers that use the middleware.
    pub in_flight: Mutex<HashMap<(MiddlewareId, IpAddr), u32>>,
    /// Starts the health checkers of a snapshot (`crate::health` hands it
    /// in: this module runs checks without depending on how they probe).
    start_checks: StartChecks,
    /// The running health checkers of the current snapshot; dropping the
    /// value stops them.
    health_checks: Mutex<Option<RunningChecks>>,
}

/// The running health checks of one snapshot; dropping it stops them.
pub type RunningChecks = Box<dyn Send>;

/// Start the health checks of a snapshot.
pub type StartChecks = fn(Arc<Snapshot>) -> RunningChecks;

impl Shared {
    /// The shared state of a process serving `snap`; `start_checks` starts
    /// the health checks of each snapshot published (`restart_checks`).
    pub fn new(snap: Snapshot, start_checks: StartChecks) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: Mutex::new(Arc::new(snap)),
            generation: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stopped_at: Mutex::new(None),
            cut_all: AtomicBool::new(false),
            closed: (0..MAX_ENTRYPOINT_SLOTS)
                .map(|_| AtomicBool::new(false))
                .collect(),
            listeners: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            removed: Mutex::new(Vec::new()),
            workers: std::sync::atomic::AtomicUsize::new(0),
            in_flight: Mutex::new(HashMap::new()),
            start_checks,
            health_checks: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many snapshots have been published (moves on every publish).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the current snapshot by `new` in one place: `new` inherits
    /// the current one's health verdicts (a known-down server stays down
    /// until the new checks say otherwise) and its open-connection counts,
    /// is published (workers pick it up at their next accept or
    /// housekeeping tick), and the health checks move to it.
    pub fn reload(&self, mut new: Snapshot) {
        let old = self.current();
        new.health.inherit(&new.config, &old.health, &old.config);
        new.loads.inherit(&new.config, &old.loads, &old.config);
        self.publish(new);
        self.restart_checks();
    }

    /// Publish a new snapshot as is (no inheritance, checks not moved).
    fn publish(&self, snap: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Stop the checks of the previous snapshot and start those of the
    /// current one. At start-up (`reload` does it for the snapshots after).
    pub fn restart_checks(&self) {
        let mut slot = self.health_checks.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock: of two reloads racing, the one that restarts
        // last also sees the last snapshot.
        let snap = self.current();
        // Dropping the old set tells its threads to stop; a probe in flight
        // ends within its timeout and its result is discarded.
        *slot = None;
        *slot = Some((self.start_checks)(snap));
    }

    /// Keep a handle on every worker's listeners (before the workers start,
    /// so a stop signal never misses one).
    pub fn register_listeners(&self, all: &[Listeners]) -> io::Result<()> {
        self.workers.store(all.len(), Ordering::Release);
        let mut held = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for (ep, l) in all.iter().flatten() {
            held.push((*ep, l.try_clone()?));
        }
        Ok(())
    }

    /// The stop (first SIGTERM/SIGINT): from now on `/ping` answers 503 and
    /// reloads are refused. Entrypoints without `requestAcceptGraceTimeout`
    /// stop accepting at once; the others keep accepting for that long (the
    /// caller closes them with `close_entrypoint` when it is over). Returns
    /// the stop instant.
    pub fn stop(&self) -> Instant {
        let now = Instant::now();
        let at = *self
            .stopped_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(now);
        self.stopping.store(true, Ordering::Release);
        let snap = self.current();
        for (ep, e) in snap.config.enumerate_entrypoints() {
            if e.accept_grace.is_zero() {
                self.close_entrypoint(ep);
            }
        }
        at
    }

    /// Stop accepting on entrypoint `ep` in every worker: shutting a
    /// listening socket down makes its pending accept fail at once (io_uring
    /// and epoll alike), takes it out of its SO_REUSEPORT group (new
    /// connections go to the other sockets of the group, in this process or
    /// another one) and, with `net.ipv4.tcp_migrate_req = 1`, hands the
    /// connections still waiting in its accept queue to another socket of the
    /// group; without it (or without another socket), the kernel resets them.
    /// Idempotent.
    pub fn close_entrypoint(&self, ep: EntryPointId) {
        let Some(flag) = self.closed.get(ep.index()) else {
            return;
        };
        let held = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if flag.swap(true, Ordering::AcqRel) {
            return;
        }
        for (_, l) in held.iter().filter(|(e, _)| *e == ep) {
            let _ = crate::sys::shutdown(l.as_fd(), std::net::Shutdown::Both);
        }
        drop(held);
        let name = self
            .current()
            .config
            .get_entrypoint(ep)
            .map(|e| e.name.clone())
            .unwrap_or_default();
        log!(Info, "stopped accepting", entrypoint = name);
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Acquire).max(1)
    }

    /// A reload added entrypoint `ep`: `socks` holds one listener per worker
    /// (worker `i` gets `socks[i]`). Call after publishing the snapshot that
    /// has it, so a worker never accepts on an entrypoint its snapshot lacks.
    pub fn add_listeners(
        &self,
        ep: EntryPointId,
        socks: Vec<std::net::TcpListener>,
    ) -> io::Result<()> {
        let mut held = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (worker, s) in socks.into_iter().enumerate() {
            held.push((ep, s.try_clone()?));
            pending.entry(worker).or_default().push((ep, s));
        }
        // A slot given back to its entrypoint: not draining any more.
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(e, _)| *e != ep);
        if let Some(flag) = self.closed.get(ep.index()) {
            flag.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// A reload removed entrypoint `ep`: stop accepting on it now; its
    /// connections may finish until `deadline`, then they are cut.
    pub fn remove_entrypoint(&self, ep: EntryPointId, deadline: Instant) {
        self.close_entrypoint(ep);
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(e, _)| *e != ep);
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ep, deadline));
    }

    pub fn take_pending(&self, worker: usize) -> Listeners {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&worker)
            .unwrap_or_default()
    }

    pub fn removal_deadlines(&self) -> Vec<(EntryPointId, Instant)> {
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether entrypoint `ep` has stopped accepting.
    pub fn is_closed(&self, ep: EntryPointId) -> bool {
        self.closed
            .get(ep.index())
            .is_none_or(|c| c.load(Ordering::Acquire))
    }

    pub fn stopped_at(&self) -> Option<Instant> {
        *self.stopped_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// End the drain at once (a second stop signal, SIGQUIT): stop accepting
    /// everywhere (also where `requestAcceptGraceTimeout` still runs), then
    /// every worker cuts all its live connections within its drain poll period (a
    /// direction still moving is reset, one that had finished keeps its
    /// bytes) and returns once they are closed (at most its cut settle time later).
    /// Does not wait: the main thread's join of the workers does.
    pub fn cut_now(&self) {
        self.cut_all.store(true, Ordering::Release);
        self.stop();
        for (ep, _) in self.current().config.enumerate_entrypoints() {
            self.close_entrypoint(ep);
        }
    }

    pub fn cut_requested(&self) -> bool {
        self.cut_all.load(Ordering::Acquire)
    }
}

/// One worker's view of a snapshot: the shared config plus its own balancer.
pub struct WorkerSnap {
    pub snap: Arc<Snapshot>,
    pub balancer: RefCell<Balancer>,
}

impl WorkerSnap {
    pub fn new(snap: Arc<Snapshot>) -> Rc<WorkerSnap> {
        let balancer = RefCell::new(Balancer::new(&snap.config));
        Rc::new(WorkerSnap { snap, balancer })
    }

    /// The next snapshot, keeping this worker's passive ejections of the
    /// servers it keeps.
    pub fn renew(&self, snap: Arc<Snapshot>) -> Rc<WorkerSnap> {
        let mut balancer = Balancer::new(&snap.config);
        let map = crate::balance::matching(&snap.config, &self.snap.config);
        balancer.inherit(&map, &self.balancer.borrow());
        Rc::new(WorkerSnap {
            snap,
            balancer: RefCell::new(balancer),
        })
    }
}

/// Listening sockets for one worker: `(entrypoint, socket)`.
pub type Listeners = Vec<(EntryPointId, std::net::TcpListener)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::ServerId;
    use crate::model::ServiceId;
    use std::sync::atomic::AtomicUsize;

    /// A compiled snapshot of `dynamic` (TOML after the entrypoint).
    fn snapshot(dynamic: &str) -> Snapshot {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let text = format!("[entryPoints.main]\naddress = \"127.0.0.1:0\"\n{dynamic}");
        std::fs::write(&path, text).unwrap();
        let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        Snapshot::new(cfg).unwrap()
    }

    /// Load balancers `a` (2 servers), `b` (1), weighted `w` between them in
    /// config order, and `c` (3 servers, health-checked).
    const FOUR: &str = "[tcp.routers.r]\nrule = \"HostSNI(`*`)\"\nservice = \"w\"\n\
        [tcp.services.a.loadBalancer]\n\
        [[tcp.services.a.loadBalancer.servers]]\naddress = \"127.0.0.1:1\"\n\
        [[tcp.services.a.loadBalancer.servers]]\naddress = \"127.0.0.1:2\"\n\
        [tcp.services.w.weighted]\n\
        [[tcp.services.w.weighted.services]]\nname = \"a\"\nweight = 1\n\
        [[tcp.services.w.weighted.services]]\nname = \"b\"\nweight = 1\n\
        [tcp.services.b.loadBalancer]\n\
        [[tcp.services.b.loadBalancer.servers]]\naddress = \"127.0.0.1:3\"\n\
        [tcp.services.c.loadBalancer]\n\
        [tcp.services.c.loadBalancer.healthCheck]\ninterval = \"1s\"\n\
        [[tcp.services.c.loadBalancer.servers]]\naddress = \"127.0.0.1:4\"\n\
        [[tcp.services.c.loadBalancer.servers]]\naddress = \"127.0.0.1:5\"\n\
        [[tcp.services.c.loadBalancer.servers]]\naddress = \"127.0.0.1:6\"\n";

    #[test]
    fn one_server_numbering_for_balancing_health_and_loads() {
        let snap = snapshot(FOUR);
        let cfg = &snap.config;
        assert_eq!(snap.servers.len(), 6);
        assert_eq!(snap.loads.as_slice().len(), 6);
        let mut balancer = Balancer::new(cfg);
        let mut seen = Vec::new();
        for (id, si, i) in snap.servers.iter() {
            let picked = snap.servers.get(cfg, id).expect("every id resolves");
            assert_eq!(picked.id, id);
            assert_eq!(picked.service_id, si);
            assert!(std::ptr::eq(picked.service, cfg.service(si)));
            assert_eq!(picked.transport_id, picked.lb.transport);
            assert!(std::ptr::eq(
                picked.transport,
                cfg.transport(picked.transport_id)
            ));
            seen.push(picked.server.address_text.clone());
            assert_eq!(snap.servers.id(si, i), id);
            assert_eq!(snap.health.id(si, i), id);
            // The balancer, told only `id` is up, picks exactly `id`.
            let only = |x: ServerId| x == id;
            assert_eq!(balancer.pick(si, &[], &only, Instant::now()), Some(id));
        }
        let want: Vec<String> = (1..=6).map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(seen, want, "services in config order, servers in order");
        assert!(snap.servers.get(cfg, ServerId::from_index(6)).is_none());
        // The health table reports every server under the same numbering.
        let listed: Vec<(ServiceId, usize)> =
            snap.health.iter().map(|(s, i, _, _)| (s, i)).collect();
        let table: Vec<(ServiceId, usize)> = snap.servers.iter().map(|(_, s, i)| (s, i)).collect();
        assert_eq!(listed, table);
    }

    #[test]
    fn reload_inherits_verdicts_and_loads_publishes_and_restarts_checks() {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        fn start(_: Arc<Snapshot>) -> RunningChecks {
            STARTED.fetch_add(1, Ordering::SeqCst);
            Box::new(())
        }
        let shared = Shared::new(snapshot(FOUR), start);
        shared.restart_checks();
        assert_eq!(STARTED.load(Ordering::SeqCst), 1);
        let old = shared.current();
        let ci = old.config.service_id("c").unwrap();
        // 127.0.0.1:5 is down and holds a connection.
        old.health.set(old.health.id(ci, 1), Verdict::Down);
        let held = old.loads.get(old.servers.id(ci, 1)).unwrap().try_acquire();
        let generation = shared.generation();

        // The next config drops a's servers and lists c's the other way round.
        let next = FOUR
            .replace(
                "[[tcp.services.a.loadBalancer.servers]]\naddress = \"127.0.0.1:2\"\n",
                "",
            )
            .replace("127.0.0.1:4", "127.0.0.1:x")
            .replace("127.0.0.1:6", "127.0.0.1:4")
            .replace("127.0.0.1:x", "127.0.0.1:6");
        shared.reload(snapshot(&next));
        assert!(shared.generation() > generation, "published");
        assert_eq!(STARTED.load(Ordering::SeqCst), 2, "checks restarted");
        let new = shared.current();
        assert!(!Arc::ptr_eq(&new, &old));
        let ci = new.config.service_id("c").unwrap();
        let mut down = Vec::new();
        for i in 0..3 {
            let id = new.servers.id(ci, i);
            let picked = new.servers.get(&new.config, id).unwrap();
            if !new.health.is_up(id) {
                down.push(picked.server.address_text.clone());
            }
            let active = new.loads.get(id).unwrap().active();
            let want = u32::from(picked.server.address_text == "127.0.0.1:5");
            assert_eq!(active, want, "{}", picked.server.address_text);
        }
        assert_eq!(down, ["127.0.0.1:5"]);
        drop(held);
    }
}
