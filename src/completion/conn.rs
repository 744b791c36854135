//! One proxied connection's state machine on the completion ring.
//!
//! Two directions, each `src → dst`: a multishot RECV from `src` fills
//! provided buffers, which queue in arrival order; ONE SEND is in flight per
//! direction (the queue's head, from its offset, so a short send is resumed
//! where it stopped and byte order is kept); a buffer goes back to the ring
//! when its bytes have all been sent. At EOF the queue is flushed and then
//! `shutdown(SHUT_WR)` passes the FIN on, inline: IORING_OP_SHUTDOWN is
//! always punted to an io-wq kernel thread (measured: two per connection,
//! churn cost 20% more CPU than the readiness path with it), while the
//! system call costs about a microsecond. Nothing here touches the kernel
//! directly: the state machine tells an `Ops` what to do.
//!
//! Promises kept (those of `forward::duplex`):
//! - a FIN is passed on after every byte before it; the other direction keeps
//!   flowing;
//! - a read error (reset) on one side is passed on only after the bytes
//!   received before it were sent; the caller then closes both sockets by the
//!   shared ending policy, `forward::ending`;
//! - byte counts are bytes the destination accepted (counted at SEND
//!   completion), so the access log never counts what was dropped;
//! - an idle direction holds no buffer: a multishot RECV waits for data
//!   without one, and the kernel picks a buffer only when bytes arrive;
//! - ENOBUFS (the shared ring is empty) parks the direction; the engine
//!   re-arms it when buffers come back, so it never fails the connection;
//! - a direction holds at most `MAX_QUEUED_BUFFERS`: past that its RECV is
//!   cancelled (back-pressure: the source's socket buffer fills and TCP slows
//!   the sender) and re-armed when the queue has drained.
//!
//! Ending: once `stop` is set (a failure, a timer, or the owner went away)
//! every RECV and SEND in flight is cancelled, queued buffers go back, and the
//! connection is `done` only when the last operation's final completion has
//! been seen: no operation can then refer to the sockets, which the owner
//! closes afterwards.
//!
//! Handover (`Handover`, `forwarding = "auto"`): once the rule (`BULK_RUN`)
//! says bulk while both directions are open and healthy, every RECV and SEND
//! in flight is cancelled and the queues are kept; when the last final
//! completion has come in, the connection is `Ready` and `take_leftovers`
//! gives its unsent bytes. A FIN or an error seen meanwhile keeps it on the
//! ring to its end instead; nothing is shut down or closed for a handover.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::task::Waker;
use std::time::Instant;

use crate::forward::ending::Flow;
use crate::forward::Outcome;
use crate::sys::uring::Completion;

/// Buffers queued per direction before its RECV is cancelled: with 16 KiB
/// buffers, 256 KiB in flight per direction (a splice pipe's worth), enough
/// to keep a bulk flow's send busy while one slow reader cannot take more
/// than a sixty-fourth of a 1024-buffer ring.
pub const MAX_QUEUED_BUFFERS: usize = 16;

/// The handover rule: a connection is handed over to the readiness path
/// (splice) once one direction has received this many bytes in completely
/// filled buffers (sixteen 16 KiB buffers) without a turn of the
/// conversation in between. A turn is a receive in the other direction
/// while this one had sent everything it had received: that is how
/// request/response traffic looks (a reply is delivered, then the next
/// request comes), so such a connection is handed over only by a single
/// reply of at least 256 KiB, which is a bulk transfer by any measure;
/// a 16 KiB reply fills one buffer. A one-way stream (download, upload)
/// has no turns, and a full-duplex flow held up by a slow peer has no
/// idle direction, so both reach it after 256 KiB. Partly filled buffers
/// (a small message, the tail of a segment) neither count nor break a run.
///
/// Second arm: both directions have `MAX_QUEUED_BUFFERS` waiting (each
/// destination slower than its source, e.g. an echo whose client is not
/// reading): a full-duplex bulk flow, whatever the runs say.
pub const BULK_RUN: u64 = 256 * 1024;

/// What the handover rule needs to know (`Conn::new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bulk {
    /// The size of one ring buffer (a completely filled buffer).
    pub buffer_size: u32,
    /// The run that makes a direction bulky (`BULK_RUN`, or a test knob).
    pub run: u64,
}

/// Operation kinds (the low bits of the user data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Recv = 0,
    Send = 1,
    CancelRecv = 3,
    CancelSend = 4,
}

impl Kind {
    fn from_bits(b: u64) -> Option<Kind> {
        Some(match b {
            0 => Kind::Recv,
            1 => Kind::Send,
            3 => Kind::CancelRecv,
            4 => Kind::CancelSend,
            _ => return None,
        })
    }
}

/// User data: connection slot, direction, kind. A slot is reused only after
/// every operation of its previous connection has completed, so the user data
/// of a live operation is never ambiguous.
pub fn user_data(slot: u32, dir: usize, kind: Kind) -> u64 {
    ((slot as u64) << 8) | ((dir as u64 & 1) << 4) | kind as u64
}

/// The inverse of `user_data`.
pub fn parse_user_data(ud: u64) -> Option<(u32, usize, Kind)> {
    let kind = Kind::from_bits(ud & 0xf)?;
    Some(((ud >> 8) as u32, ((ud >> 4) & 1) as usize, kind))
}

