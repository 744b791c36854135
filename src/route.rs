//! The compiled route table: for each entrypoint, its routers in match order.
//! Built once per snapshot (pure, off the hot path), shared read-only by all
//! workers.
//!
//! Matching follows Traefik's TCP router: a TLS connection (a ClientHello
//! was peeked) is offered only to the routers with `tls`, highest priority
//! first; a connection that is not TLS only to the routers without. There is
//! no fallback from one kind to the other: a TLS client that no TLS router
//! takes is refused (the session answers it as Traefik does), never handed
//! as raw TLS bytes to a plain `HostSNI(`*`)` router. A catch-all's default
//! priority is -1 (`config::build`), so it comes after specific routers.
//!
//! Owns: `RouteTable` and the routing decision (`Routed`: the router
//! chosen, not an index to look up again). May depend on `model` and `rule`
//! (its tests load configs with `config`).

use crate::model::{Config, EntryPointId, Router, RouterId, Service, ServiceId};
use crate::rule::MatchCtx;

/// A routing decision: the router (its id is what the access log and
/// metrics name) and the service it leads to, so the caller looks neither
/// up again.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'c> {
    pub id: RouterId,
    pub router: &'c Router,
    /// `router.service`.
    pub service_id: ServiceId,
    pub service: &'c Service,
}

impl<'c> Routed<'c> {
    /// Router `id` of `cfg` with its service; `None` for an id not in `cfg`.
    fn of(cfg: &'c Config, id: RouterId) -> Option<Routed<'c>> {
        let router = cfg.get_router(id)?;
        Some(Routed {
            id,
            router,
            service_id: router.service,
            service: cfg.get_service(router.service)?,
        })
    }
}

/// Routers of one entrypoint, each list sorted by priority (highest first,
/// then by name so that equal priorities are ordered deterministically).
#[derive(Debug, Default)]
pub struct EntryRoutes {
    pub tls: Vec<RouterId>,
    pub plain: Vec<RouterId>,
    /// Some plain router here carries PostgreSQL: a plain connection's
    /// StartupMessage (or CancelRequest) is read before routing.
    pub pg_plain: bool,
    /// Some terminating TLS router here carries PostgreSQL.
    pub pg_tls: bool,
}

impl EntryRoutes {
    /// Whether the routing decision needs the client's first bytes: only when
    /// some router here is a TLS router (SNI/ALPN). Otherwise the proxy dials at
    /// once, so server-speaks-first protocols (MySQL) work.
    pub fn needs_peek(&self) -> bool {
        !self.tls.is_empty()
    }
}

/// Each entrypoint's routes, by `EntryPointId`.
#[derive(Debug)]
pub struct RouteTable {
    entries: Vec<EntryRoutes>,
}

impl RouteTable {
    pub fn new(cfg: &Config) -> RouteTable {
        let mut entries: Vec<EntryRoutes> = (0..cfg.entrypoints.len())
            .map(|_| EntryRoutes::default())
            .collect();
        for (ri, r) in cfg.enumerate_routers() {
            for &ep in &r.entrypoints {
                if let Some(e) = entries.get_mut(ep.index()) {
                    if r.tls.is_some() {
                        e.tls.push(ri);
                        e.pg_tls |= r.postgres.is_some();
                    } else {
                        e.plain.push(ri);
                        e.pg_plain |= r.postgres.is_some();
                    }
                }
            }
        }
        let order = |a: &RouterId, b: &RouterId| {
            let (ra, rb) = (cfg.router(*a), cfg.router(*b));
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

    /// The routes of entrypoint `ep`; `None` past the table (an entrypoint
    /// this snapshot does not have).
    pub fn entry(&self, ep: EntryPointId) -> Option<&EntryRoutes> {
        self.entries.get(ep.index())
    }

    /// The first TLS router of `ep` that may match once the StartupMessage
    /// is read (`Rule::may_match`): the first pass for a TLS connection on
    /// an entrypoint with terminating PostgreSQL routers. After the
    /// handshake `route` decides with the startup packet.
    pub fn route_tls_pending<'c>(
        &self,
        cfg: &'c Config,
        ep: EntryPointId,
        ctx: &MatchCtx<'_>,
    ) -> Option<Routed<'c>> {
        let e = self.entry(ep)?;
        e.tls
            .iter()
            .filter_map(|&id| Routed::of(cfg, id))
            .find(|r| r.router.rule.may_match(ctx))
    }

