//! Per-worker counters, summed into Prometheus text when `/metrics` is
//! scraped.
//!
//! Role: each worker registers one `WorkerMetrics` at start (allocated on its
//! own thread, so on its own allocator pages) and keeps a thread-local handle
//! to it; the hot path only ever touches its own worker's counters. Nothing
//! here is shared between workers:
//! - per-entrypoint counts (accepted, ended, accept errors) are atomics with a
//!   single writer, bumped with a relaxed load + store (no locked
//!   instruction); the scraper reads them relaxed;
//! - per-name counts (outcomes per router, bytes per service, dial failures
//!   per server) are keyed by *names*, so they stay monotonic across reloads
//!   that renumber routers and services; a router's outcomes are a fixed
//!   array indexed by the typed `Outcome` (no outcome string is hashed or
//!   compared when a connection ends). They sit behind this worker's own mutex,
//!   taken once when a connection ends and once per failed dial; only a scrape
//!   ever contends for it, for the time it takes to copy a few maps.
//!
//! Must never: allocate per byte, take another worker's lock, or block a
//! worker on the scraper for longer than a map copy.
//!
//! Owns: the process's counter registry (`registry()`), the per-worker hooks
//! and the Prometheus text. May depend on `state` (what `/metrics` reports
//! about a snapshot), `model`, `outcome` and `sys`; never on `worker`,
//! `session`, `health` or `admin`.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::{Config, EntryPointId, RouterId, ServiceId};
use crate::outcome::Outcome;
use crate::state::Snapshot;

/// Label for "no router matched" / "no service chosen" (as in the access log).
const NONE: &str = "-";

/// Every worker's counters.
#[derive(Default)]
pub struct Registry {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
}

/// The process's registry: the one every worker registers with and
/// `/metrics` and the service manager's status line read. Process-wide like
/// the per-thread handle each hook uses (a process serves one engine).
static REGISTRY: Registry = Registry {
    workers: Mutex::new(Vec::new()),
};

/// The process's registry (see `REGISTRY`).
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// One worker's counters.
struct WorkerMetrics {
    /// Per entrypoint index (entrypoints never change on reload).
    accepted: Vec<AtomicU64>,
    ended: Vec<AtomicU64>,
    accept_errors: Vec<AtomicU64>,
    /// Failed dials by local cause, indexed like `sys::LOCAL_RESOURCE_ERRORS`.
    local_errors: [AtomicU64; LOCAL_KINDS],
    tally: Mutex<Tally>,
    /// Connections the completion engine handed over to the readiness path.
    handovers: AtomicU64,
}

const LOCAL_KINDS: usize = crate::sys::LOCAL_RESOURCE_ERRORS.len();

/// Connections per outcome, indexed by `Outcome::index`.
type PerOutcome = [u64; Outcome::COUNT];

/// Per-name counts of one worker.
#[derive(Default, Clone)]
struct Tally {
    /// Entrypoint index → router name → connections per outcome (indexed by
    /// `Outcome::index`).
    outcomes: Vec<HashMap<String, PerOutcome>>,
    /// Service name → [up (client → server), down (server → client)] bytes.
    bytes: HashMap<String, [u64; 2]>,
    /// Service name → server address → failed dials.
    dial_failures: HashMap<String, HashMap<String, u64>>,
    /// Service name → [served after a hold, hold timed out] (switchoverHold).
    holds: HashMap<String, [u64; 2]>,
    /// Service name → sessions closed by `onServerDown = "close"`.
    closed: HashMap<String, u64>,
}

thread_local! {
    /// This worker's counters; unset on threads that are not workers (then
    /// every hook is a no-op).
    static LOCAL: OnceCell<Arc<WorkerMetrics>> = const { OnceCell::new() };
}

/// Add `n` to a counter this thread alone writes: a relaxed load and store
/// instead of a locked read-modify-write.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The entry for `key`, inserted (allocating the key) only the first time.
fn slot<'m, V: Default>(m: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    slot_with(m, key, V::default)
}

/// `slot` with the first value made by `new`.
fn slot_with<'m, V>(
    m: &'m mut HashMap<String, V>,
    key: &str,
    new: impl FnOnce() -> V,
) -> &'m mut V {
    if !m.contains_key(key) {
        m.insert(key.to_owned(), new());
    }
    m.get_mut(key).expect("just inserted")
}

