//! Server selection over a tree of services, skipping servers that are down,
//! and the per-server load (open connections, wait queue) every worker shares.
//!
//! Each worker owns one `Balancer` built from the snapshot: its round-robin
//! positions and passive ejections need no locks. A `weighted` service
//! spreads over its child services by their weights (smooth weighted round
//! robin, nginx's algorithm); a `loadBalancer` service picks one of its
//! servers by its `strategy` (extension; Traefik's HTTP load balancer has the
//! key and the values `wrr` and `hrw`):
//! - `wrr` (default, Traefik's TCP behaviour): smooth weighted round robin;
//! - `leastConn`: the fewest connections per unit of weight, counting open
//!   *and* queued connections of every worker (`ServerLoad`, shared atomics),
//!   as `active * w_other < active_other * w` (nginx's least_conn
//!   comparison); ties go round robin, so equal loads alternate;
//! - `hrw`: rendezvous (highest random weight) hashing of the client IP (the
//!   PROXY-protocol source when the entrypoint trusts it): each server scores
//!   `weight / -ln(u)` with `u` a hash of (server address as written, client
//!   IP) mapped into (0, 1), and the highest usable score wins. The hash is
//!   fixed (FNV-1a of the address, murmur3's 64-bit finalizer to mix), so two
//!   instances, or one before and after a reload, with the same server list
//!   send a client to the same server, and a server that goes away (down,
//!   ejected, removed, weight 0) moves only the clients it had: every other
//!   client's best score is unchanged.
//!
//! A server is passed over when
//! - it was already tried during this connection's failover (nginx skips them
//!   the same way, so each server is tried at most once),
//! - the active health check says it is down (the caller's `up` view of the
//!   snapshot's `HealthState`), or
//! - this worker saw `EJECT_AFTER_FAILURES` dial failures in a row to it
//!   (passive ejection) less than `EJECT_COOLDOWN` ago.
//!
//! Preferences, best first: a rested server with room under its `maxConn`;
//! a rested one that is full (the connection then waits in that server's
//! queue); an ejected one. `hrw` does not look at room (a client waits for
//! its own server, as HAProxy's persistence does).
//!
//! A weighted child is passed over when it has no server left to try; its
//! servers' active health counts there only when the weighted service has a
//! `healthCheck` (Traefik: without one, the children's status is not
//! propagated, so a child whose servers are all down is still chosen by
//! weight and that connection finds no server).
//!
//! Skipping never disturbs the rotation of the others. Passive ejection is a
//! preference, not a verdict: when every server left is ejected, they are
//! tried anyway (nginx never marks the only server of a group down, Envoy
//! has its panic threshold), so a service whose backend restarted is not
//! kept dark for a whole cool-down after it came back. An actively unhealthy
//! server is never picked (Traefik's behaviour).
//!
//! Load and queue (`ServerLoad`): one per server, shared by every worker and
//! carried over by reloads for the same (service name, server address), so
//! connections accepted under an older configuration still count and still
//! free their slot. Without `maxConn` a connection costs one atomic add when
//! it is dialed and one atomic subtract when it ends. With `maxConn` a
//! connection takes a slot under the server's lock or joins its FIFO queue;
//! a slot freed is handed to the head of the queue (so a newcomer never
//! overtakes a waiter). Waiters look at their grant every `QUEUE_POLL`
//! (workers are separate runtimes that cannot wake each other's tasks), up
//! to `queueTimeout`.
//!
//! Owns: the server numbering (`ServerTable`, `ServerId`, `ServerRef`), the
//! balancers, the shared per-server loads and the matching of servers across
//! a reload. May depend on `model` only (its tests load configs with
//! `config`); `state`, `session`, `health` and `metrics` build on it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::{
    Config, LoadBalancer, Server, Service, ServiceId, ServiceKind, Strategy, Transport, TransportId,
};

/// A server of a snapshot, numbered by its `ServerTable` (ids `0..len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(usize);

impl ServerId {
    /// The id of slot `i` of a `ServerTable` (the table numbers; tests).
    pub const fn from_index(i: usize) -> ServerId {
        ServerId(i)
    }

    /// Its slot in the per-server tables (health, loads, ejections).
    pub const fn index(self) -> usize {
        self.0
    }
}

/// Dial failures in a row after which a worker passes a server over. One
/// refusal can be a backend restarting; three in a row are a dead server that
/// would otherwise cost every client a dial attempt.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long a passively ejected server is passed over before it gets one
/// connection again (and is ejected again at once if that one fails too).
/// Short, because active health checks, when configured, do the long-term job.
pub const EJECT_COOLDOWN: Duration = Duration::from_secs(5);
/// How often a connection waiting in a server's queue looks at its grant: the
/// most a slot freed on another worker waits for its taker.
pub const QUEUE_POLL: Duration = Duration::from_millis(5);

/// The one numbering of a snapshot's servers: services in config order,
/// each load balancer's servers in order. Balancing, the health table, the
/// loads and `/metrics` all index by the `ServerId` this table gives.
#[derive(Debug, Clone, Default)]
pub struct ServerTable {
    /// `(service, server index within that service)` of each ServerId.
    at: Vec<(ServiceId, usize)>,
    /// The first ServerId of each service (a weighted service owns none: its
    /// entry is the next service's first).
    first: Vec<ServerId>,
}

/// A server as picked: its id and what the config says about it, so nothing
/// is looked up again after the fact.
#[derive(Debug, Clone, Copy)]
pub struct ServerRef<'c> {
    pub id: ServerId,
    /// Its (load-balancer) service.
    pub service_id: ServiceId,
    pub service: &'c Service,
    pub lb: &'c LoadBalancer,
    pub server: &'c Server,
    /// `lb.transport`.
    pub transport_id: TransportId,
    pub transport: &'c Transport,
}

