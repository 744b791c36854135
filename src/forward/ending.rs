//! How a forwarded connection ends: the one ending policy of `duplex`, of the
//! TLS pump and of the completion engine.
//!
//! - When: `settled` says when the directions' own states end the phase (a
//!   failure on either side at once, or both finished); while it runs,
//!   `Timers` says when a timer ends it (the drain's cut, `terminationDelay`
//!   from the first finished direction, the idle timeout).
//! - How: `fates` then `close` decide and carry out each socket's close.
//!
//! The rule for each socket: its fate is decided by the direction that
//! *writes into* it.
//! - That direction finished (its FIN, after close_notify for TLS, was passed
//!   on): the socket keeps every queued byte, however slowly its peer reads.
//!   A plain `close()` keeps delivering the kernel's queue, but turns into a
//!   reset (which discards it) if input is unread at the close or arrives
//!   after it; so input is read and discarded until the queue has been
//!   acknowledged (bounded by `KEEP_DRAIN_MAX`), then the socket is closed.
//! - That direction was still open when a timer (terminationDelay, idle
//!   timeout) or the end of a drain cut it: the socket is reset at once
//!   (`SO_LINGER 0`), so a truncated stream never looks complete.
//! - A reset or failure of one peer is passed on to the other peer as a reset,
//!   after the bytes already queued to it have left (`abort_after_drain`).
//!
//! Counting (exact bytes): the pumps count a byte when
//! it is written into the destination socket. When a socket is reset (or its
//! peer is gone) with bytes still queued, `close` says how many were lost:
//! the kernel's unacknowledged queue (SIOCOUTQ) plus what the caller still
//! held for it in user space (`Side::held`, e.g. TLS records not yet
//! written). The caller takes them off that direction's count, so the access
//! log counts what the peer can have received.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::BorrowedFd;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio::time::Sleep;

use super::{Cutoff, Opts, Outcome};
use crate::sys;

/// Longest wait for a send queue to drain before an abortive close. A peer that
/// does not read for this long loses the tail; it was being reset anyway.
const RESET_DRAIN_MAX: Duration = Duration::from_secs(2);
/// Poll period while waiting for a send queue to drain before a reset.
const RESET_DRAIN_POLL: Duration = Duration::from_millis(1);
/// Longest wait, on a socket whose stream finished, for its queue to be
/// acknowledged while unread input is discarded. After it the socket is
/// closed plainly: the kernel goes on delivering the queue (as Traefik's
/// plain close does), unless the peer sends more input after that.
const KEEP_DRAIN_MAX: Duration = Duration::from_secs(5);
/// Poll period of that wait: the queue of a slow reader drains over
/// milliseconds to seconds, so a coarse period costs little and is not late.
const KEEP_DRAIN_POLL: Duration = Duration::from_millis(5);
/// Reads of unread input per poll, so a peer that floods us cannot hold the
/// worker (the rest is read at the next poll).
const DISCARD_READS: usize = 64;

/// How one direction stood when forwarding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Still moving (or waiting for) bytes.
    Open,
    /// The source's end of stream was passed on.
    Finished,
    /// The source or the destination failed.
    Failed,
}

/// Where one direction stands, as far as the end of the phase is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Moving bytes, waiting for them, or passing its end of stream on.
    Running,
    /// Its end of stream was passed on (close_notify and FIN for TLS).
    Finished,
    /// Reading its source failed (a reset, a protocol error).
    SrcFailed,
    /// Writing its destination failed.
    DstFailed,
}

impl Progress {
    /// How the direction stood, for the sockets' fates.
    pub fn flow(self) -> Flow {
        match self {
            Progress::Running => Flow::Open,
            Progress::Finished => Flow::Finished,
            Progress::SrcFailed | Progress::DstFailed => Flow::Failed,
        }
    }
}

/// The outcome the directions' own states decide, if the phase is over:
/// a failure of the client's socket (reading it in `up`, writing it in
/// `down`) ends both directions at once as `ClientReset`, one of the
/// backend's as `BackendReset`; both finished is `Closed`. `None`: still
/// running (only a timer or the drain can end it now).
pub fn settled(up: Progress, down: Progress) -> Option<Outcome> {
    use Progress::*;
    match (up, down) {
        (SrcFailed, _) | (_, DstFailed) => Some(Outcome::ClientReset),
        (DstFailed, _) | (_, SrcFailed) => Some(Outcome::BackendReset),
        (Finished, Finished) => Some(Outcome::Closed),
        _ => None,
    }
}

/// The timers of a running forwarding phase. `terminationDelay` runs from
/// the first poll that sees one direction finished (never reset: the other
/// direction has that long to end too); the idle timeout fires when no byte
/// moved either way for that long; the drain's cut ends it whenever it comes.
pub struct Timers {
    termination_delay: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// Boxed: most connections never arm it, and an inline timer would
    /// enlarge every connection's future.
    fin: Option<Pin<Box<Sleep>>>,
    idle: Option<Pin<Box<Sleep>>>,
}