fn with_local(f: impl FnOnce(&WorkerMetrics)) {
    LOCAL.with(|l| {
        if let Some(m) = l.get() {
            f(m)
        }
    })
}

impl Registry {
    /// Register the calling thread as a worker serving `entrypoints`
    /// entrypoints. Call once, on the worker thread, before it accepts.
    pub fn register_worker(&self, entrypoints: usize) {
        let counters = || (0..entrypoints).map(|_| AtomicU64::new(0)).collect();
        let m = Arc::new(WorkerMetrics {
            accepted: counters(),
            ended: counters(),
            accept_errors: counters(),
            local_errors: Default::default(),
            tally: Mutex::new(Tally::default()),
            handovers: AtomicU64::new(0),
        });
        if LOCAL.with(|l| l.set(m.clone())).is_ok() {
            self.workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(m);
        }
    }

    /// `(accepted, open)` connections over every worker and entrypoint (the
    /// service manager's status line). Read like `render`: `ended` first.
    pub fn connection_totals(&self) -> (u64, u64) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let (mut accepted, mut open) = (0u64, 0u64);
        for w in workers.iter() {
            for (acc, ended) in w.accepted.iter().zip(&w.ended) {
                let ended = ended.load(Ordering::Relaxed);
                let acc = acc.load(Ordering::Relaxed);
                accepted += acc;
                open += acc.saturating_sub(ended);
            }
        }
        (accepted, open)
    }

    /// Prometheus text exposition (format 0.0.4) of the sum over workers,
    /// with names from `snap` (the current snapshot).
    pub fn render(&self, snap: &Snapshot) -> String {
        let workers: Vec<Arc<WorkerMetrics>> = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let eps = &snap.config.entrypoints;
        let (mut accepted, mut open, mut errors) = (
            vec![0u64; eps.len()],
            vec![0u64; eps.len()],
            vec![0u64; eps.len()],
        );
        let mut outcomes: BTreeMap<(usize, String), PerOutcome> = BTreeMap::new();
        let mut bytes: BTreeMap<String, [u64; 2]> = BTreeMap::new();
        let mut dials: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut holds: BTreeMap<String, [u64; 2]> = BTreeMap::new();
        let mut closed: BTreeMap<String, u64> = BTreeMap::new();
        let mut local = [0u64; LOCAL_KINDS];
        for w in &workers {
            for (sum, c) in local.iter_mut().zip(&w.local_errors) {
                *sum += c.load(Ordering::Relaxed);
            }
            for ep in 0..eps.len() {
                // `ended` first: a connection is counted accepted before it
                // can end, so open never goes below zero.
                let ended = w.ended.get(ep).map_or(0, |c| c.load(Ordering::Relaxed));
                let acc = w.accepted.get(ep).map_or(0, |c| c.load(Ordering::Relaxed));
                accepted[ep] += acc;
                open[ep] += acc.saturating_sub(ended);
                errors[ep] += w
                    .accept_errors
                    .get(ep)
                    .map_or(0, |c| c.load(Ordering::Relaxed));
            }
            let t = w.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (ep, routers) in t.outcomes.into_iter().enumerate() {
                for (router, by_outcome) in routers {
                    let sum = outcomes.entry((ep, router)).or_insert([0; Outcome::COUNT]);
                    for (s, n) in sum.iter_mut().zip(by_outcome) {
                        *s += n;
                    }
                }
            }
            for (svc, [up, down]) in t.bytes {
                let e = bytes.entry(svc).or_default();
                e[0] += up;
                e[1] += down;
            }
            for (svc, [served, timed_out]) in t.holds {
                let e = holds.entry(svc).or_default();
                e[0] += served;
                e[1] += timed_out;
            }
            for (svc, n) in t.closed {
                *closed.entry(svc).or_default() += n;
            }
            for (svc, servers) in t.dial_failures {
                for (server, n) in servers {
                    *dials.entry((svc.clone(), server)).or_default() += n;
                }
            }
        }

        let mut out = String::with_capacity(4096);
        let ep_name = |ep: usize| eps.get(ep).map_or(NONE, |e| e.name.as_str());
        header(
            &mut out,
            "sluicegate_entrypoint_connections_accepted_total",
            "counter",
            "Connections accepted, per entrypoint.",
        );
        for (ep, n) in accepted.iter().enumerate() {
            sample(
                &mut out,
                "sluicegate_entrypoint_connections_accepted_total",
                &[("entrypoint", ep_name(ep))],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_entrypoint_connections_open",
            "gauge",
            "Connections open now, per entrypoint.",
        );
        for (ep, n) in open.iter().enumerate() {
            sample(
                &mut out,
                "sluicegate_entrypoint_connections_open",
                &[("entrypoint", ep_name(ep))],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_entrypoint_accept_errors_total",
            "counter",
            "Failed accepts (EMFILE and the like; accepting pauses with backoff), per entrypoint.",
        );
        for (ep, n) in errors.iter().enumerate() {
            sample(
                &mut out,
                "sluicegate_entrypoint_accept_errors_total",
                &[("entrypoint", ep_name(ep))],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_connections_total",
            "counter",
            "Connections ended, per entrypoint, router (\"-\": none matched) and outcome (the access-log outcome).",
        );
        // Outcomes in name order, and only those that happened: the samples
        // come out as they did when the counts were keyed by name.
        let mut by_name = Outcome::ALL;
        by_name.sort_unstable_by_key(|o| o.as_str());
        for ((ep, router), counts) in &outcomes {
            for o in by_name {
                let n = counts.get(o.index()).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let labels = [
                    ("entrypoint", ep_name(*ep)),
                    ("router", router.as_str()),
                    ("outcome", o.as_str()),
                ];
                sample(&mut out, "sluicegate_connections_total", &labels, n);
            }
        }
        header(
            &mut out,
            "sluicegate_service_bytes_total",
            "counter",
            "Bytes forwarded per service of the router: direction up = client to server, down = server to client.",
        );
        for (svc, [up, down]) in &bytes {
            sample(
                &mut out,
                "sluicegate_service_bytes_total",
                &[("service", svc), ("direction", "up")],
                *up,
            );
            sample(
                &mut out,
                "sluicegate_service_bytes_total",
                &[("service", svc), ("direction", "down")],
                *down,
            );
        }
        header(
            &mut out,
            "sluicegate_server_dial_failures_total",
            "counter",
            "Failed dials (refused, unreachable, timeout), per load-balancer service and server; local resource errors are not counted here.",
        );
        for ((svc, server), n) in &dials {
            sample(
                &mut out,
                "sluicegate_server_dial_failures_total",
                &[("service", svc), ("server", server)],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_local_resource_errors_total",
            "counter",
            "Dials that failed for lack of a local resource (kind: emfile, enfile, enobufs, enomem, eaddrnotavail); never counted against the server.",
        );
        for (&(_, kind), n) in crate::sys::LOCAL_RESOURCE_ERRORS.iter().zip(&local) {
            sample(
                &mut out,
                "sluicegate_local_resource_errors_total",
                &[("kind", kind)],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_service_hold_total",
            "counter",
            "Connections that waited for a pickable server (switchoverHold), per service of the router: outcome served (one appeared in time) or timeout (refused at the end of the hold).",
        );
        for (svc, [served, timed_out]) in &holds {
            for (outcome, n) in [("served", served), ("timeout", timed_out)] {
                sample(
                    &mut out,
                    "sluicegate_service_hold_total",
                    &[("service", svc), ("outcome", outcome)],
                    *n,
                );
            }
        }
        header(
            &mut out,
            "sluicegate_server_down_sessions_closed_total",
            "counter",
            "Open sessions reset because their server went down, lost its role or was removed (onServerDown = \"close\"), per load-balancer service.",
        );
        for (svc, n) in &closed {
            sample(
                &mut out,
                "sluicegate_server_down_sessions_closed_total",
                &[("service", svc)],
                *n,
            );
        }
        header(
            &mut out,
            "sluicegate_server_up",
            "gauge",
            "Whether a server takes connections: 1 when its health-check verdict fits the role its service wants, 0 when down or healthy in another role (always 1 without a healthCheck).",
        );
        let cfg = &snap.config;
        // Every server of the snapshot, with its service, in id order.
        let servers = || {
            snap.servers
                .ids()
                .filter_map(|id| snap.servers.get(cfg, id))
        };
        for s in servers() {
            let labels = [
                ("service", s.service.name.as_str()),
                ("server", s.server.address_text.as_str()),
            ];
            let up = snap.health.is_up(s.id);
            sample(&mut out, "sluicegate_server_up", &labels, u64::from(up));
        }
        header(
            &mut out,
            "sluicegate_server_verdict",
            "gauge",
            "Last health-check verdict per checked server, one sample per state (1 for the current one): down, up (healthy, role not known), primary, replica. A replica of a service that wants a primary is healthy here and 0 in sluicegate_server_up.",
        );
        for s in servers().filter(|s| s.lb.health_check.is_some()) {
            let verdict = snap.health.verdict(s.id);
            for v in crate::state::health::VERDICTS {
                let labels = [
                    ("service", s.service.name.as_str()),
                    ("server", s.server.address_text.as_str()),
                    ("verdict", v.as_str()),
                ];
                sample(
                    &mut out,
                    "sluicegate_server_verdict",
                    &labels,
                    u64::from(v == verdict),
                );
            }
        }
        if !cfg.kv_revisions.is_empty() {
            header(
                &mut out,
                "sluicegate_kv_applied_revision",
                "gauge",
                "The KV read the running configuration was built from, per provider: etcd's store revision, a content hash for Redis. Instances of a fleet showing different values have not applied the same configuration.",
            );
            for (provider, rev) in &cfg.kv_revisions {
                sample(
                    &mut out,
                    "sluicegate_kv_applied_revision",
                    &[("provider", provider)],
                    *rev,
                );
            }
        }
        server_loads(&mut out, snap);
        render_handovers(&mut out, &workers);
        crate::acme::render_metrics(&mut out);
        out
    }
}

/// Open and queued connections per server, across workers (balance.rs).
fn server_loads(out: &mut String, snap: &Snapshot) {
    let cfg = &snap.config;
    let families = [
        (
            "sluicegate_server_connections",
            "Connections holding a slot on a server (dialing or open), across workers; what leastConn and maxConn count.",
        ),
        (
            "sluicegate_server_queued",
            "Connections waiting in a server's queue for a slot under its maxConn.",
        ),
    ];
    for (k, (name, help)) in families.iter().enumerate() {
        header(out, name, "gauge", help);
        for (id, _, _) in snap.servers.iter() {
            let (Some(s), Some(load)) = (snap.servers.get(cfg, id), snap.loads.get(id)) else {
                continue;
            };
            let labels = [
                ("service", s.service.name.as_str()),
                ("server", s.server.address_text.as_str()),
            ];
            let v = if k == 0 { load.active() } else { load.queued() };
            sample(out, name, &labels, u64::from(v));
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            // Label values escape backslash, double quote and newline.
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A connection was accepted on entrypoint `ep` (and will end in exactly one
/// `connection_ended`).
pub fn accepted(ep: EntryPointId) {
    with_local(|m| {
        if let Some(c) = m.accepted.get(ep.index()) {
            bump(c, 1)
        }
    })
}

/// An accept on entrypoint `ep` failed.
pub fn accept_error(ep: EntryPointId) {
    with_local(|m| {
        if let Some(c) = m.accept_errors.get(ep.index()) {
            bump(c, 1)
        }
    })
}

/// A connection ended with `outcome` after moving `up`/`down` bytes; called
/// once per accepted connection, from the access-log hook.
pub fn connection_ended(
    cfg: &Config,
    ep: EntryPointId,
    router: Option<RouterId>,
    service: Option<ServiceId>,
    outcome: Outcome,
    up: u64,
    down: u64,
) {
    let ep = ep.index();
    with_local(|m| {
        if let Some(c) = m.ended.get(ep) {
            bump(c, 1)
        }
        let router = router.map_or(NONE, |r| cfg.router(r).name.as_str());
        let mut t = m.tally.lock().unwrap_or_else(|e| e.into_inner());
        if t.outcomes.len() <= ep {
            t.outcomes.resize_with(ep + 1, HashMap::new);
        }
        let counts = slot_with(&mut t.outcomes[ep], router, || [0; Outcome::COUNT]);
        if let Some(n) = counts.get_mut(outcome.index()) {
            *n += 1;
        }
        if let Some(s) = service {
            let b = slot(&mut t.bytes, &cfg.service(s).name);
            b[0] += up;
            b[1] += down;
        }
    })
}

/// A dial failed for lack of a local resource: `kind` indexes
/// `sys::LOCAL_RESOURCE_ERRORS`.
pub fn local_resource_error(kind: usize) {
    with_local(|m| {
        if let Some(c) = m.local_errors.get(kind) {
            bump(c, 1)
        }
    })
}

/// A dial to `server` of load-balancer service `service` failed.
/// A connection for the router's `service` waited for a pickable server
/// (switchoverHold) and was `served` or timed out.
pub fn held(service: &str, served: bool) {
    with_local(|m| {
        let mut t = m.tally.lock().unwrap_or_else(|e| e.into_inner());
        slot(&mut t.holds, service)[usize::from(!served)] += 1;
    })
}

/// `n` sessions of load-balancer `service` reset by onServerDown = "close".
pub fn server_down_closed(service: &str, n: u64) {
    with_local(|m| {
        let mut t = m.tally.lock().unwrap_or_else(|e| e.into_inner());
        *slot(&mut t.closed, service) += n;
    })
}

pub fn dial_failed(service: &str, server: &str) {
    with_local(|m| {
        let mut t = m.tally.lock().unwrap_or_else(|e| e.into_inner());
        *slot(slot(&mut t.dial_failures, service), server) += 1;
    })
}

/// The completion engine handed a bulk connection over to the readiness
/// path (`forwarding = "auto"` on io_uring).
pub fn completion_handover() {
    with_local(|m| bump(&m.handovers, 1))
}

/// The handover counter's lines (summed over workers).
fn render_handovers(out: &mut String, workers: &[Arc<WorkerMetrics>]) {
    let n: u64 = workers
        .iter()
        .map(|w| w.handovers.load(Ordering::Relaxed))
        .sum();
    header(
        out,
        "sluicegate_completion_handovers_total",
        "counter",
        "Connections the io_uring completion engine handed over to readiness forwarding (splice) when they turned into bulk flows.",
    );
    sample(out, "sluicegate_completion_handovers_total", &[], n);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: EntryPointId = EntryPointId::from_index(0);

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        sample(&mut s, "m", &[("a", "x\"y\\z\nw"), ("b", "plain")], 7);
        assert_eq!(s, "m{a=\"x\\\"y\\\\z\\nw\",b=\"plain\"} 7\n");
    }

    #[test]
    fn hooks_are_no_ops_off_worker_threads() {
        // No worker registered on this thread: nothing to count, no panic.
        accepted(EP);
        accept_error(EntryPointId::from_index(3));
        dial_failed("s", "a");
        local_resource_error(0);
        local_resource_error(99);
    }

    /// The configuration in `text`, loaded through a file (`tag` names the
    /// temporary directory, so that tests running at once do not share it).
    fn load(tag: &str, text: &str) -> Config {
        let dir =
            std::env::temp_dir().join(format!("sluicegate-metrics-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = crate::config::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    #[test]
    fn workers_are_summed_by_name() {
        let reg = Arc::new(Registry::default());
        let cfg_text = r#"
[entryPoints.main]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "127.0.0.1:9"
"#;
        let cfg = Arc::new(load("sum", cfg_text));
        let mut handles = Vec::new();
        for w in 0..2u64 {
            let (reg, cfg) = (reg.clone(), cfg.clone());
            handles.push(std::thread::spawn(move || {
                reg.register_worker(1);
                for _ in 0..=w {
                    accepted(EP);
                    let (r, s) = (RouterId::from_index(0), ServiceId::from_index(0));
                    connection_ended(&cfg, EP, Some(r), Some(s), Outcome::Closed, 5, 7);
                }
                accepted(EP);
                connection_ended(&cfg, EP, None, None, Outcome::NoRoute, 0, 0);
                accepted(EP);
                dial_failed("s", "127.0.0.1:9");
                local_resource_error(0);
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        let snap = Snapshot::new((*cfg).clone()).unwrap();
        let text = reg.render(&snap);
        for line in [
            "sluicegate_entrypoint_connections_accepted_total{entrypoint=\"main\"} 7",
            "sluicegate_entrypoint_connections_open{entrypoint=\"main\"} 2",
            "sluicegate_connections_total{entrypoint=\"main\",router=\"r\",outcome=\"closed\"} 3",
            "sluicegate_connections_total{entrypoint=\"main\",router=\"-\",outcome=\"no_route\"} 2",
            "sluicegate_service_bytes_total{service=\"s\",direction=\"up\"} 15",
            "sluicegate_service_bytes_total{service=\"s\",direction=\"down\"} 21",
            "sluicegate_server_dial_failures_total{service=\"s\",server=\"127.0.0.1:9\"} 2",
            "sluicegate_server_up{service=\"s\",server=\"127.0.0.1:9\"} 1",
            "sluicegate_server_connections{service=\"s\",server=\"127.0.0.1:9\"} 0",
            "sluicegate_server_queued{service=\"s\",server=\"127.0.0.1:9\"} 0",
            "sluicegate_local_resource_errors_total{kind=\"emfile\"} 2",
            "sluicegate_local_resource_errors_total{kind=\"eaddrnotavail\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        // Every sample has HELP and TYPE lines.
        assert_eq!(text.matches("# HELP ").count(), 14);
        assert_eq!(text.matches("# TYPE ").count(), 14);
    }

    /// The outcome label values before outcomes were typed: dashboards and
    /// tests match them, so the set must not change.
    const LABELS: [&str; 35] = [
        "closed",
        "client_reset",
        "backend_reset",
        "termination_delay",
        "idle_timeout",
        "drain_cut",
        "server_down",
        "no_route",
        "not_tls",
        "denied",
        "too_many_connections",
        "dial_failed",
        "local_resource_exhausted",
        "no_server",
        "queue_timeout",
        "read_timeout",
        "client_closed",
        "hello_too_large",
        "proxy_protocol_invalid",
        "pg_bytes_after_request",
        "backend_refused_tls",
        "backend_write_failed",
        "tls_handshake_failed",
        "tls_no_certificate",
        "tls_client_certificate_refused",
        "tls_timeout",
        "tls_client_closed",
        "tls_not_configured",
        "pg_backend_tls_unsupported",
        "pg_cancel_forwarded",
        "pg_cancel_unknown_key",
        "pg_cancel_failed",
        "pg_bad_startup",
        "acme_http01",
        "acme_tls_alpn",
    ];

    #[test]
    fn every_outcome_is_counted_under_its_own_label_in_name_order() {
        // The typed set is exactly the set of labels, one outcome each.
        let names: std::collections::BTreeSet<&str> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::COUNT, "two outcomes share a label");
        let expected: std::collections::BTreeSet<&str> = LABELS.into_iter().collect();
        assert_eq!(names, expected);

        // Every outcome counted a different number of times, spread over two
        // entrypoints and three routers (one of them "none matched").
        let cfg_text = r#"
[entryPoints.main]
address = "127.0.0.1:0"
[entryPoints.b]
address = "127.0.0.1:0"
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.routers.a]
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
[[tcp.services.s.loadBalancer.servers]]
address = "127.0.0.1:9"
"#;
        let cfg = Arc::new(load("outcomes", cfg_text));
        let reg = Arc::new(Registry::default());
        let place = |i: usize| (i % 2, [None, Some(0), Some(1)][i % 3]);
        {
            let (reg, cfg) = (reg.clone(), cfg.clone());
            std::thread::spawn(move || {
                reg.register_worker(2);
                for (i, o) in Outcome::ALL.into_iter().enumerate() {
                    let (ep, router) = place(i);
                    for _ in 0..=i {
                        let ep = EntryPointId::from_index(ep);
                        let router = router.map(RouterId::from_index);
                        accepted(ep);
                        let s = Some(ServiceId::from_index(0));
                        connection_ended(&cfg, ep, router, s, o, 1, 2);
                    }
                }
            })
            .join()
            .unwrap();
        }
        let snap = Snapshot::new((*cfg).clone()).unwrap();
        let text = reg.render(&snap);

        // What the samples were when counts were keyed by label strings:
        // sorted by entrypoint index, router name, then label.
        let mut want: BTreeMap<(usize, &str, &str), usize> = BTreeMap::new();
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            let (ep, router) = place(i);
            let router = router.map_or(NONE, |r| cfg.router(RouterId::from_index(r)).name.as_str());
            want.insert((ep, router, o.as_str()), i + 1);
        }
        let want: Vec<String> = want
            .into_iter()
            .map(|((ep, router, label), n)| {
                let ep = &cfg.entrypoints[ep].name;
                format!(
                    "sluicegate_connections_total{{entrypoint=\"{ep}\",router=\"{router}\",outcome=\"{label}\"}} {n}"
                )
            })
            .collect();
        let got: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluicegate_connections_total{"))
            .collect();
        assert_eq!(got, want, "in:\n{text}");
        // An outcome that never happened has no sample.
        assert!(!text.contains("router=\"r\",outcome=\"closed\""));
        assert_eq!(text.matches("# HELP ").count(), 14);
        assert_eq!(text.matches("# TYPE ").count(), 14);
    }
}
