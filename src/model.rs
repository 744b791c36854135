//! The validated runtime snapshot of a configuration.
//!
//! `config::load` turns the Traefik TOML file model into this; the engine only
//! ever sees these types. Everything here is already checked: references are
//! typed ids (`RouterId`, `ServiceId`, ...: one kind
//! cannot be passed where another is wanted), addresses are parsed, durations are `Duration`s, rules are compiled.
//! The hot path never parses strings.
//!
//! Owns: the validated configuration types. May depend on `rule` (compiled
//! rules) only; `config` builds it and everything else reads it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::rule::Rule;

pub mod acme;

/// Traefik's default `dialTimeout` for TCP servers transports.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Traefik's default `dialKeepAlive`.
pub const DEFAULT_DIAL_KEEPALIVE: Duration = Duration::from_secs(15);
/// Traefik's default `terminationDelay` (100 ms after the first FIN).
pub const DEFAULT_TERMINATION_DELAY: Duration = Duration::from_millis(100);
/// Deadline from accept to routing decision. Traefik's readTimeout default is
/// 60 s; a database gateway wants slow-loris peers gone sooner, so 10 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Traefik's default `lifeCycle.graceTimeOut`.
pub const DEFAULT_GRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default forwarding buffer size (`runtime.bufferSize`).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// A whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file this was loaded from (for messages).
    pub source: PathBuf,
    pub entrypoints: Vec<EntryPoint>,
    pub routers: Vec<Router>,
    pub services: Vec<Service>,
    pub middlewares: Vec<Middleware>,
    /// Index 0 is always the implicit `default` transport (Traefik defaults),
    /// unless the file defines `[tcp.serversTransports.default]`, which then
    /// replaces it at index 0.
    pub transports: Vec<Transport>,
    pub tls: TlsConfig,
    pub runtime: Runtime,
    /// Where `/metrics`, `/ping`, `/api` are served, when configured.
    pub admin: Option<Admin>,
    /// Files to watch when `providers.file.watch = true` (empty otherwise).
    pub watch: Vec<PathBuf>,
    /// `[providers.etcd]`, `[providers.redis]`: KV stores holding dynamic
    /// configuration, watched.
    pub kv: Vec<KvProvider>,
    /// The KV reads this configuration was built from: provider id and
    /// revision (etcd's store revision; a content hash for Redis), shown in
    /// `/metrics` so a fleet's drift is visible.
    pub kv_revisions: Vec<(String, u64)>,
    /// Warnings already formatted as `FILE:LINE:COL: message`.
    pub warnings: Vec<String>,
    /// ACME resolvers and the certificates routers ask them for.
    pub acme: acme::Settings,
}

