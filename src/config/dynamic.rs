//! Traefik's dynamic `[tcp]` section: routers, services, middlewares and
//! servers transports, read into the file model.
//!
//! Rules are compiled here (a syntax error points at its column inside the
//! rule string); names that refer to other definitions are kept as written for
//! `build`. Pure: no IO, no DNS.

use super::diag::{Diags, Pos, Sp};
use super::file::{
    FileModel, LoadBalancerF, Named, RouterF, RouterPgF, RouterTlsF, ServerF, ServiceF,
    ServiceKindF, WeightedChildF, WeightedF,
};
use super::reader::{Node, Tbl};
use super::values::{self, or_default, FileCtx};
use crate::model;
use crate::rule;

/// Traefik's TCP health check defaults (v3.6 `TCPServerHealthCheck`).
pub const DEFAULT_HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
pub const DEFAULT_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `[tcp]`.
pub fn read_tcp(mut t: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    if let Some(routers) = t.table("routers", d) {
        for (name, node) in routers.entries() {
            if let Some(rt) = node.table(d) {
                let syntax = m.default_rule_syntax;
                m.routers.push(router(name, rt, syntax, d));
            }
        }
    }
    if let Some(services) = t.table("services", d) {
        for (name, node) in services.entries() {
            if let Some(st) = node.table(d) {
                m.services.push(service(name, st, ctx, d));
            }
        }
    }
    if let Some(mws) = t.table("middlewares", d) {
        for (name, node) in mws.entries() {
            if let Some(mt) = node.table(d) {
                // A broken middleware is still defined (its error is reported):
                // routers naming it must not get a second, misleading error.
                let kind = middleware(&name, mt, d)
                    .unwrap_or(model::MiddlewareKind::IpAllowList(Vec::new()));
                let v = model::Middleware {
                    name: name.v.clone(),
                    kind,
                };
                m.middlewares.push(Named { name, v });
            }
        }
    }
    if let Some(trs) = t.table("serversTransports", d) {
        for (name, node) in trs.entries() {
            if let Some(tt) = node.table(d) {
                let v = transport(&name.v, tt, ctx, d);
                m.transports.push(Named { name, v });
            }
        }
    }
    t.finish(d);
}

fn router(name: Sp<String>, mut t: Tbl<'_>, syntax: rule::Syntax, d: &mut Diags) -> RouterF {
    let entry_points = t.str_list("entryPoints", d).unwrap_or_default();
    let path = format!("{}.ruleSyntax", t.path);
    let syntax = t
        .str("ruleSyntax", d)
        .and_then(|s| rule_syntax(&s, &path, d))
        .unwrap_or(syntax);
    let rule = t.get("rule", d).and_then(|n| read_rule(&n, syntax, d));
    if !t.has("rule") {
        d.error(
            name.at,
            format!(
                "router `{}` has no `rule` (Traefik requires one for TCP routers; HostSNI(`*`) matches everything)",
                name.v
            ),
        );
    }
    let priority = t.int("priority", d);
    let service = t.str("service", d);
    if !t.has("service") {
        d.error(name.at, format!("router `{}` has no `service`", name.v));
    }
    let middlewares = t.str_list("middlewares", d).unwrap_or_default();
    let tls = t.section("tls", d).map(|mut tt| {
        let passthrough = tt.bool("passthrough", d).is_some_and(|b| b.v);
        let options = tt.str("options", d);
        let cert_resolver = tt.str("certResolver", d).filter(|s| !s.v.is_empty());
        let domains = tt
            .get("domains", d)
            .map(|n| super::acme::read_domains(&n, d))
            .unwrap_or_default();
        let at = tt.at;
        tt.finish(d);
        RouterTlsF {
            at,
            passthrough,
            options,
            cert_resolver,
            domains,
        }
    });
    // Extension: PostgreSQL on this router (see model::PgRouter).
    let postgres = t.section("postgres", d).map(|mut pt| {
        let database = pt.str("database", d);
        let user = pt.str("user", d);
        for v in [&database, &user].into_iter().flatten() {
            if v.v.is_empty() || v.v.contains('\0') {
                d.error(
                    v.at,
                    "a rewritten name must be non-empty and hold no NUL byte",
                );
            }
        }
        let at = pt.at;
        pt.finish(d);
        RouterPgF { at, database, user }
    });
    t.finish(d);
    RouterF {
        name,
        entry_points,
        rule,
        priority,
        service,
        middlewares,
        tls,
        postgres,
    }
}

