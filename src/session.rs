//! One client connection, from accept to close. The lifecycle the code follows:
//!
//! accept → admit (client address) → peek (only when a TLS router needs the
//! ClientHello) → route → middlewares → pick server → dial (failover) →
//! forward → close → exactly one access-log line with the outcome.
//!
//! Every path out of `serve` ends in one counted outcome (reliability
//! promise 3). Nothing here panics on peer input.
//!
//! The drain's cut (`forward::Cutoff`) ends every phase: before forwarding
//! `serve` drops the phase and resets the client (and a dialed backend);
//! while forwarding the pumps end themselves (`Outcome::Drained`). Both are
//! counted as `drain_cut`.
//!
//! Owns: one connection's phases and its access-log line. May depend on
//! `state` (the worker's view of the snapshot), `route`, `balance`,
//! `forward`, `completion`, `tls`, `pg`, `peek`, `wire`, `rule`, `metrics`,
//! `model`, `sys` and `log`; never on `worker` (which depends on it).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::forward::{self, write_all, Cutoff, Outcome};
use crate::model::{EntryPointId, MiddlewareId, MiddlewareKind, RouterId, ServiceId};
use crate::peek::{PeekError, Peeked, PgOpen, Reader};
use crate::rule::MatchCtx;
use crate::state::{Shared, WorkerSnap};
use crate::wire::{client_hello, postgres, proxy_protocol};
use crate::{log, pg, sys, tls};

/// How long a connection on a `proxyProtocol` entrypoint whose routers dial
/// at once may leave undecided whether it starts with a PROXY header before
/// it is taken as direct (its bytes so far are then data).
///
/// A sender of PROXY headers (HAProxy, a cloud load balancer) writes the
/// header at connect, in its first segment: it arrives within a round trip,
/// or a retransmission (200 ms minimum RTO on Linux) after that. A client
/// that sends nothing is a server-speaks-first protocol waiting for its
/// greeting, and gets it this much later. Traefik waits the whole
/// `readTimeout` here (go-proxyproto's ReadHeaderTimeout: 60 s by default,
/// for ever with 0), which makes such protocols unusable behind a
/// `proxyProtocol` entrypoint. One second covers a lost first segment on
/// any path and delays a greeting well within any client's connect timeout;
/// the price is that a header arriving later than that (a sender stalled for
/// a second between connect and its first write) is forwarded as data, as
/// go-proxyproto does after its timeout. Bounded by `readTimeout` when that
/// is shorter.
const PROXY_UNDECIDED_WAIT: Duration = Duration::from_secs(1);

/// How a connection ended before forwarding started.
#[derive(Debug, Clone, PartialEq)]
enum Early {
    /// No router matched (a TLS client is refused as Traefik refuses it).
    NoRoute,
    /// A TLS router needed a ClientHello, the bytes were something else, and
    /// no non-TLS router took them (the garbage cases of RELIABILITY.md).
    NotTls(client_hello::NotTls),
    /// An ipAllowList middleware refused the client.
    Denied,
    /// inFlightConn limit reached for the client address.
    TooManyConnections,
    /// Every server was tried and none accepted the connection.
    DialFailed,
    /// A dial failed for lack of a local resource (the errno): this
    /// process's or host's shortage, not the server's.
    LocalResource(i32),
    /// The service has no server that may be picked: none with a non-zero
    /// weight, or every one is down by its active health check.
    NoServer,
    /// The picked server stayed at its `maxConn` for the whole
    /// `queueTimeout` (balance.rs).
    QueueTimeout,
    /// Closed before routing (deadline, bad PROXY header, huge hello, ...).
    Peek(PeekError),
    /// The PostgreSQL backend refused or failed our SSLRequest.
    BackendRefusedTls,
    /// The PROXY header or the replayed bytes could not be written.
    BackendWrite,
    /// TLS termination ended before forwarding (the handshake's end keeps
    /// its cause: the access log's `error=` carries rustls' error).
    Tls(tls::TlsEnd),
    /// A terminated PostgreSQL client whose backend cannot do TLS.
    PgBackendTlsUnsupported,
    /// The drain's time ran out before forwarding started.
    Drained,
    /// A PostgreSQL CancelRequest was handled (no router involved).
    PgCancel(pg::CancelEnd),
    /// A PostgreSQL first message that is not valid: answered with an
    /// ErrorResponse (SQLSTATE 08P01) and closed.
    PgMalformed,
    /// An ACME HTTP-01 validation was answered.
    AcmeHttp01,
    /// An ACME TLS-ALPN-01 validation was answered.
    AcmeTlsAlpn,
}

impl Early {
    /// The counted outcome (its detail, if any, is `cause`).
    fn outcome(&self) -> crate::outcome::Outcome {
        use crate::outcome::Outcome as O;
        use tls::TlsEnd as T;
        match *self {
            Early::NoRoute => O::NoRoute,
            Early::NotTls(_) => O::NotTls,
            Early::Denied => O::Denied,
            Early::TooManyConnections => O::TooManyConnections,
            Early::DialFailed => O::DialFailed,
            Early::LocalResource(_) => O::LocalResourceExhausted,
            Early::NoServer => O::NoServer,
            Early::QueueTimeout => O::QueueTimeout,
            Early::Peek(p) => match p {
                PeekError::Timeout => O::ReadTimeout,
                PeekError::ClientClosed => O::ClientClosed,
                PeekError::HelloTooLarge => O::HelloTooLarge,
                PeekError::ProxyInvalid => O::ProxyProtocolInvalid,
                PeekError::PgInjection => O::PgBytesAfterRequest,
            },
            Early::BackendRefusedTls => O::BackendRefusedTls,
            Early::BackendWrite => O::BackendWriteFailed,
            Early::Tls(ref end) => match end {
                T::HandshakeFailed(_) => O::TlsHandshakeFailed,
                T::NoCertificate => O::TlsNoCertificate,
                T::ClientCertificate(_) => O::TlsClientCertificateRefused,
                T::Timeout => O::TlsTimeout,
                T::ClientClosed => O::TlsClientClosed,
                T::NotConfigured => O::TlsNotConfigured,
            },
            Early::PgBackendTlsUnsupported => O::PgBackendTlsUnsupported,
            Early::Drained => O::DrainCut,
            Early::PgCancel(end) => match end {
                pg::CancelEnd::Forwarded => O::PgCancelForwarded,
                pg::CancelEnd::UnknownKey => O::PgCancelUnknownKey,
                pg::CancelEnd::Failed => O::PgCancelFailed,
            },
            Early::PgMalformed => O::PgBadStartup,
            Early::AcmeHttp01 => O::AcmeHttp01,
            Early::AcmeTlsAlpn => O::AcmeTlsAlpn,
        }
    }
}