/// Ids of a snapshot's parts, one type per kind, so an index of one kind
/// cannot be used for another. The config builder numbers them (slot order
/// of `Config`'s vectors); everything else gets them from a `Config`, a
/// route or a balancer and reads the part with the matching accessor
/// (`Config::router`, `Config::service`, ...).
macro_rules! ids {
    ($($(#[$m:meta])* $name:ident;)*) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(usize);

        impl $name {
            /// The id of slot `i`: for the config builder, which fills the
            /// slots, and for tests.
            pub const fn from_index(i: usize) -> $name {
                $name(i)
            }

            /// The slot this id names.
            pub const fn index(self) -> usize {
                self.0
            }
        }
    )*};
}

ids! {
    /// An entrypoint of `Config::entrypoints`. Stable across reloads: a
    /// removed entrypoint keeps its slot while its connections drain.
    EntryPointId;
    /// A router of `Config::routers`.
    RouterId;
    /// A service of `Config::services`.
    ServiceId;
    /// A middleware of `Config::middlewares`.
    MiddlewareId;
    /// A servers transport of `Config::transports`.
    TransportId;
    /// A TLS options set of `TlsConfig::options`.
    TlsOptionsId;
    /// A certificates resolver of `acme::Settings::resolvers`.
    ResolverId;
}

impl TransportId {
    /// The `default` transport (Traefik's defaults, or the file's
    /// `[tcp.serversTransports.default]`).
    pub const DEFAULT: TransportId = TransportId(0);
}

impl TlsOptionsId {
    /// The `default` TLS options (implicit when not configured).
    pub const DEFAULT: TlsOptionsId = TlsOptionsId(0);
}

/// Reading a snapshot's parts by id. The ids a `Config` hands out (its
/// routers' references, `enumerate_*`) name slots of that same `Config`.
impl Config {
    pub fn entrypoint(&self, id: EntryPointId) -> &EntryPoint {
        &self.entrypoints[id.0]
    }

    pub fn router(&self, id: RouterId) -> &Router {
        &self.routers[id.0]
    }

    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[id.0]
    }

    pub fn middleware(&self, id: MiddlewareId) -> &Middleware {
        &self.middlewares[id.0]
    }

    pub fn transport(&self, id: TransportId) -> &Transport {
        &self.transports[id.0]
    }

    pub fn tls_options(&self, id: TlsOptionsId) -> &TlsOptions {
        &self.tls.options[id.0]
    }

    /// The entrypoint `id`, `None` when `id` is past this config's slots
    /// (an id kept from another snapshot).
    pub fn get_entrypoint(&self, id: EntryPointId) -> Option<&EntryPoint> {
        self.entrypoints.get(id.0)
    }

    /// The service `id`, `None` when `id` is past this config's slots.
    pub fn get_service(&self, id: ServiceId) -> Option<&Service> {
        self.services.get(id.0)
    }

    pub fn get_router(&self, id: RouterId) -> Option<&Router> {
        self.routers.get(id.0)
    }

    pub fn get_transport(&self, id: TransportId) -> Option<&Transport> {
        self.transports.get(id.0)
    }

    pub fn get_middleware(&self, id: MiddlewareId) -> Option<&Middleware> {
        self.middlewares.get(id.0)
    }

    pub fn get_tls_options(&self, id: TlsOptionsId) -> Option<&TlsOptions> {
        self.tls.options.get(id.0)
    }

    pub fn enumerate_entrypoints(&self) -> impl Iterator<Item = (EntryPointId, &EntryPoint)> {
        self.entrypoints
            .iter()
            .enumerate()
            .map(|(i, e)| (EntryPointId(i), e))
    }

    pub fn enumerate_routers(&self) -> impl Iterator<Item = (RouterId, &Router)> {
        self.routers
            .iter()
            .enumerate()
            .map(|(i, r)| (RouterId(i), r))
    }

    pub fn enumerate_services(&self) -> impl Iterator<Item = (ServiceId, &Service)> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (ServiceId(i), s))
    }

    pub fn enumerate_transports(&self) -> impl Iterator<Item = (TransportId, &Transport)> {
        self.transports
            .iter()
            .enumerate()
            .map(|(i, t)| (TransportId(i), t))
    }

    pub fn enumerate_tls_options(&self) -> impl Iterator<Item = (TlsOptionsId, &TlsOptions)> {
        self.tls
            .options
            .iter()
            .enumerate()
            .map(|(i, o)| (TlsOptionsId(i), o))
    }

    /// The id of the entrypoint named `name`.
    pub fn entrypoint_id(&self, name: &str) -> Option<EntryPointId> {
        self.entrypoints
            .iter()
            .position(|e| e.name == name)
            .map(EntryPointId)
    }

    /// The id of the service named `name`.
    pub fn service_id(&self, name: &str) -> Option<ServiceId> {
        self.services
            .iter()
            .position(|s| s.name == name)
            .map(ServiceId)
    }

    /// The id of the router named `name`.
    pub fn router_id(&self, name: &str) -> Option<RouterId> {
        self.routers
            .iter()
            .position(|r| r.name == name)
            .map(RouterId)
    }
}

/// Which KV store a provider reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvKind {
    Etcd,
    Redis,
}

/// A KV provider (Traefik's `[providers.etcd]` / `[providers.redis]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvProvider {
    pub kind: KvKind,
    /// `host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// Traefik's `rootKey` (default `traefik`).
    pub root_key: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Redis database number (`db`).
    pub db: i64,
}

/// An `[entryPoints.<name>]` that carries TCP traffic.
#[derive(Debug, Clone)]
pub struct EntryPoint {
    pub name: String,
    /// Socket address to bind. Traefik's `":5432"` means every address, both
    /// families: `[::]:5432` with `v6only = false`.
    pub address: SocketAddr,
    /// IPV6_V6ONLY for an IPv6 address (extension key `ipv6Only`, default false).
    pub v6only: bool,
    /// `transport.respondingTimeouts.readTimeout`: accept → routing deadline.
    pub read_timeout: Duration,
    /// `transport.lifeCycle.graceTimeOut`: drain time on SIGTERM, counted
    /// from the end of `accept_grace` (Traefik's order).
    pub grace_timeout: Duration,
    /// `transport.lifeCycle.requestAcceptGraceTimeout`: how long the
    /// entrypoint keeps accepting after SIGTERM (default 0, Traefik's).
    pub accept_grace: Duration,
    /// `reusePort`: other processes may listen on the same address
    /// (SO_REUSEPORT across processes). Default false: a second process
    /// binding the address fails with "address in use".
    pub reuse_port: bool,
    /// `proxyProtocol`: accept PROXY v1/v2 headers from these sources only.
    pub proxy_protocol: Option<ProxyProtocolIn>,
    /// Removed by a reload: kept in its slot (entrypoint ids never move
    /// while the process runs) with no router and no listener, while its
    /// connections drain.
    pub removed: bool,
}