    /// The router for a connection on entrypoint `ep`, if any.
    pub fn route<'c>(
        &self,
        cfg: &'c Config,
        ep: EntryPointId,
        ctx: &MatchCtx<'_>,
    ) -> Option<Routed<'c>> {
        let e = self.entry(ep)?;
        let first = |list: &[RouterId]| {
            list.iter()
                .filter_map(|&id| Routed::of(cfg, id))
                .find(|r| r.router.rule.matches(ctx))
        };
        if ctx.tls {
            first(&e.tls)
        } else {
            first(&e.plain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::MatchCtx;

    /// Loads `routers` (TOML router tables) on one entrypoint `e`, every
    /// router to one service.
    fn load(routers: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-route-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace(':', "_")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        let text = format!(
            "[entryPoints.e]\naddress = \"127.0.0.1:0\"\n{routers}\n\
             [tcp.services.s.loadBalancer]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        std::fs::write(&path, text).expect("write config");
        let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    fn routed<'a>(cfg: &'a Config, ctx: &MatchCtx<'_>) -> Option<&'a str> {
        RouteTable::new(cfg)
            .route(cfg, EntryPointId::from_index(0), ctx)
            .map(|r| r.router.name.as_str())
    }

    fn tls<'a>(sni: Option<&'a str>, alpn: &'a [&'a [u8]]) -> MatchCtx<'a> {
        MatchCtx {
            sni,
            alpn,
            client_ip: "10.0.0.1".parse().expect("ip"),
            tls: true,
            pg: None,
        }
    }

    const PLAIN: MatchCtx<'static> = MatchCtx {
        sni: None,
        alpn: &[],
        client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
        tls: false,
        pg: None,
    };

    #[test]
    fn tls_never_falls_back_to_a_plain_router() {
        let cfg = load(
            "[tcp.routers.db]\nrule = \"HostSNI(`db.test`)\"\nservice = \"s\"\n\
             [tcp.routers.db.tls]\npassthrough = true\n\
             [tcp.routers.plain]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n",
        );
        assert_eq!(routed(&cfg, &tls(Some("db.test"), &[])), Some("db"));
        assert_eq!(routed(&cfg, &tls(Some("other.test"), &[])), None);
        assert_eq!(routed(&cfg, &tls(None, &[])), None);
        assert_eq!(routed(&cfg, &PLAIN), Some("plain"));
    }

    #[test]
    fn a_tls_catch_all_comes_after_specific_tls_routers() {
        let cfg = load(
            "[tcp.routers.any]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n\
             [tcp.routers.any.tls]\npassthrough = true\n\
             [tcp.routers.h2]\nrule = \"ALPN(`h2`)\"\nservice = \"s\"\n\
             [tcp.routers.h2.tls]\npassthrough = true\n\
             [tcp.routers.one]\nrule = \"HostSNI(`one.test`)\"\nservice = \"s\"\npriority = 1\n\
             [tcp.routers.one.tls]\npassthrough = true\n",
        );
        let prio: Vec<(&str, i64)> = cfg
            .routers
            .iter()
            .map(|r| (r.name.as_str(), r.priority))
            .collect();
        assert_eq!(prio, [("any", -1), ("h2", 10), ("one", 1)]);
        assert_eq!(routed(&cfg, &tls(Some("x.test"), &[b"h2"])), Some("h2"));
        assert_eq!(routed(&cfg, &tls(Some("one.test"), &[])), Some("one"));
        assert_eq!(routed(&cfg, &tls(Some("x.test"), &[])), Some("any"));
        // Plain connections never see the TLS routers.
        assert_eq!(routed(&cfg, &PLAIN), None);
    }

    #[test]
    fn plain_routers_may_use_hostsniregexp_and_alpn() {
        let cfg = load(
            "[tcp.routers.alpn]\nrule = \"ALPN(`h2`)\"\nservice = \"s\"\npriority = 100\n\
             [tcp.routers.empty]\nrule = \"HostSNIRegexp(`^$`)\"\nservice = \"s\"\npriority = 50\n\
             [tcp.routers.any]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n",
        );
        // ALPN never matches a plain connection; the regexp sees "".
        assert_eq!(routed(&cfg, &PLAIN), Some("empty"));
        let t = RouteTable::new(&cfg);
        assert!(!t
            .entry(EntryPointId::from_index(0))
            .expect("e")
            .needs_peek());
    }

    /// The names of entrypoint `ep`'s routers in match order.
    fn order(cfg: &Config, ep: EntryPointId) -> (Vec<&str>, Vec<&str>) {
        let t = RouteTable::new(cfg);
        let names = |l: &[RouterId]| -> Vec<&str> {
            l.iter().map(|&ri| cfg.router(ri).name.as_str()).collect()
        };
        let e = t.entry(ep).expect("entrypoint");
        (names(&e.tls), names(&e.plain))
    }

    const E: EntryPointId = EntryPointId::from_index(0);

    #[test]
    fn equal_priorities_are_ordered_by_name_whatever_the_file_order() {
        // Both match every plain connection; "b" is written first.
        let cfg = load(
            "[tcp.routers.b]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 5\n\
             [tcp.routers.a]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 5\n\
             [tcp.routers.c]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 6\n",
        );
        assert_eq!(order(&cfg, E).1, ["c", "a", "b"]);
        assert_eq!(routed(&cfg, &PLAIN), Some("c"));
    }

