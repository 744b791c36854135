//! Traefik's static configuration (the main file's top level): entrypoints,
//! providers, admin endpoints, the default TCP servers transport and
//! sluicegate's `[runtime]` extension. Dynamic sections (`[tcp]`, `[tls]`) are
//! handed to `dynamic` and `tls`.
//!
//! Traefik sections that do not change TCP traffic are accepted with a
//! warning; those whose absence would silently drop traffic are errors. Pure:
//! reads a parsed document, no IO.

use super::diag::{Diags, Sp};
use super::duration::parse_size;
use super::file::{AdminKind, AdminUse, EntryPointF, FileModel, ProviderFileF};
use super::reader::{Node, StrOrInt, Tbl};
use super::values::{self, or_default, FileCtx};
use super::{dynamic, tls};
use crate::model::{self, Driver, Forwarding};

/// Traefik's admin entrypoint name (it listens on :8080 by default).
pub const ADMIN_ENTRYPOINT: &str = "traefik";
/// Forwarding buffers below one page-ish size cost more syscalls than they save.
pub const MIN_BUFFER_SIZE: u64 = 4 * 1024;
/// Above this, idle connections hold too much memory for no throughput gain
/// (the kernel's pipe and socket buffers are smaller).
pub const MAX_BUFFER_SIZE: u64 = 16 * 1024 * 1024;
/// Far above any core count sluicegate runs on; a typo guard.
pub const MAX_WORKERS: i64 = 1024;

const HTTP_ONLY: &str = "it only applies to HTTP, and sluicegate proxies TCP";

/// Traefik providers other than the file provider (their routers would be lost).
const OTHER_PROVIDERS: &str =
    "sluicegate reads only [providers.file] and [providers.kubernetesCRD] (manifest files); routers from this provider would be missing";

/// Reads the main file: static keys and any dynamic sections it holds.
pub fn read_main(mut root: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    if let Some(eps) = root.table("entryPoints", d) {
        for (name, node) in eps.entries() {
            if let Some(t) = node.table(d) {
                m.entry_points.push(entry_point(name, t, d));
            }
        }
    }
    if let Some(t) = root.table("providers", d) {
        providers(t, ctx, m, d);
    }
    if let Some(t) = root.table("tcpServersTransport", d) {
        let at = t.at;
        let tr = dynamic::transport("default", t, ctx, d);
        m.default_transport = Some(Sp::new(tr, at));
    }
    admin(&mut root, m, d);
    if let Some(t) = root.table("runtime", d) {
        m.runtime = runtime(t, d);
    }
    if let Some(t) = root.table("certificatesResolvers", d) {
        super::acme::read_resolvers(t, ctx, m, d);
    }
    for (key, why) in [
        ("global", "it does not change TCP traffic"),
        ("log", "sluicegate logs to stderr in logfmt"),
        ("accessLog", "sluicegate logs connections to stderr"),
        (
            "serversTransport",
            "it configures HTTP servers transports; TCP uses [tcpServersTransport]",
        ),
        (
            "hostResolver",
            "server names are resolved once, at load, with the system resolver",
        ),
        ("tracing", "sluicegate does not trace"),
        (
            "experimental",
            "no Traefik experimental feature applies to TCP",
        ),
        ("spiffe", "SPIFFE is not supported"),
        ("ocsp", "OCSP stapling is not supported"),
    ] {
        root.ignored(key, why, d);
    }
    if let Some(mut core) = root.table("core", d) {
        if let Some(s) = core.str("defaultRuleSyntax", d) {
            if let Some(syntax) = dynamic::rule_syntax(&s, "core.defaultRuleSyntax", d) {
                m.default_rule_syntax = syntax;
            }
        }
        core.finish(d);
    }
    read_dynamic_sections(&mut root, ctx, m, d);
    root.finish(d);
}

/// Reads a file named by `[providers.file]`: dynamic sections only.
pub fn read_dynamic_file(mut root: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    read_dynamic_sections(&mut root, ctx, m, d);
    for key in [
        "entryPoints",
        "providers",
        "metrics",
        "ping",
        "api",
        "runtime",
        "tcpServersTransport",
        "certificatesResolvers",
    ] {
        if let Some(n) = root.get(key, d) {
            d.error(
                n.key_at,
                format!(
                    "`{}` is static configuration: it belongs in the main file, not in a [providers.file] file",
                    n.path
                ),
            );
        }
    }
    root.finish(d);
}

