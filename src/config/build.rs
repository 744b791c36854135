//! The gate: file model → validated `model::Config`.
//!
//! Resolves every name to a typed id (reporting unknown names at the place that
//! uses them and names defined twice at the second definition), parses
//! addresses, expands Traefik's defaults (empty router entrypoints, rule-length
//! priority, the implicit `default` transport and TLS options), and rejects
//! what would misroute traffic (overlapping listeners, weighted cycles, host
//! rules without TLS). Pure: DNS goes through the `Resolve` function passed in.

use std::collections::HashMap;

use super::address::{self, Listen, Resolve};
use super::diag::{Diags, Pos, Sources, Sp};
use super::file::{AdminKind, FileModel, ServiceKindF};
use super::static_conf::ADMIN_ENTRYPOINT;
use super::values;
use crate::model;

/// Traefik v3 reserves priorities above `MaxInt - 1000` for its own routers.
pub const MAX_PRIORITY: i64 = i64::MAX - 1000;
/// Index of an entrypoint whose definition failed (already reported).
const BROKEN: usize = usize::MAX;
/// The name of Traefik's implicit transport and TLS options.
pub const DEFAULT_NAME: &str = "default";

/// Builds the runtime snapshot. Returns `None` when any error was reported
/// (the diagnostics say why); warnings alone do not stop it.
pub fn build(
    m: FileModel,
    sources: &Sources,
    resolve: Resolve<'_>,
    d: &mut Diags,
) -> Option<model::Config> {
    let source = sources
        .files
        .first()
        .map(|f| f.path.clone())
        .unwrap_or_default();
    let (entrypoints, ep_index, admin, defaults) = entry_points(&m, resolve, d);
    let transports = transports(&m, sources, d);
    let tr_index = names_of(transports.iter().map(|t| t.name.as_str()));
    let (tls, opt_index) = tls(&m, sources, d);
    let middlewares: Vec<model::Middleware> = m.middlewares.iter().map(|n| n.v.clone()).collect();
    let mw_index = unique(
        m.middlewares.iter().map(|n| &n.name),
        "middleware",
        sources,
        d,
    );
    let svc_index = unique(m.services.iter().map(|s| &s.name), "service", sources, d);
    let services = services(&m, &svc_index, &tr_index, &transports, resolve, d);
    let refs = Refs {
        ep_index: &ep_index,
        default_eps: &defaults,
        admin: admin.as_ref().map(|a| a.entrypoint.as_str()),
        svc_index: &svc_index,
        mw_index: &mw_index,
        opt_index: &opt_index,
        has_certificates: !tls.certificates.is_empty() || tls.default_certificate.is_some(),
    };
    let routers = routers(&m, &refs, sources, d);
    let mut tls = tls;
    pg_alpn(&routers, &mut tls);
    let watch = match &m.provider {
        Some(p) if p.watch => p
            .filename
            .iter()
            .chain(p.directory.iter())
            .map(|p| p.v.clone())
            .collect(),
        _ => Vec::new(),
    };
    let admin_ep = admin.as_ref().map(|a| a.entrypoint.as_str());
    let acme = super::acme::settings(&m, &ep_index, admin_ep, d);
    warn_if_idle(&entrypoints, &routers, admin.is_some(), d);
    if d.has_errors() {
        return None;
    }
    Some(model::Config {
        source,
        entrypoints,
        routers,
        services,
        middlewares,
        transports,
        tls,
        runtime: m.runtime,
        admin,
        watch,
        kv: m.kv,
        kv_revisions: m.kv_revisions,
        warnings: Vec::new(),
        acme,
    })
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`) requires the server
/// to negotiate ALPN `postgresql`: the TLS options a terminating PostgreSQL
/// router uses offer it after their own protocols (so other clients get
/// what they got before; one offering only protocols the list lacks is
/// refused, as Go refuses it, where an empty list negotiated nothing).
fn pg_alpn(routers: &[model::Router], tls: &mut model::TlsConfig) {
    for r in routers {
        let Some(t) = r.tls.as_ref().filter(|t| !t.passthrough) else {
            continue;
        };
        if r.postgres.is_none() {
            continue;
        }
        if let Some(o) = tls.options.get_mut(t.options.index()) {
            if !o.alpn_protocols.iter().any(|p| p == "postgresql") {
                o.alpn_protocols.push("postgresql".into());
            }
        }
    }
}

/// Name → index, reporting the second definition of a name.
fn unique<'a>(
    names: impl Iterator<Item = &'a Sp<String>>,
    what: &str,
    sources: &Sources,
    d: &mut Diags,
) -> HashMap<String, usize> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut first: HashMap<String, Pos> = HashMap::new();
    for (i, name) in names.enumerate() {
        if let Some(prev) = first.get(&name.v) {
            d.error(
                name.at,
                format!(
                    "{what} `{}` is already defined at {}",
                    name.v,
                    sources.locate(*prev)
                ),
            );
            continue;
        }
        first.insert(name.v.clone(), name.at);
        index.insert(name.v.clone(), i);
    }
    index
}

fn names_of<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.to_string(), i)).collect()
}

type EntryPoints = (
    Vec<model::EntryPoint>,
    HashMap<String, usize>,
    Option<model::Admin>,
    Vec<usize>,
);

/// TCP entrypoints, the admin entrypoint, and the default entrypoints of
/// routers that name none (Traefik v3 `asDefault`, else all).
fn entry_points(m: &FileModel, resolve: Resolve<'_>, d: &mut Diags) -> EntryPoints {
    let admin_name = admin_entrypoint(m, d);
    let mut listens: Vec<(Listen, &Sp<String>, &Sp<String>)> = Vec::new();
    let mut eps = Vec::new();
    let mut index = HashMap::new();
    let mut defaults = Vec::new();
    let mut admin = None;
    for ep in &m.entry_points {
        let Some(addr) = &ep.address else {
            index.insert(ep.name.v.clone(), BROKEN);
            continue;
        };
        let listen = match address::parse_listen(&addr.v, ep.v6only, resolve) {
            Ok(l) => l,
            Err(e) => {
                d.error(addr.at, format!("entrypoint `{}`: {e}", ep.name.v));
                // Known name, no index: routers naming it are not reported again.
                index.insert(ep.name.v.clone(), BROKEN);
                continue;
            }
        };
        if let Some((_, other, other_addr)) = listens
            .iter()
            .find(|(l, _, _)| address::overlaps(*l, listen))
        {
            d.error(
                addr.at,
                format!(
                    "entrypoint `{}` listens on {} which overlaps entrypoint `{}` ({}); each port may be used once",
                    ep.name.v, addr.v, other.v, other_addr.v
                ),
            );
        }
        listens.push((listen, &ep.name, addr));
        if Some(ep.name.v.as_str()) == admin_name.as_ref().map(|a| a.v.as_str()) {
            let uses = |k: AdminKind| m.admin.iter().any(|u| u.kind == k);
            admin = Some(model::Admin {
                entrypoint: ep.name.v.clone(),
                address: listen.addr,
                metrics: uses(AdminKind::Metrics),
                ping: uses(AdminKind::Ping),
                api: uses(AdminKind::Api),
                reuse_port: ep.reuse_port,
            });
            continue;
        }
        if ep.as_default {
            defaults.push(eps.len());
        }
        index.insert(ep.name.v.clone(), eps.len());
        eps.push(model::EntryPoint {
            name: ep.name.v.clone(),
            address: listen.addr,
            v6only: listen.v6only,
            read_timeout: ep.read_timeout,
            grace_timeout: ep.grace_timeout,
            accept_grace: ep.accept_grace,
            reuse_port: ep.reuse_port,
            proxy_protocol: ep.proxy_protocol.clone(),
            removed: false,
        });
    }
    if defaults.is_empty() {
        defaults = (0..eps.len()).collect();
    }
    (eps, index, admin, defaults)
}

/// A valid configuration that listens on nothing, or routes nothing, is
/// accepted (Traefik starts with it too) but said: `check`
/// passing silently on an empty or mistyped file looked like success.
fn warn_if_idle(
    entrypoints: &[model::EntryPoint],
    routers: &[model::Router],
    has_admin: bool,
    d: &mut Diags,
) {
    let top = Pos { file: 0, offset: 0 };
    if entrypoints.is_empty() {
        if has_admin {
            d.warn(
                top,
                "no TCP entrypoints: only the admin endpoints listen, nothing is routed",
            );
        } else {
            d.warn(top, "no entrypoints: nothing listens");
        }
        return;
    }
    if routers.is_empty() {
        d.warn(
            top,
            "no routers: nothing is routed, every connection is closed unrouted",
        );
    }
}

/// The one entrypoint that `[metrics.prometheus]`, `[ping]` and `[api]` name,
/// if it exists.
fn admin_entrypoint(m: &FileModel, d: &mut Diags) -> Option<Sp<String>> {
    let first = m.admin.first()?;
    let name = &first.entrypoint;
    for other in &m.admin[1..] {
        if other.entrypoint.v != name.v {
            d.error(
                other.entrypoint.at,
                format!(
                    "admin endpoints must share one entrypoint: `{}` here, `{}` for the first one",
                    other.entrypoint.v, name.v
                ),
            );
        }
    }
    if m.entry_points.iter().any(|ep| ep.name.v == name.v) {
        return Some(name.clone());
    }
    for u in &m.admin {
        let what = match u.kind {
            AdminKind::Metrics => "/metrics",
            AdminKind::Ping => "/ping",
            AdminKind::Api => "the API",
        };
        if u.entrypoint.v == ADMIN_ENTRYPOINT {
            d.warn(
                u.entrypoint.at,
                format!(
                    "{what} is not served: there is no [entryPoints.{ADMIN_ENTRYPOINT}] (Traefik would listen on :8080; give it an address)"
                ),
            );
        } else {
            d.error(
                u.entrypoint.at,
                format!("{what}: unknown entrypoint `{}`", u.entrypoint.v),
            );
        }
    }
    None
}

/// Index 0 is the `default` transport: the file's `[tcp.serversTransports.default]`,
/// else the static `[tcpServersTransport]`, else Traefik's defaults.
fn transports(m: &FileModel, sources: &Sources, d: &mut Diags) -> Vec<model::Transport> {
    let index = unique(
        m.transports.iter().map(|t| &t.name),
        "servers transport",
        sources,
        d,
    );
    let default = match index.get(DEFAULT_NAME) {
        Some(&i) => m.transports[i].v.clone(),
        None => m.default_transport.as_ref().map_or_else(
            || model::Transport {
                name: DEFAULT_NAME.to_string(),
                dial_timeout: model::DEFAULT_DIAL_TIMEOUT,
                dial_keep_alive: Some(model::DEFAULT_DIAL_KEEPALIVE),
                termination_delay: model::TerminationDelay::After(model::DEFAULT_TERMINATION_DELAY),
                proxy_protocol: None,
                tls: None,
                idle_timeout: None,
            },
            |t| t.v.clone(),
        ),
    };
    let mut out = vec![default];
    out.extend(
        m.transports
            .iter()
            .enumerate()
            .filter(|(i, t)| t.name.v != DEFAULT_NAME && index.get(&t.name.v) == Some(i))
            .map(|(_, t)| t.v.clone()),
    );
    out
}

/// TLS options with `default` at index 0, plus certificates.
fn tls(
    m: &FileModel,
    sources: &Sources,
    d: &mut Diags,
) -> (model::TlsConfig, HashMap<String, usize>) {
    let index = unique(
        m.tls_options.iter().map(|o| &o.name),
        "TLS options",
        sources,
        d,
    );
    let default = index.get(DEFAULT_NAME).map_or_else(
        || model::TlsOptions {
            name: DEFAULT_NAME.to_string(),
            ..Default::default()
        },
        |&i| m.tls_options[i].v.clone(),
    );
    let mut options = vec![default];
    options.extend(
        m.tls_options
            .iter()
            .enumerate()
            .filter(|(i, o)| o.name.v != DEFAULT_NAME && index.get(&o.name.v) == Some(i))
            .map(|(_, o)| o.v.clone()),
    );
    let opt_index = names_of(options.iter().map(|o| o.name.as_str()));
    let config = model::TlsConfig {
        certificates: m.certificates.iter().map(|c| c.v.clone()).collect(),
        default_certificate: m.default_certificate.as_ref().map(|c| c.v.clone()),
        options,
    };
    (config, opt_index)
}

fn lookup(
    index: &HashMap<String, usize>,
    name: &Sp<String>,
    what: &str,
    d: &mut Diags,
) -> Option<usize> {
    let r = values::reference(name, what, d)?;
    match index.get(&r.v) {
        Some(&i) => Some(i),
        None => {
            d.error(name.at, format!("unknown {what} `{}`", name.v));
            None
        }
    }
}

fn services(
    m: &FileModel,
    svc_index: &HashMap<String, usize>,
    tr_index: &HashMap<String, usize>,
    transports: &[model::Transport],
    resolve: Resolve<'_>,
    d: &mut Diags,
) -> Vec<model::Service> {
    let mut out = Vec::with_capacity(m.services.len());
    let mut edges: Vec<Vec<(usize, &Sp<String>)>> = vec![Vec::new(); m.services.len()];
    for (i, s) in m.services.iter().enumerate() {
        let kind = match &s.kind {
            Some(ServiceKindF::LoadBalancer(lb)) => {
                let mut servers = Vec::with_capacity(lb.servers.len());
                for srv in &lb.servers {
                    let Some(a) = &srv.address else { continue };
                    match address::parse_server(&a.v, resolve) {
                        Ok(addr) => servers.push(model::Server {
                            address_text: a.v.clone(),
                            address: addr,
                            weight: srv.weight,
                            tls: srv.tls,
                            max_conn: srv.max_conn.or(lb.max_conn),
                        }),
                        Err(e) => d.error(a.at, format!("service `{}`: {e}", s.name.v)),
                    }
                }
                if lb.servers.is_empty() {
                    d.warn(
                        lb.at,
                        format!(
                            "service `{}` has no servers: connections to it fail",
                            s.name.v
                        ),
                    );
                } else if lb.servers.iter().all(|s| s.weight == 0) {
                    d.warn(
                        lb.at,
                        format!(
                            "service `{}`: every server has weight 0, none is ever picked",
                            s.name.v
                        ),
                    );
                }
                if let Some(q) = &lb.queue_timeout {
                    if lb.max_conn.is_none() && lb.servers.iter().all(|s| s.max_conn.is_none()) {
                        d.warn(
                            q.at,
                            format!(
                                "service `{}`: `queueTimeout` has no effect without `maxConn`",
                                s.name.v
                            ),
                        );
                    }
                }
                let transport = match &lb.servers_transport {
                    Some(t) => lookup(tr_index, t, "servers transport", d).unwrap_or(0),
                    None => 0,
                };
                let proxy_protocol = transports
                    .get(transport)
                    .and_then(|t| t.proxy_protocol)
                    .or(lb.proxy_protocol);
                model::ServiceKind::LoadBalancer(model::LoadBalancer {
                    servers,
                    transport: model::TransportId::from_index(transport),
                    proxy_protocol,
                    // As Traefik: the deprecated key counts only for a
                    // service that names no transport.
                    termination_delay: if lb.servers_transport.is_some() {
                        None
                    } else {
                        lb.termination_delay
                    },
                    health_check: lb.health_check.clone(),
                    pg_ssl_request_first: lb.pg_ssl_request_first,
                    strategy: lb.strategy,
                    queue_timeout: lb.queue_timeout.as_ref().map(|q| q.v),
                })
            }
            Some(ServiceKindF::Weighted(w)) => {
                let children = &w.children;
                let mut out_children = Vec::with_capacity(children.len());
                for c in children {
                    if let Some(j) = lookup(svc_index, &c.name, "service", d) {
                        if w.health_check.is_some() && !reports_health(&m.services[j]) {
                            // Traefik refuses the service: a child without a
                            // health check has no status to report up.
                            d.error(
                                c.name.at,
                                format!(
                                    "weighted service `{}` has a healthCheck, so its child `{}` needs one too (Traefik: cannot register {} as updater for {}: healthCheck not enabled in config for this weighted service)",
                                    s.name.v, c.name.v, c.name.v, s.name.v
                                ),
                            );
                        }
                        edges[i].push((j, &c.name));
                        out_children.push(model::WeightedChild {
                            service: model::ServiceId::from_index(j),
                            weight: c.weight,
                        });
                    }
                }
                if children.is_empty() {
                    d.error(
                        s.name.at,
                        format!("weighted service `{}` has no services", s.name.v),
                    );
                } else if children.iter().all(|c| c.weight == 0) {
                    d.warn(
                        s.name.at,
                        format!(
                            "weighted service `{}`: every weight is 0, no child is ever picked",
                            s.name.v
                        ),
                    );
                }
                model::ServiceKind::Weighted(out_children)
            }
            // Already reported; keep the index so references still resolve.
            None => model::ServiceKind::Weighted(Vec::new()),
        };
        out.push(model::Service {
            name: s.name.v.clone(),
            kind,
            // A failover always follows its children's health: that is
            // what it is for.
            weighted_health_check: matches!(
                &s.kind,
                Some(ServiceKindF::Weighted(w)) if w.health_check.is_some() || w.failover
            ),
            failover: matches!(&s.kind, Some(ServiceKindF::Weighted(w)) if w.failover),
            on_server_down: s.on_server_down,
            hold: s.hold,
        });
    }
    report_cycles(&out, &edges, d);
    out
}

/// Whether a service has health to report to a weighted parent with a
/// healthCheck: a load balancer with a healthCheck, or a weighted service
/// with one (whose own children are checked where it is built).
fn reports_health(s: &super::file::ServiceF) -> bool {
    match &s.kind {
        Some(ServiceKindF::LoadBalancer(lb)) => lb.health_check.is_some(),
        Some(ServiceKindF::Weighted(w)) => w.health_check.is_some(),
        // Already reported as broken.
        None => true,
    }
}

/// Depth-first search over weighted services; each back edge is a cycle,
/// reported at the child reference that closes it.
fn report_cycles(services: &[model::Service], edges: &[Vec<(usize, &Sp<String>)>], d: &mut Diags) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut mark = vec![Mark::New; services.len()];
    for start in 0..services.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // Explicit stack of (service, next edge) so deep chains cannot overflow.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnStack;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&(child, at)) = edges[node].get(*next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            *next += 1;
            match mark[child] {
                Mark::New => {
                    mark[child] = Mark::OnStack;
                    stack.push((child, 0));
                }
                Mark::OnStack => {
                    let from = stack.iter().position(|&(s, _)| s == child).unwrap_or(0);
                    let mut path: Vec<&str> = stack[from..]
                        .iter()
                        .map(|&(s, _)| services[s].name.as_str())
                        .collect();
                    path.push(services[child].name.as_str());
                    d.error(
                        at.at,
                        format!("weighted services form a cycle: {}", path.join(" -> ")),
                    );
                }
                Mark::Done => {}
            }
        }
    }
}

struct Refs<'a> {
    ep_index: &'a HashMap<String, usize>,
    default_eps: &'a [usize],
    admin: Option<&'a str>,
    svc_index: &'a HashMap<String, usize>,
    mw_index: &'a HashMap<String, usize>,
    opt_index: &'a HashMap<String, usize>,
    has_certificates: bool,
}

fn routers(m: &FileModel, refs: &Refs<'_>, sources: &Sources, d: &mut Diags) -> Vec<model::Router> {
    let index = unique(m.routers.iter().map(|r| &r.name), "router", sources, d);
    let mut out = Vec::with_capacity(m.routers.len());
    for (i, r) in m.routers.iter().enumerate() {
        if index.get(&r.name.v) != Some(&i) {
            continue;
        }
        let mut entrypoints = Vec::new();
        for ep in &r.entry_points {
            if Some(ep.v.as_str()) == refs.admin {
                d.error(
                    ep.at,
                    format!(
                        "entrypoint `{}` serves the admin endpoints (metrics/ping/api) and cannot carry TCP routers",
                        ep.v
                    ),
                );
            } else if let Some(&i) = refs.ep_index.get(&ep.v) {
                let id = model::EntryPointId::from_index(i);
                if i != BROKEN && !entrypoints.contains(&id) {
                    entrypoints.push(id);
                }
            } else {
                d.error(ep.at, format!("unknown entrypoint `{}`", ep.v));
            }
        }
        if r.entry_points.is_empty() {
            entrypoints = refs
                .default_eps
                .iter()
                .map(|&i| model::EntryPointId::from_index(i))
                .collect();
            if entrypoints.is_empty() {
                d.error(
                    r.name.at,
                    format!(
                        "router `{}`: there is no TCP entrypoint to attach it to",
                        r.name.v
                    ),
                );
            }
        }
        let service = r
            .service
            .as_ref()
            .and_then(|s| lookup(refs.svc_index, s, "service", d))
            .map(model::ServiceId::from_index);
        let middlewares: Vec<model::MiddlewareId> = r
            .middlewares
            .iter()
            .filter_map(|mw| lookup(refs.mw_index, mw, "middleware", d))
            .map(model::MiddlewareId::from_index)
            .collect();
        let tls = r.tls.as_ref().and_then(|t| {
            let options = match &t.options {
                Some(o) => model::TlsOptionsId::from_index(lookup(
                    refs.opt_index,
                    o,
                    "TLS options",
                    d,
                )?),
                None => model::TlsOptionsId::DEFAULT,
            };
            if !t.passthrough && !refs.has_certificates && t.cert_resolver.is_none() {
                d.warn(
                    t.at,
                    format!(
                        "router `{}` terminates TLS but no certificate is configured ([[tls.certificates]] or tls.stores.default.defaultCertificate): its clients get a self-signed certificate generated at start (CN TRAEFIK DEFAULT CERT), as in Traefik",
                        r.name.v
                    ),
                );
            }
            Some(model::RouterTls {
                passthrough: t.passthrough,
                options,
            })
        });
        let Some(rule) = &r.rule else { continue };
        let (text, compiled) = &rule.v;
        let Some(compiled) = compiled else { continue };
        if r.tls.is_none() && compiled.needs_tls() {
            d.error(
                rule.at,
                format!(
                    "router `{}`: a rule with a host name (HostSNI other than `*`) needs TLS; add a [tcp.routers.{}.tls] section (Traefik refuses this too)",
                    r.name.v, r.name.v
                ),
            );
        }
        let priority = match &r.priority {
            Some(p) if p.v > MAX_PRIORITY => {
                d.error(
                    p.at,
                    format!("priority {} is above the maximum {MAX_PRIORITY}", p.v),
                );
                continue;
            }
            Some(p) if p.v != 0 => p.v,
            // Traefik: -1 for its catch-all `HostSNI(`*`)`, so that it comes
            // after every computed priority; else the rule's length in bytes.
            _ if compiled.is_catch_all() => -1,
            _ => i64::try_from(text.len()).unwrap_or(MAX_PRIORITY),
        };
        let postgres = match &r.postgres {
            Some(p) => Some(model::PgRouter {
                database: p.database.as_ref().map(|s| s.v.clone()),
                user: p.user.as_ref().map(|s| s.v.clone()),
            }),
            None if compiled.uses_pg() => Some(model::PgRouter::default()),
            None => None,
        };
        if postgres.is_some() && r.tls.as_ref().is_some_and(|t| t.passthrough) {
            let at = r.postgres.as_ref().map_or(rule.at, |p| p.at);
            d.error(
                at,
                format!(
                    "router `{}`: PostgreSQL routing (PgDatabase, PgUser, PgParam, a `postgres` table) reads the StartupMessage, which a TLS passthrough router never sees (it travels encrypted end to end to the server); terminate TLS on this router (no `passthrough`) or route by HostSNI only",
                    r.name.v
                ),
            );
            continue;
        }
        let Some(service) = service else { continue };
        if r.tls.is_some() && tls.is_none() {
            continue; // its TLS options name was unknown (reported)
        }
        out.push(model::Router {
            name: r.name.v.clone(),
            entrypoints,
            rule: compiled.clone(),
            rule_text: text.clone(),
            priority,
            service,
            middlewares,
            tls,
            postgres,
        });
    }
    out
}
