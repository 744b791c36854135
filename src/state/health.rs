//! The health table of a snapshot: one verdict per server, written by the
//! health checkers (`crate::health`, on their own threads) and read by the
//! workers when they pick a server, by `/metrics`, `/api` and readiness.
//!
//! Owns: `Verdict`, `HealthState` (indexed by the snapshot's `ServerId`
//! numbering, `balance::ServerTable`) and how verdicts carry over a reload. May
//! depend on `model` and `balance` (for `ServerId`); never on the checkers.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::balance::{ServerId, ServerTable};
use crate::model::{Config, HealthCheck, LoadBalancer, Role, ServiceId, ServiceKind};

/// A server's last verdict, as stored (one byte per server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The probe failed (`fall` times in a row).
    Down,
    /// Healthy; the check does not tell a role (plain TCP, http), or a role
    /// check has not answered yet.
    Up,
    /// Healthy and primary (PostgreSQL not in recovery, Redis `master`).
    Primary,
    /// Healthy and replica (in recovery, Redis `slave`).
    Replica,
}

/// Every verdict, in the order /metrics lists them.
pub const VERDICTS: [Verdict; 4] = [
    Verdict::Down,
    Verdict::Up,
    Verdict::Primary,
    Verdict::Replica,
];

impl Verdict {
    fn from_u8(v: u8) -> Verdict {
        match v {
            0 => Verdict::Down,
            2 => Verdict::Primary,
            3 => Verdict::Replica,
            _ => Verdict::Up,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Verdict::Down => 0,
            Verdict::Up => 1,
            Verdict::Primary => 2,
            Verdict::Replica => 3,
        }
    }

    /// `down`, `up`, `primary`, `replica` (logs, /metrics, /api).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Down => "down",
            Verdict::Up => "up",
            Verdict::Primary => "primary",
            Verdict::Replica => "replica",
        }
    }

    /// Whether a server with this verdict may take connections for a
    /// service whose check wants `role`. A role check that has not answered
    /// yet (`Up`) gives no server of a `primary` or `replica` service.
    pub fn pickable(self, role: Role) -> bool {
        match (self, role) {
            (Verdict::Down, _) => false,
            (_, Role::Any) => true,
            (v, Role::Primary) => v == Verdict::Primary,
            (v, Role::Replica) => v == Verdict::Replica,
        }
    }
}

/// Verdict per server of one snapshot, indexed by `ServerId` (the numbering
/// of `balance::ServerTable`). Written by checker threads, read by workers.
#[derive(Debug)]
pub struct HealthState {
    /// The snapshot's server numbering (the one the balancers pick by).
    servers: ServerTable,
    /// `Verdict` as a byte, per ServerId.
    verdict: Vec<AtomicU8>,
    /// The role the server's service wants, per ServerId.
    want: Vec<Role>,
    /// Bumped whenever a server's pickability changes: workers that close
    /// sessions of servers gone (`onServerDown = "close"`) look again when
    /// it moves.
    changes: AtomicU64,
    /// Health-checked servers whose first probe has not ended yet (readiness
    /// waits for it: every server starts up, a dead one would get traffic).
    unprobed: AtomicUsize,
}

impl HealthState {
    /// Every server healthy (Traefik's starting point); a server of a
    /// service that wants a role is `Up` (role unknown, not pickable) until
    /// its first probe.
    pub fn new(cfg: &Config, servers: &ServerTable) -> HealthState {
        let servers = servers.clone();
        let want: Vec<Role> = servers
            .iter()
            .map(|(_, si, _)| match checked(&cfg.service(si).kind) {
                Some((_, hc)) => hc.role,
                None => Role::Any,
            })
            .collect();
        let verdict = (0..servers.len())
            .map(|_| AtomicU8::new(Verdict::Up.to_u8()))
            .collect();
        let unprobed = cfg
            .services
            .iter()
            .filter_map(|s| checked(&s.kind))
            .map(|(lb, _)| lb.servers.len())
            .sum();
        HealthState {
            servers,
            verdict,
            want,
            changes: AtomicU64::new(0),
            unprobed: AtomicUsize::new(unprobed),
        }
    }