fn read_dynamic_sections(root: &mut Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    if let Some(t) = root.table("tcp", d) {
        dynamic::read_tcp(t, ctx, m, d);
    }
    if let Some(t) = root.table("tls", d) {
        tls::read_tls(t, ctx, m, d);
    }
    root.unsupported(
        "http",
        "sluicegate proxies TCP only; HTTP routers and services would receive no traffic (route the port with [tcp.routers] instead)",
        d,
    );
    root.unsupported(
        "udp",
        "sluicegate proxies TCP only; UDP routers and services would receive no traffic",
        d,
    );
}

fn entry_point(name: Sp<String>, mut t: Tbl<'_>, d: &mut Diags) -> EntryPointF {
    let address = t.str("address", d);
    if address.is_none() && !t.has("address") {
        d.error(
            name.at,
            format!("entrypoint `{}` needs an `address`", name.v),
        );
    }
    let v6only = t.bool("ipv6Only", d).is_some_and(|b| b.v);
    let as_default = t.bool("asDefault", d).is_some_and(|b| b.v);
    let reuse_port = t.bool("reusePort", d).is_some_and(|b| b.v);
    let proxy_protocol = t.table("proxyProtocol", d).map(|mut pp| {
        let trusted_ips = or_default(&mut pp, "trustedIPs", d, Vec::new(), values::ip_ranges);
        let insecure = pp.bool("insecure", d).is_some_and(|b| b.v);
        if trusted_ips.is_empty() && !insecure {
            d.warn(
                pp.at,
                format!(
                    "`{}` has no trustedIPs and insecure = false: PROXY headers are accepted from no one",
                    pp.path
                ),
            );
        }
        pp.finish(d);
        model::ProxyProtocolIn {
            trusted_ips,
            insecure,
        }
    });
    let mut read_timeout = model::DEFAULT_READ_TIMEOUT;
    let mut grace_timeout = model::DEFAULT_GRACE_TIMEOUT;
    let mut accept_grace = std::time::Duration::ZERO;
    if let Some(mut tr) = t.table("transport", d) {
        if let Some(mut rt) = tr.table("respondingTimeouts", d) {
            read_timeout = or_default(&mut rt, "readTimeout", d, read_timeout, values::duration);
            rt.ignored(
                "writeTimeout",
                "TCP connections have no response deadline",
                d,
            );
            rt.ignored("idleTimeout", HTTP_ONLY, d);
            rt.finish(d);
        }
        if let Some(mut lc) = tr.table("lifeCycle", d) {
            grace_timeout = or_default(&mut lc, "graceTimeOut", d, grace_timeout, values::duration);
            accept_grace = or_default(
                &mut lc,
                "requestAcceptGraceTimeout",
                d,
                accept_grace,
                values::duration,
            );
            lc.finish(d);
        }
        tr.ignored("keepAliveMaxRequests", HTTP_ONLY, d);
        tr.ignored("keepAliveMaxTime", HTTP_ONLY, d);
        tr.finish(d);
    }
    for (key, why) in [
        ("http", HTTP_ONLY),
        ("http2", HTTP_ONLY),
        ("http3", HTTP_ONLY),
        ("forwardedHeaders", HTTP_ONLY),
        ("udp", "UDP is not proxied"),
        (
            "observability",
            "metrics and logs are always on for every entrypoint",
        ),
        (
            "allowACMEByPass",
            "ACME challenges are always answered before routing",
        ),
    ] {
        t.ignored(key, why, d);
    }
    t.finish(d);
    EntryPointF {
        name,
        address,
        v6only,
        read_timeout,
        grace_timeout,
        accept_grace,
        reuse_port,
        proxy_protocol,
        as_default,
    }
}