impl Early {
    /// What the access log's `error=` says beside the outcome.
    fn cause(&self) -> Option<io::Error> {
        match self {
            // Say what the bytes were, so an operator can tell a
            // misconfigured plain client from a scanner.
            Early::NotTls(reason) => Some(io::Error::new(io::ErrorKind::InvalidData, *reason)),
            Early::LocalResource(errno) => Some(io::Error::from_raw_os_error(*errno)),
            // Why rustls refused the handshake.
            Early::Tls(end) => end.cause(),
            _ => None,
        }
    }
}

/// How a connection ended: the one outcome of its access-log line and of
/// the metrics' per-outcome counts.
#[derive(Debug)]
enum Ended {
    /// Forwarding ran and ended this way.
    Forwarded(forward::Outcome),
    /// It ended before forwarding.
    Early(Early),
    /// A cut for `onServerDown = "close"`: its server went down (a drain's
    /// cut would say `drain_cut`).
    ServerDown,
}

impl Ended {
    /// A cut is a server-down cut when the connection's cut says so.
    fn server_down_if(self, server_down: bool) -> Ended {
        match self {
            Ended::Forwarded(forward::Outcome::Drained) | Ended::Early(Early::Drained)
                if server_down =>
            {
                Ended::ServerDown
            }
            other => other,
        }
    }

    /// The one typed outcome of the access-log line and the metrics.
    fn outcome(&self) -> crate::outcome::Outcome {
        use crate::outcome::Outcome as O;
        match self {
            Ended::Forwarded(o) => match o {
                Outcome::Closed => O::Closed,
                Outcome::ClientReset => O::ClientReset,
                Outcome::BackendReset => O::BackendReset,
                Outcome::TerminationDelay => O::TerminationDelay,
                Outcome::IdleTimeout => O::IdleTimeout,
                Outcome::Drained => O::DrainCut,
            },
            Ended::Early(e) => e.outcome(),
            Ended::ServerDown => O::ServerDown,
        }
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    /// The typed outcome says what the ending's own name says, so the
    /// access log and metrics keep the names they had.
    #[test]
    fn endings_map_to_the_outcome_of_the_same_name() {
        use forward::Outcome as F;
        use tls::TlsEnd as T;
        let forwarded = [
            F::Closed,
            F::ClientReset,
            F::BackendReset,
            F::TerminationDelay,
            F::IdleTimeout,
            F::Drained,
        ];
        for o in forwarded {
            assert_eq!(Ended::Forwarded(o).outcome().as_str(), o.as_str());
        }
        let peek = [
            PeekError::Timeout,
            PeekError::ClientClosed,
            PeekError::HelloTooLarge,
            PeekError::ProxyInvalid,
            PeekError::PgInjection,
        ];
        for p in peek {
            assert_eq!(Early::Peek(p).outcome().as_str(), p.as_str());
        }
        let refused = rustls::Error::General("refused".into());
        let tls_ends = [
            T::NoCertificate,
            T::ClientCertificate(refused),
            T::Timeout,
            T::ClientClosed,
            T::NotConfigured,
        ];
        for t in tls_ends {
            let name = t.as_str();
            assert_eq!(Early::Tls(t).outcome().as_str(), name);
        }
        let cancels = [
            pg::CancelEnd::Forwarded,
            pg::CancelEnd::UnknownKey,
            pg::CancelEnd::Failed,
        ];
        for c in cancels {
            assert_eq!(Early::PgCancel(c).outcome().as_str(), c.as_str());
        }
        for (e, name) in [
            (Ended::ServerDown, "server_down"),
            (Ended::Early(Early::Drained), "drain_cut"),
            (Ended::Early(Early::AcmeHttp01), "acme_http01"),
            (Ended::Early(Early::AcmeTlsAlpn), "acme_tls_alpn"),
            (
                Ended::Early(Early::LocalResource(24)),
                "local_resource_exhausted",
            ),
        ] {
            assert_eq!(e.outcome().as_str(), name);
        }
    }
}

/// Fields of the access-log line, filled in as the connection progresses.
struct Access<'a> {
    ws: &'a WorkerSnap,
    ep: EntryPointId,
    client: SocketAddr,
    start: Instant,
    router: Option<RouterId>,
    service: Option<ServiceId>,
    server: Option<&'a str>,
}

impl Access<'_> {
    fn emit(&self, ended: &Ended, up: u64, down: u64, error: Option<&io::Error>) {
        let outcome = ended.outcome();
        let cfg = &self.ws.snap.config;
        // Counted whether or not the access log is on (reliability promise 3).
        let (router, service) = (self.router, self.service);
        crate::metrics::connection_ended(cfg, self.ep, router, service, outcome, up, down);
        if !cfg.runtime.access_log {
            return;
        }
        let dash = "-";
        let router = self.router.map_or(dash, |r| cfg.router(r).name.as_str());
        let service = self.service.map_or(dash, |s| cfg.service(s).name.as_str());
        log!(
            Info,
            "conn",
            entrypoint = cfg.entrypoint(self.ep).name,
            router = router,
            service = service,
            server = self.server.unwrap_or(dash),
            client = self.client,
            up = up,
            down = down,
            duration_ms = self.start.elapsed().as_millis(),
            outcome = outcome.as_str(),
            error = error.map_or(String::from("-"), |e| e.to_string())
        );
    }
}