/// `ruleSyntax` / `core.defaultRuleSyntax`: `v3` (Traefik's default) or
/// `v2`; anything else is an error.
pub fn rule_syntax(s: &Sp<String>, path: &str, d: &mut Diags) -> Option<rule::Syntax> {
    match s.v.as_str() {
        "v3" => Some(rule::Syntax::V3),
        "v2" => Some(rule::Syntax::V2),
        other => {
            d.error(
                s.at,
                format!("`{path}` must be \"v3\" or \"v2\", not {other:?}"),
            );
            None
        }
    }
}

/// Reads and compiles a rule; a syntax error points inside the string.
pub(super) fn read_rule(
    n: &Node<'_>,
    syntax: rule::Syntax,
    d: &mut Diags,
) -> Option<Sp<(String, Option<rule::Rule>)>> {
    let s = n.str(d)?;
    match rule::parse_with(&s.v, syntax) {
        Ok(r) => Some(Sp::new((s.v, Some(r)), s.at)),
        Err(e) => {
            let inner = n.offset_in_string(e.offset).unwrap_or(0);
            let at = Pos {
                file: s.at.file,
                offset: s.at.offset + inner,
            };
            d.error(at, format!("invalid rule: {}", e.message));
            Some(Sp::new((s.v, None), s.at))
        }
    }
}