/// `[providers.etcd]` and `[providers.redis]` (Traefik's KV providers).
fn kv_providers(t: &mut Tbl<'_>, m: &mut FileModel, d: &mut Diags) {
    for (key, kind, port) in [
        ("etcd", model::KvKind::Etcd, 2379),
        ("redis", model::KvKind::Redis, 6379),
    ] {
        let Some(mut p) = t.table(key, d) else {
            continue;
        };
        let endpoints: Vec<String> = p
            .str_list("endpoints", d)
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.v)
            .collect();
        let endpoints = if endpoints.is_empty() {
            vec![format!("127.0.0.1:{port}")]
        } else {
            endpoints
        };
        let root_key = p
            .str("rootKey", d)
            .map_or_else(|| "traefik".to_string(), |s| s.v);
        let username = p.str("username", d).map(|s| s.v);
        let password = p.str("password", d).map(|s| s.v);
        let db = if kind == model::KvKind::Redis {
            p.int("db", d).map_or(0, |i| i.v)
        } else {
            0
        };
        p.unsupported(
            "tls",
            "TLS to the KV store is not supported yet; reach it on loopback or through a local tunnel",
            d,
        );
        if kind == model::KvKind::Redis {
            p.unsupported("sentinel", "Redis Sentinel discovery is not supported", d);
        }
        p.finish(d);
        m.kv.push(model::KvProvider {
            kind,
            endpoints,
            root_key,
            username,
            password,
            db,
        });
    }
}

fn providers(mut t: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    if let Some(mut f) = t.table("file", d) {
        let filename = f
            .get("filename", d)
            .and_then(|n| values::file_path(&n, ctx, d));
        let directory = f
            .get("directory", d)
            .and_then(|n| values::file_path(&n, ctx, d));
        let watch = f.bool("watch", d).is_some_and(|b| b.v);
        f.ignored(
            "debugLogGeneratedTemplate",
            "Go templates in files are not supported",
            d,
        );
        match (&filename, &directory) {
            (Some(_), Some(dir)) => d.error(
                dir.at,
                "[providers.file] takes `filename` or `directory`, not both (as in Traefik)",
            ),
            (None, None) if !f.has("filename") && !f.has("directory") => {
                d.error(f.at, "[providers.file] needs `filename` or `directory`")
            }
            _ => {}
        }
        m.provider = Some(ProviderFileF {
            filename,
            directory,
            watch,
        });
        f.finish(d);
    }
    kv_providers(&mut t, m, d);
    if let Some(k) = t.section("kubernetesCRD", d) {
        m.kubernetes = Some(super::k8s::read_settings(k, ctx, d));
    }
    t.ignored(
        "providersThrottleDuration",
        "file changes are applied as they are seen",
        d,
    );
    // Every other provider is an error naming it; the schema knows `file` only.
    for (name, node) in t.entries() {
        if [
            "file",
            "providersThrottleDuration",
            "etcd",
            "redis",
            "kubernetesCRD",
        ]
        .iter()
        .any(|k| name.v.eq_ignore_ascii_case(k))
        {
            continue;
        }
        d.error(
            node.key_at,
            format!(
                "provider `{}` is not supported: {OTHER_PROVIDERS}",
                node.path
            ),
        );
    }
}

/// `[metrics.prometheus]`, `[ping]`, `[api]`: where the admin endpoints are served.
fn admin(root: &mut Tbl<'_>, m: &mut FileModel, d: &mut Diags) {
    let default_ep = |at| Sp::new(ADMIN_ENTRYPOINT.to_string(), at);
    if let Some(mut metrics) = root.table("metrics", d) {
        if let Some(mut p) = metrics.section("prometheus", d) {
            let ep = p.str("entryPoint", d).unwrap_or_else(|| default_ep(p.at));
            m.admin.push(AdminUse {
                kind: AdminKind::Metrics,
                entrypoint: ep,
            });
            for key in [
                "buckets",
                "addEntryPointsLabels",
                "addRoutersLabels",
                "addServicesLabels",
                "headerLabels",
            ] {
                p.ignored(key, "sluicegate's metrics have fixed buckets and labels", d);
            }
            p.ignored(
                "manualRouting",
                "sluicegate always serves /metrics on the entrypoint",
                d,
            );
            p.finish(d);
        }
        for key in ["datadog", "statsD", "influxDB2", "otlp", "openTelemetry"] {
            metrics.ignored(key, "only Prometheus metrics are exported", d);
        }
        metrics.finish(d);
    }
    if let Some(mut ping) = root.section("ping", d) {
        let ep = ping
            .str("entryPoint", d)
            .unwrap_or_else(|| default_ep(ping.at));
        m.admin.push(AdminUse {
            kind: AdminKind::Ping,
            entrypoint: ep,
        });
        ping.ignored(
            "manualRouting",
            "sluicegate always serves /ping on the entrypoint",
            d,
        );
        ping.ignored(
            "terminatingStatusCode",
            "/ping answers 503 while draining",
            d,
        );
        ping.finish(d);
    }
    if let Some(mut api) = root.section("api", d) {
        m.admin.push(AdminUse {
            kind: AdminKind::Api,
            entrypoint: default_ep(api.at),
        });
        // `insecure` is what makes Traefik serve the API on the `traefik`
        // entrypoint; sluicegate always does, so it is accepted silently.
        let _ = api.bool("insecure", d);
        api.ignored(
            "dashboard",
            "sluicegate has no dashboard (the JSON API is served)",
            d,
        );
        api.ignored("debug", "there are no debug endpoints", d);
        api.ignored("basePath", "the API is served under /api", d);
        api.ignored("disableDashboardAd", "sluicegate has no dashboard", d);
        api.finish(d);
    }
}

