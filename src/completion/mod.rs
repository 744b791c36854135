//! Completion-based forwarding (`runtime.forwarding = "completion"`) for
//! plain TCP and TLS passthrough on the io_uring driver.
//!
//! Instead of waiting for readiness and then calling `recv` and `send` (two
//! system calls per message plus the poll), each worker has a second
//! io_uring (`sys::uring`) where every connection keeps a multishot RECV
//! armed into a shared provided-buffer ring, and ONE SEND in flight per
//! direction from the buffer that was filled. A monoio task waits for the
//! ring's eventfd and then handles every completion at once with a single
//! submit (`engine`); the per-connection logic is a plain state machine
//! (`conn`). monoio keeps accept, peeking, TLS handshakes and the timers.
//!
//! `duplex` has the shape of `forward::duplex` and the same promises
//! (half-close, resets after the bytes before them, terminationDelay from
//! the first FIN, idle timeout, exact byte counts): its timers are
//! `forward::ending::Timers` and its sockets are closed by
//! `forward::ending::close`, the one ending policy. On the epoll driver, or
//! when the ring cannot be set up (an old kernel), it falls back to
//! `forward::duplex` with `auto`.
//!
//! `forwarding = "auto"` (the default) hands a connection that turns into a
//! bulk flow (`conn::BULK_RUN`) over to the readiness pumps, whole: both
//! directions' operations are cancelled, only their final completions are
//! awaited (never a peer's reading), the bytes received but not sent become
//! per-direction leftovers that `forward::resume` writes first inside each
//! direction's pump, and the byte counts, timers and the one ending phase
//! carry over. Bulk flows then splice (far less CPU per byte than the ring's
//! copies); small request/response traffic stays on the ring.
//! `forwarding = "completion"` never hands over.

mod conn;
mod engine;

use std::cell::Cell;
use std::future::poll_fn;
use std::os::fd::AsRawFd;
use std::task::Poll;

use monoio::net::TcpStream;

use crate::forward::ending::{self, Side, Timers};
use crate::forward::{self, Cutoff, Opts, Outcome, Report};
use crate::model::Forwarding;
use crate::sys::uring::Ring;
use crate::{log, sys};

/// Provided buffers per worker: 1024 × 16 KiB = 16 MiB of address space per
/// worker, committed only as buffers are used. 16 KiB holds a typical
/// database reply or a TLS record; a direction never queues more than
/// `conn::MAX_QUEUED_BUFFERS` of them, so 1024 serve at least 64 saturated
/// directions at once, and ENOBUFS past that only parks.
pub const RING_BUFFERS: u16 = 1024;
/// Size of one provided buffer (see `RING_BUFFERS`).
pub const RING_BUFFER_SIZE: u32 = 16 * 1024;
/// Submission queue entries of the completion ring (completions: twice as
/// many); a full queue is submitted early, so this bounds batching only.
const RING_ENTRIES: u32 = 4096;
/// Test and benchmark knobs (environment): buffer count (a power of two) and
/// size, e.g. a ring of 8 buffers to exercise ENOBUFS.
const ENV_BUFFERS: &str = "SLUICEGATE_COMPLETION_BUFFERS";
const ENV_BUFFER_SIZE: &str = "SLUICEGATE_COMPLETION_BUFFER_SIZE";
/// Test knob: the handover's run in bytes (`conn::BULK_RUN`), e.g. a huge
/// one so that only the both-ways back-up arm of the rule hands over.
const ENV_BULK_RUN: &str = "SLUICEGATE_COMPLETION_BULK_RUN";

fn bulk_run() -> u64 {
    thread_local! {
        static RUN: u64 = std::env::var(ENV_BULK_RUN)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(conn::BULK_RUN);
    }
    RUN.with(|r| *r)
}

thread_local! {
    /// Set by the worker when it runs on the io_uring driver.
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    /// Set when the ring could not be created: fall back for good.
    static BROKEN: Cell<bool> = const { Cell::new(false) };
}

/// Benchmark knob: with `SLUICEGATE_COMPLETION_OFF=1` the completion engine
/// is never used, so `auto` (and `completion`) forward with the readiness
/// pumps' adaptive splice, as on epoll: the before/after comparison.
const ENV_OFF: &str = "SLUICEGATE_COMPLETION_OFF";

/// Called at worker start on the io_uring driver: the completion path may be
/// used on this thread (the ring is created on the first connection).
pub fn enable_on_this_thread() {
    let off = std::env::var(ENV_OFF).is_ok_and(|v| v == "1");
    ENABLED.with(|e| e.set(!off));
}

fn ring_size() -> (u16, u32) {
    let count = std::env::var(ENV_BUFFERS)
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|n| n.is_power_of_two())
        .unwrap_or(RING_BUFFERS);
    let size = std::env::var(ENV_BUFFER_SIZE)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=1 << 20).contains(n))
        .unwrap_or(RING_BUFFER_SIZE);
    (count, size)
}

fn make_ring() -> std::io::Result<Ring> {
    let (count, size) = ring_size();
    // Kernels before 6.0 lack SINGLE_ISSUER / COOP_TASKRUN.
    Ring::new(RING_ENTRIES, count, size, true)
        .or_else(|_| Ring::new(RING_ENTRIES, count, size, false))
}