/// Releases an inFlightConn slot when the connection ends.
struct InFlightSlot<'a> {
    shared: &'a Shared,
    key: (MiddlewareId, IpAddr),
}

impl Drop for InFlightSlot<'_> {
    fn drop(&mut self) {
        let mut m = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Serve one accepted connection to its end. The caller owns the client
/// socket and the snapshot (so this future does not hold a second copy of
/// either: it lives as long as the connection).
pub async fn serve(
    ws: &WorkerSnap,
    ep: EntryPointId,
    client: &TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    cut: &Cutoff,
) {
    let mut acc = Access {
        ws,
        ep,
        client: peer,
        start: Instant::now(),
        router: None,
        service: None,
        server: None,
    };
    let result = {
        let mut phases = pin!(run(ws, ep, client, shared, &mut acc, cut));
        poll_fn(|cx| {
            if let Poll::Ready(r) = phases.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            // Once forwarding runs, the pump ends itself on a cut (and
            // applies the ending policy); before that, the phase in progress
            // (peek, dial, handshake, replay) is dropped here.
            if cut.before_forwarding() && cut.poll_cut(cx).is_ready() {
                // Armed while the phase still owns the backend socket, so its
                // close is a reset too.
                if let Some(fd) = cut.backend() {
                    let _ = sys::remembered::set_linger_zero(fd);
                }
                let _ = sys::set_linger_zero(sys::fd(client));
                return Poll::Ready(Err(Early::Drained));
            }
            Poll::Pending
        })
        .await
    };
    let (ended, up, down, error) = match result {
        Ok((report, outcome)) => {
            let ended = Ended::Forwarded(outcome);
            (ended, report.up, report.down, report.error)
        }
        Err(early) => {
            // Nothing was forwarded; closing may reset a client that sent
            // bytes we never read, which is the honest answer to it.
            let error = early.cause();
            (Ended::Early(early), 0, 0, error)
        }
    };
    let ended = ended.server_down_if(cut.was_server_down());
    acc.emit(&ended, up, down, error.as_ref());
}

/// A session's two phases. Setting up (PROXY header, peek, routing, TLS
/// handshake, dial, replay) needs far more state than forwarding, and a
/// session spends nearly all of its life forwarding, so the set-up phase
/// runs in a boxed future of its own that is freed before forwarding
/// starts: an idle proxied connection carries only the forwarding phase's
/// state. TLS sessions (terminated or originated) forward inside the set-up
/// future, which holds their larger state anyway.
async fn run<'a>(
    ws: &'a WorkerSnap,
    ep: EntryPointId,
    client: &TcpStream,
    shared: &'a Shared,
    acc: &mut Access<'a>,
    cut: &Cutoff,
) -> Result<(forward::Report, Outcome), Early> {
    let plain = match Box::pin(setup(ws, ep, client, shared, acc, cut)).await? {
        Next::Done(report, outcome) => return Ok((report, outcome)),
        Next::Plain(p) => p,
    };
    let Plain {
        backend,
        opts,
        up,
        down,
        _key,
        _slots,
        _slot,
    } = plain;
    // `auto` and `completion` go to the completion engine, which falls back
    // to the readiness pumps where it cannot run (epoll, no ring).
    let completion = matches!(
        opts.mode,
        crate::model::Forwarding::Auto | crate::model::Forwarding::Completion
    );
    let (mut report, outcome) = if completion {
        crate::completion::duplex(client, &backend, &opts, cut).await
    } else {
        // Boxed: the readiness pumps' state is only paid for by the
        // connections that use them.
        Box::pin(forward::duplex(client, &backend, &opts, cut)).await
    };
    report.up += up;
    report.down += down;
    Ok((report, outcome))
}

/// Where the set-up phase left a session. Returned once per session and
/// taken apart at once, so the larger variant costs nothing to keep.
#[allow(clippy::large_enum_variant)]
enum Next<'a> {
    /// Forwarded to its end already (the TLS paths).
    Done(forward::Report, Outcome),
    /// Plain forwarding is next, with what it needs.
    Plain(Plain<'a>),
}

/// What the forwarding phase of a plain (or passthrough) session holds.
struct Plain<'a> {
    backend: TcpStream,
    opts: forward::Opts,
    /// Bytes moved during set-up (replayed peek, PostgreSQL startup relay),
    /// added to the forwarded counts.
    up: u64,
    down: u64,
    /// The PostgreSQL cancel key registered for this session, if any
    /// (boxed: most sessions have none).
    _key: Option<Box<pg::KeyGuard>>,
    /// inFlightConn places, held until the end.
    _slots: Vec<InFlightSlot<'a>>,
    /// This connection's place in its server's count.
    _slot: crate::balance::Slot,
}

