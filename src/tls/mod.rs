//! TLS termination: certificates, rustls configs, handshakes and the
//! in-place forwarding pump.
//!
//! The session calls `TlsState::build` when a snapshot is built (a bad
//! certificate fails the start, or keeps the old snapshot on reload),
//! `handshake` for a router with `tls` and no `passthrough` (before dialing
//! the backend), then `Accepted::forward` once the backend is connected;
//! `originate` when a plain client (a router without termination) reaches a
//! `tls = true` server. Every built state has a default certificate: the
//! configured one or a self-signed one generated once per process.
//!
//! Module map: `store` (certificates, SNI), `options` (rustls configs from
//! the typed options of the snapshot), `handshake` (server and client
//! handshakes under one deadline), `side` (one rustls unbuffered connection
//! and its buffers, whatever its role; the TLS error type), `pump` (both
//! directions; when and how it ends is `forward::ending`'s policy), `pg_io`
//! (plaintext reads and writes of the PostgreSQL startup phase), `buf`
//! (pooled buffers); certificate facts come from `wire::x509`.
//!
//! rustls' unbuffered API: ciphertext is read into the connection's own
//! buffer and decrypted there, the plaintext record is written straight to
//! the backend; backend plaintext is encrypted into an owned buffer that is
//! written to the client. No stream wrapper. (Inside rustls 0.23 each
//! decrypted record is still moved into a `Vec` and each encrypted record is
//! built in one before being copied to our buffer; later rustls removes that,
//! but its unbuffered API is not released beyond 0.23.)

mod buf;
mod handshake;
mod options;
mod pg_io;
mod pump;
mod side;
mod store;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;

use crate::forward::{abort_after_drain, Cutoff, Opts, Outcome, Report};
use crate::model::{Config, ServiceKind, TlsOptionsId, TransportId};
use handshake::HsError;
use options::ClientSide;
use pump::{Peer, Pump};
use side::{TlsError, TlsSide};
use store::CertStore;

/// Certificates and rustls configs of one snapshot. Self-contained: a
/// connection keeps the snapshot (and so these) it was accepted with.
#[derive(Default)]
pub struct TlsState {
    /// By `TlsOptionsId`: one per `Config::tls.options` entry.
    servers: Vec<ServerSide>,
    store: Arc<CertStore>,
    /// By `TransportId`: one per `Config::transports` entry.
    backends: Vec<BackendSide>,
}

/// Termination with one TLS options set.
struct ServerSide {
    config: Arc<ServerConfig>,
    /// `sniStrict`: a client whose name matches no certificate is refused.
    sni_strict: bool,
}

/// How one servers transport talks TLS to its servers.
struct BackendSide {
    /// Built when the transport has a `tls` table or a `tls = true` server
    /// uses it; `None`: the transport never speaks TLS.
    client: Option<ClientSide>,
    /// The backend handshake's deadline (the transport's `dialTimeout`).
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsState")
            .field("options", &self.servers.len())
            .field("store", &self.store)
            .field(
                "backend_tls",
                &self.backends.iter().filter(|b| b.client.is_some()).count(),
            )
            .finish()
    }
}