/// What the state machine asks of the ring.
pub trait Ops {
    fn recv(&mut self, fd: RawFd, ud: u64) -> io::Result<()>;
    fn send(&mut self, fd: RawFd, bid: u16, off: u32, len: u32, ud: u64) -> io::Result<()>;
    /// Pass a FIN on now (`shutdown(SHUT_WR)`, done when it returns).
    fn shutdown(&mut self, fd: RawFd) -> io::Result<()>;
    fn cancel(&mut self, target: u64, ud: u64) -> io::Result<()>;
    /// A buffer the connection no longer needs.
    fn give_back(&mut self, bid: u16);
    /// The direction got ENOBUFS: re-arm it when buffers come back.
    fn park(&mut self, slot: u32, dir: usize);
    /// Append bytes `off..len` of buffer `bid` (filled by a RECV that has
    /// completed, not given back yet) to `out`.
    fn copy_out(&mut self, bid: u16, off: u32, len: u32, out: &mut Vec<u8>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Idle,
    Armed,
    /// ENOBUFS: waiting for buffers to come back.
    Parked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Open,
    Eof,
    Failed(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    No,
    Done,
}

#[derive(Debug)]
struct Dir {
    recv: Recv,
    cancel_recv: bool,
    cancel_send: bool,
    /// Received buffers in arrival order: (buffer id, length).
    queue: VecDeque<(u16, u32)>,
    /// Bytes of the queue head already sent.
    head_off: u32,
    sending: bool,
    src: Src,
    fin: Fin,
    dst_err: Option<i32>,
    bytes: u64,
    /// Bytes received in completely filled buffers since the other direction
    /// last received while this one had nothing left to send (the handover
    /// rule, `BULK_RUN`).
    run: u64,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            recv: Recv::Idle,
            cancel_recv: false,
            cancel_send: false,
            queue: VecDeque::new(),
            head_off: 0,
            sending: false,
            src: Src::Open,
            fin: Fin::No,
            dst_err: None,
            bytes: 0,
            run: 0,
        }
    }

    /// Nothing received is waiting to be sent.
    fn idle(&self) -> bool {
        self.queue.is_empty() && !self.sending
    }
}

/// Why a connection is being wound down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A side failed: (outcome, errno).
    Failed(Outcome, i32),
    /// A timer ended it (terminationDelay, idleTimeout).
    Cut(Outcome),
    /// The owner's future was dropped: wind down, nobody waits.
    Orphan,
}

/// Where a connection stands with respect to the handover to the readiness
/// path (`forwarding = "auto"` on io_uring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Never handed over (`forwarding = "completion"`, or it half-closed,
    /// failed or was wound down: it stays on the ring to its end).
    Off,
    /// Watching for a bulk flow (`BULK_RUN`).
    Watching(Bulk),
    /// Bulk: every RECV and SEND in flight was cancelled; waiting for their
    /// final completions. Bytes they still deliver are kept, nothing new is
    /// submitted.
    Draining,
    /// Nothing in flight and both directions open and healthy: the owner
    /// takes the unsent bytes (`take_leftovers`) and forwards on the
    /// readiness path.
    Ready,
}

/// The state of one connection (slot in the engine).
#[derive(Debug)]
pub struct Conn {
    slot: u32,
    /// [client, backend]; direction 0 is client → backend.
    fds: [RawFd; 2],
    dirs: [Dir; 2],
    /// Operations pushed whose final completion has not been seen.
    ops: u32,
    stop: Option<Stop>,
    handover: Handover,
    /// When the first FIN was passed on (terminationDelay starts).
    pub first_fin: Option<Instant>,
    pub last_active: Instant,
    pub waker: Option<Waker>,
    /// Set when the engine must look at this connection after a round.
    pub touched: bool,
}

impl Conn {
    /// `bulk`: the handover rule's inputs when the connection may be handed
    /// over to the readiness path (`Handover`), `None` to keep it on the ring.
    pub fn new(slot: u32, client: RawFd, backend: RawFd, bulk: Option<Bulk>) -> Conn {
        Conn {
            slot,
            fds: [client, backend],
            dirs: [Dir::new(), Dir::new()],
            ops: 0,
            stop: None,
            handover: bulk.map_or(Handover::Off, Handover::Watching),
            first_fin: None,
            last_active: Instant::now(),
            waker: None,
            touched: false,
        }
    }

    pub fn is_orphan(&self) -> bool {
        self.stop == Some(Stop::Orphan)
    }

    pub fn handover(&self) -> Handover {
        self.handover
    }

    /// Both directions still open and healthy: no FIN seen or passed on, no
    /// error on either side, not being wound down.
    fn healthy(&self) -> bool {
        self.stop.is_none()
            && self
                .dirs
                .iter()
                .all(|d| d.src == Src::Open && d.fin == Fin::No && d.dst_err.is_none())
    }

    /// Once `Handover::Ready`: the bytes received but not sent, per
    /// direction (client → backend, backend → client), copied out of the
    /// ring buffers, which all go back to the ring. The connection holds
    /// nothing afterwards; its owner frees the slot.
    pub fn take_leftovers(&mut self, ops: &mut dyn Ops) -> [Vec<u8>; 2] {
        let mut out = [Vec::new(), Vec::new()];
        if self.handover != Handover::Ready {
            return out;
        }
        for (d, v) in self.dirs.iter_mut().zip(out.iter_mut()) {
            let total: u64 = d.queue.iter().map(|&(_, len)| u64::from(len)).sum();
            v.reserve(total.saturating_sub(u64::from(d.head_off)) as usize);
            let mut off = d.head_off;
            for (bid, len) in d.queue.drain(..) {
                if off < len {
                    ops.copy_out(bid, off, len, v);
                }
                ops.give_back(bid);
                off = 0;
            }
            d.head_off = 0;
        }
        self.handover = Handover::Off;
        out
    }