async fn setup<'a>(
    ws: &'a WorkerSnap,
    ep: EntryPointId,
    client: &TcpStream,
    shared: &'a Shared,
    acc: &mut Access<'a>,
    cut: &Cutoff,
) -> Result<Next<'a>, Early> {
    let cfg = &ws.snap.config;
    // Nothing to set on the client socket: `sys::accept4` made it
    // non-blocking (SOCK_NONBLOCK) and it inherits TCP_NODELAY and the
    // client keep-alive from the listener (`worker::bind_one`); sys.rs tests
    // that the kernel does so. Setting them again cost system calls per
    // connection.
    // A `[::]` listener reports IPv4 clients as ::ffff:a.b.c.d; rules and
    // allow lists always see the canonical form.
    // The client's address as accepted (`acc.client`), not held twice.
    let peer = acc.client;
    let client_ip = peer.ip().to_canonical();

    let ep_cfg = cfg.entrypoint(ep);
    // Every entrypoint of the snapshot has its routes.
    let Some(entry) = ws.snap.routes.entry(ep) else {
        return Err(Early::NoRoute);
    };
    // One absolute deadline from accept to the routing decision; 0 = none
    // (Traefik's meaning of a zero readTimeout).
    let deadline = (!ep_cfg.read_timeout.is_zero()).then(|| acc.start + ep_cfg.read_timeout);
    let mut reader = Reader::new(client, deadline);

    // PROXY protocol, with Traefik's meaning (go-proxyproto's listener,
    // policy USE for trustedIPs or `insecure`, IGNORE for other sources): on
    // an entrypoint with a `proxyProtocol` table a header is read and
    // stripped from every source; its addresses count only when the source
    // is trusted, and a trusted source may also send none (a direct client).
    // Without the table nothing is parsed: the bytes are the client's data.
    let mut client_addr = SocketAddr::new(client_ip, peer.port());
    // The address the client connected to, when a trusted PROXY header says.
    let mut proxied_dst = None;
    if let Some(pp) = &ep_cfg.proxy_protocol {
        // A router that peeks waits for the client's first bytes anyway. One
        // that dials at once must still see whether they start a header, but
        // a server-speaks-first client (MySQL, SMTP, a redis banner) sends
        // nothing until it has the greeting: after `PROXY_UNDECIDED_WAIT`
        // without a byte that settles it, the connection is direct.
        let undecided_by = (!entry.needs_peek()).then(|| acc.start + PROXY_UNDECIDED_WAIT);
        let header = Box::pin(reader.proxy_header(undecided_by))
            .await
            .map_err(Early::Peek)?;
        let trusted = pp.insecure || pp.trusted_ips.iter().any(|n| n.contains(&client_ip));
        if let Some(h) = header.filter(|_| trusted) {
            // LOCAL / UNKNOWN: the sender's own connection, taken as direct.
            if let proxy_protocol::Addresses::Proxied { src, dst } = h.addresses {
                client_addr = SocketAddr::new(src.ip().to_canonical(), src.port());
                acc.client = client_addr;
                proxied_dst = Some(dst);
            }
        }
    }
    let client_ip = client_addr.ip();

    // ACME HTTP-01 on a resolver's httpChallenge entrypoint, before routing.
    if crate::acme::is_http01_entrypoint(&ep_cfg.name)
        && Box::pin(crate::acme::http01::serve(client, &mut reader))
            .await
            .map_err(Early::Peek)?
    {
        return Err(Early::AcmeHttp01);
    }

    // Peek only when a TLS router needs the ClientHello; otherwise dial at
    // once (server-speaks-first protocols).
    let mut peeked = if entry.needs_peek() {
        // Boxed, like every phase before forwarding: its memory is freed
        // when it ends instead of staying in the connection's future.
        Box::pin(reader.hello(client_hello::DEFAULT_CAP))
            .await
            .map_err(Early::Peek)?
    } else {
        Peeked {
            buf: reader.buf,
            ..Peeked::default()
        }
    };
    // ACME TLS-ALPN-01: a validation of a name being validated now is
    // answered with its challenge certificate, whatever the routers.
    if let Some(h) = &peeked.hello {
        if crate::acme::is_tls_alpn_challenge(h.sni.as_deref(), &h.alpn) {
            Box::pin(tls::answer_acme_tls_alpn(client, &peeked.buf, deadline)).await;
            return Err(Early::AcmeTlsAlpn);
        }
    }
    // A plain connection on an entrypoint with PostgreSQL routers: its
    // StartupMessage is read before routing (PgDatabase, PgUser, PgParam),
    // and a CancelRequest goes to the server that issued its key.
    let mut pg_startup: Option<(postgres::Startup, usize)> = None;
    // (Also where only TLS routers carry PostgreSQL: libpq before 17 sends
    // every CancelRequest in plain, whatever the session's sslmode.)
    if (entry.pg_plain || entry.pg_tls) && peeked.hello.is_none() && !peeked.pg_ssl {
        let mut r = Reader::new(client, deadline);
        r.buf = std::mem::take(&mut peeked.buf);
        match Box::pin(r.pg_first()).await.map_err(Early::Peek)? {
            PgOpen::Startup { startup, len } => pg_startup = Some((startup, len)),
            PgOpen::Cancel { cancel, len } => {
                let request = r.buf.get(..len).unwrap_or(&[]);
                let end = Box::pin(pg::forward_cancel(cancel.pid, &cancel.key, request)).await;
                return Err(Early::PgCancel(end));
            }
            PgOpen::Malformed(why) => {
                let msg = format!("invalid startup packet: {why}");
                let state = postgres::SQLSTATE_PROTOCOL_VIOLATION;
                Box::pin(pg_refuse(client, state, &msg)).await;
                return Err(Early::PgMalformed);
            }
        }
        peeked.buf = r.buf;
        peeked.not_tls = None;
    }
    let alpn: Vec<&[u8]> = peeked
        .hello
        .iter()
        .flat_map(|h| h.alpn.iter().map(Vec::as_slice))
        .collect();
    let ctx = MatchCtx {
        sni: peeked.hello.as_ref().and_then(|h| h.sni.as_deref()),
        alpn: &alpn,
        client_ip,
        tls: peeked.hello.is_some(),
        pg: pg_startup.as_ref().map(|(s, _)| s),
    };
    // After answering `S` to an SSLRequest only TLS may follow, and only a
    // TLS router may take it: plain bytes there are closed, as Traefik does,
    // not offered to a plain router with our SSLRequest in front of them.
    if peeked.pg_ssl && peeked.hello.is_none() {
        return Err(peeked.not_tls.map_or(Early::NoRoute, Early::NotTls));
    }
    // A TLS connection where terminating routers carry PostgreSQL: the
    // first pass picks the router that may match once the StartupMessage
    // is read inside TLS; after the handshake `pg_tls_reroute` decides.
    let first_pass = if ctx.tls && entry.pg_tls {
        ws.snap.routes.route_tls_pending(cfg, ep, &ctx)
    } else {
        ws.snap.routes.route(cfg, ep, &ctx)
    };
    let mut routed = match first_pass {
        Some(r) => r,
        // A TLS client no TLS router takes is refused, never handed to a
        // plain router (route.rs). Traefik completes the handshake with its
        // default certificate and closes; after a PostgreSQL SSLRequest it
        // closes without one, and so do we.
        None if peeked.hello.is_some() => {
            if !peeked.pg_ssl {
                Box::pin(tls::refuse(
                    &ws.snap.tls,
                    client,
                    &peeked.buf,
                    ctx.sni,
                    deadline,
                ))
                .await;
            }
            return Err(Early::NoRoute);
        }
        // A PostgreSQL client no router takes is told so, in its protocol.
        None if pg_startup.is_some() => {
            let msg = pg_startup
                .as_ref()
                .map_or_else(String::new, |(s, _)| no_route_message(s));
            Box::pin(pg_refuse(client, postgres::SQLSTATE_NO_ROUTE, &msg)).await;
            return Err(Early::NoRoute);
        }
        // Bytes that were not the ClientHello a TLS router waited for are
        // counted as such, with the reason, rather than as a name miss.
        None => return Err(peeked.not_tls.map_or(Early::NoRoute, Early::NotTls)),
    };
    acc.router = Some(routed.id);
    let mut router = routed.router;
    // The router's decision waits for the StartupMessage inside TLS.
    let pg_pending = ctx.tls
        && entry.pg_tls
        && router.postgres.is_some()
        && router.tls.as_ref().is_some_and(|t| !t.passthrough);

    let mut _slots = Vec::new();
    if !pg_pending {
        _slots = admit(cfg, router, client_ip, shared)?;
    }

    // TLS termination: the handshake completes before the backend is dialed.
    let mut terminated = match &router.tls {
        Some(t) if !t.passthrough && peeked.hello.is_some() => Some(Box::new(
            Box::pin(tls::handshake(
                &ws.snap.tls,
                client,
                &peeked.buf,
                peeked.hello.as_ref().and_then(|h| h.sni.as_deref()),
                t.options,
                deadline,
            ))
            .await
            .map_err(Early::Tls)?,
        )),
        _ => None,
    };

    // The StartupMessage of a terminated PostgreSQL session, read inside TLS.
    let mut tls_startup: Option<(postgres::Startup, usize, Vec<u8>)> = None;
    if let (true, Some(accepted)) = (pg_pending, terminated.as_deref_mut()) {
        let mut front = pg::Front::Tls(client, accepted);
        let (startup, len, buf) = Box::pin(pg_tls_first(&mut front, deadline)).await?;
        let ctx = MatchCtx {
            pg: Some(&startup),
            ..ctx
        };
        let options = router.tls.as_ref().map(|t| t.options);
        let fits = |r: &crate::route::Routed<'_>| {
            let tls = r.router.tls.as_ref();
            tls.is_some_and(|t| !t.passthrough) && tls.map(|t| t.options) == options
        };
        // The handshake was made with the first pass's TLS options: only a
        // router terminating with the same options may take the session.
        let Some(rerouted) = ws.snap.routes.route(cfg, ep, &ctx).filter(fits) else {
            let msg = no_route_message(&startup);
            let _ = front
                .write_all(&postgres::error_response(postgres::SQLSTATE_NO_ROUTE, &msg))
                .await;
            if let pg::Front::Tls(c, a) = &mut front {
                a.close_plain(c);
            }
            return Err(Early::NoRoute);
        };
        acc.router = Some(rerouted.id);
        routed = rerouted;
        router = routed.router;
        _slots = admit(cfg, router, client_ip, shared)?;
        tls_startup = Some((startup, len, buf));
    }

    acc.service = Some(routed.service_id);
    // `_slot`: this connection's place in the server's count (leastConn,
    // maxConn), held until the connection ends.
    let Dialed {
        stream: backend,
        picked,
        slot: _slot,
    } = Box::pin(dial_service(ws, routed, acc, client_ip)).await?;
    cut.set_backend(backend.as_raw_fd());
    let (lb, transport) = (picked.lb, picked.transport);
    if picked.service.on_server_down == crate::model::OnServerDown::Close {
        // The worker cuts this session when the server stops being
        // pickable (worker::close_gone_servers).
        cut.set_target(&picked.service.name, &picked.server.address_text);
    }
    let opts = forward::Opts {
        termination_delay: match lb.termination_delay {
            Some(d) => d,
            None => transport.termination_delay,
        },
        idle_timeout: transport.idle_timeout,
        mode: cfg.runtime.forwarding,
        buffer_size: cfg.runtime.buffer_size,
    };

    // PROXY protocol towards the backend: the client's address as we know it.
    if let Some(version) = lb.proxy_protocol {
        let dst = proxied_dst
            .or_else(|| client.local_addr().ok())
            .unwrap_or(client_addr);
        let header = match version {
            crate::model::ProxyVersion::V1 => proxy_protocol::encode_v1(client_addr, dst),
            crate::model::ProxyVersion::V2 => proxy_protocol::encode_v2(client_addr, dst),
        };
        write_all(&backend, &header)
            .await
            .map_err(|_| Early::BackendWrite)?;
    }

    if let Some(mut accepted) = terminated {
        // The hello was consumed by the handshake; do not hold it for the
        // connection's lifetime.
        drop(peeked);
        let server = picked.server;
        let mut _key = None;
        let mut startup_moved = pg::Moved::default();
        if let (Some(rewrite), Some((startup, len, buf))) = (&router.postgres, &tls_startup) {
            let (startup, len, buf) = (startup, *len, buf);
            let mut front = pg::Front::Tls(client, &mut accepted);
            if server.tls {
                // The startup packet was taken out of the client's stream
                // and the pump has no way to put it before a backend TLS
                // session yet: refused, in the client's protocol.
                let msg = "PostgreSQL routing towards a `tls = true` server is not supported";
                let _ = front
                    .write_all(&postgres::error_response(postgres::SQLSTATE_NO_ROUTE, msg))
                    .await;
                return Err(Early::PgBackendTlsUnsupported);
            }
            let out = pg_rewrite(rewrite, startup, len, buf);
            write_all(&backend, &out)
                .await
                .map_err(|_| Early::BackendWrite)?;
            startup_moved.up = out.len() as u64;
            let mut scan = postgres::BackendScan::default();
            let m = Box::pin(pg::relay_startup(&mut front, &backend, &mut scan))
                .await
                .map_err(|_| Early::BackendWrite)?;
            startup_moved.up += m.up;
            startup_moved.down = m.down;
            if let Some((pid, secret)) = scan.key.take() {
                let target = pg::Target {
                    addr: server.address,
                    dial_timeout: transport.dial_timeout,
                };
                _key = Some(pg::register(pid, secret, target));
            }
        }
        // The server's `tls` decides, as in Traefik; the transport's `tls`
        // table only configures it.
        let backend_tls = server.tls.then_some(tls::BackendTls {
            transport: picked.transport_id,
            address: &server.address_text,
        });
        // Boxed: TLS state is large, and plain connections must not carry
        // its size in their futures.
        let (mut report, outcome) =
            Box::pin((*accepted).forward(&ws.snap.tls, client, &backend, backend_tls, &opts, cut))
                .await;
        report.up += startup_moved.up;
        report.down += startup_moved.down;
        return Ok(Next::Done(report, outcome));
    }

    // Passthrough of a PostgreSQL SSLRequest: ask the backend for TLS too,
    // then the ClientHello flows untouched.
    // PostgreSQL 17's direct TLS (a ClientHello offering ALPN `postgresql`
    // with no SSLRequest before it) passed through to a service of servers
    // older than 17 (`postgresSSLRequest`): ours goes first, then the hello.
    let direct_pg = !peeked.pg_ssl
        && lb.pg_ssl_request_first
        && peeked
            .hello
            .as_ref()
            .is_some_and(|h| h.alpn.iter().any(|p| p == b"postgresql"));
    if peeked.pg_ssl || direct_pg {
        Box::pin(pg_ssl_request(&backend, transport.dial_timeout)).await?;
    }
    let server = picked.server;
    if server.tls {
        // TLS origination (Traefik dials every `tls = true` server with TLS,
        // whatever the router): the client's bytes, peeked ones first, are
        // carried inside TLS. Boxed like the terminated path.
        let bt = tls::BackendTls {
            transport: picked.transport_id,
            address: &server.address_text,
        };
        // The bytes move on; the rest of the peek (the parsed hello) is
        // freed at the end of this block, not held for the connection.
        let replay = {
            let p = peeked;
            p.buf
        };
        let (report, outcome) = Box::pin(tls::originate(
            &ws.snap.tls,
            client,
            &backend,
            bt,
            replay,
            &opts,
            cut,
        ))
        .await;
        return Ok(Next::Done(report, outcome));
    }
    // A PostgreSQL router: the startup packet as the router rewrites it.
    let pg_session = router.postgres.as_ref().zip(pg_startup.as_ref());
    if let Some((rewrite, (startup, len))) = pg_session {
        if rewrite.database.is_some() || rewrite.user.is_some() {
            peeked.buf = pg_rewrite(rewrite, startup, *len, &peeked.buf);
        }
    }
    let replayed = peeked.buf.len() as u64;
    if replayed > 0 {
        write_all(&backend, &peeked.buf)
            .await
            .map_err(|_| Early::BackendWrite)?;
    }
    drop(peeked);
    // Relay the startup phase message-aware to learn the cancel key, which
    // is remembered for this session's lifetime (`_key` drops at its end).
    let mut startup_moved = pg::Moved::default();
    let mut _key = None;
    if pg_session.is_some() {
        let mut scan = postgres::BackendScan::default();
        match Box::pin(pg::relay_startup(
            &mut pg::Front::Plain(client),
            &backend,
            &mut scan,
        ))
        .await
        {
            Ok(m) => startup_moved = m,
            Err(_) => return Err(Early::BackendWrite),
        }
        if let Some((pid, secret)) = scan.key.take() {
            let target = pg::Target {
                addr: server.address,
                dial_timeout: transport.dial_timeout,
            };
            _key = Some(Box::new(pg::register(pid, secret, target)));
        }
    }
    Ok(Next::Plain(Plain {
        backend,
        opts,
        up: replayed + startup_moved.up,
        down: startup_moved.down,
        _key,
        _slots,
        _slot,
    }))
}

