//! The file model: what the TOML files say, with positions, before references
//! are resolved.
//!
//! Values that stand alone (durations, TLS options, middlewares, transports)
//! are already checked and converted to `model` types here; what refers to
//! something else by name (routers, services) or needs a DNS lookup
//! (addresses) stays as written, with positions, for `build`. Definitions from
//! every loaded file are appended to one `FileModel`, so `build` sees them all
//! and can report a name defined twice at the second place.
//!
//! Pure data, no IO.

use std::path::PathBuf;
use std::time::Duration;

use super::diag::{Pos, Sp};
use crate::model;
use crate::rule::Rule;

/// Everything read from the main file and the files it points at.
#[derive(Debug, Default)]
pub struct FileModel {
    // Static configuration (main file only).
    pub entry_points: Vec<EntryPointF>,
    pub provider: Option<ProviderFileF>,
    /// `[providers.etcd]`, `[providers.redis]`.
    pub kv: Vec<model::KvProvider>,
    /// The KV reads loaded (provider id, revision).
    pub kv_revisions: Vec<(String, u64)>,
    /// `[providers.kubernetesCRD]` (manifest files).
    pub kubernetes: Option<super::k8s::Settings>,
    /// Admin endpoints asked for: which one, and the entrypoint it names.
    pub admin: Vec<AdminUse>,
    pub runtime: model::Runtime,
    /// `[tcpServersTransport]`: Traefik's defaults for the `default` transport.
    pub default_transport: Option<Sp<model::Transport>>,
    /// `core.defaultRuleSyntax`: the syntax of rules without `ruleSyntax`.
    pub default_rule_syntax: crate::rule::Syntax,

    // Dynamic configuration (any file).
    pub routers: Vec<RouterF>,
    pub services: Vec<ServiceF>,
    pub middlewares: Vec<Named<model::Middleware>>,
    pub transports: Vec<Named<model::Transport>>,
    pub certificates: Vec<Sp<model::CertPair>>,
    pub default_certificate: Option<Sp<model::CertPair>>,
    pub tls_options: Vec<Named<model::TlsOptions>>,
    /// `[certificatesResolvers.<name>.acme]` (main file only).
    pub acme_resolvers: Vec<Named<ResolverF>>,
}

/// One ACME resolver as read, with where its HTTP-01 entrypoint was named
/// (checked against the entrypoints once all files are read).
#[derive(Debug, Clone)]
pub struct ResolverF {
    pub cfg: crate::model::acme::ResolverCfg,
    pub http_entrypoint_at: Option<Pos>,
}

/// A definition with the position of its name (where duplicates are reported).
#[derive(Debug)]
pub struct Named<T> {
    pub name: Sp<String>,
    pub v: T,
}

#[derive(Debug)]
pub struct EntryPointF {
    pub name: Sp<String>,
    pub address: Option<Sp<String>>,
    /// Extension `ipv6Only`.
    pub v6only: bool,
    pub read_timeout: Duration,
    pub grace_timeout: Duration,
    /// `transport.lifeCycle.requestAcceptGraceTimeout`.
    pub accept_grace: Duration,
    pub reuse_port: bool,
    pub proxy_protocol: Option<model::ProxyProtocolIn>,
    /// Traefik v3 `asDefault`: routers without entryPoints attach only to
    /// entrypoints marked so (all of them when none is).
    pub as_default: bool,
}

#[derive(Debug)]
pub struct ProviderFileF {
    pub filename: Option<Sp<PathBuf>>,
    pub directory: Option<Sp<PathBuf>>,
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminKind {
    Metrics,
    Ping,
    Api,
}

#[derive(Debug)]
pub struct AdminUse {
    pub kind: AdminKind,
    /// The entrypoint name (Traefik's default `traefik`), positioned at the key
    /// naming it or at the section.
    pub entrypoint: Sp<String>,
}

#[derive(Debug)]
pub struct RouterF {
    pub name: Sp<String>,
    /// `None` or empty: Traefik attaches the router to the default entrypoints.
    pub entry_points: Vec<Sp<String>>,
    /// The rule as written and compiled (`None` when it failed to parse: the
    /// error is already reported).
    pub rule: Option<Sp<(String, Option<Rule>)>>,
    pub priority: Option<Sp<i64>>,
    pub service: Option<Sp<String>>,
    pub middlewares: Vec<Sp<String>>,
    pub tls: Option<RouterTlsF>,
    /// Extension `[tcp.routers.<name>.postgres]`.
    pub postgres: Option<RouterPgF>,
}

/// Extension: the router carries PostgreSQL (startup routing, cancel
/// forwarding), with optional rewrites towards the backend.
#[derive(Debug)]
pub struct RouterPgF {
    pub at: Pos,
    pub database: Option<Sp<String>>,
    pub user: Option<Sp<String>>,
}

#[derive(Debug)]
pub struct RouterTlsF {
    pub at: Pos,
    pub passthrough: bool,
    pub options: Option<Sp<String>>,
    /// `certResolver`: the ACME resolver that provides this router's certificate.
    pub cert_resolver: Option<Sp<String>>,
    /// `domains`: the names to obtain (else the rule's HostSNI names).
    pub domains: Vec<Sp<crate::model::acme::Domain>>,
}

#[derive(Debug)]
pub struct ServiceF {
    pub name: Sp<String>,
    /// `None` when the service had neither or both kinds (already reported).
    pub kind: Option<ServiceKindF>,
    /// Extension `loadBalancer.onServerDown`.
    pub on_server_down: model::OnServerDown,
    /// Extension `switchoverHold` (on `loadBalancer`, `weighted` or `failover`).
    pub hold: Option<Duration>,
}

#[derive(Debug)]
pub enum ServiceKindF {
    LoadBalancer(LoadBalancerF),
    Weighted(WeightedF),
}

#[derive(Debug)]
pub struct WeightedF {
    pub children: Vec<WeightedChildF>,
    /// Where `weighted.healthCheck` is, when given.
    pub health_check: Option<Pos>,
    /// Read from `[tcp.services.<s>.failover]`: children are `service`
    /// then `fallback`.
    pub failover: bool,
}

#[derive(Debug)]
pub struct LoadBalancerF {
    pub at: Pos,
    pub servers: Vec<ServerF>,
    pub servers_transport: Option<Sp<String>>,
    pub proxy_protocol: Option<model::ProxyVersion>,
    pub termination_delay: Option<model::TerminationDelay>,
    pub health_check: Option<Box<model::HealthCheck>>,
    /// Extension `postgresSSLRequest`.
    pub pg_ssl_request_first: bool,
    /// Extensions `strategy`, `maxConn` (each server's default) and
    /// `queueTimeout` (with where it is written, for a warning).
    pub strategy: model::Strategy,
    pub max_conn: Option<u32>,
    pub queue_timeout: Option<Sp<Duration>>,
}

#[derive(Debug)]
pub struct ServerF {
    pub address: Option<Sp<String>>,
    pub tls: bool,
    pub weight: u32,
    /// Extension: this server's `maxConn`.
    pub max_conn: Option<u32>,
}

#[derive(Debug)]
pub struct WeightedChildF {
    pub name: Sp<String>,
    pub weight: u32,
}