impl Timers {
    pub fn new(opts: &Opts) -> Timers {
        Timers {
            termination_delay: opts.termination_delay.duration(),
            idle_timeout: opts.idle_timeout,
            fin: None,
            idle: opts.idle_timeout.map(|d| Box::pin(monoio::time::sleep(d))),
        }
    }

    /// `Ready(outcome)` when a timer (or the drain) ends the phase now.
    /// `half_closed`: one direction has finished; `last_active`: when a byte
    /// last moved in either direction. Registers every armed timer with
    /// `cx` when it returns `Pending`.
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        cut: &Cutoff,
        half_closed: bool,
        last_active: Instant,
    ) -> Poll<Outcome> {
        if cut.poll_cut(cx).is_ready() {
            return Poll::Ready(Outcome::Drained);
        }
        if let (true, Some(d)) = (half_closed, self.termination_delay) {
            let sleep = self
                .fin
                .get_or_insert_with(|| Box::pin(monoio::time::sleep(d)));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Outcome::TerminationDelay);
            }
        }
        if let (Some(limit), Some(timer)) = (self.idle_timeout, self.idle.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                let quiet = last_active.elapsed();
                if quiet >= limit {
                    return Poll::Ready(Outcome::IdleTimeout);
                }
                *timer = Box::pin(monoio::time::sleep(limit - quiet));
                // Register the new timer with the waker.
                let _ = timer.as_mut().poll(cx);
            }
        }
        Poll::Pending
    }
}

/// What happens to one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// The stream into it finished: keep every queued byte. `input_done`:
    /// its own input ended too, so no input can arrive and a plain close is
    /// safe at once.
    Keep { input_done: bool },
    /// The stream into it was cut: reset now.
    Reset,
    /// The other peer failed: reset once the queue has left (bounded).
    ResetAfterDrain,
    /// Its own peer failed: nothing queued can arrive any more.
    Gone,
}

/// The fates of `[client, backend]` for a forwarding phase that ended with
/// `outcome`, `up` (client → backend) and `down` (backend → client) as given.
pub fn fates(outcome: Outcome, up: Flow, down: Flow) -> [Fate; 2] {
    // A socket's fate follows the direction writing into it; `reader` is the
    // direction reading from it.
    let by = |writer: Flow, reader: Flow| match writer {
        Flow::Finished => Fate::Keep {
            input_done: reader == Flow::Finished,
        },
        Flow::Open | Flow::Failed => Fate::Reset,
    };
    match outcome {
        Outcome::Closed => [
            Fate::Keep { input_done: true },
            Fate::Keep { input_done: true },
        ],
        Outcome::ClientReset => [Fate::Gone, Fate::ResetAfterDrain],
        Outcome::BackendReset => [Fate::ResetAfterDrain, Fate::Gone],
        Outcome::TerminationDelay | Outcome::IdleTimeout | Outcome::Drained => {
            [by(down, up), by(up, down)]
        }
    }
}

/// One socket to close: how the direction writing into it stood, and what
/// that direction still held in user space.
pub struct Side<'a> {
    pub sock: &'a TcpStream,
    pub writer: Flow,
    /// Bytes counted for the direction into this socket but not yet written
    /// to it (lost if it is reset).
    pub held: u64,
}

/// Close both sockets of a forwarding phase that ended with `outcome`,
/// concurrently (a slow graceful close on one side does not delay the reset
/// of the other). Returns the bytes lost into `[client, backend]`: the
/// caller subtracts them from `down` / `up`.
pub async fn close(
    outcome: Outcome,
    client: Side<'_>,
    backend: Side<'_>,
    cut: &Cutoff,
) -> [u64; 2] {
    cut.ending();
    let [cf, bf] = fates(outcome, backend.writer, client.writer);
    // Boxed: the waiting paths are the rare ones, and their timers would
    // otherwise enlarge every connection's future for its whole life.
    let mut c = pin!(Box::pin(close_one(cf, client, cut)));
    let mut b = pin!(Box::pin(close_one(bf, backend, cut)));
    let (mut cl, mut bl) = (None, None);
    poll_fn(|cx| {
        if cl.is_none() {
            if let Poll::Ready(n) = c.as_mut().poll(cx) {
                cl = Some(n);
            }
        }
        if bl.is_none() {
            if let Poll::Ready(n) = b.as_mut().poll(cx) {
                bl = Some(n);
            }
        }
        match (cl, bl) {
            (Some(c), Some(b)) => Poll::Ready([c, b]),
            _ => Poll::Pending,
        }
    })
    .await
}