impl TlsState {
    /// Load certificates and build configs; errors are `FILE: message` lines.
    pub fn build(cfg: &Config) -> Result<TlsState, Vec<String>> {
        let mut errors = Vec::new();
        let provider = options::provider();
        let store = match CertStore::load(
            &cfg.tls.certificates,
            cfg.tls.default_certificate.as_ref(),
            &provider,
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                errors.extend(e);
                Arc::new(CertStore::default())
            }
        };
        if errors.is_empty() && store.default_is_generated() {
            warn_generated_default(cfg, &store);
        }
        // Stateless session tickets shared by every options set.
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().ok();
        let mut servers = Vec::new();
        for o in &cfg.tls.options {
            match options::server_config(o, &store, ticketer.as_ref()) {
                Ok(c) => servers.push(ServerSide {
                    config: Arc::new(c),
                    sni_strict: o.sni_strict,
                }),
                Err(e) => errors.extend(e),
            }
        }
        let mut backends = Vec::new();
        for (ti, t) in cfg.enumerate_transports() {
            let used_by_tls_server = cfg.services.iter().any(|s| match &s.kind {
                ServiceKind::LoadBalancer(lb) => {
                    lb.transport == ti && lb.servers.iter().any(|srv| srv.tls)
                }
                ServiceKind::Weighted(_) => false,
            });
            // A `tls` table alone switches nothing on (the servers' `tls`
            // does), but it is still built, so a bad CA file fails the
            // start rather than the first server that says `tls = true`.
            let client = if t.tls.is_none() && !used_by_tls_server {
                None
            } else {
                let what = format!("tcp.serversTransports.{}.tls", t.name);
                options::client_side(t.tls.as_ref(), &what)
                    .map_err(|e| errors.push(e))
                    .ok()
            };
            backends.push(BackendSide {
                client,
                handshake_timeout: t.dial_timeout,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TlsState {
            servers,
            store,
            backends,
        })
    }

    /// The server side of options `id`, the `default` one for an id this
    /// state lacks (never expected: ids come from the same snapshot).
    fn server_side(&self, id: TlsOptionsId) -> Option<&ServerSide> {
        self.servers
            .get(id.index())
            .or_else(|| self.servers.get(TlsOptionsId::DEFAULT.index()))
    }

    /// The client side of transport `id`, when it speaks TLS.
    fn backend(&self, id: TransportId) -> Option<(&ClientSide, Duration)> {
        let b = self.backends.get(id.index())?;
        Some((b.client.as_ref()?, b.handshake_timeout))
    }
}

/// Say which terminating routers may serve the generated certificate: those
/// whose rule names no host a configured certificate covers (a catch-all, a
/// regexp, a name no certificate has). With no certificate at all the
/// config loader already warned at each router.
fn warn_generated_default(cfg: &Config, store: &CertStore) {
    if store.names() == 0 {
        return;
    }
    let uncovered: Vec<&str> = cfg
        .routers
        .iter()
        .filter(|r| r.tls.as_ref().is_some_and(|t| !t.passthrough))
        .filter(|r| {
            let names = r.rule.host_snis();
            names.is_empty() || names.iter().any(|n| store.by_name(n).is_none())
        })
        .map(|r| r.name.as_str())
        .collect();
    if !uncovered.is_empty() {
        crate::log!(
            Warn,
            "no defaultCertificate: clients of these routers whose server name matches no certificate get a generated self-signed certificate (CN TRAEFIK DEFAULT CERT)",
            routers = uncovered.join(",")
        );
    }
}

impl TlsState {
    /// The certificate served to a client whose server name matches none
    /// (the configured `defaultCertificate`, else the generated one). Set in
    /// every state `build` returns.
    pub fn default_certificate(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.store.default_certificate().cloned()
    }