#[derive(Debug, Clone)]
pub struct ProxyProtocolIn {
    pub trusted_ips: Vec<IpNet>,
    /// Traefik's `insecure = true`: trust every source.
    pub insecure: bool,
}

/// A `[tcp.routers.<name>]`.
#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    /// Traefik: empty list = all entrypoints; the build step expands that.
    pub entrypoints: Vec<EntryPointId>,
    pub rule: Rule,
    pub rule_text: String,
    /// Explicit priority, or when 0/absent (Traefik) -1 for the catch-all
    /// `HostSNI(`*`)` and the rule's length for any other rule. Higher wins.
    pub priority: i64,
    pub service: ServiceId,
    /// In order.
    pub middlewares: Vec<MiddlewareId>,
    pub tls: Option<RouterTls>,
    /// Extension: the router carries PostgreSQL, from a
    /// `[tcp.routers.<name>.postgres]` table or a rule with PgDatabase,
    /// PgUser or PgParam. The proxy then reads the StartupMessage before
    /// routing (plain TCP or terminated TLS only), remembers the backend's
    /// cancel key for the session, and may rewrite names.
    pub postgres: Option<PgRouter>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgRouter {
    /// Send this `database` to the backend instead of the client's.
    pub database: Option<String>,
    /// Send this `user` to the backend instead of the client's.
    pub user: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RouterTls {
    pub passthrough: bool,
    /// `TlsOptionsId::DEFAULT` when unset.
    pub options: TlsOptionsId,
}

/// A `[tcp.services.<name>]`.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub kind: ServiceKind,
    /// `weighted.healthCheck` is set: a child with no healthy server is
    /// passed over (Traefik's status propagation). Without it, active health
    /// verdicts do not steer the choice between children, as in Traefik.
    pub weighted_health_check: bool,
    /// Extension `[tcp.services.<s>.failover]` (Traefik has it for HTTP
    /// only): the kind is `Weighted` with exactly two children, `service`
    /// then `fallback`; the fallback gets connections only while `service`
    /// has no server that may be picked.
    pub failover: bool,
    /// Extension `onServerDown` on a `loadBalancer`: what happens to open
    /// sessions of a server that stops being pickable.
    pub on_server_down: OnServerDown,
    /// Extension `switchoverHold`: how long a new connection waits for a
    /// pickable server when the service has none (None: refused at once).
    pub hold: Option<Duration>,
}

/// `onServerDown`: HAProxy's `on-marked-down shutdown-sessions` as `close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnServerDown {
    /// Open sessions stay (Traefik's behaviour, the default).
    #[default]
    Keep,
    /// Open sessions are reset when their server is marked down, stops
    /// having the role the check wants, or is removed by a reload.
    Close,
}

#[derive(Debug, Clone)]
pub enum ServiceKind {
    LoadBalancer(LoadBalancer),
    /// Child services with weights; acyclic.
    Weighted(Vec<WeightedChild>),
}

#[derive(Debug, Clone)]
pub struct LoadBalancer {
    pub servers: Vec<Server>,
    /// `TransportId::DEFAULT` unless `serversTransport` names another.
    pub transport: TransportId,
    /// Deprecated `loadBalancer.proxyProtocol.version`, merged here (the
    /// transport's setting wins when both are present).
    pub proxy_protocol: Option<ProxyVersion>,
    /// Deprecated `loadBalancer.terminationDelay` (ms), if given.
    pub termination_delay: Option<TerminationDelay>,
    pub health_check: Option<Box<HealthCheck>>,
    /// Extension `postgresSSLRequest`: the servers are PostgreSQL older than
    /// 17, which know only the SSLRequest opening, so before a passthrough
    /// ClientHello offering ALPN `postgresql` with no SSLRequest (17's
    /// direct TLS) the proxy sends its own SSLRequest, takes the `S`, then
    /// replays the hello. Default false: the hello is replayed as it is
    /// (17+ servers take direct TLS; other TLS servers never see an
    /// SSLRequest they would not understand).
    pub pg_ssl_request_first: bool,
    /// Extension `strategy`: how a server is chosen (default `wrr`).
    pub strategy: Strategy,
    /// Extension `queueTimeout`: how long a connection waits for a slot on a
    /// server at its `maxConn`; `None` = the transport's `dialTimeout`
    /// (HAProxy's `timeout queue` defaults to `timeout connect` alike).
    pub queue_timeout: Option<Duration>,
}