async fn close_one(fate: Fate, side: Side<'_>, cut: &Cutoff) -> u64 {
    let fd = sys::fd(side.sock);
    // A FIN passed on takes one sequence number in the kernel's queue
    // (SIOCOUTQ counts it until acknowledged); it is not a byte.
    let fin = u64::from(side.writer == Flow::Finished);
    let queued = |fd| queued(fd).saturating_sub(fin);
    match fate {
        Fate::Keep { input_done } => {
            if !input_done {
                keep_drain(side.sock, cut).await;
            }
            0
        }
        Fate::Reset => {
            let lost = side.held + queued(fd);
            let _ = sys::set_linger_zero(fd);
            lost
        }
        Fate::ResetAfterDrain => {
            side.held + abort_after_drain(side.sock, cut).await.saturating_sub(fin)
        }
        Fate::Gone => {
            let lost = side.held + queued(fd);
            let _ = sys::set_linger_zero(fd);
            lost
        }
    }
}

fn queued(fd: BorrowedFd<'_>) -> u64 {
    sys::unsent_bytes(fd).map_or(0, |n| n as u64)
}

/// Make the next close of `s` an abortive one (RST), after the bytes already
/// queued to the peer have left (bounded by `RESET_DRAIN_MAX`, cut short by
/// a drain's cut), so that a reset never truncates what was read before it
/// and never looks like a clean end. Returns the bytes still queued when the
/// reset was armed: the peer never gets them.
pub async fn abort_after_drain(s: &TcpStream, cut: &Cutoff) -> u64 {
    let fd = sys::fd(s);
    let start = Instant::now();
    // Stop as soon as the queue is empty, or the peer is gone (a reset socket
    // keeps its unacknowledged bytes queued forever).
    while matches!(sys::unsent_bytes(fd), Ok(n) if n > 0)
        && sys::tcp_state(fd) != Some(sys::TCP_STATE_CLOSE)
        && start.elapsed() < RESET_DRAIN_MAX
        && !cut.is_cut()
    {
        monoio::time::sleep(RESET_DRAIN_POLL).await;
    }
    let lost = queued(fd);
    let _ = sys::set_linger_zero(fd);
    lost
}

/// What reading a socket's pending input found.
#[derive(PartialEq, Eq)]
enum Input {
    /// Nothing more for now.
    Empty,
    /// The peer's FIN (or an error): no input can follow.
    Ended,
}

/// Read and discard what is pending (up to `DISCARD_READS` reads).
fn discard_input(fd: BorrowedFd<'_>) -> Input {
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..DISCARD_READS {
        match sys::recv(fd, &mut buf) {
            Ok(0) => return Input::Ended,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Empty,
            Err(_) => return Input::Ended,
        }
    }
    Input::Empty
}