    /// What a health probe of a `tls = true` server needs: the transport's
    /// client config and the name to verify (its `serverName`, else the host
    /// of the server's address).
    pub fn probe_tls(
        &self,
        transport: TransportId,
        address: &str,
    ) -> Result<
        (
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        ),
        String,
    > {
        let (cs, _) = self
            .backend(transport)
            .ok_or("backend TLS is not configured")?;
        let name = cs
            .server_name
            .clone()
            .or_else(|| options::name_from_address(address))
            .ok_or("backend TLS: no server name to verify")?;
        Ok((cs.config.clone(), name))
    }
}

/// TLS origination: a plain client (a router without termination) to a
/// `tls = true` server. The client's bytes already read (`replay`: a
/// peeked ClientHello or PostgreSQL request) go first, inside TLS; they are
/// moved to a pooled buffer and their own allocation freed at once.
pub async fn originate(
    state: &TlsState,
    client: &TcpStream,
    backend: &TcpStream,
    bt: BackendTls<'_>,
    replay: Vec<u8>,
    opts: &Opts,
    cut: &Cutoff,
) -> (Report, Outcome) {
    let side = match connect_backend(state, backend, &bt).await {
        Ok(side) => side,
        Err(e) => {
            abort_after_drain(client, cut).await;
            let report = Report {
                error: Some(e),
                ..Report::default()
            };
            return (report, Outcome::BackendReset);
        }
    };
    let mut pending = buf::Buf::default();
    let fits = pending.push(&replay) == replay.len();
    drop(replay);
    if !fits {
        abort_after_drain(client, cut).await;
        let report = Report {
            error: Some(io::Error::other("peeked bytes larger than the buffer")),
            ..Report::default()
        };
        return (report, Outcome::BackendReset);
    }
    let pump = Pump::new(
        Peer::Plain(pending),
        Peer::Tls(side),
        crate::sys::fd(client),
        crate::sys::fd(backend),
    );
    pump::run(pump, client, backend, opts, cut).await
}

/// Why a terminated connection ended before forwarding.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsEnd {
    /// The handshake failed (bad or unsupported client hello, version or
    /// cipher mismatch, ALPN mismatch, an alert from the client...).
    HandshakeFailed(TlsError),
    /// `sniStrict` and no certificate for the client's SNI.
    NoCertificate,
    /// mTLS: the client's certificate was missing or did not verify.
    ClientCertificate(rustls::Error),
    /// The handshake deadline passed.
    Timeout,
    /// The client closed or reset during the handshake.
    ClientClosed,
    /// No TLS options or configuration for this router (never expected).
    NotConfigured,
}

impl TlsEnd {
    /// The cause, for the access log's `error=`: what rustls said when it
    /// refused the handshake.
    pub fn cause(&self) -> Option<io::Error> {
        match self {
            TlsEnd::HandshakeFailed(e) => Some(side::tls_io(e.clone())),
            TlsEnd::ClientCertificate(e) => Some(side::tls_io(e.clone())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TlsEnd::HandshakeFailed(_) => "tls_handshake_failed",
            TlsEnd::NoCertificate => "tls_no_certificate",
            TlsEnd::ClientCertificate(_) => "tls_client_certificate_refused",
            TlsEnd::Timeout => "tls_timeout",
            TlsEnd::ClientClosed => "tls_client_closed",
            TlsEnd::NotConfigured => "tls_not_configured",
        }
    }
}

/// A client whose TLS handshake completed.
pub struct Accepted {
    /// Boxed: the connection lives as long as the session, and a session
    /// future that held it inline would reserve its size in every state.
    side: Box<TlsSide<UnbufferedServerConnection>>,
}

/// Complete the server handshake on `client`. `peeked` holds the bytes
/// already read from it (the ClientHello and anything after), which rustls
/// consumes first; `sni` is the hello's normalised server name; `options`
/// the router's TLS options. `deadline` bounds the whole handshake.
pub async fn handshake(
    state: &TlsState,
    client: &TcpStream,
    peeked: &[u8],
    sni: Option<&str>,
    options: TlsOptionsId,
    deadline: Option<Instant>,
) -> Result<Accepted, TlsEnd> {
    let server = state.server_side(options).ok_or(TlsEnd::NotConfigured)?;
    let conn = UnbufferedServerConnection::new(server.config.clone())
        .map_err(|e| TlsEnd::HandshakeFailed(e.into()))?;
    let mut side = Box::new(TlsSide::new(conn));
    if side.cin.push(peeked) != peeked.len() {
        return Err(TlsEnd::HandshakeFailed(TlsError::HelloTooLarge));
    }
    match handshake::run(&mut side, client, deadline).await {
        Ok(()) => Ok(Accepted { side }),
        Err(HsError::Timeout) => Err(TlsEnd::Timeout),
        Err(HsError::Closed(_)) => Err(TlsEnd::ClientClosed),
        Err(HsError::Tls(e)) => {
            if server.sni_strict && state.store.resolve(sni, true).is_none() {
                return Err(TlsEnd::NoCertificate);
            }
            Err(match e {
                TlsError::Rustls(
                    e @ (rustls::Error::NoCertificatesPresented
                    | rustls::Error::InvalidCertificate(_)),
                ) => TlsEnd::ClientCertificate(e),
                e => TlsEnd::HandshakeFailed(e),
            })
        }
    }
}

/// How to talk to a `tls = true` server: TLS configured by transport
/// `transport` of the snapshot (its `tls` table, or Traefik's defaults).
pub struct BackendTls<'a> {
    pub transport: TransportId,
    /// The server's address as configured (`host:port`): its host is the
    /// name verified when the transport sets no `serverName`.
    pub address: &'a str,
}