    #[test]
    fn the_default_priority_is_the_rule_length_so_the_longer_rule_wins() {
        let cfg = load(
            "[tcp.routers.short]\nrule = \"HostSNI(`a.test`)\"\nservice = \"s\"\n\
             [tcp.routers.short.tls]\npassthrough = true\n\
             [tcp.routers.long]\nrule = \"HostSNI(`a.test`) || HostSNI(`b.test`)\"\nservice = \"s\"\n\
             [tcp.routers.long.tls]\npassthrough = true\n",
        );
        assert_eq!(order(&cfg, E).0, ["long", "short"]);
        assert_eq!(routed(&cfg, &tls(Some("a.test"), &[])), Some("long"));
        assert_eq!(routed(&cfg, &tls(Some("b.test"), &[])), Some("long"));
        assert_eq!(routed(&cfg, &tls(Some("c.test"), &[])), None);
    }

    #[test]
    fn an_explicit_negative_priority_comes_after_the_catch_all() {
        let cfg = load(
            "[tcp.routers.last]\nrule = \"ClientIP(`10.0.0.0/8`)\"\nservice = \"s\"\npriority = -5\n\
             [tcp.routers.any]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n\
             [tcp.routers.zero]\nrule = \"ClientIP(`10.0.0.1`)\"\nservice = \"s\"\npriority = 0\n",
        );
        // The catch-all's default is -1: above -5, below an explicit 0.
        assert_eq!(order(&cfg, E).1, ["zero", "any", "last"]);
        assert_eq!(routed(&cfg, &PLAIN), Some("zero"));
        let other = MatchCtx {
            client_ip: "10.9.9.9".parse().expect("ip"),
            ..PLAIN
        };
        assert_eq!(routed(&cfg, &other), Some("any"));
    }

    #[test]
    fn each_entrypoint_orders_only_its_own_routers() {
        let cfg = load(
            "[entryPoints.f]\naddress = \"127.0.0.1:0\"\n\
             [tcp.routers.on-e]\nentryPoints = [\"e\"]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 9\n\
             [tcp.routers.on-f]\nentryPoints = [\"f\"]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 1\n\
             [tcp.routers.both]\nentryPoints = [\"e\", \"f\"]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 5\n",
        );
        let ep = |name: &str| cfg.entrypoint_id(name).expect("entrypoint");
        assert_eq!(order(&cfg, ep("e")).1, ["on-e", "both"]);
        assert_eq!(order(&cfg, ep("f")).1, ["both", "on-f"]);
        let t = RouteTable::new(&cfg);
        let routed = t.route(&cfg, ep("f"), &PLAIN).expect("routed");
        assert_eq!(routed.router.name, "both");
        assert_eq!(cfg.router(routed.id).name, "both");
        // An entrypoint past the table routes nothing.
        let past = EntryPointId::from_index(cfg.entrypoints.len());
        assert!(t.route(&cfg, past, &PLAIN).is_none());
    }

    #[test]
    fn the_match_order_is_by_priority_then_name_as_router_ids() {
        // File order c, a, b; priorities 5, 5, 9: b first, then a before c.
        let cfg = load(
            "[tcp.routers.c]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 5\n\
             [tcp.routers.a]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 5\n\
             [tcp.routers.b]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\npriority = 9\n",
        );
        let id = |name: &str| cfg.router_id(name).expect("router");
        let t = RouteTable::new(&cfg);
        let e = t.entry(E).expect("entrypoint");
        assert_eq!(e.plain, [id("b"), id("a"), id("c")]);
        assert!(e.tls.is_empty());
        // The ids are the routers' slots in the config.
        for (rid, r) in cfg.enumerate_routers() {
            assert_eq!(cfg.router(rid).name, r.name);
            assert_eq!(id(&r.name), rid);
        }
        assert_eq!(t.route(&cfg, E, &PLAIN).map(|r| r.id), Some(id("b")));
    }

    #[test]
    fn routed_carries_the_service_its_router_names() {
        let cfg = load(
            "[tcp.routers.db]\nrule = \"HostSNI(`db.test`)\"\nservice = \"t\"\n\
             [tcp.routers.db.tls]\npassthrough = true\n\
             [tcp.routers.plain]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n\
             [tcp.services.t.loadBalancer]\nservers = [{ address = \"127.0.0.1:2\" }]\n",
        );
        let t = RouteTable::new(&cfg);
        let check = |r: Routed<'_>, router: &str, service: &str| {
            assert_eq!(r.router.name, router);
            assert!(std::ptr::eq(r.router, cfg.router(r.id)));
            assert_eq!(r.service_id, r.router.service);
            assert_eq!(r.service_id, cfg.service_id(service).expect("service"));
            assert!(std::ptr::eq(r.service, cfg.service(r.service_id)));
            assert_eq!(r.service.name, service);
        };
        check(t.route(&cfg, E, &PLAIN).expect("plain"), "plain", "s");
        let hello = tls(Some("db.test"), &[]);
        check(t.route(&cfg, E, &hello).expect("tls"), "db", "t");
        let pending = t.route_tls_pending(&cfg, E, &hello).expect("pending");
        check(pending, "db", "t");
    }
}
