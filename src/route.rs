//! The compiled route table: for each entrypoint, its routers in match order.
//! Built once per snapshot (pure, off the hot path), shared read-only by all
//! workers.
//!
//! Matching follows Traefik's TCP router: a TLS connection is offered to the
//! routers with `tls` first (highest priority first), then falls back to the
//! non-TLS routers (a `HostSNI(`*`)` catch-all); a connection that is not TLS
//! only ever matches non-TLS routers.

use crate::config::rule::MatchCtx;
use crate::model::Config;

/// Routers of one entrypoint, each list sorted by priority (highest first,
/// then by name so that equal priorities are ordered deterministically).
#[derive(Debug, Default)]
pub struct EntryRoutes {
    pub tls: Vec<usize>,
    pub plain: Vec<usize>,
}

impl EntryRoutes {
    /// Whether the routing decision needs the client's first bytes: only when
    /// some router here is a TLS router (SNI/ALPN). Otherwise the proxy dials at
    /// once, so server-speaks-first protocols (MySQL) work.
    pub fn needs_peek(&self) -> bool {
        !self.tls.is_empty()
    }
}

#[derive(Debug)]
pub struct RouteTable {
    pub entries: Vec<EntryRoutes>,
}

impl RouteTable {
    pub fn new(cfg: &Config) -> RouteTable {
        let mut entries: Vec<EntryRoutes> = (0..cfg.entrypoints.len())
            .map(|_| EntryRoutes::default())
            .collect();
        for (ri, r) in cfg.routers.iter().enumerate() {
            for &ep in &r.entrypoints {
                if let Some(e) = entries.get_mut(ep) {
                    if r.tls.is_some() {
                        e.tls.push(ri);
                    } else {
                        e.plain.push(ri);
                    }
                }
            }
        }
        let order = |a: &usize, b: &usize| {
            let (ra, rb) = (&cfg.routers[*a], &cfg.routers[*b]);
            rb.priority
                .cmp(&ra.priority)
                .then_with(|| ra.name.cmp(&rb.name))
        };
        for e in &mut entries {
            e.tls.sort_by(order);
            e.plain.sort_by(order);
        }
        RouteTable { entries }
    }

    /// The router for a connection on entrypoint `ep`, if any.
    pub fn route(&self, cfg: &Config, ep: usize, ctx: &MatchCtx<'_>) -> Option<usize> {
        let e = self.entries.get(ep)?;
        let first = |list: &[usize]| {
            list.iter()
                .copied()
                .find(|&ri| cfg.routers[ri].rule.matches(ctx))
        };
        if ctx.tls {
            if let Some(ri) = first(&e.tls) {
                return Some(ri);
            }
        }
        first(&e.plain)
    }
}