/// The graceful close of a socket whose stream finished while its peer may
/// still send: discard input until every queued byte is acknowledged (or the
/// peer ends its side, or `KEEP_DRAIN_MAX`, or a drain's cut), then leave no
/// unread input behind so the close is a FIN, never a reset.
async fn keep_drain(s: &TcpStream, cut: &Cutoff) {
    let fd = sys::fd(s);
    let start = Instant::now();
    loop {
        if discard_input(fd) == Input::Ended {
            // Nothing can arrive after the peer's FIN: the plain close keeps
            // delivering the queue.
            return;
        }
        if queued(fd) == 0
            || sys::tcp_state(fd) == Some(sys::TCP_STATE_CLOSE)
            || cut.is_cut()
            || start.elapsed() >= KEEP_DRAIN_MAX
        {
            break;
        }
        monoio::time::sleep(KEEP_DRAIN_POLL).await;
    }
    discard_input(fd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_socket_follows_the_direction_writing_into_it() {
        use Flow::*;
        let keep = |input_done| Fate::Keep { input_done };
        // [client, backend]; up = client → backend, down = backend → client.
        for outcome in [
            Outcome::TerminationDelay,
            Outcome::IdleTimeout,
            Outcome::Drained,
        ] {
            // Backend finished first (its FIN passed on), the client's side
            // was cut: the client keeps its bytes, the backend is reset.
            assert_eq!(fates(outcome, Open, Finished), [keep(false), Fate::Reset]);
            // The mirror.
            assert_eq!(fates(outcome, Finished, Open), [Fate::Reset, keep(false)]);
            // Both cut (idle timeout, drain).
            assert_eq!(fates(outcome, Open, Open), [Fate::Reset, Fate::Reset]);
        }
        assert_eq!(
            fates(Outcome::Closed, Finished, Finished),
            [keep(true), keep(true)]
        );
        // A failure is passed on as a reset after the queue has left,
        // whatever the other direction was doing.
        for up in [Open, Finished, Failed] {
            assert_eq!(
                fates(Outcome::ClientReset, up, Open),
                [Fate::Gone, Fate::ResetAfterDrain]
            );
            assert_eq!(
                fates(Outcome::BackendReset, Open, up),
                [Fate::ResetAfterDrain, Fate::Gone]
            );
        }
    }

    /// One step of a forwarding phase: the directions' states as the pump
    /// last saw them, what ends the phase then (`settled`, else a timer),
    /// and the sockets' fates when it ends.
    fn step(up: Progress, down: Progress, timer: Option<Outcome>) -> String {
        let half_closed = up == Progress::Finished || down == Progress::Finished;
        match settled(up, down).or(timer) {
            None => format!("running half_closed={half_closed}"),
            Some(o) => format!("{} {:?}", o.as_str(), fates(o, up.flow(), down.flow())),
        }
    }

    /// Transcripts of whole connections through the one ending policy, as
    /// the copy/splice pumps, the TLS pump and the completion engine feed it.
    #[test]
    fn ending_transcripts() {
        use Progress::*;
        // The client finishes first; the backend never answers its FIN and
        // terminationDelay passes: the backend got the whole stream (kept),
        // the client's stream was cut (reset).
        let t = [
            step(Running, Running, None),
            step(Finished, Running, None),
            step(Finished, Running, Some(Outcome::TerminationDelay)),
        ];
        assert_eq!(
            t,
            [
                "running half_closed=false",
                "running half_closed=true",
                "termination_delay [Reset, Keep { input_done: false }]",
            ]
        );
        // Both finish: a timer that fires in the same poll is too late.
        let t = [
            step(Running, Finished, None),
            step(Finished, Finished, Some(Outcome::TerminationDelay)),
        ];
        assert_eq!(
            t,
            [
                "running half_closed=true",
                "closed [Keep { input_done: true }, Keep { input_done: true }]",
            ]
        );
        // The backend resets while the client is still sending: the client
        // is reset after its queue has left; the failure wins over a drain.
        let t = [
            step(Running, Running, None),
            step(DstFailed, Running, Some(Outcome::Drained)),
        ];
        assert_eq!(
            t,
            [
                "running half_closed=false",
                "backend_reset [ResetAfterDrain, Gone]",
            ]
        );
        // The client's read fails after the backend finished.
        assert_eq!(
            step(SrcFailed, Finished, None),
            "client_reset [Gone, ResetAfterDrain]"
        );
        // Writing to the client fails (it is gone).
        assert_eq!(
            step(Running, DstFailed, None),
            "client_reset [Gone, ResetAfterDrain]"
        );
        // Nothing moves for the idle timeout, or the drain cuts: both
        // streams were cut, both sockets are reset.
        for o in [Outcome::IdleTimeout, Outcome::Drained] {
            assert_eq!(
                step(Running, Running, Some(o)),
                format!("{} [Reset, Reset]", o.as_str())
            );
        }
    }

    /// The timers in the order they are checked: the drain's cut first,
    /// terminationDelay only once a direction finished, then the idle
    /// timeout; with none armed and no cut, nothing ends the phase.
    #[test]
    fn timers_transcript() {
        use std::task::{Context, Waker};
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let opts = |td: Option<Duration>, idle: Option<Duration>| Opts {
                termination_delay: td.map_or(
                    crate::model::TerminationDelay::Never,
                    crate::model::TerminationDelay::After,
                ),
                idle_timeout: idle,
                mode: crate::model::Forwarding::Copy,
                buffer_size: 16 * 1024,
            };
            let cut = Cutoff::default();
            let mut cx = Context::from_waker(Waker::noop());
            let now = Instant::now();
            // No timer armed: still running, half-closed or not.
            let mut t = Timers::new(&opts(None, None));
            assert_eq!(t.poll(&mut cx, &cut, false, now), Poll::Pending);
            assert_eq!(t.poll(&mut cx, &cut, true, now), Poll::Pending);
            // terminationDelay does not run before a direction finished
            // (an hour, so only the half-close can start it).
            let mut t = Timers::new(&opts(Some(Duration::from_secs(3600)), None));
            assert_eq!(t.poll(&mut cx, &cut, false, now), Poll::Pending);
            let mut t = Timers::new(&opts(Some(Duration::ZERO), None));
            let o = poll_fn(|cx| t.poll(cx, &cut, true, now)).await;
            assert_eq!(o, Outcome::TerminationDelay);
            // Idle: nothing moved since `now` for longer than zero.
            let mut t = Timers::new(&opts(None, Some(Duration::ZERO)));
            let o = poll_fn(|cx| t.poll(cx, &cut, false, now)).await;
            assert_eq!(o, Outcome::IdleTimeout);
            // A cut ends it before any timer.
            cut.cut();
            let mut t = Timers::new(&opts(Some(Duration::ZERO), Some(Duration::ZERO)));
            assert_eq!(
                t.poll(&mut cx, &cut, true, now),
                Poll::Ready(Outcome::Drained)
            );
        });
    }
}