fn service(name: Sp<String>, mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> ServiceF {
    let mut on_server_down = model::OnServerDown::Keep;
    let mut hold = None;
    let lb = t.table("loadBalancer", d).map(|mut lt| {
        on_server_down = read_on_server_down(&mut lt, d);
        hold = read_hold(&mut lt, d);
        load_balancer(lt, ctx, d)
    });
    let weighted = t.table("weighted", d).map(|mut wt| {
        hold = read_hold(&mut wt, d);
        weighted(wt, d)
    });
    let failover = t.table("failover", d).map(|mut ft| {
        hold = read_hold(&mut ft, d);
        failover(ft, d)
    });
    // A wrongly typed kind section was already reported; do not say it twice.
    let kind_written = t.has("loadBalancer") || t.has("weighted") || t.has("failover");
    t.finish(d);
    let kind = match (lb, weighted, failover) {
        (Some(lb), None, None) => Some(ServiceKindF::LoadBalancer(lb)),
        (None, Some(w), None) | (None, None, Some(w)) => Some(ServiceKindF::Weighted(w)),
        (None, None, None) => {
            if !kind_written {
                d.error(
                    name.at,
                    format!(
                        "service `{}` needs `loadBalancer`, `weighted` or `failover`",
                        name.v
                    ),
                );
            }
            None
        }
        _ => {
            d.error(
                name.at,
                format!(
                    "service `{}` has more than one of `loadBalancer`, `weighted` and `failover`: a service is one of them",
                    name.v
                ),
            );
            None
        }
    };
    ServiceF {
        name,
        kind,
        on_server_down,
        hold,
    }
}

/// Extension `onServerDown = "keep" | "close"` of a `loadBalancer`.
fn read_on_server_down(t: &mut Tbl<'_>, d: &mut Diags) -> model::OnServerDown {
    let Some(v) = t.str("onServerDown", d) else {
        return model::OnServerDown::Keep;
    };
    match v.v.as_str() {
        "keep" => model::OnServerDown::Keep,
        "close" => model::OnServerDown::Close,
        other => {
            d.error(
                v.at,
                format!(
                    "`{}.onServerDown` must be \"keep\" or \"close\", not {other:?}",
                    t.path
                ),
            );
            model::OnServerDown::Keep
        }
    }
}

/// Extension `switchoverHold`: a duration; 0 means no hold.
fn read_hold(t: &mut Tbl<'_>, d: &mut Diags) -> Option<std::time::Duration> {
    t.get("switchoverHold", d)
        .and_then(|n| values::duration(&n, d))
        .filter(|h| !h.is_zero())
}

/// Extension `[tcp.services.<s>.failover]`, the shape of Traefik's HTTP
/// failover: `service` takes the connections while it has a pickable
/// server, `fallback` otherwise.
fn failover(mut t: Tbl<'_>, d: &mut Diags) -> WeightedF {
    let mut children = Vec::new();
    for key in ["service", "fallback"] {
        match t.str(key, d) {
            Some(name) => children.push(WeightedChildF { name, weight: 1 }),
            None if !t.has(key) => d.error(t.at, format!("[{}] needs `{key}`", t.path)),
            None => {}
        }
    }
    t.unsupported(
        "healthCheck",
        "a TCP failover follows its children's health checks by itself",
        d,
    );
    t.finish(d);
    WeightedF {
        children,
        health_check: None,
        failover: true,
    }
}

fn load_balancer(mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> LoadBalancerF {
    let at = t.at;
    let mut servers = Vec::new();
    if let Some(n) = t.get("servers", d) {
        for mut st in n.tables(d) {
            let address = st.str("address", d);
            if !st.has("address") {
                d.error(st.at, format!("`{}` needs an `address`", st.path));
            }
            let tls = st.bool("tls", d).is_some_and(|b| b.v);
            let weight = or_default(&mut st, "weight", d, 1, values::weight);
            let max_conn = st.get("maxConn", d).and_then(|n| max_conn(&n, d));
            st.finish(d);
            servers.push(ServerF {
                address,
                tls,
                weight,
                max_conn,
            });
        }
    }
    let servers_transport = t.str("serversTransport", d);
    let mut proxy_protocol = None;
    if let Some(mut pp) = t.table("proxyProtocol", d) {
        d.warn(
            pp.at,
            format!(
                "`{}` is deprecated in Traefik v3: use proxyProtocol in [tcp.serversTransports.<name>]",
                pp.path
            ),
        );
        proxy_protocol = proxy_protocol_version(&mut pp, d);
        pp.finish(d);
    }
    let mut termination_delay = None;
    if let Some(n) = t.get("terminationDelay", d) {
        d.warn(
            n.key_at,
            format!(
                "`{}` is deprecated in Traefik v3: use terminationDelay in [tcp.serversTransports.<name>]",
                n.path
            ),
        );
        // The deprecated key is an integer of MILLISECONDS (not a duration).
        termination_delay = values::termination_delay_ms(&n, d);
    }
    let health_check = t
        .table("healthCheck", d)
        .map(|ht| Box::new(health_check(ht, ctx, d)));
    // Extension: PostgreSQL servers older than 17 behind passthrough.
    let pg_ssl_request_first = t.bool("postgresSSLRequest", d).is_some_and(|b| b.v);
    // Extensions for long-lived connections (balance.rs).
    let strategy = t
        .get("strategy", d)
        .and_then(|n| strategy(&n, d))
        .unwrap_or_default();
    let max_conn = t.get("maxConn", d).and_then(|n| max_conn(&n, d));
    let queue_timeout = t
        .get("queueTimeout", d)
        .and_then(|n| Some(Sp::new(values::positive_duration(&n, d)?, n.key_at)));
    t.finish(d);
    LoadBalancerF {
        at,
        servers,
        servers_transport,
        proxy_protocol,
        termination_delay,
        health_check,
        pg_ssl_request_first,
        strategy,
        max_conn,
        queue_timeout,
    }
}

/// Extension `loadBalancer.strategy`: Traefik's HTTP values `wrr` and `hrw`
/// (same meaning), and `leastConn`. Any letter case, like the keys.
fn strategy(n: &Node<'_>, d: &mut Diags) -> Option<model::Strategy> {
    let v = n.str(d)?;
    let all = [
        model::Strategy::Wrr,
        model::Strategy::LeastConn,
        model::Strategy::Hrw,
    ];
    if let Some(s) = all.iter().find(|s| s.as_str().eq_ignore_ascii_case(&v.v)) {
        return Some(*s);
    }
    let why = match v.v.to_ascii_lowercase().as_str() {
        "p2c" | "leasttime" => " (Traefik has it for HTTP services only)",
        "sticky" | "clientip" | "iphash" | "source" => {
            " (stickiness by client IP is `hrw`, rendezvous hashing)"
        }
        _ => "",
    };
    d.error(
        v.at,
        format!(
            "`{}` must be `wrr`, `leastConn` or `hrw`, not `{}`{why}",
            n.path, v.v
        ),
    );
    None
}

/// Extension `maxConn`: at least 1 (no key = no limit).
fn max_conn(n: &Node<'_>, d: &mut Diags) -> Option<u32> {
    let v = n.int(d)?;
    match u32::try_from(v.v) {
        Ok(m) if m >= 1 => Some(m),
        _ => {
            d.error(
                v.at,
                format!(
                    "`{}` must be from 1 to {} (leave it out for no limit), not {}",
                    n.path,
                    u32::MAX,
                    v.v
                ),
            );
            None
        }
    }
}

fn health_check(mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> model::HealthCheck {
    let port = t.int("port", d).and_then(|p| match u16::try_from(p.v) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            d.error(p.at, format!("`{}.port` must be from 1 to 65535", t.path));
            None
        }
    });
    let interval = or_default(
        &mut t,
        "interval",
        d,
        DEFAULT_HEALTH_INTERVAL,
        values::positive_duration,
    );
    // Traefik: checks of an unhealthy server run at `interval` unless told.
    let unhealthy_interval = or_default(
        &mut t,
        "unhealthyInterval",
        d,
        interval,
        values::positive_duration,
    );
    let timeout = or_default(
        &mut t,
        "timeout",
        d,
        DEFAULT_HEALTH_TIMEOUT,
        values::positive_duration,
    );
    let send = t
        .str("send", d)
        .map(|s| s.v.into_bytes())
        .unwrap_or_default();
    let expect = t
        .str("expect", d)
        .map(|s| s.v.into_bytes())
        .unwrap_or_default();
    let probe = read_probe(&mut t, ctx, d);
    if probe != model::Probe::Tcp && (!send.is_empty() || !expect.is_empty()) {
        d.error(
            t.at,
            format!(
                "`{}`: `send`/`expect` belong to the plain TCP check; a postgres, redis or http check speaks its own protocol",
                t.path
            ),
        );
    }
    let role_v = t.str("role", d);
    let role = match &role_v {
        None => model::Role::Any,
        Some(r) => match r.v.as_str() {
            "any" => model::Role::Any,
            "primary" => model::Role::Primary,
            "replica" => model::Role::Replica,
            other => {
                d.error(
                    r.at,
                    format!(
                        "`{}.role` must be \"primary\", \"replica\" or \"any\", not {other:?}",
                        t.path
                    ),
                );
                model::Role::Any
            }
        },
    };
    if let Some(r) = role_v.filter(|_| {
        role != model::Role::Any
            && !matches!(
                probe,
                model::Probe::Postgres { .. } | model::Probe::Redis { .. }
            )
    }) {
        d.error(
            r.at,
            format!(
                "`{}.role` needs a check that finds the role (postgres or redis); with http, the endpoint decides (Patroni's /primary, /replica)",
                t.path
            ),
        );
    }
    let rise = or_default(&mut t, "rise", d, 1, count);
    let fall = or_default(&mut t, "fall", d, 1, count);
    t.finish(d);
    model::HealthCheck {
        port,
        interval,
        unhealthy_interval,
        timeout,
        send,
        expect,
        probe,
        role,
        rise,
        fall,
    }
}

/// `rise`/`fall`: from 1 to 100.
fn count(n: &Node<'_>, d: &mut Diags) -> Option<u32> {
    let v = n.int(d)?;
    match u32::try_from(v.v) {
        Ok(c) if (1..=100).contains(&c) => Some(c),
        _ => {
            d.error(v.at, format!("`{}` must be from 1 to 100", n.path));
            None
        }
    }
}

/// The protocol tables of a health check (`postgres`, `redis`, `http`);
/// at most one. `mysql` is refused with the reason.
fn read_probe(t: &mut Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> model::Probe {
    let mut found: Vec<(Pos, model::Probe)> = Vec::new();
    if let Some(mut p) = t.section("postgres", d) {
        let user = p
            .str("user", d)
            .map_or_else(|| "postgres".to_string(), |s| s.v);
        let database = p.str("database", d).map_or_else(|| user.clone(), |s| s.v);
        let password = read_secret(&mut p, ctx, d);
        found.push((
            p.at,
            model::Probe::Postgres {
                user,
                database,
                password,
            },
        ));
        p.finish(d);
    }
    if let Some(mut r) = t.section("redis", d) {
        let username = r.str("username", d).map(|s| s.v);
        let password = read_secret(&mut r, ctx, d);
        if username.is_some() && password.is_none() {
            d.error(
                r.at,
                format!(
                    "`{}.username` needs a password (passwordFile or passwordEnv)",
                    r.path
                ),
            );
        }
        found.push((r.at, model::Probe::Redis { username, password }));
        r.finish(d);
    }
    if let Some(mut h) = t.section("http", d) {
        let method = h
            .str("method", d)
            .map_or_else(|| "GET".to_string(), |s| s.v);
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            d.error(
                h.at,
                format!("`{}.method` must be an HTTP method such as GET", h.path),
            );
        }
        let path = h.str("path", d).map_or_else(|| "/".to_string(), |s| s.v);
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            d.error(
                h.at,
                format!(
                    "`{}.path` must start with / and hold no spaces or control characters",
                    h.path
                ),
            );
        }
        let host = h.str("host", d).map(|s| s.v);
        if host
            .as_deref()
            .is_some_and(|v| v.bytes().any(|b| b <= b' ' || b == 0x7f))
        {
            d.error(
                h.at,
                format!(
                    "`{}.host` must hold no spaces or control characters",
                    h.path
                ),
            );
        }
        let status = h.int("status", d).and_then(|v| match u16::try_from(v.v) {
            Ok(s) if (100..=599).contains(&s) => Some(s),
            _ => {
                d.error(v.at, format!("`{}.status` must be from 100 to 599", h.path));
                None
            }
        });
        found.push((
            h.at,
            model::Probe::Http {
                method,
                path,
                host,
                status,
            },
        ));
        h.finish(d);
    }
    t.unsupported(
        "mysql",
        "a MySQL/MariaDB check (handshake, caching_sha2_password, select @@read_only) is not built yet; use an http check against the orchestrator (e.g. Orchestrator's or clustercheck's endpoint)",
        d,
    );
    if found.len() > 1 {
        d.error(
            found[1].0,
            format!(
                "`{}` has more than one protocol check: choose one of postgres, redis, http",
                t.path
            ),
        );
    }
    found
        .into_iter()
        .next()
        .map_or(model::Probe::Tcp, |(_, p)| p)
}