/// Apply inFlightConn and ipAllowList of `router` to the client.
fn admit<'s>(
    cfg: &crate::model::Config,
    router: &crate::model::Router,
    client_ip: IpAddr,
    shared: &'s Shared,
) -> Result<Vec<InFlightSlot<'s>>, Early> {
    let mut slots = Vec::new();
    for &mi in &router.middlewares {
        match &cfg.middleware(mi).kind {
            MiddlewareKind::IpAllowList(nets) => {
                if !nets.iter().any(|n| n.contains(&client_ip)) {
                    return Err(Early::Denied);
                }
            }
            MiddlewareKind::InFlightConn(amount) => {
                let key = (mi, client_ip);
                let mut m = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                let n = m.entry(key).or_insert(0);
                if *n >= *amount {
                    return Err(Early::TooManyConnections);
                }
                *n += 1;
                drop(m);
                slots.push(InFlightSlot { shared, key });
            }
        }
    }
    Ok(slots)
}

/// The bytes towards the backend: `buf` (the client's startup packet of
/// `len` bytes and whatever followed it) with the packet rewritten when
/// the router rewrites the database or the user.
fn pg_rewrite(
    rewrite: &crate::model::PgRouter,
    startup: &postgres::Startup,
    len: usize,
    buf: &[u8],
) -> Vec<u8> {
    if rewrite.database.is_none() && rewrite.user.is_none() {
        return buf.to_vec();
    }
    let mut out = startup.encode_with(
        rewrite.database.as_deref().map(str::as_bytes),
        rewrite.user.as_deref().map(str::as_bytes),
    );
    out.extend_from_slice(buf.get(len..).unwrap_or(&[]));
    out
}

