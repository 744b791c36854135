//! One client connection, from accept to close. The lifecycle the code follows:
//!
//! accept → admit (client address) → peek (only when a TLS router needs the
//! ClientHello) → route → middlewares → pick server → dial (failover) →
//! forward → close → exactly one access-log line with the outcome.
//!
//! Every path out of `serve` ends in one counted outcome (reliability
//! promise 3). Nothing here panics on peer input.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::config::rule::MatchCtx;
use crate::forward::{self, Outcome};
use crate::model::{MiddlewareKind, ServiceKind};
use crate::worker::{Shared, WorkerSnap};
use crate::{log, sys};

/// How a connection ended before forwarding started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// No router matched.
    NoRoute,
    /// An ipAllowList middleware refused the client.
    Denied,
    /// inFlightConn limit reached for the client address.
    TooManyConnections,
    /// Every server was tried and none accepted the connection.
    DialFailed,
    /// The service has no server with a non-zero weight.
    NoServer,
    /// The client socket could not be prepared.
    ClientError,
}

impl Early {
    fn as_str(self) -> &'static str {
        match self {
            Early::NoRoute => "no_route",
            Early::Denied => "denied",
            Early::TooManyConnections => "too_many_connections",
            Early::DialFailed => "dial_failed",
            Early::NoServer => "no_server",
            Early::ClientError => "client_error",
        }
    }
}

/// Fields of the access-log line, filled in as the connection progresses.
struct Access<'a> {
    ws: &'a WorkerSnap,
    ep: usize,
    client: SocketAddr,
    start: Instant,
    router: Option<usize>,
    service: Option<usize>,
    server: Option<&'a str>,
}

impl Access<'_> {
    fn emit(&self, outcome: &str, up: u64, down: u64, error: Option<&io::Error>) {
        let cfg = &self.ws.snap.config;
        if !cfg.runtime.access_log {
            return;
        }
        let dash = "-";
        let router = self.router.map_or(dash, |r| cfg.routers[r].name.as_str());
        let service = self.service.map_or(dash, |s| cfg.services[s].name.as_str());
        log!(
            Info,
            "conn",
            entrypoint = cfg.entrypoints[self.ep].name,
            router = router,
            service = service,
            server = self.server.unwrap_or(dash),
            client = self.client,
            up = up,
            down = down,
            duration_ms = self.start.elapsed().as_millis(),
            outcome = outcome,
            error = error.map_or(String::from("-"), |e| e.to_string())
        );
    }
}

/// Releases an inFlightConn slot when the connection ends.
struct InFlightSlot<'a> {
    shared: &'a Shared,
    key: (usize, IpAddr),
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

pub async fn serve(
    ws: Rc<WorkerSnap>,
    ep: usize,
    client: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) {
    let mut acc = Access {
        ws: &ws,
        ep,
        client: peer,
        start: Instant::now(),
        router: None,
        service: None,
        server: None,
    };
    match run(&ws, ep, &client, peer, shared, &mut acc).await {
        Ok((report, outcome)) => acc.emit(
            outcome.as_str(),
            report.up,
            report.down,
            report.error.as_ref(),
        ),
        Err(early) => {
            // Nothing was forwarded; closing may reset a client that sent
            // bytes we never read, which is the honest answer to it.
            acc.emit(early.as_str(), 0, 0, None)
        }
    }
}

async fn run<'a>(
    ws: &'a WorkerSnap,
    ep: usize,
    client: &TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    acc: &mut Access<'a>,
) -> Result<(forward::Report, Outcome), Early> {
    let cfg = &ws.snap.config;
    let fd = client.as_raw_fd();
    sys::set_nonblocking(fd).map_err(|_| Early::ClientError)?;
    let _ = client.set_nodelay(true);
    // A `[::]` listener reports IPv4 clients as ::ffff:a.b.c.d; rules and
    // allow lists always see the canonical form.
    let client_ip = peer.ip().to_canonical();

    let ctx = MatchCtx {
        sni: None,
        alpn: &[],
        client_ip,
        tls: false,
    };
    let router_idx = ws.snap.routes.route(cfg, ep, &ctx).ok_or(Early::NoRoute)?;
    acc.router = Some(router_idx);
    let router = &cfg.routers[router_idx];

    let mut _slots = Vec::new();
    for &mi in &router.middlewares {
        match &cfg.middlewares[mi].kind {
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
                _slots.push(InFlightSlot { shared, key });
            }
        }
    }

    acc.service = Some(router.service);
    let (backend, lb_service) = dial_service(ws, router.service, acc).await?;
    let ServiceKind::LoadBalancer(lb) = &cfg.services[lb_service].kind else {
        return Err(Early::NoServer);
    };
    let transport = &cfg.transports[lb.transport];
    let opts = forward::Opts {
        termination_delay: match lb.termination_delay {
            Some(d) => d,
            None => transport.termination_delay,
        },
        idle_timeout: transport.idle_timeout,
        mode: cfg.runtime.forwarding,
        buffer_size: cfg.runtime.buffer_size,
    };
    Ok(forward::duplex(client, &backend, &opts).await)
}

/// Pick and dial servers of `service` until one accepts; each server at most
/// once. Returns the stream and the load-balancer service that owns it.
async fn dial_service<'a>(
    ws: &'a WorkerSnap,
    service: usize,
    acc: &mut Access<'a>,
) -> Result<(TcpStream, usize), Early> {
    let cfg = &ws.snap.config;
    let mut tried = Vec::new();
    loop {
        let picked = ws.balancer.borrow_mut().pick(service, &tried);
        let Some(id) = picked else {
            return Err(if tried.is_empty() {
                Early::NoServer
            } else {
                Early::DialFailed
            });
        };
        tried.push(id);
        let (si, idx) = ws.balancer.borrow().server(id);
        let ServiceKind::LoadBalancer(lb) = &cfg.services[si].kind else {
            continue;
        };
        let server = &lb.servers[idx];
        let transport = &cfg.transports[lb.transport];
        acc.server = Some(&server.address_text);
        match dial(
            server.address,
            transport.dial_timeout,
            transport.dial_keep_alive,
        )
        .await
        {
            Ok(s) => return Ok((s, si)),
            Err(e) => {
                log!(
                    Warn,
                    "dial failed",
                    service = cfg.services[si].name,
                    server = server.address_text,
                    error = e
                );
            }
        }
    }
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
    sys::set_nonblocking(stream.as_raw_fd())?;
    stream.set_nodelay(true)?;
    if let Some(k) = keepalive {
        let _ = stream.set_tcp_keepalive(Some(k), Some(k), None);
    }
    Ok(stream)
}