impl ServerTable {
    pub fn new(cfg: &Config) -> ServerTable {
        let mut at = Vec::new();
        let mut first = Vec::with_capacity(cfg.services.len());
        for (si, svc) in cfg.enumerate_services() {
            first.push(ServerId(at.len()));
            if let ServiceKind::LoadBalancer(lb) = &svc.kind {
                at.extend((0..lb.servers.len()).map(|i| (si, i)));
            }
        }
        ServerTable { at, first }
    }

    /// A table from its `(service, server)` list (tests build balancers by
    /// hand).
    #[cfg(test)]
    fn from_at(at: Vec<(usize, usize)>) -> ServerTable {
        let services = at.iter().map(|&(si, _)| si + 1).max().unwrap_or(0);
        let first = (0..services)
            .map(|s| ServerId(at.iter().position(|&(si, _)| si >= s).unwrap_or(at.len())))
            .collect();
        let at = at
            .into_iter()
            .map(|(si, i)| (ServiceId::from_index(si), i))
            .collect();
        ServerTable { at, first }
    }

    /// How many servers (ServerIds `0..len`).
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The ServerId of server `server` of load-balancer service `service`.
    pub fn id(&self, service: ServiceId, server: usize) -> ServerId {
        ServerId(self.first[service.index()].0 + server)
    }

    /// `(service, server index)` of a server id.
    pub fn locate(&self, id: ServerId) -> (ServiceId, usize) {
        self.at[id.0]
    }

    /// `(ServerId, service, server index)` of every server, in order.
    pub fn iter(&self) -> impl Iterator<Item = (ServerId, ServiceId, usize)> + '_ {
        self.at
            .iter()
            .enumerate()
            .map(|(id, &(si, i))| (ServerId(id), si, i))
    }

    /// Every ServerId, in order.
    pub fn ids(&self) -> impl Iterator<Item = ServerId> {
        (0..self.at.len()).map(ServerId)
    }

    /// Server `id` of `cfg` (the config this table was built from) with its
    /// service, load balancer and transport; `None` for an id not in it.
    pub fn get<'c>(&self, cfg: &'c Config, id: ServerId) -> Option<ServerRef<'c>> {
        let &(si, i) = self.at.get(id.0)?;
        let service = cfg.get_service(si)?;
        let ServiceKind::LoadBalancer(lb) = &service.kind else {
            return None;
        };
        Some(ServerRef {
            id,
            service_id: si,
            service,
            lb,
            server: lb.servers.get(i)?,
            transport_id: lb.transport,
            transport: cfg.get_transport(lb.transport)?,
        })
    }
}

/// For every ServerId of `new`, the ServerId of the same server in `old`:
/// same service name, same address as written (the k-th server with that
/// address in the service, when it is listed several times).
pub fn matching(new: &Config, old: &Config) -> Vec<Option<ServerId>> {
    type Key<'c> = (&'c str, &'c str, usize);
    fn keys(cfg: &Config) -> Vec<Key<'_>> {
        let mut out = Vec::new();
        for svc in &cfg.services {
            if let ServiceKind::LoadBalancer(lb) = &svc.kind {
                let mut seen: HashMap<&str, usize> = HashMap::new();
                for s in &lb.servers {
                    let k = seen.entry(s.address_text.as_str()).or_insert(0);
                    out.push((svc.name.as_str(), s.address_text.as_str(), *k));
                    *k += 1;
                }
            }
        }
        out
    }
    let old_ids: HashMap<Key<'_>, ServerId> = keys(old)
        .into_iter()
        .enumerate()
        .map(|(id, k)| (k, ServerId(id)))
        .collect();
    keys(new)
        .into_iter()
        .map(|k| old_ids.get(&k).copied())
        .collect()
}

/// Every server's `maxConn`, by `ServerTable` id.
fn max_conns(cfg: &Config) -> Vec<Option<u32>> {
    let table = ServerTable::new(cfg);
    table
        .ids()
        .map(|id| table.get(cfg, id).and_then(|s| s.server.max_conn))
        .collect()
}

/// `maxConn` not set.
const NO_LIMIT: u32 = u32::MAX;

/// Open connections and waiters of one server, across all workers. Aligned
/// to a cache line so two servers' counters never share one.
#[derive(Debug)]
#[repr(align(64))]
pub struct ServerLoad {
    /// Connections holding a slot (dialing or open).
    active: AtomicU32,
    /// Connections in `queue`.
    queued: AtomicU32,
    /// `maxConn`, or `NO_LIMIT`. Changed by a reload.
    max: AtomicU32,
    /// Waiters in arrival order; each one's flag is set when it is granted a
    /// slot. Only used with a limit.
    queue: Mutex<VecDeque<Arc<AtomicBool>>>,
}