/// `passwordFile` (relative to the configuration file; the first line, a
/// trailing newline dropped) or `passwordEnv` (read at load). The value is
/// never written into a message.
fn read_secret(t: &mut Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> Option<model::Secret> {
    let file = t.get("passwordFile", d);
    let env = t.str("passwordEnv", d);
    if file.is_some() && env.is_some() {
        d.error(
            t.at,
            format!("`{}`: give passwordFile or passwordEnv, not both", t.path),
        );
        return None;
    }
    if let Some(n) = file {
        let p = values::file_path(&n, ctx, d)?;
        return match std::fs::read_to_string(&p.v) {
            Ok(text) => Some(model::Secret(
                text.strip_suffix('\n')
                    .map(|s| s.strip_suffix('\r').unwrap_or(s))
                    .unwrap_or(&text)
                    .to_string(),
            )),
            Err(e) => {
                d.error(
                    p.at,
                    format!("`{}`: cannot read {}: {e}", n.path, p.v.display()),
                );
                None
            }
        };
    }
    let env = env?;
    match std::env::var(&env.v) {
        Ok(v) => Some(model::Secret(v)),
        Err(_) => {
            d.error(
                env.at,
                format!(
                    "`{}.passwordEnv`: environment variable {} is not set (or not UTF-8)",
                    t.path, env.v
                ),
            );
            None
        }
    }
}

fn weighted(mut t: Tbl<'_>, d: &mut Diags) -> WeightedF {
    let mut out = Vec::new();
    if let Some(n) = t.get("services", d) {
        for mut ct in n.tables(d) {
            let name = ct.str("name", d);
            if !ct.has("name") {
                d.error(ct.at, format!("`{}` needs a `name`", ct.path));
            }
            let weight = or_default(&mut ct, "weight", d, 1, values::weight);
            ct.finish(d);
            if let Some(name) = name {
                out.push(WeightedChildF { name, weight });
            }
        }
    } else {
        d.error(t.at, format!("[{}] needs `services`", t.path));
    }
    // Traefik's weighted `healthCheck` has no keys: its presence makes the
    // children report their health up (unknown keys inside are reported).
    let health_check = t.table("healthCheck", d).map(|h| {
        let at = h.at;
        h.finish(d);
        at
    });
    t.finish(d);
    WeightedF {
        children: out,
        health_check,
        failover: false,
    }
}

pub(super) fn middleware(
    name: &Sp<String>,
    mut t: Tbl<'_>,
    d: &mut Diags,
) -> Option<model::MiddlewareKind> {
    let mut kinds: Vec<(Pos, Option<model::MiddlewareKind>)> = Vec::new();
    if let Some(mut a) = t.table("ipAllowList", d) {
        kinds.push((a.at, source_range(&mut a, d)));
        a.finish(d);
    }
    if let Some(mut a) = t.table("ipWhiteList", d) {
        d.warn(
            a.at,
            format!("`{}` is deprecated in Traefik v3: use ipAllowList", a.path),
        );
        kinds.push((a.at, source_range(&mut a, d)));
        a.finish(d);
    }
    if let Some(mut c) = t.table("inFlightConn", d) {
        let amount = c.int("amount", d).and_then(|v| match u32::try_from(v.v) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                d.error(
                    v.at,
                    format!(
                        "`{}.amount` must be from 1 to {} (0 would refuse every connection)",
                        c.path,
                        u32::MAX
                    ),
                );
                None
            }
        });
        if !c.has("amount") {
            d.error(c.at, format!("[{}] needs `amount`", c.path));
        }
        kinds.push((c.at, amount.map(model::MiddlewareKind::InFlightConn)));
        c.finish(d);
    }
    t.finish(d);
    match kinds.len() {
        0 => {
            d.error(
                name.at,
                format!(
                    "middleware `{}` has no kind (expected ipAllowList or inFlightConn)",
                    name.v
                ),
            );
            None
        }
        1 => kinds.pop().and_then(|(_, k)| k),
        _ => {
            d.error(
                kinds[1].0,
                format!(
                    "middleware `{}` has more than one kind: declare one middleware per kind (as Traefik requires)",
                    name.v
                ),
            );
            None
        }
    }
}