/// Extension `loadBalancer.strategy` (Traefik's HTTP load balancer has the
/// key, with `wrr` as default and `hrw` for rendezvous hashing; its TCP one
/// has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Smooth weighted round robin (Traefik's only TCP behaviour).
    #[default]
    Wrr,
    /// Fewest open (and queued) connections per unit of weight, counted
    /// across all workers; ties in round-robin order.
    LeastConn,
    /// Rendezvous (highest random weight) hashing of the client IP: a client
    /// keeps its server while that server is usable.
    Hrw,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Wrr => "wrr",
            Strategy::LeastConn => "leastConn",
            Strategy::Hrw => "hrw",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    /// The address as written (for logs and `check`).
    pub address_text: String,
    /// Resolved at load time.
    pub address: SocketAddr,
    /// Extension: Traefik has no per-server weight. Default 1; 0 = never picked.
    pub weight: u32,
    /// Traefik's per-server `tls = true`: speak TLS to this server, whatever
    /// the router (terminating, passthrough or plain TCP), configured by the
    /// transport's `tls` table. The table alone never turns TLS on.
    pub tls: bool,
    /// Extension `maxConn` (the server's or the load balancer's): open
    /// connections to this server across all workers; more wait in its
    /// queue. `None` = no limit.
    pub max_conn: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct WeightedChild {
    pub service: ServiceId,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `port`: check this port instead of the server's own.
    pub port: Option<u16>,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub send: Vec<u8>,
    pub expect: Vec<u8>,
    /// Extension: what the probe speaks (plain TCP send/expect by default).
    pub probe: Probe,
    /// Extension `role`: which verdict makes a server pickable.
    pub role: Role,
    /// Extension `rise`: good probes in a row that bring a server back (1).
    pub rise: u32,
    /// Extension `fall`: failed probes in a row that mark it down (1).
    pub fall: u32,
}

/// The protocol a health probe speaks (extension keys of `healthCheck`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Traefik's check: connect, `send`, `expect`.
    Tcp,
    /// PostgreSQL startup, authentication, `select pg_is_in_recovery()`.
    Postgres {
        user: String,
        database: String,
        password: Option<Secret>,
    },
    /// Redis `AUTH` (optional) and `ROLE`.
    Redis {
        username: Option<String>,
        password: Option<Secret>,
    },
    /// One HTTP/1.1 request; the status decides (Patroni's `/primary`).
    Http {
        method: String,
        path: String,
        host: Option<String>,
        /// Exact status wanted; `None`: any 2xx or 3xx.
        status: Option<u16>,
    },
}

/// A password read from a file or an environment variable at load time.
/// Never printed: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Extension `healthCheck.role`: what a server must be to take connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Any healthy server (plain checks, and role checks without `role`).
    #[default]
    Any,
    /// Only a server the probe found primary (PostgreSQL not in recovery,
    /// Redis `master`).
    Primary,
    /// Only a server the probe found replica (in recovery, Redis `slave`).
    Replica,
}