impl Accepted {
    /// Forward plaintext between the TLS client and the backend until both
    /// directions end (same promises and outcomes as `forward::duplex`).
    pub async fn forward(
        self,
        state: &TlsState,
        client: &TcpStream,
        backend: &TcpStream,
        backend_tls: Option<BackendTls<'_>>,
        opts: &Opts,
        cut: &Cutoff,
    ) -> (Report, Outcome) {
        let backend_peer = match backend_tls {
            None => Peer::Plain(buf::Buf::default()),
            Some(bt) => match connect_backend(state, backend, &bt).await {
                Ok(side) => Peer::Tls(side),
                Err(e) => {
                    abort_after_drain(client, cut).await;
                    let report = Report {
                        error: Some(e),
                        ..Report::default()
                    };
                    return (report, Outcome::BackendReset);
                }
            },
        };
        let pump = Pump::new(
            Peer::Tls(self.side),
            backend_peer,
            crate::sys::fd(client),
            crate::sys::fd(backend),
        );
        pump::run(pump, client, backend, opts, cut).await
    }
}

/// The client handshake towards a TLS backend, bounded by the transport's
/// `dialTimeout`.
async fn connect_backend(
    state: &TlsState,
    backend: &TcpStream,
    bt: &BackendTls<'_>,
) -> io::Result<Box<TlsSide<UnbufferedClientConnection>>> {
    let Some((cs, limit)) = state.backend(bt.transport) else {
        return Err(io::Error::other("backend TLS is not configured"));
    };
    let name = cs
        .server_name
        .clone()
        .or_else(|| options::name_from_address(bt.address))
        .ok_or_else(|| io::Error::other("backend TLS: no server name to verify"))?;
    let conn = UnbufferedClientConnection::new(cs.config.clone(), name).map_err(side::tls_io)?;
    let mut side = Box::new(TlsSide::new(conn));
    match handshake::run(&mut side, backend, Some(Instant::now() + limit)).await {
        Ok(()) => Ok(side),
        Err(HsError::Tls(e)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("backend TLS handshake: {e}"),
        )),
        Err(HsError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "backend TLS handshake timed out",
        )),
        Err(HsError::Closed(e)) => Err(e.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed during the TLS handshake",
            )
        })),
    }
}

/// Answer an ACME TLS-ALPN-01 validation: the handshake with the
/// challenge certificate of the hello's name (ALPN `acme-tls/1`), then
/// close_notify. Errors end it quietly: the CA sees a failed validation.
pub async fn answer_acme_tls_alpn(client: &TcpStream, peeked: &[u8], deadline: Option<Instant>) {
    let Some(config) = crate::acme::tls_alpn_config() else {
        return;
    };
    let limit = Instant::now() + REFUSE_HANDSHAKE_MAX;
    let deadline = deadline.map_or(limit, |d| d.min(limit));
    let Ok(conn) = UnbufferedServerConnection::new(config) else {
        return;
    };
    let mut side = Box::new(TlsSide::new(conn));
    if side.cin.push(peeked) != peeked.len() {
        return;
    }
    if handshake::run(&mut side, client, Some(deadline))
        .await
        .is_err()
    {
        return;
    }
    if side.close_notify().is_err() {
        return;
    }
    let _ = handshake::flush(&mut side, client, Some(deadline)).await;
}