fn no_route_message(s: &postgres::Startup) -> String {
    let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or(b"")).into_owned();
    format!(
        "no route for database \"{}\" and user \"{}\"",
        text(s.database()),
        text(s.param(b"user"))
    )
}

/// Read the first PostgreSQL message inside terminated TLS: a StartupMessage
/// (returned with its exact bytes and anything after them), or a
/// CancelRequest, which is sent on to the issuing server here. Anything else
/// is answered with an ErrorResponse 08P01.
async fn pg_tls_first(
    front: &mut pg::Front<'_>,
    deadline: Option<Instant>,
) -> Result<(postgres::Startup, usize, Vec<u8>), Early> {
    let mut buf = Vec::new();
    loop {
        let why = match postgres::decode_first(&buf) {
            postgres::First::NeedMore { min_len } => {
                front
                    .fill(&mut buf, min_len, deadline)
                    .await
                    .map_err(Early::Peek)?;
                continue;
            }
            postgres::First::Startup { startup, len } => return Ok((startup, len, buf)),
            postgres::First::Cancel { cancel, len } => {
                let request = buf.get(..len).unwrap_or(&[]);
                let end = Box::pin(pg::forward_cancel(cancel.pid, &cancel.key, request)).await;
                return Err(Early::PgCancel(end));
            }
            postgres::First::SslRequest | postgres::First::GssEncRequest => {
                "an encryption request inside TLS"
            }
            postgres::First::Malformed(why) => why,
        };
        let msg = format!("invalid startup packet: {why}");
        let reply = postgres::error_response(postgres::SQLSTATE_PROTOCOL_VIOLATION, &msg);
        let _ = front.write_all(&reply).await;
        if let pg::Front::Tls(c, a) = front {
            a.close_plain(c);
        }
        return Err(Early::PgMalformed);
    }
}