impl ServerLoad {
    fn new(max: Option<u32>) -> ServerLoad {
        ServerLoad {
            active: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            max: AtomicU32::new(max.unwrap_or(NO_LIMIT)),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Connections holding a slot now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections waiting for a slot now.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// What `leastConn` compares: open plus waiting.
    fn load(&self) -> u64 {
        u64::from(self.active()) + u64::from(self.queued())
    }

    /// Below `maxConn` (a hint: the slot is only taken by `try_acquire`).
    fn has_room(&self) -> bool {
        self.active() < self.max.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<AtomicBool>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot now, or `None` when the server is at its `maxConn` (or others
    /// already wait: they go first).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max.load(Ordering::Relaxed);
        if max == NO_LIMIT && self.queued() == 0 {
            self.active.fetch_add(1, Ordering::Relaxed);
            return Some(Slot(self.clone()));
        }
        let q = self.lock();
        if q.is_empty() && self.active() < max {
            self.active.fetch_add(1, Ordering::Relaxed);
            return Some(Slot(self.clone()));
        }
        None
    }

    /// Join the queue (at its end).
    pub fn enqueue(self: &Arc<Self>) -> Ticket {
        let granted = Arc::new(AtomicBool::new(false));
        let mut q = self.lock();
        q.push_back(granted.clone());
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.dispatch(&mut q);
        drop(q);
        Ticket {
            load: self.clone(),
            granted,
            done: false,
        }
    }

    /// Hand free slots to the waiters at the head of the queue.
    fn dispatch(&self, q: &mut VecDeque<Arc<AtomicBool>>) {
        while self.active() < self.max.load(Ordering::Relaxed) {
            let Some(w) = q.pop_front() else { break };
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.active.fetch_add(1, Ordering::Relaxed);
            w.store(true, Ordering::Release);
        }
    }

    /// A slot is given back: to the first waiter, if any.
    fn release(&self) {
        if self.max.load(Ordering::Relaxed) == NO_LIMIT && self.queued() == 0 {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut q = self.lock();
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.dispatch(&mut q);
    }

    /// A reload changed `maxConn`: a higher limit lets waiters in at once.
    fn set_max(&self, max: Option<u32>) {
        let mut q = self.lock();
        self.max.store(max.unwrap_or(NO_LIMIT), Ordering::Relaxed);
        self.dispatch(&mut q);
    }
}

/// A slot on a server, held from the dial to the connection's end.
#[derive(Debug)]
pub struct Slot(Arc<ServerLoad>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A place in a server's queue; dropping it (timeout, drain cut) leaves the
/// queue, or gives back the slot it was granted in the meantime.
#[derive(Debug)]
pub struct Ticket {
    load: Arc<ServerLoad>,
    granted: Arc<AtomicBool>,
    /// Turned into a `Slot`.
    done: bool,
}

impl Ticket {
    /// The slot, once granted. Also hands out a slot that was freed without
    /// a grant (a release that raced a reload's new limit), so no waiter
    /// depends on one particular release.
    pub fn poll(&mut self) -> Option<Slot> {
        if !self.done && !self.granted.load(Ordering::Acquire) && self.load.has_room() {
            let mut q = self.load.lock();
            self.load.dispatch(&mut q);
        }
        if self.done || !self.granted.load(Ordering::Acquire) {
            return None;
        }
        self.done = true;
        Some(Slot(self.load.clone()))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut q = self.load.lock();
        // Under the lock nobody grants, so the flag is final here.
        if self.granted.load(Ordering::Acquire) {
            self.load.active.fetch_sub(1, Ordering::Relaxed);
            self.load.dispatch(&mut q);
        } else if let Some(i) = q.iter().position(|w| Arc::ptr_eq(w, &self.granted)) {
            q.remove(i);
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Every server's load of one snapshot, by ServerId.
#[derive(Debug)]
pub struct Loads(Vec<Arc<ServerLoad>>);

impl Loads {
    /// Fresh counters (nothing open, nothing queued), by `ServerTable` id.
    pub fn new(cfg: &Config) -> Loads {
        Loads(
            max_conns(cfg)
                .into_iter()
                .map(|m| Arc::new(ServerLoad::new(m)))
                .collect(),
        )
    }

    /// Take over `old`'s counters and queues for the servers `cfg` keeps
    /// (same service name and address), with `cfg`'s `maxConn`. Called on
    /// the snapshot about to be published.
    pub fn inherit(&mut self, cfg: &Config, old: &Loads, old_cfg: &Config) {
        let limits = max_conns(cfg);
        for (id, prev) in matching(cfg, old_cfg).into_iter().enumerate() {
            let (Some(prev), Some(slot)) = (prev, self.0.get_mut(id)) else {
                continue;
            };
            if let Some(l) = old.0.get(prev.0) {
                l.set_max(limits.get(id).copied().flatten());
                *slot = l.clone();
            }
        }
    }

    pub fn get(&self, id: ServerId) -> Option<&Arc<ServerLoad>> {
        self.0.get(id.0)
    }

    /// The loads, by ServerId.
    pub fn as_slice(&self) -> &[Arc<ServerLoad>] {
        &self.0
    }
}

/// What a node chooses between.
#[derive(Debug)]
enum Children {
    /// A load balancer's servers.
    Servers(Vec<ServerId>),
    /// A weighted service's child services.
    Services(Vec<ServiceId>),
}

impl Children {
    fn len(&self) -> usize {
        match self {
            Children::Servers(v) => v.len(),
            Children::Services(v) => v.len(),
        }
    }
}

/// The selection state of one service, by `ServiceId`.
#[derive(Debug)]
struct Node {
    children: Children,
    weights: Vec<i64>,
    current: Vec<i64>,
    /// Weighted node with `healthCheck`: children are judged by their
    /// servers' active health too, not only by what is left to try.
    health_aware: bool,
    /// A failover service (extension): only the first eligible child.
    failover: bool,
    /// A load balancer's strategy (weighted nodes: `Wrr`).
    strategy: Strategy,
    /// `hrw`: each server's hash of its address as written.
    seeds: Vec<u64>,
}

/// This worker's recent dial results for one server.
#[derive(Debug, Clone, Copy, Default)]
struct Passive {
    /// Dial failures since the last success.
    failures: u32,
    /// Passed over until then.
    ejected_until: Option<Instant>,
}

/// Per-worker selection state for every service of one snapshot.
#[derive(Debug)]
pub struct Balancer {
    nodes: Vec<Node>,
    /// Passive ejection, by ServerId.
    passive: Vec<Passive>,
}

/// What a pick may look at besides health: the shared loads (`leastConn`,
/// `maxConn`) and the client's address (`hrw`).
#[derive(Clone, Copy)]
pub struct Seen<'a> {
    pub loads: &'a [Arc<ServerLoad>],
    pub client: IpAddr,
}

impl Seen<'_> {
    /// No loads (every server empty, no limit), no client address.
    pub const NONE: Seen<'static> = Seen {
        loads: &[],
        client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
}

impl Balancer {
    pub fn new(cfg: &Config) -> Balancer {
        let servers = ServerTable::new(cfg);
        let mut nodes = Vec::with_capacity(cfg.services.len());
        for (si, svc) in cfg.enumerate_services() {
            let node = match &svc.kind {
                ServiceKind::LoadBalancer(lb) => {
                    let children: Vec<ServerId> =
                        (0..lb.servers.len()).map(|i| servers.id(si, i)).collect();
                    Node {
                        current: vec![0; children.len()],
                        children: Children::Servers(children),
                        weights: lb.servers.iter().map(|s| i64::from(s.weight)).collect(),
                        health_aware: true,
                        failover: false,
                        strategy: lb.strategy,
                        seeds: lb
                            .servers
                            .iter()
                            .map(|s| server_seed(&s.address_text))
                            .collect(),
                    }
                }
                ServiceKind::Weighted(ws) => Node {
                    children: Children::Services(ws.iter().map(|w| w.service).collect()),
                    weights: ws.iter().map(|w| i64::from(w.weight)).collect(),
                    current: vec![0; ws.len()],
                    health_aware: svc.weighted_health_check,
                    failover: svc.failover,
                    strategy: Strategy::Wrr,
                    seeds: Vec::new(),
                },
            };
            nodes.push(node);
        }
        Balancer::from_parts(nodes, servers)
    }

    fn from_parts(nodes: Vec<Node>, servers: ServerTable) -> Balancer {
        let passive = vec![Passive::default(); servers.len()];
        Balancer { nodes, passive }
    }

    /// Keep this worker's passive ejections across a reload: `map` is
    /// `matching(new config, old config)`, `old` the balancer of the old
    /// snapshot.
    pub fn inherit(&mut self, map: &[Option<ServerId>], old: &Balancer) {
        for (p, prev) in self.passive.iter_mut().zip(map) {
            if let Some(o) = prev.and_then(|i| old.passive.get(i.0)) {
                *p = *o;
            }
        }
    }

    /// `pick_seen` without loads or client address (round robin as if every
    /// server were empty; `hrw` then hashes the unspecified address).
    pub fn pick(
        &mut self,
        service: ServiceId,
        tried: &[ServerId],
        up: &impl Fn(ServerId) -> bool,
        now: Instant,
    ) -> Option<ServerId> {
        self.pick_seen(service, tried, up, now, Seen::NONE)
    }

    /// Pick the next server of `service`, skipping the ids in `tried` and
    /// the servers `up` says are down, preferring rested servers (not
    /// ejected by this worker after repeated dial failures) with room under
    /// their `maxConn`. `None` when no server with a non-zero weight is left.
    pub fn pick_seen(
        &mut self,
        service: ServiceId,
        tried: &[ServerId],
        up: &impl Fn(ServerId) -> bool,
        now: Instant,
        seen: Seen<'_>,
    ) -> Option<ServerId> {
        let judge = Judge {
            tried,
            up,
            passive: &self.passive,
            loads: seen.loads,
            now,
        };
        pick_in(&mut self.nodes, service, &judge, seen)
    }

    /// Record a dial result. Returns true when this failure ejects the server
    /// (the caller logs it once).
    pub fn dial_result(&mut self, id: ServerId, ok: bool, now: Instant) -> bool {
        let Some(p) = self.passive.get_mut(id.0) else {
            return false;
        };
        if ok {
            *p = Passive::default();
            return false;
        }
        p.failures = p.failures.saturating_add(1);
        // Still counting failures after a cool-down: one more failure ejects
        // again at once (the server is on probation until a dial succeeds).
        if p.failures >= EJECT_AFTER_FAILURES {
            let already = p.ejected_until.is_some_and(|t| now < t);
            p.ejected_until = Some(now + EJECT_COOLDOWN);
            return !already;
        }
        false
    }

    /// Whether this worker currently passes `id` over.
    pub fn ejected(&self, id: ServerId, now: Instant) -> bool {
        self.passive
            .get(id.0)
            .is_some_and(|p| p.ejected_until.is_some_and(|t| now < t))
    }
}

/// One level of preference: what a server must be, beyond untried and (where
/// health counts) up.
#[derive(Clone, Copy)]
struct Tier {
    /// Not passively ejected.
    rested: bool,
    /// Below its `maxConn` (not asked of `hrw` servers).
    room: bool,
}

/// Best first; the last one is the last resort (ejected servers).
const TIERS: [Tier; 3] = [
    Tier {
        rested: true,
        room: true,
    },
    Tier {
        rested: true,
        room: false,
    },
    Tier {
        rested: false,
        room: false,
    },
];

/// Judges servers for one pick.
struct Judge<'t> {
    tried: &'t [ServerId],
    up: &'t dyn Fn(ServerId) -> bool,
    passive: &'t [Passive],
    loads: &'t [Arc<ServerLoad>],
    now: Instant,
}

impl Judge<'_> {
    /// Whether server `id` passes `tier`; `health`: the active verdict
    /// counts (see `Node::health_aware`); `sticky`: its load balancer is
    /// `hrw`.
    fn ok(&self, id: ServerId, tier: Tier, health: bool, sticky: bool) -> bool {
        !self.tried.contains(&id)
            && (!health || (self.up)(id))
            && (!tier.rested
                || self
                    .passive
                    .get(id.0)
                    .is_none_or(|p| p.ejected_until.is_none_or(|t| self.now >= t)))
            && (!tier.room || sticky || self.loads.get(id.0).is_none_or(|l| l.has_room()))
    }

    fn load(&self, id: ServerId) -> u64 {
        self.loads.get(id.0).map_or(0, |l| l.load())
    }
}

/// Walk down from `service` to a server. At each node the children with a
/// server passing the first tier some child passes are eligible.
/// Preferring at every level is the same as preferring over the whole tree:
/// a child is eligible only if a server below it passes.
fn pick_in(
    nodes: &mut [Node],
    service: ServiceId,
    j: &Judge<'_>,
    seen: Seen<'_>,
) -> Option<ServerId> {
    // The config build step rejects cycles, so the depth is bounded by the
    // number of services.
    let mut node_idx = service.index();
    for _ in 0..=nodes.len() {
        let slot = {
            let node = nodes.get(node_idx)?;
            let sticky = node.strategy == Strategy::Hrw;
            let eligible_by = |tier: Tier| {
                (0..node.children.len())
                    .map(|i| {
                        node.weights[i] > 0
                            && match &node.children {
                                Children::Servers(c) => j.ok(c[i], tier, true, sticky),
                                Children::Services(c) => {
                                    has_candidate(nodes, c[i], j, tier, node.health_aware, 0)
                                }
                            }
                    })
                    .collect::<Vec<bool>>()
            };
            let mut eligible = Vec::new();
            for tier in TIERS {
                eligible = eligible_by(tier);
                if eligible.contains(&true) {
                    break;
                }
            }
            let node = &mut nodes[node_idx];
            if node.failover {
                // `service` while it has a server to give, else `fallback`.
                if let Some(first) = eligible.iter().position(|&e| e) {
                    eligible.iter_mut().skip(first + 1).for_each(|e| *e = false);
                }
            }
            match node.strategy {
                Strategy::Wrr => smooth_pick(node, &eligible)?,
                Strategy::LeastConn => {
                    least_loaded(node, &mut eligible, j);
                    smooth_pick(node, &eligible)?
                }
                Strategy::Hrw => highest_score(node, &eligible, client_key(seen.client))?,
            }
        };
        match &nodes[node_idx].children {
            Children::Servers(c) => return Some(c[slot]),
            Children::Services(c) => node_idx = c[slot].index(),
        }
    }
    None
}

fn has_candidate(
    nodes: &[Node],
    service: ServiceId,
    j: &Judge<'_>,
    tier: Tier,
    health: bool,
    depth: usize,
) -> bool {
    if depth > nodes.len() {
        return false;
    }
    let Some(node) = nodes.get(service.index()) else {
        return false;
    };
    let sticky = node.strategy == Strategy::Hrw;
    match &node.children {
        Children::Servers(c) => c
            .iter()
            .zip(&node.weights)
            .any(|(&c, &w)| w > 0 && j.ok(c, tier, health, sticky)),
        Children::Services(c) => c
            .iter()
            .zip(&node.weights)
            .any(|(&c, &w)| w > 0 && has_candidate(nodes, c, j, tier, health, depth + 1)),
    }
}

/// Keep only the eligible servers with the fewest connections per unit of
/// weight (`load_a / w_a < load_b / w_b` compared as `load_a * w_b <
/// load_b * w_a`, exact in integers).
fn least_loaded(node: &Node, eligible: &mut [bool], j: &Judge<'_>) {
    // Each load is read once: other workers change them meanwhile, and a
    // second read could leave no server equal to the minimum of the first.
    let cost: Vec<(u64, u64)> = (0..eligible.len())
        .map(|i| {
            let load = match &node.children {
                Children::Servers(c) if eligible[i] => j.load(c[i]),
                _ => 0,
            };
            (load, node.weights[i].unsigned_abs())
        })
        .collect();
    let mut best: Option<(u64, u64)> = None;
    for i in (0..eligible.len()).filter(|&i| eligible[i]) {
        let (l, w) = cost[i];
        match best {
            Some((bl, bw)) if u128::from(bl) * u128::from(w) <= u128::from(l) * u128::from(bw) => {}
            _ => best = Some((l, w)),
        }
    }
    let Some((bl, bw)) = best else { return };
    for (e, &(l, w)) in eligible.iter_mut().zip(&cost) {
        if *e {
            *e = u128::from(l) * u128::from(bw) == u128::from(bl) * u128::from(w);
        }
    }
}

/// murmur3's 64-bit finalizer: every input bit flips each output bit with
/// probability about 1/2.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// `hrw`: a server's identity is its address as written in the config.
fn server_seed(address: &str) -> u64 {
    // FNV-1a 64.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// `hrw`: the client's identity is its IP (canonical: an IPv4 client of a
/// `[::]` listener is its IPv4 address).
fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => mix64(u64::from(u32::from(a)) | (4 << 32)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            mix64(mix64((v >> 64) as u64 ^ (6 << 56)) ^ v as u64)
        }
    }
}

/// `hrw`: `weight / -ln(u)` with `u` uniform in (0, 1) from the pair's hash
/// (the weighted rendezvous score: a server of weight 2 wins twice as often
/// as one of weight 1).
fn hrw_score(seed: u64, client: u64, weight: i64) -> f64 {
    let h = mix64(seed ^ client);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

fn highest_score(node: &Node, eligible: &[bool], client: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in (0..eligible.len()).filter(|&i| eligible[i]) {
        let s = hrw_score(node.seeds[i], client, node.weights[i]);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// nginx `ngx_http_upstream_get_peer`: every eligible child gains its weight,
/// the one with the highest current value wins and loses the total. Over a
/// cycle each child is chosen `weight` times, spread out (5:1:1 gives
/// a a b a c a a). Nothing changes when no child is eligible.
fn smooth_pick(node: &mut Node, eligible: &[bool]) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, _) in eligible.iter().enumerate().filter(|(_, &ok)| ok) {
        node.current[i] += node.weights[i];
        total += node.weights[i];
        match best {
            Some(b) if node.current[b] >= node.current[i] => {}
            _ => best = Some(i),
        }
    }
    let b = best?;
    node.current[b] -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root service of every hand-built balancer here.
    const SVC: ServiceId = ServiceId::from_index(0);

    fn s(i: usize) -> ServerId {
        ServerId::from_index(i)
    }

    fn lb_node(weights: &[i64], first_id: usize) -> Node {
        Node {
            children: Children::Servers((first_id..first_id + weights.len()).map(s).collect()),
            weights: weights.to_vec(),
            current: vec![0; weights.len()],
            health_aware: true,
            failover: false,
            strategy: Strategy::Wrr,
            seeds: (0..weights.len())
                .map(|i| server_seed(&format!("s{i}")))
                .collect(),
        }
    }

    fn all_up(_: ServerId) -> bool {
        true
    }

    /// One load balancer over servers 0..n with these weights.
    fn one_lb(weights: &[i64]) -> Balancer {
        Balancer::from_parts(
            vec![lb_node(weights, 0)],
            ServerTable::from_at((0..weights.len()).map(|i| (0, i)).collect()),
        )
    }

    fn tree_90_10() -> Balancer {
        tree_90_10_health(true)
    }

    /// `health_aware`: the weighted root has a `healthCheck`.
    fn tree_90_10_health(health_aware: bool) -> Balancer {
        Balancer::from_parts(
            vec![
                Node {
                    children: Children::Services(vec![
                        ServiceId::from_index(1),
                        ServiceId::from_index(2),
                    ]),
                    weights: vec![90, 10],
                    current: vec![0, 0],
                    health_aware,
                    failover: false,
                    strategy: Strategy::Wrr,
                    seeds: Vec::new(),
                },
                lb_node(&[1], 0),
                lb_node(&[1], 1),
            ],
            ServerTable::from_at(vec![(1, 0), (2, 0)]),
        )
    }

    #[test]
    fn smooth_sequence_5_1_1_matches_nginx() {
        let mut b = one_lb(&[5, 1, 1]);
        let now = Instant::now();
        let seq: Vec<usize> = (0..14)
            .map(|_| b.pick(SVC, &[], &all_up, now).unwrap().index())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_tried_and_zero_weight() {
        let mut b = one_lb(&[1, 0, 1]);
        let now = Instant::now();
        assert_eq!(b.pick(SVC, &[s(0)], &all_up, now), Some(s(2)));
        assert_eq!(b.pick(SVC, &[s(0), s(2)], &all_up, now), None);
    }

    #[test]
    fn weighted_tree_splits_90_10() {
        let mut b = tree_90_10();
        let now = Instant::now();
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[b.pick(SVC, &[], &all_up, now).unwrap().index()] += 1;
        }
        assert_eq!(counts, [900, 100]);
        // A child whose only server was tried is skipped.
        assert_eq!(b.pick(SVC, &[s(0)], &all_up, now), Some(s(1)));
        assert_eq!(b.pick(SVC, &[s(0), s(1)], &all_up, now), None);
    }

    #[test]
    fn unhealthy_is_skipped_like_tried_and_keeps_the_others_order() {
        // 5:1:1 with server 1 down: the others keep nginx's smooth 5:1 order
        // (a a a b a a, the sequence of weights 5 and 1), exactly as if
        // server 1 had weight 0.
        let mut down = one_lb(&[5, 1, 1]);
        let mut zero = one_lb(&[5, 0, 1]);
        let now = Instant::now();
        let up = |id: ServerId| id != s(1);
        let a: Vec<usize> = (0..12)
            .map(|_| down.pick(SVC, &[], &up, now).unwrap().index())
            .collect();
        let b: Vec<usize> = (0..12)
            .map(|_| zero.pick(SVC, &[], &all_up, now).unwrap().index())
            .collect();
        assert_eq!(a, b);
        assert_eq!(a, vec![0, 0, 0, 2, 0, 0, 0, 0, 0, 2, 0, 0]);
        // Down and tried together leave nothing; down servers are never a
        // last resort.
        assert_eq!(down.pick(SVC, &[s(0), s(2)], &up, now), None);
        let none_up = |_: ServerId| false;
        assert_eq!(down.pick(SVC, &[], &none_up, now), None);
    }

    #[test]
    fn unhealthy_child_service_is_skipped_in_a_weighted_tree() {
        let mut b = tree_90_10();
        let now = Instant::now();
        let up = |id: ServerId| id != s(0);
        for _ in 0..20 {
            assert_eq!(b.pick(SVC, &[], &up, now), Some(s(1)));
        }
        // Back up: the split resumes.
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[b.pick(SVC, &[], &all_up, now).unwrap().index()] += 1;
        }
        assert_eq!(counts, [900, 100]);
    }

    #[test]
    fn without_a_weighted_health_check_a_down_child_is_still_chosen_by_weight() {
        // Traefik: no status propagation, so the 90:10 split goes on and the
        // connections that land on the down child find no server.
        let mut b = tree_90_10_health(false);
        let now = Instant::now();
        let up = |id: ServerId| id != s(0);
        let picks: Vec<Option<ServerId>> = (0..10).map(|_| b.pick(SVC, &[], &up, now)).collect();
        assert_eq!(picks.iter().filter(|p| p.is_none()).count(), 9);
        assert_eq!(picks.iter().filter(|p| **p == Some(s(1))).count(), 1);
        // Failover after dial failures still moves to the other child.
        assert_eq!(b.pick(SVC, &[s(0)], &all_up, now), Some(s(1)));
    }

    #[test]
    fn passive_ejection_after_three_failures_in_a_row_for_the_cooldown() {
        let mut b = one_lb(&[1, 1]);
        let t0 = Instant::now();
        // Failures interrupted by a success do not eject.
        assert!(!b.dial_result(s(0), false, t0));
        assert!(!b.dial_result(s(0), false, t0));
        assert!(!b.dial_result(s(0), true, t0));
        assert!(!b.dial_result(s(0), false, t0));
        assert!(!b.dial_result(s(0), false, t0));
        assert!(!b.ejected(s(0), t0));
        // The third in a row ejects (reported once).
        assert!(b.dial_result(s(0), false, t0));
        assert!(b.ejected(s(0), t0));
        assert!(!b.dial_result(s(0), false, t0));
        // During the cool-down only server 1 is picked.
        let during = t0 + EJECT_COOLDOWN - Duration::from_millis(1);
        for _ in 0..10 {
            assert_eq!(b.pick(SVC, &[], &all_up, during), Some(s(1)));
        }
        // After it, server 0 is back in the rotation, on probation: one more
        // failure ejects it again at once.
        let after = t0 + EJECT_COOLDOWN;
        assert!(!b.ejected(s(0), after));
        let seq: Vec<usize> = (0..4)
            .map(|_| b.pick(SVC, &[], &all_up, after).unwrap().index())
            .collect();
        assert_eq!(seq.iter().filter(|&&id| id == 0).count(), 2);
        assert!(b.dial_result(s(0), false, after));
        assert!(b.ejected(s(0), after));
        // A success clears everything.
        b.dial_result(s(0), true, after);
        assert!(!b.ejected(s(0), after));
    }

    #[test]
    fn ejected_servers_are_a_last_resort_but_down_ones_are_not() {
        let mut b = one_lb(&[1, 1]);
        let now = Instant::now();
        for id in [s(0), s(1)] {
            for _ in 0..EJECT_AFTER_FAILURES {
                b.dial_result(id, false, now);
            }
            assert!(b.ejected(id, now));
        }
        // Both ejected: both are still tried, each once.
        let first = b.pick(SVC, &[], &all_up, now).unwrap();
        let second = b.pick(SVC, &[first], &all_up, now).unwrap();
        assert_ne!(first, second);
        assert_eq!(b.pick(SVC, &[first, second], &all_up, now), None);
        // One ejected, the other actively down: nothing.
        let only_0 = |id: ServerId| id == s(0);
        assert_eq!(b.pick(SVC, &[s(0)], &only_0, now), None);
        // One ejected, one fresh: only the fresh one.
        let mut c = one_lb(&[1, 1]);
        for _ in 0..EJECT_AFTER_FAILURES {
            c.dial_result(s(0), false, now);
        }
        for _ in 0..5 {
            assert_eq!(c.pick(SVC, &[], &all_up, now), Some(s(1)));
        }
    }

    fn with_strategy(mut b: Balancer, strategy: Strategy) -> Balancer {
        for n in &mut b.nodes {
            if matches!(n.children, Children::Servers(_)) {
                n.strategy = strategy;
            }
        }
        b
    }

    fn loads(limits: &[Option<u32>]) -> Vec<Arc<ServerLoad>> {
        limits
            .iter()
            .map(|&m| Arc::new(ServerLoad::new(m)))
            .collect()
    }

    fn seen(loads: &[Arc<ServerLoad>], client: IpAddr) -> Seen<'_> {
        Seen { loads, client }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn least_conn_counts_every_workers_connections() {
        // Two workers (two balancers) over one shared set of loads.
        let l = loads(&[None, None, None]);
        let mut w1 = with_strategy(one_lb(&[1, 1, 1]), Strategy::LeastConn);
        let mut w2 = with_strategy(one_lb(&[1, 1, 1]), Strategy::LeastConn);
        let now = Instant::now();
        let mut slots = Vec::new();
        let take = |b: &mut Balancer, slots: &mut Vec<(usize, Slot)>| {
            let id = b
                .pick_seen(SVC, &[], &all_up, now, seen(&l, LOCAL))
                .unwrap()
                .index();
            slots.push((id, l[id].try_acquire().unwrap()));
            id
        };
        // Equal loads go round robin on each worker; what one worker holds
        // steers the other.
        assert_eq!(take(&mut w1, &mut slots), 0);
        assert_eq!(take(&mut w2, &mut slots), 1);
        assert_eq!(take(&mut w2, &mut slots), 2);
        assert_eq!(take(&mut w1, &mut slots), 1);
        assert_eq!(
            l.iter().map(|x| x.active()).collect::<Vec<_>>(),
            vec![1, 2, 1]
        );
        // Closing both connections on server 1 makes it the least loaded
        // for both workers.
        slots.retain(|(id, _)| *id != 1);
        assert_eq!(l[1].active(), 0);
        assert_eq!(take(&mut w2, &mut slots), 1);
        // Weights: 2:1 means server 0 takes twice as many.
        let l = loads(&[None, None]);
        let mut b = with_strategy(one_lb(&[2, 1]), Strategy::LeastConn);
        let mut held = Vec::new();
        for _ in 0..30 {
            let id = b
                .pick_seen(SVC, &[], &all_up, now, seen(&l, LOCAL))
                .unwrap();
            held.push(l[id.index()].try_acquire().unwrap());
        }
        assert_eq!((l[0].active(), l[1].active()), (20, 10));
    }

    #[test]
    fn max_conn_queue_is_fifo_and_a_released_slot_goes_to_the_head() {
        let l = loads(&[Some(2)]);
        let s = &l[0];
        let a = s.try_acquire().unwrap();
        let _b = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        let mut t1 = s.enqueue();
        let mut t2 = s.enqueue();
        let t3 = s.enqueue();
        assert_eq!((s.active(), s.queued()), (2, 3));
        assert!(t1.poll().is_none() && t2.poll().is_none());
        // A newcomer does not overtake the queue once a slot frees.
        drop(a);
        assert!(s.try_acquire().is_none());
        assert_eq!((s.active(), s.queued()), (2, 2));
        assert!(t2.poll().is_none());
        let c = t1.poll().unwrap();
        // A waiter that gives up leaves the queue; one granted and dropped
        // before it took its slot gives the slot on.
        drop(t3);
        assert_eq!((s.active(), s.queued()), (2, 1));
        drop(c);
        drop(t2);
        assert_eq!((s.active(), s.queued()), (1, 0));
        // A reload raising the limit lets waiters in at once.
        let mut t4 = s.enqueue();
        assert!(t4.poll().unwrap().0.active() >= 1);
        let _x = s.try_acquire().unwrap();
        let mut t5 = s.enqueue();
        assert!(t5.poll().is_none());
        s.set_max(Some(3));
        assert!(t5.poll().is_some());
    }

    #[test]
    fn full_servers_are_passed_over_while_another_has_room() {
        let l = loads(&[Some(1), Some(1)]);
        let mut b = one_lb(&[1, 1]);
        let now = Instant::now();
        let first = b
            .pick_seen(SVC, &[], &all_up, now, seen(&l, LOCAL))
            .unwrap()
            .index();
        let _s = l[first].try_acquire().unwrap();
        for _ in 0..4 {
            assert_eq!(
                b.pick_seen(SVC, &[], &all_up, now, seen(&l, LOCAL)),
                Some(s(1 - first))
            );
        }
        // Both full: still a pick (the connection waits in its queue).
        let _t = l[1 - first].try_acquire().unwrap();
        assert!(b
            .pick_seen(SVC, &[], &all_up, now, seen(&l, LOCAL))
            .is_some());
    }

    fn hrw_owner(b: &mut Balancer, client: IpAddr, up: &impl Fn(ServerId) -> bool) -> usize {
        b.pick_seen(SVC, &[], up, Instant::now(), seen(&[], client))
            .unwrap()
            .index()
    }

    #[test]
    fn hrw_is_stable_spreads_and_moves_only_the_clients_of_a_lost_server() {
        let mut b = with_strategy(one_lb(&[1, 1, 1, 1]), Strategy::Hrw);
        let clients: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let owners: Vec<usize> = clients
            .iter()
            .map(|&c| hrw_owner(&mut b, c, &all_up))
            .collect();
        // The same answer every time, and from another balancer (instance).
        let mut other = with_strategy(one_lb(&[1, 1, 1, 1]), Strategy::Hrw);
        for (&c, &o) in clients.iter().zip(&owners) {
            assert_eq!(hrw_owner(&mut b, c, &all_up), o);
            assert_eq!(hrw_owner(&mut other, c, &all_up), o);
        }
        let mut counts = [0usize; 4];
        for &o in &owners {
            counts[o] += 1;
        }
        // 500 expected each; sd about 19.
        assert!(
            counts.iter().all(|&n| (420..=580).contains(&n)),
            "{counts:?}"
        );
        // Server 2 down: only its clients move, spread over the others.
        let up = |id: ServerId| id != s(2);
        let mut moved = [0usize; 4];
        for (&c, &o) in clients.iter().zip(&owners) {
            let now_at = hrw_owner(&mut b, c, &up);
            if o == 2 {
                moved[now_at] += 1;
            } else {
                assert_eq!(now_at, o, "{c} moved from a healthy server");
            }
        }
        assert_eq!(moved[2], 0);
        assert!(
            moved.iter().enumerate().all(|(i, &n)| i == 2 || n > 100),
            "{moved:?}"
        );
        // Weights: 3:1 gives about 3/4 to server 0.
        let mut w = with_strategy(one_lb(&[3, 1]), Strategy::Hrw);
        let zero = clients
            .iter()
            .filter(|&&c| hrw_owner(&mut w, c, &all_up) == 0)
            .count();
        assert!((1400..=1600).contains(&zero), "{zero}");
    }

    #[test]
    fn matching_follows_service_name_and_address() {
        let dir = std::env::temp_dir().join(format!("sluicegate-balance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |name: &str, servers: &[&str]| {
            let mut text = String::from(
                "[entryPoints.main]\naddress = \"127.0.0.1:0\"\n[tcp.routers.r]\nrule = \"HostSNI(`*`)\"\nservice = \"a\"\n[tcp.services.a.loadBalancer]\n[[tcp.services.a.loadBalancer.servers]]\naddress = \"127.0.0.1:1\"\n",
            );
            text.push_str(&format!("[tcp.services.{name}.loadBalancer]\n"));
            for s in servers {
                text.push_str(&format!(
                    "[[tcp.services.{name}.loadBalancer.servers]]\naddress = \"{s}\"\n"
                ));
            }
            let p = dir.join(format!("{name}-{}.toml", servers.len()));
            std::fs::write(&p, text).unwrap();
            crate::config::load(&p).unwrap()
        };
        let old = load("b", &["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:2"]);
        let new = load("b", &["127.0.0.1:3", "127.0.0.1:2", "127.0.0.1:4"]);
        assert_eq!(
            matching(&new, &old),
            vec![Some(s(0)), Some(s(2)), Some(s(1)), None]
        );
        // A renamed service is another service.
        let renamed = load("c", &["127.0.0.1:2"]);
        assert_eq!(matching(&renamed, &old), vec![Some(s(0)), None]);
        // Loads carried over keep their counts and take the new limits.
        let old_loads = Loads::new(&old);
        let held = old_loads.get(s(2)).unwrap().try_acquire().unwrap();
        let mut new_loads = Loads::new(&new);
        new_loads.inherit(&new, &old_loads, &old);
        // Old id 2 (127.0.0.1:3) is new id 1.
        assert_eq!(new_loads.get(s(1)).unwrap().active(), 1);
        assert_eq!(new_loads.get(s(3)).unwrap().active(), 0);
        drop(held);
        assert_eq!(new_loads.get(s(1)).unwrap().active(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passive_ejections_follow_their_server_into_the_next_snapshot() {
        let now = Instant::now();
        let mut old = one_lb(&[1, 1]);
        for _ in 0..EJECT_AFTER_FAILURES {
            old.dial_result(s(1), false, now);
        }
        // The next snapshot lists the servers the other way round, plus one.
        let mut new = one_lb(&[1, 1, 1]);
        new.inherit(&[Some(s(1)), Some(s(0)), None], &old);
        assert!(new.ejected(s(0), now));
        assert!(!new.ejected(s(1), now) && !new.ejected(s(2), now));
    }
}