    /// (client → backend, backend → client) bytes the destinations accepted.
    pub fn bytes(&self) -> (u64, u64) {
        (self.dirs[0].bytes, self.dirs[1].bytes)
    }

    /// How each direction (client → backend, backend → client) stood at the
    /// end, for the shared ending policy (`forward::ending`): finished once
    /// its FIN was passed on, failed on an error of its source or
    /// destination, open otherwise.
    pub fn flows(&self) -> [Flow; 2] {
        [0, 1].map(|i| {
            let d = &self.dirs[i];
            if d.fin == Fin::Done {
                Flow::Finished
            } else if matches!(d.src, Src::Failed(_)) || d.dst_err.is_some() {
                Flow::Failed
            } else {
                Flow::Open
            }
        })
    }

    /// The connection's end, once no operation is left in flight.
    pub fn outcome(&self) -> Option<(Outcome, Option<io::Error>)> {
        if self.ops > 0 {
            return None;
        }
        match self.stop {
            Some(Stop::Failed(o, errno)) => Some((o, Some(io::Error::from_raw_os_error(errno)))),
            Some(Stop::Cut(o)) => Some((o, None)),
            Some(Stop::Orphan) => Some((Outcome::ClientReset, None)),
            None if self.dirs.iter().all(|d| d.fin == Fin::Done) => Some((Outcome::Closed, None)),
            None => None,
        }
    }

    /// Wind down (a timer fired, or the owner left). A failure already being
    /// wound down keeps its outcome.
    pub fn stop(&mut self, why: Stop, ops: &mut dyn Ops) {
        match (self.stop, why) {
            (None, _) | (Some(_), Stop::Orphan) => self.stop = Some(why),
            _ => {}
        }
        self.handover = Handover::Off;
        self.step(ops);
    }

    /// Submit what the current state calls for (a new connection arms its
    /// receives this way).
    pub fn kick(&mut self, ops: &mut dyn Ops) {
        self.step(ops);
    }

    /// The engine re-arms a parked direction (buffers came back).
    pub fn unpark(&mut self, dir: usize, ops: &mut dyn Ops) {
        if self.dirs[dir].recv == Recv::Parked {
            self.dirs[dir].recv = Recv::Idle;
            self.step(ops);
        }
    }

    /// Apply one completion of this connection.
    pub fn complete(&mut self, dir: usize, kind: Kind, c: &Completion, ops: &mut dyn Ops) {
        if !c.more() {
            self.ops = self.ops.saturating_sub(1);
        }
        let stopping = self.stop.is_some();
        // Wound down or handing over: a cancelled operation is expected.
        let cancelling = stopping || self.handover == Handover::Draining;
        let slot = self.slot;
        let d = &mut self.dirs[dir];
        // A buffer kept by a RECV: its length.
        let mut kept = None;
        match kind {
            Kind::Recv => {
                if !c.more() {
                    d.recv = Recv::Idle;
                }
                match c.result {
                    n if n > 0 => match c.buffer() {
                        // Kept while handing over too: those bytes were
                        // taken from the socket and are the leftover's.
                        Some(bid) if !stopping && d.src == Src::Open => {
                            d.queue.push_back((bid, n as u32));
                            self.last_active = Instant::now();
                            kept = Some(n as u32);
                        }
                        Some(bid) => ops.give_back(bid),
                        None if d.src == Src::Open => d.src = Src::Failed(libc::EIO),
                        None => {}
                    },
                    0 => {
                        if d.src == Src::Open {
                            d.src = Src::Eof;
                        }
                    }
                    e if -e == libc::ENOBUFS => {
                        if !cancelling && d.src == Src::Open && !c.more() {
                            d.recv = Recv::Parked;
                            ops.park(slot, dir);
                        }
                    }
                    e if -e == libc::ECANCELED => {}
                    e => {
                        if d.src == Src::Open {
                            d.src = Src::Failed(-e);
                        }
                    }
                }
            }
            Kind::Send => {
                d.sending = false;
                d.cancel_send = false;
                match c.result {
                    n if n > 0 => {
                        d.bytes += n as u64;
                        d.head_off += n as u32;
                        self.last_active = Instant::now();
                        if let Some(&(bid, len)) = d.queue.front() {
                            if d.head_off >= len {
                                d.queue.pop_front();
                                d.head_off = 0;
                                ops.give_back(bid);
                            }
                        }
                    }
                    // Interrupted before anything was sent: send it again.
                    e if -e == libc::EAGAIN || -e == libc::EINTR => {}
                    // Cancelled before anything was sent (a handover sends
                    // those bytes from the leftover).
                    e if -e == libc::ECANCELED && cancelling => {}
                    // A zero-byte send of a non-empty buffer would repeat
                    // forever: treat it as a broken destination.
                    0 => d.dst_err = d.dst_err.or(Some(libc::EIO)),
                    e => d.dst_err = d.dst_err.or(Some(-e)),
                }
                if stopping {
                    // Nothing more will be sent: the head is free now too.
                    for (bid, _) in d.queue.drain(..) {
                        ops.give_back(bid);
                    }
                    d.head_off = 0;
                }
            }
            // While winding down or handing over the flag stays: one cancel
            // per operation is enough, and its final completion is still to
            // come.
            Kind::CancelRecv if !cancelling => d.cancel_recv = false,
            Kind::CancelRecv => {}
            Kind::CancelSend => {}
        }
        if let (Some(n), Handover::Watching(bulk)) = (kept, self.handover) {
            self.watch(dir, n, bulk);
        }
        self.step(ops);
    }