/// Answer a PostgreSQL client that cannot be served (a malformed first
/// message: 08P01, as a server answers one; no route) with an
/// ErrorResponse, then close
/// gently: FIN first, and what the client still sends is read and dropped
/// for a moment, so the close does not reset the connection before the
/// client has read the error.
async fn pg_refuse(client: &TcpStream, sqlstate: &str, message: &str) {
    let reply = postgres::error_response(sqlstate, message);
    if write_all(client, &reply).await.is_err() {
        return;
    }
    let fd = sys::fd(client);
    let _ = sys::shutdown(fd, std::net::Shutdown::Write);
    let mut sink = [0u8; 1024];
    let drain = async {
        loop {
            match sys::recv(fd, &mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if client.readable(false).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    };
    let _ = monoio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Send our SSLRequest to a PostgreSQL backend and require its `S`.
async fn pg_ssl_request(backend: &TcpStream, limit: Duration) -> Result<(), Early> {
    write_all(backend, &postgres::SSL_REQUEST)
        .await
        .map_err(|_| Early::BackendWrite)?;
    let fd = sys::fd(backend);
    let mut b = [0u8; 1];
    let wait = async {
        loop {
            match sys::recv(fd, &mut b) {
                Ok(1) => return Ok(b[0]),
                Ok(_) => return Err(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    backend.readable(false).await.map_err(|_| ())?
                }
                Err(_) => return Err(()),
            }
        }
    };
    let limit = if limit.is_zero() {
        Duration::from_secs(30)
    } else {
        limit
    };
    let reply = match monoio::time::timeout(limit, wait).await {
        Ok(Ok(r)) => r,
        _ => return Err(Early::BackendRefusedTls),
    };
    postgres::check_backend_reply(reply).map_err(|e| {
        log!(Warn, "postgres backend refused TLS", reason = e.as_str());
        Early::BackendRefusedTls
    })
}

/// How often a held connection looks for a pickable server again.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// What `dial_service` picked and connected to, so the caller never looks
/// the server up again.
struct Dialed<'a> {
    stream: TcpStream,
    /// The server, with its service, load balancer and transport.
    picked: crate::balance::ServerRef<'a>,
    /// This connection's place in the server's count (leastConn, maxConn).
    slot: crate::balance::Slot,
}

/// Pick and dial servers of the routed router's service until one accepts;
/// each server at most once. Returns the stream,
/// the server as picked (its load-balancer service, transport and their
/// ids) and the connection's slot on it. `client_ip` (the trusted PROXY
/// source, if any) is what `hrw` hashes.
async fn dial_service<'a>(
    ws: &'a WorkerSnap,
    routed: crate::route::Routed<'a>,
    acc: &mut Access<'a>,
    client_ip: IpAddr,
) -> Result<Dialed<'a>, Early> {
    let service = routed.service;
    let cfg = &ws.snap.config;
    let mut tried = Vec::new();
    let health = &ws.snap.health;
    // switchoverHold: when the service has no pickable server (say, no
    // primary during a switchover) or none accepted the dial, wait for one
    // up to the hold, looking again every HOLD_POLL. A cut (drain) drops
    // this phase like any other.
    let mut held: Option<Instant> = None;
    let seen = crate::balance::Seen {
        loads: ws.snap.loads.as_slice(),
        client: client_ip,
    };
    loop {
        let now = Instant::now();
        let picked = ws.balancer.borrow_mut().pick_seen(
            routed.service_id,
            &tried,
            &|id| health.is_up(id),
            now,
            seen,
        );
        let Some(id) = picked else {
            // Also after failed dials: in a switchover the old primary stops
            // taking connections a little before its check says so; its
            // refusals are retried (each server once per round) until the
            // check catches up and the new primary appears.
            if let Some(hold) = service.hold {
                let since = *held.get_or_insert(now);
                if now.duration_since(since) < hold {
                    monoio::time::sleep(HOLD_POLL).await;
                    tried.clear();
                    continue;
                }
                crate::metrics::held(&service.name, false);
            }
            return Err(if tried.is_empty() {
                Early::NoServer
            } else {
                Early::DialFailed
            });
        };
        if held.take().is_some() {
            crate::metrics::held(&service.name, true);
        }
        tried.push(id);
        // An id the balancer picked is in the snapshot's table.
        let Some(picked) = ws.snap.servers.get(cfg, id) else {
            continue;
        };
        let (lb, server, transport) = (picked.lb, picked.server, picked.transport);
        acc.server = Some(&server.address_text);
        let Some(load) = ws.snap.loads.get(id) else {
            continue;
        };
        // A slot first (maxConn): at once, or after waiting in the queue.
        let slot = match load.try_acquire() {
            Some(slot) => slot,
            None => {
                let limit = lb.queue_timeout.unwrap_or(transport.dial_timeout);
                Box::pin(wait_in_queue(load, limit)).await?
            }
        };
        match dial(
            server.address,
            transport.dial_timeout,
            transport.dial_keep_alive,
        )
        .await
        {
            Ok(s) => {
                ws.balancer.borrow_mut().dial_result(id, true, now);
                return Ok(Dialed {
                    stream: s,
                    picked,
                    slot,
                });
            }
            Err(e) => {
                let svc_name = &picked.service.name;
                if let Some(kind) = sys::local_resource_error(&e) {
                    // Our own shortage (no descriptor, no buffer, no local
                    // port): the server did nothing wrong, so it is not
                    // ejected, and every other server would fail alike, so
                    // there is no failover either.
                    crate::metrics::local_resource_error(kind);
                    log_local_resource_error(svc_name, &server.address_text, kind, &e);
                    return Err(Early::LocalResource(e.raw_os_error().unwrap_or(0)));
                }
                log!(
                    Warn,
                    "dial failed",
                    service = svc_name,
                    server = server.address_text,
                    error = e
                );
                crate::metrics::dial_failed(svc_name, &server.address_text);
                // Passive ejection: this worker passes a server that keeps
                // failing over for a cool-down (balance.rs).
                let at = Instant::now();
                let ejected = ws.balancer.borrow_mut().dial_result(id, false, at);
                if ejected {
                    log!(
                        Warn,
                        "server ejected",
                        service = svc_name,
                        server = server.address_text,
                        failures = crate::balance::EJECT_AFTER_FAILURES,
                        cooldown_ms = crate::balance::EJECT_COOLDOWN.as_millis()
                    );
                }
            }
        }
    }
}