impl Role {
    /// `any`, `primary`, `replica` (as written in the config; logs, /api).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Any => "any",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// A `[tcp.middlewares.<name>]`.
#[derive(Debug, Clone)]
pub struct Middleware {
    pub name: String,
    pub kind: MiddlewareKind,
}

#[derive(Debug, Clone)]
pub enum MiddlewareKind {
    /// `ipAllowList.sourceRange` (also the deprecated `ipWhiteList`). Canonical
    /// (IPv4 not mapped) networks.
    IpAllowList(Vec<IpNet>),
    /// `inFlightConn.amount`: simultaneous connections per client IP.
    InFlightConn(u32),
}

/// A `[tcp.serversTransports.<name>]`.
#[derive(Debug, Clone)]
pub struct Transport {
    pub name: String,
    pub dial_timeout: Duration,
    pub dial_keep_alive: Option<Duration>,
    pub termination_delay: TerminationDelay,
    /// PROXY protocol version to send to servers.
    pub proxy_protocol: Option<ProxyVersion>,
    pub tls: Option<TransportTls>,
    /// Extension `idleTimeout`: close a connection idle in both directions.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct TransportTls {
    pub server_name: Option<String>,
    pub root_cas: Vec<ConfigPath>,
    pub insecure_skip_verify: bool,
    pub certificates: Vec<CertPair>,
    /// `peerCertSANs`: the backend certificate must carry one of these
    /// names; they replace `serverName` (or the address's host) in the check.
    pub peer_cert_sans: Vec<PeerSan>,
}

/// One `peerCertSANs` entry (`{ type = "DNSName" | "URI", value = ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSan {
    /// Matched as a host name against the certificate's DNS SANs (wildcards
    /// in the certificate apply).
    Dns(String),
    /// Compared, ignoring case, with the certificate's URI SANs.
    Uri(String),
}

#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_file: ConfigPath,
    pub key_file: ConfigPath,
}

/// A file the configuration names (certificate, key, CA bundle), with where
/// it is named: files are read when the TLS state is built, after loading,
/// and a problem found then (missing, not PEM, a key that does not match)
/// is still reported at the key that named the file.
///
/// Traefik also takes the PEM content itself in place of a path; `inline`
/// then holds it, and `path` is only a label for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// Resolved against the directory of the file that names it.
    pub path: PathBuf,
    /// `FILE:LINE:COL` of the value that names it.
    pub at: String,
    /// PEM content given in the configuration instead of a path.
    pub inline: Option<String>,
}

/// The label `ConfigPath::path` holds for inline PEM content.
pub const INLINE_PEM_LABEL: &str = "(inline PEM)";

/// `[tls]`: certificates and options for termination.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub certificates: Vec<CertPair>,
    pub default_certificate: Option<CertPair>,
    /// Index 0 is always `default` (implicit when not configured).
    pub options: Vec<TlsOptions>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub name: String,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    pub cipher_suites: Vec<CipherSuite>,
    pub curve_preferences: Vec<Curve>,
    pub alpn_protocols: Vec<String>,
    pub sni_strict: bool,
    pub client_ca_files: Vec<ConfigPath>,
    pub client_auth_type: Option<ClientAuth>,
    /// `disableSessionTickets`: no TLS 1.2 session tickets / TLS 1.3 resumption tickets.
    pub disable_session_tickets: bool,
}

/// `terminationDelay`: how long the other direction may go on after the
/// first one finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationDelay {
    After(Duration),
    /// Wait for the other direction forever (Traefik: a negative value).
    Never,
}

impl TerminationDelay {
    /// The delay, `None` for never.
    pub fn duration(self) -> Option<Duration> {
        match self {
            TerminationDelay::After(d) => Some(d),
            TerminationDelay::Never => None,
        }
    }
}

/// A PROXY protocol version to send to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    /// The `version` numbers Traefik accepts.
    pub const NUMBERS: &'static [(i64, ProxyVersion)] =
        &[(1, ProxyVersion::V1), (2, ProxyVersion::V2)];
}

/// The version number, as configured.
impl std::fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = Self::NUMBERS
            .iter()
            .find(|e| e.1 == *self)
            .map_or(0, |e| e.0);
        write!(f, "{n}")
    }
}

/// A TLS version rustls can do; ordered, so `min <= max` compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Traefik's (Go's) names.
    pub const NAMES: &'static [(&'static str, TlsVersion)] = &[
        ("VersionTLS12", TlsVersion::Tls12),
        ("VersionTLS13", TlsVersion::Tls13),
    ];

    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }
}

/// Traefik's `clientAuthType` (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub const NAMES: &'static [(&'static str, ClientAuth)] = &[
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        (
            "VerifyClientCertIfGiven",
            ClientAuth::VerifyClientCertIfGiven,
        ),
        (
            "RequireAndVerifyClientCert",
            ClientAuth::RequireAndVerifyClientCert,
        ),
    ];

    pub fn name(self) -> &'static str {
        name_of(Self::NAMES, self)
    }

    /// Whether client certificates are verified against the CA files.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// A cipher suite rustls implements (TLS 1.3 ones first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    Tls13Aes128GcmSha256,
    Tls13Aes256GcmSha384,
    Tls13Chacha20Poly1305Sha256,
    EcdheEcdsaAes128GcmSha256,
    EcdheEcdsaAes256GcmSha384,
    EcdheRsaAes128GcmSha256,
    EcdheRsaAes256GcmSha384,
    EcdheEcdsaChacha20Poly1305Sha256,
    EcdheRsaChacha20Poly1305Sha256,
}