fn source_range(t: &mut Tbl<'_>, d: &mut Diags) -> Option<model::MiddlewareKind> {
    let Some(n) = t.get("sourceRange", d) else {
        d.error(t.at, format!("[{}] needs `sourceRange`", t.path));
        return None;
    };
    let ranges = values::ip_ranges(&n, d)?;
    if ranges.is_empty() {
        d.warn(
            n.at,
            format!("`{}` is empty: every connection is refused", n.path),
        );
    }
    Some(model::MiddlewareKind::IpAllowList(ranges))
}

/// A `[tcp.serversTransports.<name>]` (also Traefik's static
/// `[tcpServersTransport]`, which shares the keys).
/// The version of a `proxyProtocol` table, in both places Traefik reads one
/// (`[tcp.serversTransports.<t>.proxyProtocol]` and the deprecated
/// `[tcp.services.<s>.loadBalancer.proxyProtocol]`): an empty table means
/// version 2, as Traefik's `ProxyProtocol.SetDefaults` sets it
/// (`pkg/config/dynamic/tcp_config.go`). `None` after an error.
fn proxy_protocol_version(pp: &mut Tbl<'_>, d: &mut Diags) -> Option<model::ProxyVersion> {
    match pp.get("version", d) {
        Some(n) => values::proxy_version(&n, d),
        None => Some(model::ProxyVersion::V2),
    }
}