/// `[runtime]`, sluicegate's extension section.
fn runtime(mut t: Tbl<'_>, d: &mut Diags) -> model::Runtime {
    let mut r = model::Runtime::default();
    if let Some(n) = t.get("workers", d) {
        r.workers = workers(&n, d).unwrap_or(r.workers);
    }
    r.pin_cores = t.bool("pinCores", d).map_or(r.pin_cores, |b| b.v);
    if let Some(s) = t.str("driver", d) {
        r.driver = match s.v.as_str() {
            "auto" => Driver::Auto,
            "io_uring" => Driver::IoUring,
            "epoll" => Driver::Epoll,
            other => {
                d.error(
                    s.at,
                    format!("`runtime.driver` must be \"auto\", \"io_uring\" or \"epoll\", not {other:?}"),
                );
                r.driver
            }
        };
    }
    if let Some(s) = t.str("forwarding", d) {
        r.forwarding = match s.v.as_str() {
            "auto" => Forwarding::Auto,
            "splice" => Forwarding::Splice,
            "copy" => Forwarding::Copy,
            "completion" => Forwarding::Completion,
            other => {
                d.error(
                    s.at,
                    format!("`runtime.forwarding` must be \"auto\", \"splice\", \"copy\" or \"completion\", not {other:?}"),
                );
                r.forwarding
            }
        };
    }
    if let Some(n) = t.get("bufferSize", d) {
        r.buffer_size = buffer_size(&n, d).unwrap_or(r.buffer_size);
    }
    r.access_log = t.bool("accessLog", d).map_or(r.access_log, |b| b.v);
    t.finish(d);
    r
}

/// `workers = "auto"` (one per allowed core) or a count.
fn workers(n: &Node<'_>, d: &mut Diags) -> Option<Option<usize>> {
    let v = n.str_or_int(d)?;
    let count = match &v.v {
        StrOrInt::Str(s) if s == "auto" => return Some(None),
        StrOrInt::Str(s) => s.parse::<i64>().ok(),
        StrOrInt::Int(i) => Some(*i),
    };
    match count {
        Some(c) if (1..=MAX_WORKERS).contains(&c) => usize::try_from(c).ok().map(Some),
        _ => {
            d.error(
                v.at,
                format!(
                    "`{}` must be \"auto\" or a number from 1 to {MAX_WORKERS}",
                    n.path
                ),
            );
            None
        }
    }
}

fn buffer_size(n: &Node<'_>, d: &mut Diags) -> Option<usize> {
    let v = n.str_or_int(d)?;
    let bytes = match &v.v {
        StrOrInt::Str(s) => parse_size(s),
        StrOrInt::Int(i) => u64::try_from(*i).map_err(|_| format!("invalid size {i}")),
    };
    match bytes {
        Ok(b) if (MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&b) => usize::try_from(b).ok(),
        Ok(b) => {
            d.error(
                v.at,
                format!(
                    "`{}` = {b} bytes is out of range: it must be from 4KiB ({MIN_BUFFER_SIZE}) to 16MiB ({MAX_BUFFER_SIZE})",
                    n.path
                ),
            );
            None
        }
        Err(e) => {
            d.error(v.at, format!("`{}`: {e}", n.path));
            None
        }
    }
}