impl CipherSuite {
    /// Go's names: the canonical one first, then Go's older alias.
    pub const NAMES: &'static [(&'static str, &'static str, CipherSuite)] = &[
        (
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
            CipherSuite::Tls13Aes128GcmSha256,
        ),
        (
            "TLS_AES_256_GCM_SHA384",
            "TLS_AES_256_GCM_SHA384",
            CipherSuite::Tls13Aes256GcmSha384,
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
            CipherSuite::Tls13Chacha20Poly1305Sha256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            CipherSuite::EcdheEcdsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            CipherSuite::EcdheEcdsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            CipherSuite::EcdheRsaAes128GcmSha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            CipherSuite::EcdheRsaAes256GcmSha384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            CipherSuite::EcdheEcdsaChacha20Poly1305Sha256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            CipherSuite::EcdheRsaChacha20Poly1305Sha256,
        ),
    ];

    /// The suite of a name or alias.
    pub fn by_name(s: &str) -> Option<CipherSuite> {
        Self::NAMES
            .iter()
            .find(|(c, alias, _)| s == *c || s == *alias)
            .map(|e| e.2)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|e| e.2 == self).map_or("", |e| e.0)
    }
}

/// A key exchange group rustls implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
    X25519Mlkem768,
}

impl Curve {
    /// Traefik's names: Go's first, then Traefik's alias.
    pub const NAMES: &'static [(&'static str, &'static str, Curve)] = &[
        ("X25519", "x25519", Curve::X25519),
        ("CurveP256", "secp256r1", Curve::P256),
        ("CurveP384", "secp384r1", Curve::P384),
        ("X25519MLKEM768", "x25519mlkem768", Curve::X25519Mlkem768),
    ];

    /// The group of a name or alias.
    pub fn by_name(s: &str) -> Option<Curve> {
        Self::NAMES
            .iter()
            .find(|(c, alias, _)| s == *c || s == *alias)
            .map(|e| e.2)
    }

    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|e| e.2 == self).map_or("", |e| e.0)
    }
}

/// The name of `v` in a `(name, value)` table.
fn name_of<T: PartialEq + Copy>(table: &[(&'static str, T)], v: T) -> &'static str {
    table.iter().find(|e| e.1 == v).map_or("", |e| e.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Auto,
    IoUring,
    Epoll,
}

/// `runtime.forwarding`: how a proxied connection's bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// The default. On io_uring: the completion engine, and a connection
    /// that turns into a bulk flow is handed over, whole, to the readiness
    /// pumps with adaptive splice. On epoll (or where the completion ring
    /// cannot be set up): the readiness pumps, copying small messages and
    /// splicing bulk flows.
    Auto,
    /// Readiness pumps, always splicing through pooled pipes.
    Splice,
    /// Readiness pumps, always copying through pooled buffers.
    Copy,
    /// io_uring completions without the bulk handover: every connection
    /// stays on the completion engine to its end (kept for measurements);
    /// `auto` on epoll.
    Completion,
}

/// `[runtime]` (sluicegate extension).
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `None` = "auto": one per allowed core.
    pub workers: Option<usize>,
    pub pin_cores: bool,
    pub driver: Driver,
    pub forwarding: Forwarding,
    pub buffer_size: usize,
    /// Extension `accessLog`: one logfmt line per closed connection (default
    /// true; benchmarks turn it off like the peers' logging).
    pub access_log: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            workers: None,
            pin_cores: true,
            driver: Driver::Auto,
            forwarding: Forwarding::Auto,
            buffer_size: DEFAULT_BUFFER_SIZE,
            access_log: true,
        }
    }
}

/// Admin endpoints (`[metrics.prometheus]`, `[ping]`, `[api]`).
#[derive(Debug, Clone)]
pub struct Admin {
    /// The entrypoint name the endpoints are served on (it is then not a TCP
    /// entrypoint and has no routers).
    pub entrypoint: String,
    pub address: SocketAddr,
    pub metrics: bool,
    pub ping: bool,
    pub api: bool,
    /// The admin entrypoint's `reusePort` (so a second process started for
    /// a zero-downtime handover can serve `/ping` on the same address).
    pub reuse_port: bool,
}