    /// The ServerId of server `server` of load-balancer service `service`.
    pub fn id(&self, service: ServiceId, server: usize) -> ServerId {
        self.servers.id(service, server)
    }

    /// Whether active health checks let `id` be picked: healthy, and of the
    /// role its service wants. A relaxed load: a worker that sees a flip one
    /// connection late does no harm (a dial to a dead server fails over).
    pub fn is_up(&self, id: ServerId) -> bool {
        self.verdict(id).pickable(self.want[id.index()])
    }

    /// The last verdict of `id`.
    pub fn verdict(&self, id: ServerId) -> Verdict {
        Verdict::from_u8(self.verdict[id.index()].load(Ordering::Relaxed))
    }

    /// Set a verdict (the checkers do, and a reload carrying verdicts over);
    /// returns the previous one.
    pub fn set(&self, id: ServerId, v: Verdict) -> Verdict {
        let was = Verdict::from_u8(self.verdict[id.index()].swap(v.to_u8(), Ordering::Relaxed));
        if was.pickable(self.want[id.index()]) != v.pickable(self.want[id.index()]) {
            self.changes.fetch_add(1, Ordering::Release);
        }
        was
    }

    /// How many health-checked servers have no verdict of their own yet.
    pub fn first_verdicts_pending(&self) -> usize {
        self.unprobed.load(Ordering::Acquire)
    }

    /// How many times a server's pickability changed (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// `(service, server index, pickable, verdict)` for every server.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceId, usize, bool, Verdict)> + '_ {
        self.servers.iter().map(|(id, si, i)| {
            let v = self.verdict(id);
            (si, i, v.pickable(self.want[id.index()]), v)
        })
    }

    /// A health-checked server's first probe ended (readiness counts them).
    pub fn first_verdict_done(&self) {
        self.unprobed.fetch_sub(1, Ordering::AcqRel);
    }

    /// Copy the verdicts of `old` (the table of `old_cfg`) into this table
    /// (of `cfg`) for every server that is still health-checked under the
    /// same service name and address. Servers whose service lost its health
    /// check stay up (nothing would bring them back).
    pub fn inherit(&self, cfg: &Config, old: &HealthState, old_cfg: &Config) {
        for (si, svc) in cfg.enumerate_services() {
            let Some((lb, _)) = checked(&svc.kind) else {
                continue;
            };
            let Some(osi) = old_cfg.service_id(&svc.name) else {
                continue;
            };
            let ServiceKind::LoadBalancer(old_lb) = &old_cfg.service(osi).kind else {
                continue;
            };
            for (i, server) in lb.servers.iter().enumerate() {
                if let Some(oi) = old_lb
                    .servers
                    .iter()
                    .position(|o| o.address_text == server.address_text)
                {
                    let v = old.verdict(old.id(osi, oi));
                    self.set(self.id(si, i), v);
                }
            }
        }
    }
}

/// The load balancer and its health check, when the service has one.
pub fn checked(kind: &ServiceKind) -> Option<(&LoadBalancer, &HealthCheck)> {
    match kind {
        ServiceKind::LoadBalancer(lb) => lb.health_check.as_deref().map(|hc| (lb, hc)),
        ServiceKind::Weighted(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_pickable_only_in_the_wanted_role() {
        use Verdict::*;
        let table = [
            (Down, [false, false, false]),
            (Up, [true, false, false]),
            (Primary, [true, true, false]),
            (Replica, [true, false, true]),
        ];
        for (v, want) in table {
            let got = [Role::Any, Role::Primary, Role::Replica].map(|r| v.pickable(r));
            assert_eq!(got, want, "{v:?}");
            assert_eq!(Verdict::from_u8(v.to_u8()), v);
        }
    }
}