    /// The handover rule (`BULK_RUN`) after direction `dir` kept a buffer
    /// of `n` bytes.
    fn watch(&mut self, dir: usize, n: u32, bulk: Bulk) {
        let other = &mut self.dirs[1 - dir];
        if other.idle() {
            // A turn: the other direction had delivered all it received.
            other.run = 0;
        }
        let backed_up = |d: &Dir| d.queue.len() >= MAX_QUEUED_BUFFERS;
        let both_backed_up = backed_up(&self.dirs[0]) && backed_up(&self.dirs[1]);
        let d = &mut self.dirs[dir];
        if n >= bulk.buffer_size {
            d.run += u64::from(n);
        }
        if (d.run >= bulk.run || both_backed_up) && self.healthy() {
            self.handover = Handover::Draining;
        }
    }

    /// Decide what to submit next.
    fn step(&mut self, ops: &mut dyn Ops) {
        if self.stop.is_none() {
            self.check_failures();
        }
        if self.stop.is_some() {
            self.handover = Handover::Off;
            self.wind_down(ops);
            return;
        }
        if self.handover == Handover::Draining {
            if let Err(e) = self.cancel_in_flight(ops) {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.stop = Some(Stop::Failed(Outcome::ClientReset, errno));
                self.handover = Handover::Off;
                self.wind_down(ops);
                return;
            }
            if self.ops > 0 {
                return;
            }
            // Every cancel has had its completion.
            for d in &mut self.dirs {
                d.cancel_recv = false;
                d.cancel_send = false;
            }
            if self.healthy() {
                self.handover = Handover::Ready;
                return;
            }
            // A FIN or an error arrived meanwhile (the kernel reported it
            // once, to us): the connection stays on the ring to its end and
            // carries on below (re-arms, sends what it holds).
            self.handover = Handover::Off;
        }
        if self.handover == Handover::Ready {
            return;
        }
        for dir in 0..2 {
            if let Err(e) = self.advance(dir, ops) {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                self.stop = Some(Stop::Failed(failure_outcome(dir, true), errno));
                self.wind_down(ops);
                return;
            }
        }
    }

    /// For a handover: cancel every RECV and SEND in flight (once each),
    /// keep every buffer. A parked direction has nothing in flight.
    fn cancel_in_flight(&mut self, ops: &mut dyn Ops) -> io::Result<()> {
        let slot = self.slot;
        for dir in 0..2 {
            let d = &mut self.dirs[dir];
            if d.recv == Recv::Parked {
                d.recv = Recv::Idle;
            }
            if d.recv == Recv::Armed && !d.cancel_recv {
                let target = user_data(slot, dir, Kind::Recv);
                ops.cancel(target, user_data(slot, dir, Kind::CancelRecv))?;
                d.cancel_recv = true;
                self.ops += 1;
            }
            if d.sending && !d.cancel_send {
                let target = user_data(slot, dir, Kind::Send);
                ops.cancel(target, user_data(slot, dir, Kind::CancelSend))?;
                d.cancel_send = true;
                self.ops += 1;
            }
        }
        Ok(())
    }

    /// A destination that failed, or a source that failed once the bytes
    /// before its failure have been sent, ends the connection.
    fn check_failures(&mut self) {
        for dir in 0..2 {
            let d = &self.dirs[dir];
            if let Some(errno) = d.dst_err {
                self.stop = Some(Stop::Failed(failure_outcome(dir, false), errno));
                return;
            }
            if let Src::Failed(errno) = d.src {
                if d.queue.is_empty() && !d.sending {
                    self.stop = Some(Stop::Failed(failure_outcome(dir, true), errno));
                    return;
                }
            }
        }
    }

    fn advance(&mut self, dir: usize, ops: &mut dyn Ops) -> io::Result<()> {
        let (src, dst) = (self.fds[dir], self.fds[1 - dir]);
        let slot = self.slot;
        let d = &mut self.dirs[dir];
        if !d.sending {
            if let Some(&(bid, len)) = d.queue.front() {
                ops.send(dst, bid, d.head_off, len, user_data(slot, dir, Kind::Send))?;
                d.sending = true;
                self.ops += 1;
            }
        }
        if d.src == Src::Eof && d.queue.is_empty() && !d.sending && d.fin == Fin::No {
            // A destination already gone (ENOTCONN) is not an error worth
            // more than what its next send will say.
            let _ = ops.shutdown(dst);
            d.fin = Fin::Done;
            self.first_fin.get_or_insert_with(Instant::now);
        }
        let full = d.queue.len() >= MAX_QUEUED_BUFFERS;
        if d.src == Src::Open && d.recv == Recv::Idle && !d.cancel_recv && !full {
            ops.recv(src, user_data(slot, dir, Kind::Recv))?;
            d.recv = Recv::Armed;
            self.ops += 1;
        }
        if d.recv == Recv::Armed && full && !d.cancel_recv {
            let target = user_data(slot, dir, Kind::Recv);
            ops.cancel(target, user_data(slot, dir, Kind::CancelRecv))?;
            d.cancel_recv = true;
            self.ops += 1;
        }
        Ok(())
    }