/// The longest a refused client may take to complete its handshake when the
/// entrypoint sets no readTimeout: a courtesy, never worth holding a
/// connection for.
const REFUSE_HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// Refuse a TLS client that no router takes, as Traefik does: complete the
/// handshake with what the `default` TLS options serve a name no router asked
/// for (the default certificate, or none under `sniStrict`), then send
/// close_notify. With no certificate at all there is nothing to serve, and
/// the caller closes after the ClientHello. Errors end it quietly: the
/// client is refused either way.
pub async fn refuse(
    state: &TlsState,
    client: &TcpStream,
    peeked: &[u8],
    sni: Option<&str>,
    deadline: Option<Instant>,
) {
    // Every built state has a default certificate (configured or generated
    // once per process); without one there is nothing to serve.
    if state.default_certificate().is_none() {
        return;
    }
    let limit = Instant::now() + REFUSE_HANDSHAKE_MAX;
    let deadline = deadline.map_or(limit, |d| d.min(limit));
    let default = TlsOptionsId::DEFAULT;
    let Ok(accepted) = handshake(state, client, peeked, sni, default, Some(deadline)).await else {
        return;
    };
    let mut side = accepted.side;
    if side.close_notify().is_err() {
        return;
    }
    let _ = handshake::flush(&mut side, client, Some(deadline)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-tls-state-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace(':', "_")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, text).expect("write config");
        let cfg = crate::config::load(&path).unwrap_or_else(|e| panic!("{e:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        cfg
    }

    #[test]
    fn one_server_side_per_options_set_and_one_backend_side_per_transport() {
        let cfg = load(
            "[entryPoints.e]\naddress = \"127.0.0.1:0\"\n\
             [tcp.routers.r]\nrule = \"HostSNI(`a.test`)\"\nservice = \"s\"\n\
             [tcp.routers.r.tls]\noptions = \"strict\"\n\
             [tls.options.strict]\nsniStrict = true\n\
             [tls.options.loose]\nminVersion = \"VersionTLS13\"\n\
             [tcp.serversTransports.tr]\ndialTimeout = \"3s\"\n\
             [tcp.serversTransports.tr.tls]\ninsecureSkipVerify = true\n\
             [tcp.services.s.loadBalancer]\nserversTransport = \"tr\"\n\
             servers = [{ address = \"127.0.0.1:1\" }]\n",
        );
        let state = TlsState::build(&cfg).expect("tls state");
        assert_eq!(state.servers.len(), 3, "default, strict, loose");
        for (id, o) in cfg.enumerate_tls_options() {
            let side = state.server_side(id).expect("server side");
            assert_eq!(side.sni_strict, o.sni_strict, "{}", o.name);
            assert!(std::ptr::eq(side, &state.servers[id.index()]));
        }
        let strict = cfg.router(cfg.router_id("r").expect("r")).tls.as_ref();
        let strict = strict.expect("router tls").options;
        assert!(state.server_side(strict).expect("strict").sni_strict);
        // An id this state lacks gets the default options.
        let past = TlsOptionsId::from_index(cfg.tls.options.len());
        let fallback = state.server_side(past).expect("fallback");
        assert!(std::ptr::eq(fallback, &state.servers[0]));
        // The default transport speaks no TLS; `tr` does, within its
        // dialTimeout.
        assert_eq!(state.backends.len(), cfg.transports.len());
        assert!(state.backend(TransportId::DEFAULT).is_none());
        let tr = cfg.enumerate_transports().find(|(_, t)| t.name == "tr");
        let (tr, _) = tr.expect("transport tr");
        let (_, timeout) = state.backend(tr).expect("tr speaks TLS");
        assert_eq!(timeout, Duration::from_secs(3));
        assert!(state.probe_tls(tr, "127.0.0.1:1").is_ok());
        assert!(state
            .probe_tls(TransportId::DEFAULT, "127.0.0.1:1")
            .is_err());
        let past = TransportId::from_index(cfg.transports.len());
        assert!(state.backend(past).is_none());
    }
}
