//! Forwarding both directions of a proxied connection until both are done.
//!
//! One small interface: `duplex(client, backend, opts)` returns the bytes moved
//! each way and how the connection ended. Each direction is a *pump* (copy with
//! pooled buffers, or splice through pooled pipes) that waits for readiness,
//! then moves bytes with non-blocking system calls. Because the only IO
//! operations ever left in flight are readiness polls, dropping a pump (on a
//! reset or a deadline) never loses bytes that were already read.
//!
//! Promises kept here:
//! - a FIN is passed on with `shutdown(SHUT_WR)` after every byte before it,
//!   and the other direction keeps flowing until it ends too or
//!   `terminationDelay` (from the first FIN) expires;
//! - a reset or error on one side is passed on as a reset to the other side,
//!   after the bytes already written to it have left (SIOCOUTQ drains);
//! - when a timer or the end of a drain (`Cutoff`) ends the connection, a
//!   direction that had finished keeps every queued byte and only a direction
//!   cut mid-stream is reset (`ending`, shared with the TLS pump and the
//!   completion engine, which also decides when the phase ends);
//! - bytes are counted as written into the destination, minus what a reset
//!   destroyed in the queue: the access log counts what the peer can have
//!   received;
//! - at most one buffer (or pipe) per direction is held, and only while bytes
//!   are in flight: an idle connection holds none; spares left by a burst
//!   are given back within `POOL_TRIM_PERIOD`s (`trim_pools`).

mod buffers;
pub(crate) mod copy;
mod cutoff;
pub mod ending;
pub mod splice;

pub use cutoff::Cutoff;
pub use ending::abort_after_drain;

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::model::{Forwarding, TerminationDelay};
use crate::sys;
use ending::{Progress, Side, Timers};

/// How often a worker gives back pooled buffers and pipes that stayed unused
/// for a whole period (`trim_pools`): idle memory and descriptors return to
/// the idle level within two periods of a burst.
pub const POOL_TRIM_PERIOD: Duration = Duration::from_secs(1);

/// Give back this worker's pooled buffers and pipes that were not needed
/// during the last period, down to the idle level (buffers.rs, splice.rs).
/// Called by the worker every `POOL_TRIM_PERIOD`.
pub fn trim_pools() {
    buffers::trim();
    splice::trim();
    // Also what connections freed directly (spares over the busy caps).
    sys::allocator_collect();
}

/// How a connection is forwarded, resolved from the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// How long the second direction may go on after the first FIN.
    pub termination_delay: TerminationDelay,
    /// Close when no byte moved in either direction for this long.
    pub idle_timeout: Option<Duration>,
    pub mode: Forwarding,
    pub buffer_size: usize,
}

impl Opts {
    /// The same options with the readiness pumps' `auto` mode: what a
    /// connection the completion engine cannot take is forwarded with.
    pub fn readiness(self) -> Opts {
        Opts {
            mode: Forwarding::Auto,
            ..self
        }
    }
}

/// How the forwarding phase ended (the access-log outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions ended with a FIN.
    Closed,
    /// The client reset (or failed); the backend was reset in turn.
    ClientReset,
    /// The backend reset (or failed); the client was reset in turn.
    BackendReset,
    /// One direction ended and the other did not within `terminationDelay`.
    TerminationDelay,
    /// Nothing moved for `idleTimeout`.
    IdleTimeout,
    /// The drain's time ran out (`graceTimeOut` of the entrypoint, or a cut
    /// at once): a direction still open was reset.
    Drained,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::ClientReset => "client_reset",
            Outcome::BackendReset => "backend_reset",
            Outcome::TerminationDelay => "termination_delay",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Drained => "drain_cut",
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Client → backend bytes.
    pub up: u64,
    /// Backend → client bytes.
    pub down: u64,
    /// The error behind a reset outcome (for the access log).
    pub error: Option<io::Error>,
}

/// How one direction ended.
#[derive(Debug)]
pub(crate) enum DirEnd {
    /// The source sent FIN; it was passed on.
    Eof,
    /// Reading the source failed (ECONNRESET and friends).
    SrcFailed(io::Error),
    /// Writing the destination failed (EPIPE, ECONNRESET).
    DstFailed(io::Error),
}

/// Per-direction state shared with the duplex loop.
pub(crate) struct Dir<'a> {
    pub src: &'a TcpStream,
    pub dst: &'a TcpStream,
    pub bytes: &'a Cell<u64>,
    pub last_active: &'a Cell<Instant>,
}

/// Pass a FIN on: every byte before it has been written already.
pub(crate) fn pass_fin(dst: &TcpStream) {
    let _ = sys::shutdown(sys::fd(dst), Shutdown::Write);
}

/// Write all of `buf` to a non-blocking socket, waiting for writability.
pub async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    let fd = sys::fd(dst);
    while !buf.is_empty() {
        match sys::send(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable(false).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One direction's pump for the configured forwarding mode. `auto` copies
/// small messages and splices bulk flows (measured in PERFORMANCE.md).
fn pump<'a>(dir: Dir<'a>, opts: &Opts) -> Pin<Box<dyn Future<Output = DirEnd> + 'a>> {
    match opts.mode {
        Forwarding::Copy => Box::pin(copy::pump(dir, opts.buffer_size)),
        Forwarding::Splice => Box::pin(splice::pump(dir, opts.buffer_size, false)),
        // `completion` on a driver without a completion engine is `auto`.
        Forwarding::Auto | Forwarding::Completion => {
            Box::pin(splice::pump(dir, opts.buffer_size, true))
        }
    }
}