    /// Cancel everything in flight and give back every buffer not in use by
    /// a SEND still in flight.
    fn wind_down(&mut self, ops: &mut dyn Ops) {
        let slot = self.slot;
        for dir in 0..2 {
            let d = &mut self.dirs[dir];
            if d.recv == Recv::Armed && !d.cancel_recv {
                let target = user_data(slot, dir, Kind::Recv);
                if ops
                    .cancel(target, user_data(slot, dir, Kind::CancelRecv))
                    .is_ok()
                {
                    d.cancel_recv = true;
                    self.ops += 1;
                }
            }
            if d.recv == Recv::Parked {
                d.recv = Recv::Idle;
            }
            if d.sending && !d.cancel_send {
                let target = user_data(slot, dir, Kind::Send);
                if ops
                    .cancel(target, user_data(slot, dir, Kind::CancelSend))
                    .is_ok()
                {
                    d.cancel_send = true;
                    self.ops += 1;
                }
            }
            let keep = usize::from(d.sending);
            while d.queue.len() > keep {
                if let Some((bid, _)) = d.queue.pop_back() {
                    ops.give_back(bid);
                }
            }
        }
    }
}

/// The outcome of a failure in direction `dir` (0 = client → backend), on
/// its source side (`src`) or its destination side.
fn failure_outcome(dir: usize, src: bool) -> Outcome {
    match (dir == 0, src) {
        (true, true) | (false, false) => Outcome::ClientReset,
        (true, false) | (false, true) => Outcome::BackendReset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        pushed: Vec<String>,
        given: Vec<u16>,
        parked: Vec<(u32, usize)>,
    }

    impl Ops for Rec {
        fn recv(&mut self, fd: RawFd, _ud: u64) -> io::Result<()> {
            self.pushed.push(format!("recv {fd}"));
            Ok(())
        }
        fn send(&mut self, fd: RawFd, bid: u16, off: u32, len: u32, _ud: u64) -> io::Result<()> {
            self.pushed.push(format!("send {fd} {bid} {off}..{len}"));
            Ok(())
        }
        fn shutdown(&mut self, fd: RawFd) -> io::Result<()> {
            self.pushed.push(format!("shutdown {fd}"));
            Ok(())
        }
        fn cancel(&mut self, target: u64, _ud: u64) -> io::Result<()> {
            let (_, dir, kind) = parse_user_data(target).unwrap();
            self.pushed.push(format!("cancel {dir} {kind:?}"));
            Ok(())
        }
        fn give_back(&mut self, bid: u16) {
            self.given.push(bid);
        }
        fn park(&mut self, slot: u32, dir: usize) {
            self.parked.push((slot, dir));
        }
        fn copy_out(&mut self, bid: u16, off: u32, len: u32, out: &mut Vec<u8>) {
            self.pushed.push(format!("copy {bid} {off}..{len}"));
            // Each buffer's bytes are its id: the leftover shows the order.
            out.extend(std::iter::repeat_n(bid as u8, (len - off) as usize));
        }
    }

    const MORE: u32 = 2;
    const BUF: u32 = 1;

    fn recv_cqe(res: i32, bid: u16, more: bool) -> Completion {
        Completion {
            user_data: 0,
            result: res,
            flags: (u32::from(bid) << 16) | BUF | if more { MORE } else { 0 },
        }
    }

    fn cqe(res: i32) -> Completion {
        Completion {
            user_data: 0,
            result: res,
            flags: 0,
        }
    }

    fn start() -> (Conn, Rec) {
        let mut ops = Rec::default();
        let mut c = Conn::new(7, 10, 20, None);
        c.step(&mut ops);
        assert_eq!(ops.pushed, ["recv 10", "recv 20"]);
        ops.pushed.clear();
        (c, ops)
    }

    /// Ring buffer size of the handover transcripts.
    const SIZE: u32 = 16 * 1024;
    const BULK: Bulk = Bulk {
        buffer_size: SIZE,
        run: BULK_RUN,
    };

    /// A connection that may be handed over (`forwarding = "auto"`).
    fn start_bulk() -> (Conn, Rec) {
        let mut ops = Rec::default();
        let mut c = Conn::new(7, 10, 20, Some(BULK));
        c.step(&mut ops);
        assert_eq!(ops.pushed, ["recv 10", "recv 20"]);
        ops.pushed.clear();
        (c, ops)
    }

    /// The backend (direction 1) streams sixteen full buffers while the
    /// first one's SEND is in flight: the handover starts at the sixteenth.
    fn bulk_down(c: &mut Conn, ops: &mut Rec) {
        for bid in 0..16u16 {
            assert_eq!(c.handover(), Handover::Watching(BULK), "buffer {bid}");
            c.complete(1, Kind::Recv, &recv_cqe(SIZE as i32, bid, true), ops);
        }
        assert_eq!(c.handover(), Handover::Draining);
        assert_eq!(
            ops.pushed,
            [
                "send 10 0 0..16384",
                "cancel 0 Recv",
                "cancel 1 Recv",
                "cancel 1 Send"
            ]
        );
        ops.pushed.clear();
    }

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(123_456, 1, Kind::CancelSend);
        assert_eq!(parse_user_data(ud), Some((123_456, 1, Kind::CancelSend)));
        assert_eq!(parse_user_data(0xf), None);
    }

    #[test]
    fn short_send_resumes_from_its_offset_and_keeps_order() {
        let (mut c, mut ops) = start();
        c.complete(0, Kind::Recv, &recv_cqe(100, 3, true), &mut ops);
        c.complete(0, Kind::Recv, &recv_cqe(50, 4, true), &mut ops);
        assert_eq!(ops.pushed, ["send 20 3 0..100"], "one send in flight");
        c.complete(0, Kind::Send, &cqe(60), &mut ops);
        assert_eq!(ops.pushed[1], "send 20 3 60..100");
        assert!(ops.given.is_empty());
        c.complete(0, Kind::Send, &cqe(40), &mut ops);
        assert_eq!(ops.given, [3]);
        assert_eq!(ops.pushed[2], "send 20 4 0..50");
        c.complete(0, Kind::Send, &cqe(50), &mut ops);
        assert_eq!(c.bytes(), (150, 0));
        assert_eq!(ops.given, [3, 4]);
    }

    #[test]
    fn fin_after_every_byte_and_the_other_direction_keeps_flowing() {
        let (mut c, mut ops) = start();
        c.complete(0, Kind::Recv, &recv_cqe(10, 1, true), &mut ops);
        c.complete(0, Kind::Recv, &cqe(0), &mut ops);
        assert_eq!(ops.pushed, ["send 20 1 0..10"], "no FIN before the bytes");
        c.complete(0, Kind::Send, &cqe(10), &mut ops);
        assert_eq!(ops.pushed[1], "shutdown 20");
        assert!(c.first_fin.is_some());
        assert!(c.outcome().is_none(), "the other direction is still open");
        c.complete(1, Kind::Recv, &recv_cqe(5, 2, true), &mut ops);
        assert_eq!(ops.pushed[2], "send 10 2 0..5");
        c.complete(1, Kind::Send, &cqe(5), &mut ops);
        c.complete(1, Kind::Recv, &cqe(0), &mut ops);
        assert_eq!(ops.pushed[3], "shutdown 10");
        assert_eq!(c.outcome().map(|o| o.0), Some(Outcome::Closed));
        assert_eq!(c.bytes(), (10, 5));
    }

    #[test]
    fn reset_is_passed_on_after_the_bytes_before_it() {
        let (mut c, mut ops) = start();
        c.complete(1, Kind::Recv, &recv_cqe(10, 1, true), &mut ops);
        c.complete(1, Kind::Recv, &recv_cqe(10, 2, true), &mut ops);
        c.complete(1, Kind::Recv, &cqe(-libc::ECONNRESET), &mut ops);
        assert_eq!(ops.pushed, ["send 10 1 0..10"]);
        c.complete(1, Kind::Send, &cqe(10), &mut ops);
        assert_eq!(ops.pushed[1], "send 10 2 0..10", "queued bytes still go");
        c.complete(1, Kind::Send, &cqe(10), &mut ops);
        // Now the failure ends the connection: the other recv is cancelled.
        assert_eq!(ops.pushed[2], "cancel 0 Recv");
        c.complete(0, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        assert!(c.outcome().is_none(), "the cancel's own completion is due");
        c.complete(0, Kind::CancelRecv, &cqe(0), &mut ops);
        let (o, e) = c.outcome().unwrap();
        assert_eq!(o, Outcome::BackendReset);
        assert_eq!(e.unwrap().raw_os_error(), Some(libc::ECONNRESET));
        assert_eq!(c.bytes(), (0, 20));
    }

    #[test]
    fn enobufs_parks_and_unpark_rearms() {
        let (mut c, mut ops) = start();
        c.complete(0, Kind::Recv, &cqe(-libc::ENOBUFS), &mut ops);
        assert_eq!(ops.parked, [(7, 0)]);
        assert!(
            ops.pushed.is_empty(),
            "not re-armed while the ring is empty"
        );
        c.unpark(0, &mut ops);
        assert_eq!(ops.pushed, ["recv 10"]);
        assert!(c.outcome().is_none());
    }

    #[test]
    fn a_full_queue_cancels_the_recv_and_rearms_after_it_drained() {
        let (mut c, mut ops) = start();
        for i in 0..MAX_QUEUED_BUFFERS as u16 {
            c.complete(0, Kind::Recv, &recv_cqe(1, i, true), &mut ops);
        }
        assert!(ops.pushed.contains(&"cancel 0 Recv".to_string()));
        c.complete(0, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(0, Kind::CancelRecv, &cqe(0), &mut ops);
        ops.pushed.clear();
        c.complete(0, Kind::Send, &cqe(1), &mut ops);
        assert!(
            ops.pushed.contains(&"recv 10".to_string()),
            "{:?}",
            ops.pushed
        );
    }

    #[test]
    fn a_cut_cancels_everything_and_keeps_the_buffer_of_a_send_in_flight() {
        let (mut c, mut ops) = start();
        c.complete(0, Kind::Recv, &recv_cqe(10, 1, true), &mut ops);
        c.complete(0, Kind::Recv, &recv_cqe(10, 2, true), &mut ops);
        c.stop(Stop::Cut(Outcome::IdleTimeout), &mut ops);
        assert_eq!(ops.given, [2], "the head is still the kernel's");
        c.complete(0, Kind::Send, &cqe(-libc::ECANCELED), &mut ops);
        assert_eq!(ops.given, [2, 1]);
        for (dir, kind) in [
            (0, Kind::CancelRecv),
            (1, Kind::CancelRecv),
            (0, Kind::CancelSend),
        ] {
            c.complete(dir, kind, &cqe(0), &mut ops);
        }
        assert!(c.outcome().is_none());
        c.complete(0, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(1, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        assert_eq!(c.outcome().map(|o| o.0), Some(Outcome::IdleTimeout));
    }

    #[test]
    fn request_response_with_16k_replies_is_never_handed_over() {
        let (mut c, mut ops) = start_bulk();
        for round in 0..100u16 {
            // A small request, delivered; then a reply of one full buffer
            // (or fifteen full and a partial one), delivered.
            c.complete(0, Kind::Recv, &recv_cqe(100, 1, true), &mut ops);
            c.complete(0, Kind::Send, &cqe(100), &mut ops);
            let full = if round % 2 == 0 { 1 } else { 15 };
            for _ in 0..full {
                c.complete(1, Kind::Recv, &recv_cqe(SIZE as i32, 2, true), &mut ops);
                c.complete(1, Kind::Send, &cqe(SIZE as i32), &mut ops);
            }
            c.complete(1, Kind::Recv, &recv_cqe(700, 3, true), &mut ops);
            c.complete(1, Kind::Send, &cqe(700), &mut ops);
            assert_eq!(c.handover(), Handover::Watching(BULK), "round {round}");
        }
        assert!(
            ops.pushed.iter().all(|p| !p.starts_with("cancel")),
            "{:?}",
            ops.pushed
        );
        assert_eq!(
            c.bytes(),
            (
                100 * 100,
                50 * (SIZE as u64 + 700) + 50 * (15 * SIZE as u64 + 700)
            )
        );
    }

    #[test]
    fn completion_mode_never_hands_over() {
        let (mut c, mut ops) = start();
        for bid in 0..64u16 {
            c.complete(
                1,
                Kind::Recv,
                &recv_cqe(SIZE as i32, bid % 8, true),
                &mut ops,
            );
            c.complete(1, Kind::Send, &cqe(SIZE as i32), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Off);
        assert!(ops.pushed.iter().all(|p| !p.starts_with("cancel")));
    }

    #[test]
    fn a_bulk_flow_is_handed_over_with_every_unsent_byte() {
        let (mut c, mut ops) = start_bulk();
        bulk_down(&mut c, &mut ops);
        // The multishot RECV still delivers a buffer before its final
        // completion: kept. The cancelled SEND had sent part of its buffer.
        c.complete(1, Kind::Recv, &recv_cqe(1000, 16, true), &mut ops);
        c.complete(1, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(1, Kind::Send, &cqe(5000), &mut ops);
        c.complete(0, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(0, Kind::CancelRecv, &cqe(0), &mut ops);
        c.complete(1, Kind::CancelRecv, &cqe(0), &mut ops);
        assert_eq!(c.handover(), Handover::Draining, "a cancel is still due");
        c.complete(1, Kind::CancelSend, &cqe(0), &mut ops);
        assert_eq!(c.handover(), Handover::Ready);
        assert!(ops.pushed.is_empty(), "nothing new: {:?}", ops.pushed);
        assert!(ops.given.is_empty(), "every buffer kept");
        assert!(c.outcome().is_none(), "not an end: the sockets stay open");
        assert_eq!(c.bytes(), (0, 5000));
        let [up, down] = c.take_leftovers(&mut ops);
        assert!(up.is_empty());
        let mut want = vec![0u8; SIZE as usize - 5000];
        for bid in 1..16u8 {
            want.extend(std::iter::repeat_n(bid, SIZE as usize));
        }
        want.extend(std::iter::repeat_n(16u8, 1000));
        assert_eq!(down.len(), want.len());
        assert!(down == want, "the unsent bytes, in order");
        assert_eq!(ops.pushed[0], "copy 0 5000..16384");
        assert_eq!(ops.pushed[16], "copy 16 0..1000");
        assert_eq!(ops.given, (0..=16).collect::<Vec<u16>>(), "all given back");
        assert_eq!(c.handover(), Handover::Off);
    }

    #[test]
    fn a_send_cancelled_before_sending_leaves_its_whole_buffer() {
        let (mut c, mut ops) = start_bulk();
        // The client sent a request the backend does not read yet: its
        // SEND is in flight too when the reply turns bulky.
        c.complete(0, Kind::Recv, &recv_cqe(300, 40, true), &mut ops);
        assert_eq!(ops.pushed, ["send 20 40 0..300"]);
        ops.pushed.clear();
        for bid in 0..16u16 {
            c.complete(1, Kind::Recv, &recv_cqe(SIZE as i32, bid, true), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Draining);
        assert_eq!(
            ops.pushed,
            [
                "send 10 0 0..16384",
                "cancel 0 Recv",
                "cancel 0 Send",
                "cancel 1 Recv",
                "cancel 1 Send"
            ]
        );
        ops.pushed.clear();
        for (dir, kind, res) in [
            (0, Kind::Send, -libc::ECANCELED),
            (1, Kind::Send, -libc::ECANCELED),
            (0, Kind::Recv, -libc::ECANCELED),
            (1, Kind::Recv, -libc::ECANCELED),
            (0, Kind::CancelRecv, 0),
            (0, Kind::CancelSend, 0),
            (1, Kind::CancelRecv, 0),
            (1, Kind::CancelSend, 0),
        ] {
            c.complete(dir, kind, &cqe(res), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Ready);
        assert_eq!(c.bytes(), (0, 0), "a cancelled SEND sent nothing");
        let [up, down] = c.take_leftovers(&mut ops);
        assert_eq!(up, vec![40u8; 300]);
        assert_eq!(down.len(), 16 * SIZE as usize);
    }

    #[test]
    fn a_fin_during_the_handover_keeps_the_connection_on_the_ring() {
        let (mut c, mut ops) = start_bulk();
        bulk_down(&mut c, &mut ops);
        // The client's FIN arrives before the cancel of its RECV.
        c.complete(0, Kind::Recv, &cqe(0), &mut ops);
        c.complete(1, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(1, Kind::Send, &cqe(SIZE as i32), &mut ops);
        for (dir, kind) in [
            (0, Kind::CancelRecv),
            (1, Kind::CancelRecv),
            (1, Kind::CancelSend),
        ] {
            c.complete(dir, kind, &cqe(0), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Off, "half-closed: stays");
        // It carries on: the FIN is passed on, the queue is sent, the
        // backend's RECV re-armed (the queue is below its cap again).
        assert_eq!(ops.pushed, ["shutdown 20", "send 10 1 0..16384", "recv 20"]);
        assert_eq!(ops.given, [0]);
        c.complete(1, Kind::Send, &cqe(SIZE as i32), &mut ops);
        assert_eq!(ops.pushed[3..], ["send 10 2 0..16384"]);
    }

    #[test]
    fn a_timer_during_the_handover_winds_down_instead() {
        let (mut c, mut ops) = start_bulk();
        bulk_down(&mut c, &mut ops);
        c.stop(Stop::Cut(Outcome::Drained), &mut ops);
        assert_eq!(c.handover(), Handover::Off);
        assert!(ops.pushed.is_empty(), "the cancels are in flight already");
        assert_eq!(ops.given.len(), 15, "the queue behind the SEND goes back");
        c.complete(1, Kind::Send, &cqe(-libc::ECANCELED), &mut ops);
        for (dir, kind) in [
            (0, Kind::Recv),
            (1, Kind::Recv),
            (0, Kind::CancelRecv),
            (1, Kind::CancelRecv),
            (1, Kind::CancelSend),
        ] {
            c.complete(dir, kind, &cqe(-libc::ECANCELED), &mut ops);
        }
        assert_eq!(c.outcome().map(|o| o.0), Some(Outcome::Drained));
        assert_eq!(ops.given.len(), 16);
    }

    #[test]
    fn both_directions_backed_up_hand_over_whatever_the_runs() {
        // An echo whose client does not read: the reply direction backs up
        // first (its RECV is cancelled at the cap), then the request
        // direction, behind a backend that stopped reading. Runs are off.
        let mut ops = Rec::default();
        let bulk = Bulk {
            buffer_size: SIZE,
            run: u64::MAX,
        };
        let mut c = Conn::new(7, 10, 20, Some(bulk));
        c.step(&mut ops);
        ops.pushed.clear();
        for bid in 0..16u16 {
            c.complete(
                1,
                Kind::Recv,
                &recv_cqe(SIZE as i32, 100 + bid, true),
                &mut ops,
            );
        }
        assert_eq!(ops.pushed, ["send 10 100 0..16384", "cancel 1 Recv"]);
        c.complete(1, Kind::Recv, &cqe(-libc::ECANCELED), &mut ops);
        c.complete(1, Kind::CancelRecv, &cqe(0), &mut ops);
        ops.pushed.clear();
        for bid in 0..15u16 {
            c.complete(0, Kind::Recv, &recv_cqe(SIZE as i32, bid, true), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Watching(bulk));
        c.complete(0, Kind::Recv, &recv_cqe(SIZE as i32, 15, true), &mut ops);
        assert_eq!(c.handover(), Handover::Draining);
        assert_eq!(
            ops.pushed,
            [
                "send 20 0 0..16384",
                "cancel 0 Recv",
                "cancel 0 Send",
                "cancel 1 Send"
            ]
        );
        ops.pushed.clear();
        // Neither blocked SEND sent anything; nobody had to read.
        for (dir, kind, res) in [
            (0, Kind::Send, -libc::ECANCELED),
            (1, Kind::Send, -libc::ECANCELED),
            (0, Kind::Recv, -libc::ECANCELED),
            (0, Kind::CancelRecv, 0),
            (0, Kind::CancelSend, 0),
            (1, Kind::CancelSend, 0),
        ] {
            c.complete(dir, kind, &cqe(res), &mut ops);
        }
        assert_eq!(c.handover(), Handover::Ready);
        assert!(ops.pushed.is_empty());
        let [up, down] = c.take_leftovers(&mut ops);
        assert_eq!(up.len(), 16 * SIZE as usize);
        assert_eq!(down.len(), 16 * SIZE as usize);
        assert_eq!((up[0], down[0]), (0, 100), "each from its own queue");
        assert_eq!(ops.given.len(), 32);
    }
}