/// This worker's engine, if the completion path can run here.
fn engine() -> Option<std::rc::Rc<std::cell::RefCell<engine::Engine>>> {
    if !ENABLED.with(Cell::get) || BROKEN.with(Cell::get) {
        return None;
    }
    match engine::get(make_ring) {
        Ok(e) => Some(e),
        Err(e) => {
            BROKEN.with(|b| b.set(true));
            log!(
                Warn,
                "completion forwarding unavailable, using readiness forwarding",
                error = e
            );
            None
        }
    }
}

/// Unregisters the connection if the future is dropped before the end.
struct Registered {
    engine: std::rc::Rc<std::cell::RefCell<engine::Engine>>,
    slot: u32,
    finished: bool,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.finished {
            if let Ok(mut e) = self.engine.try_borrow_mut() {
                e.orphan(self.slot);
            }
        }
    }
}

/// How the ring's part of a connection ended.
enum RingEnd {
    /// The connection ended on the ring.
    Done((Outcome, Option<std::io::Error>)),
    /// It turned into a bulk flow: continue on the readiness path.
    HandOver,
}

/// Forward both directions until both are done (or a reset / deadline), like
/// `forward::duplex`. With `forwarding = "auto"` a connection that turns
/// into a bulk flow (`conn::BULK_RUN`) is handed over, whole, to
/// `forward::resume` (adaptive splice), with its unsent bytes, counts and
/// timers; `completion` keeps every connection on the ring.
pub async fn duplex(
    client: &TcpStream,
    backend: &TcpStream,
    opts: &Opts,
    drain: &Cutoff,
) -> (Report, Outcome) {
    let fallback = opts.readiness();
    let Some(engine) = engine() else {
        // Boxed: a connection on the ring does not carry the readiness
        // pumps' state in its future.
        return Box::pin(forward::duplex(client, backend, &fallback, drain)).await;
    };
    let bulk = (opts.mode == Forwarding::Auto).then(bulk_run);
    let registered = engine
        .borrow_mut()
        .register(client.as_raw_fd(), backend.as_raw_fd(), bulk);
    let slot = match registered {
        Ok(s) => s,
        Err(e) => {
            // The ring refused a submit: it is unusable. This connection's
            // receives may be queued on it, so it must not be forwarded by
            // another path too; it ends here, new ones use readiness.
            BROKEN.with(|b| b.set(true));
            log!(
                Warn,
                "completion ring failed; using readiness forwarding",
                error = e
            );
            let _ = sys::set_linger_zero(sys::fd(client));
            let _ = sys::set_linger_zero(sys::fd(backend));
            let report = Report {
                error: Some(e),
                ..Report::default()
            };
            return (report, Outcome::ClientReset);
        }
    };
    drain.forwarding();
    let mut reg = Registered {
        engine,
        slot,
        finished: false,
    };
    let mut timers = Timers::new(opts);
    let mut cut = false;

    let end = poll_fn(|cx| loop {
        let Some(v) = reg.engine.borrow_mut().view(reg.slot, cx.waker()) else {
            // Unreachable: the slot is ours until `finish`.
            return Poll::Ready(RingEnd::Done((Outcome::ClientReset, None)));
        };
        if let Some(done) = v.done {
            return Poll::Ready(RingEnd::Done(done));
        }
        if v.handover {
            return Poll::Ready(RingEnd::HandOver);
        }
        if cut {
            return Poll::Pending;
        }
        match timers.poll(cx, drain, v.first_fin.is_some(), v.last_active) {
            Poll::Ready(o) => {
                cut = true;
                reg.engine.borrow_mut().stop(reg.slot, conn::Stop::Cut(o));
                // Look again: with nothing in flight it is done at once.
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    let (outcome, error) = match end {
        RingEnd::Done(done) => done,
        RingEnd::HandOver => {
            let handed = reg.engine.borrow_mut().hand_over(reg.slot);
            reg.finished = true;
            let Some(h) = handed else {
                // Unreachable: `view` said the handover is ready.
                return (Report::default(), Outcome::ClientReset);
            };
            crate::metrics::completion_handover();
            let start = forward::Resume {
                up: h.up,
                down: h.down,
                leftovers: h.leftovers,
                last_active: h.last_active,
                timers,
            };
            // Boxed: only handed-over connections pay for the readiness
            // pumps' state.
            return Box::pin(forward::resume(client, backend, &fallback, drain, start)).await;
        }
    };
    let (up, down, [up_flow, down_flow]) = reg.engine.borrow_mut().finish(reg.slot);
    reg.finished = true;
    // Nothing is in flight any more and every counted byte was accepted by
    // its destination socket; the shared policy decides each socket's close
    // and says what a reset destroyed.
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
    // Boxed: it runs once, at the end, and would otherwise enlarge every
    // connection's future for its whole life.
    let [down_lost, up_lost] =
        Box::pin(ending::close(outcome, client_side, backend_side, drain)).await;
    let report = Report {
        up: up.saturating_sub(up_lost),
        down: down.saturating_sub(down_lost),
        error,
    };
    (report, outcome)
}