pub fn transport(name: &str, t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> model::Transport {
    transport_with(name, t, d, |tt, d| transport_tls(tt, ctx, d))
}

/// `transport` with the reader of its `tls` table given: the Kubernetes
/// ServersTransportTCP shares every key but names its CAs and
/// certificates by Secret.
pub(super) fn transport_with(
    name: &str,
    mut t: Tbl<'_>,
    d: &mut Diags,
    read_tls: impl FnOnce(Tbl<'_>, &mut Diags) -> model::TransportTls,
) -> model::Transport {
    let dial_timeout = or_default(
        &mut t,
        "dialTimeout",
        d,
        model::DEFAULT_DIAL_TIMEOUT,
        values::duration,
    );
    // Go's net.Dialer: 0 = the default keep-alive (15 s), negative = off.
    let dial_keep_alive = or_default(
        &mut t,
        "dialKeepAlive",
        d,
        Some(model::DEFAULT_DIAL_KEEPALIVE),
        |n, d| {
            values::duration_or_never(n, d).map(|v| match v {
                Some(z) if z.is_zero() => Some(model::DEFAULT_DIAL_KEEPALIVE),
                other => other,
            })
        },
    );
    let termination_delay = or_default(
        &mut t,
        "terminationDelay",
        d,
        model::TerminationDelay::After(model::DEFAULT_TERMINATION_DELAY),
        values::termination_delay,
    );
    let mut proxy_protocol = None;
    if let Some(mut pp) = t.table("proxyProtocol", d) {
        proxy_protocol = proxy_protocol_version(&mut pp, d);
        pp.finish(d);
    }
    let tls = t.table("tls", d).map(|tt| read_tls(tt, d));
    let idle_timeout = t
        .get("idleTimeout", d)
        .and_then(|n| values::duration(&n, d));
    t.unsupported(
        "spiffe",
        "SPIFFE is not supported; use tls.rootCAs and tls.certificates",
        d,
    );
    t.finish(d);
    model::Transport {
        name: name.to_string(),
        dial_timeout,
        dial_keep_alive,
        termination_delay,
        proxy_protocol,
        tls,
        // Zero means "no idle timeout", as for Traefik's other timeouts.
        idle_timeout: idle_timeout.filter(|t| !t.is_zero()),
    }
}

fn transport_tls(mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> model::TransportTls {
    let server_name = t
        .str("serverName", d)
        .map(|s| s.v)
        .filter(|s| !s.is_empty());
    let insecure_skip_verify = t.bool("insecureSkipVerify", d).is_some_and(|b| b.v);
    let root_cas = t
        .get("rootCAs", d)
        .and_then(|n| values::path_list(&n, ctx, d))
        .unwrap_or_default();
    let mut certificates = Vec::new();
    if let Some(n) = t.get("certificates", d) {
        for ct in n.tables(d) {
            if let Some(pair) = values::cert_pair(ct, ctx, d, |_, _| {}) {
                certificates.push(pair.v);
            }
        }
    }
    let mut peer_cert_sans = Vec::new();
    if let Some(n) = t.get("peerCertSANs", d) {
        for st in n.tables(d) {
            if let Some(san) = peer_san(st, d) {
                peer_cert_sans.push(san);
            }
        }
    }
    if let Some(uri) = t.str("peerCertURI", d) {
        // Traefik keeps the deprecated key as one more URI SAN.
        d.warn(
            uri.at,
            format!(
                "`{}.peerCertURI` is deprecated in Traefik: use peerCertSANs = [{{ type = \"URI\", value = ... }}]",
                t.path
            ),
        );
        if !uri.v.is_empty() {
            peer_cert_sans.push(model::PeerSan::Uri(uri.v));
        }
    }
    t.unsupported(
        "spiffe",
        "SPIFFE is not supported; use rootCAs and certificates",
        d,
    );
    t.finish(d);
    model::TransportTls {
        server_name,
        root_cas,
        insecure_skip_verify,
        certificates,
        peer_cert_sans,
    }
}

/// One `peerCertSANs` entry: `{ type = "DNSName" | "URI", value = "..." }`.
pub(super) fn peer_san(mut t: Tbl<'_>, d: &mut Diags) -> Option<model::PeerSan> {
    let kind = t.str("type", d);
    let value = t.str("value", d);
    let at = t.at;
    let path = t.path.clone();
    t.finish(d);
    let value = match value {
        Some(v) if !v.v.is_empty() => v,
        Some(v) => {
            d.error(v.at, format!("`{path}.value` must not be empty"));
            return None;
        }
        None => {
            d.error(at, format!("`{path}` needs a `value`"));
            return None;
        }
    };
    let Some(kind) = kind else {
        d.error(
            at,
            format!("`{path}` needs a `type` (\"DNSName\" or \"URI\")"),
        );
        return None;
    };
    match kind.v.as_str() {
        "DNSName" => {
            if rustls::pki_types::DnsName::try_from(value.v.as_str()).is_err() {
                d.error(
                    value.at,
                    format!("`{path}.value` {:?} is not a DNS name", value.v),
                );
                return None;
            }
            Some(model::PeerSan::Dns(value.v))
        }
        "URI" => Some(model::PeerSan::Uri(value.v)),
        other => {
            d.error(
                kind.at,
                format!("`{path}.type` must be \"DNSName\" or \"URI\", not {other:?}"),
            );
            None
        }
    }
}