/// `pump`, after writing `leftover` (bytes an earlier forwarding path
/// received from this direction's source and did not send) to the
/// destination, counted as written. Inside the direction's own pump, so a
/// destination that does not read blocks only its own direction.
fn pump_after<'a>(
    dir: Dir<'a>,
    opts: &Opts,
    leftover: Vec<u8>,
) -> Pin<Box<dyn Future<Output = DirEnd> + 'a>> {
    if leftover.is_empty() {
        return pump(dir, opts);
    }
    let opts = *opts;
    Box::pin(async move {
        {
            let fd = sys::fd(dir.dst);
            let mut rest = &leftover[..];
            while !rest.is_empty() {
                match sys::send(fd, rest) {
                    Ok(k) => {
                        rest = &rest[k..];
                        dir.bytes.set(dir.bytes.get() + k as u64);
                        dir.last_active.set(Instant::now());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = dir.dst.writable(false).await {
                            return DirEnd::DstFailed(e);
                        }
                    }
                    Err(e) => return DirEnd::DstFailed(e),
                }
            }
        }
        drop(leftover);
        pump(dir, &opts).await
    })
}

/// Where a connection stands when another forwarding path hands it over
/// (`resume`): both directions open, no FIN passed on, no ending begun.
pub struct Resume {
    /// Bytes already written into the destinations (client → backend,
    /// backend → client).
    pub up: u64,
    pub down: u64,
    /// Received and not yet sent, per direction (client → backend, backend
    /// → client): written first, each inside its own direction's pump.
    pub leftovers: [Vec<u8>; 2],
    /// When a byte last moved, and the running timers: the idle timeout
    /// counts from the last byte, not from the handover.
    pub last_active: Instant,
    pub timers: Timers,
}

impl DirEnd {
    fn progress(end: &Option<DirEnd>) -> Progress {
        match end {
            None => Progress::Running,
            Some(DirEnd::Eof) => Progress::Finished,
            Some(DirEnd::SrcFailed(_)) => Progress::SrcFailed,
            Some(DirEnd::DstFailed(_)) => Progress::DstFailed,
        }
    }
}

/// Forward both directions until both are done (or a reset / deadline / the
/// drain's `cut`).
pub async fn duplex(
    client: &TcpStream,
    backend: &TcpStream,
    opts: &Opts,
    cut: &Cutoff,
) -> (Report, Outcome) {
    let start = Resume {
        up: 0,
        down: 0,
        leftovers: [Vec::new(), Vec::new()],
        last_active: Instant::now(),
        timers: Timers::new(opts),
    };
    resume(client, backend, opts, cut, start).await
}

/// `duplex` for a connection another forwarding path (the completion
/// engine) forwarded so far and hands over (`Resume`). The counts include
/// the earlier path's; the ending phase runs here, once, for the whole
/// connection.
pub async fn resume(
    client: &TcpStream,
    backend: &TcpStream,
    opts: &Opts,
    cut: &Cutoff,
    start: Resume,
) -> (Report, Outcome) {
    cut.forwarding();
    let Resume {
        up,
        down,
        leftovers: [up_left, down_left],
        last_active,
        mut timers,
    } = start;
    let up = Cell::new(up);
    let down = Cell::new(down);
    let last_active = Cell::new(last_active);
    let c2b = Dir {
        src: client,
        dst: backend,
        bytes: &up,
        last_active: &last_active,
    };
    let b2c = Dir {
        src: backend,
        dst: client,
        bytes: &down,
        last_active: &last_active,
    };
    let mut a = pump_after(c2b, opts, up_left);
    let mut b = pump_after(b2c, opts, down_left);
    let mut a_end: Option<DirEnd> = None;
    let mut b_end: Option<DirEnd> = None;

    let outcome = poll_fn(|cx| {
        if a_end.is_none() {
            if let Poll::Ready(e) = a.as_mut().poll(cx) {
                a_end = Some(e);
            }
        }
        if b_end.is_none() {
            if let Poll::Ready(e) = b.as_mut().poll(cx) {
                b_end = Some(e);
            }
        }
        let (up, down) = (DirEnd::progress(&a_end), DirEnd::progress(&b_end));
        if let Some(o) = ending::settled(up, down) {
            return Poll::Ready(o);
        }
        let half_closed = up == Progress::Finished || down == Progress::Finished;
        timers.poll(cx, cut, half_closed, last_active.get())
    })
    .await;
    // The pumps hold nothing between writes that was counted: a buffer or
    // pipe still holding bytes holds bytes not yet counted.
    drop(a);
    drop(b);
    let up_flow = DirEnd::progress(&a_end).flow();
    let down_flow = DirEnd::progress(&b_end).flow();
    let error = [a_end, b_end].into_iter().flatten().find_map(|e| match e {
        DirEnd::SrcFailed(e) | DirEnd::DstFailed(e) => Some(e),
        DirEnd::Eof => None,
    });
    let client_side = Side {
        sock: client,
        writer: down_flow,
        held: 0,
    };
    let backend_side = Side {
        sock: backend,
        writer: up_flow,
        held: 0,
    };
    let [down_lost, up_lost] = ending::close(outcome, client_side, backend_side, cut).await;
    (
        Report {
            up: up.get().saturating_sub(up_lost),
            down: down.get().saturating_sub(down_lost),
            error,
        },
        outcome,
    )
}