/// Wait in `load`'s queue for a slot, up to `limit`. Dropped (a drain cut),
/// the ticket leaves the queue.
async fn wait_in_queue(
    load: &std::sync::Arc<crate::balance::ServerLoad>,
    limit: Duration,
) -> Result<crate::balance::Slot, Early> {
    let mut ticket = load.enqueue();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(slot) = ticket.poll() {
            return Ok(slot);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Early::QueueTimeout);
        }
        monoio::time::sleep(crate::balance::QUEUE_POLL.min(deadline - now)).await;
    }
}

/// At most one "local resource" warning per worker per this period: when
/// descriptors run out every connection fails the same way, and a line per
/// connection would flood the log (and take time the worker lacks).
const LOCAL_ERROR_LOG_PERIOD: Duration = Duration::from_secs(1);

thread_local! {
    /// When this worker last logged a local resource error, and how many it
    /// has not logged since.
    static LOCAL_ERROR_LOG: Cell<(Option<Instant>, u64)> = const { Cell::new((None, 0)) };
}

fn log_local_resource_error(service: &str, server: &str, kind: usize, e: &io::Error) {
    LOCAL_ERROR_LOG.with(|c| {
        let (last, suppressed) = c.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOCAL_ERROR_LOG_PERIOD) {
            c.set((last, suppressed + 1));
            return;
        }
        c.set((Some(now), 0));
        log!(
            Warn,
            "dial failed: local resource exhausted (the server is not blamed)",
            service = service,
            server = server,
            kind = sys::LOCAL_RESOURCE_ERRORS[kind].1,
            error = e,
            suppressed = suppressed
        );
    })
}

thread_local! {
    /// Whether the sockets this worker's driver dials are non-blocking
    /// already (`None`: no dial yet on this thread).
    static DIALS_NONBLOCKING: Cell<Option<bool>> = const { Cell::new(None) };
}

async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<Duration>,
) -> io::Result<TcpStream> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "dial timeout")),
    };
    let fd = sys::fd(&stream);
    // monoio's epoll driver creates the socket with SOCK_NONBLOCK, its
    // io_uring driver without; a worker's driver never changes, so the
    // first dial on a thread tells which, and later dials on an epoll
    // worker skip the call.
    match DIALS_NONBLOCKING.get() {
        Some(true) => {}
        Some(false) => sys::set_nonblocking(fd)?,
        None => {
            let already = sys::is_nonblocking(fd)?;
            DIALS_NONBLOCKING.set(Some(already));
            if !already {
                sys::set_nonblocking(fd)?;
            }
        }
    }
    stream.set_nodelay(true)?;
    if let Some(k) = keepalive {
        let _ = stream.set_tcp_keepalive(Some(k), Some(k), None);
    }
    Ok(stream)
}
