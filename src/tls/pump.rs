//! The forwarding phase of a terminated connection: plaintext between a TLS
//! client and a backend (plain, or TLS again), both directions in one task.
//!
//! One task because one rustls connection serves both directions (reading
//! may require writing: key updates, alerts; writing may decrypt). The task
//! is a readiness-driven state machine: `progress` performs every
//! non-blocking step it can (`recv`/`send` via `sys`, rustls calls on our
//! buffers) until nothing moves, then reports which readiness it needs; the
//! driver arms one io_uring/epoll poll per (socket, direction) and keeps it
//! armed until it fires. Only polls are in flight, so ending the pump (reset,
//! deadline) never loses bytes that were read.
//!
//! Promises, as `forward::duplex`: every plaintext byte
//! before an end of stream is delivered before the end is passed on; a
//! client's close_notify or EOF becomes a FIN to the backend, a backend's
//! FIN becomes close_notify then FIN to the client, and the other direction
//! keeps flowing until it ends, `terminationDelay` or the idle timeout
//! passes, or the drain cuts it; then the sockets are closed by the one
//! ending policy of `forward::ending` (a direction that finished keeps its
//! bytes, one that was cut is reset: what was cut must not look complete); a
//! reset or a protocol error on one side is passed on as a reset after the
//! bytes already queued to the other side have left.

use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Instant;

use monoio::net::TcpStream;

use super::buf::Buf;
use super::side::{tls_io, Pull, TlsPeer, MAX_CHUNK};
use crate::forward::ending::{self, Progress, Side, Timers};
use crate::forward::{Cutoff, Opts, Outcome, Report};
use crate::sys;

/// Most plaintext one TLS record carries. When ciphertext towards a TLS peer
/// is lost in a reset, the peer may also hold a partial record it cannot
/// decrypt: the count drops this much more, so it never exceeds what the
/// peer can have received.
const MAX_RECORD_PLAINTEXT: u64 = 16 * 1024;

/// One end of the connection.
pub enum Peer {
    /// A plain socket; the buffer holds bytes read and not yet delivered.
    Plain(Buf),
    /// TLS, towards the client (server role) or a backend (client role).
    /// Boxed: a plain backend should not reserve the size of a TLS
    /// connection.
    Tls(Box<dyn TlsPeer>),
}

/// What the last readiness poll (or syscall) said about one socket. Starts
/// optimistic; a `WouldBlock` clears a flag, a fired poll sets it.
#[derive(Clone, Copy)]
struct Ready {
    readable: bool,
    writable: bool,
}

/// What one step of a direction achieved.
enum Step {
    Moved(usize),
    DstBlocked,
    NeedRead,
    SrcTxFull,
    Eof,
    SrcFailed(io::Error),
    DstFailed(io::Error),
}

/// Why a direction is not moving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    None,
    SrcRead,
    DstWrite,
    SrcWrite,
}

enum DirState {
    Open,
    /// The source ended; the end is being passed on.
    Finishing,
    Eof,
    SrcFailed(io::Error),
    DstFailed(io::Error),
}

struct Dir {
    state: DirState,
    wait: Wait,
    bytes: u64,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            state: DirState::Open,
            wait: Wait::None,
            bytes: 0,
        }
    }
    fn running(&self) -> bool {
        matches!(self.state, DirState::Open | DirState::Finishing)
    }

    /// For the ending policy: an end of stream counts as passed on only once
    /// close_notify and FIN are written.
    fn progress(&self) -> Progress {
        match self.state {
            DirState::Open | DirState::Finishing => Progress::Running,
            DirState::Eof => Progress::Finished,
            DirState::SrcFailed(_) => Progress::SrcFailed,
            DirState::DstFailed(_) => Progress::DstFailed,
        }
    }
}

impl Peer {
    /// Ciphertext queued and not yet written (counted as plaintext already).
    fn tx_len(&self) -> u64 {
        match self {
            Peer::Plain(_) => 0,
            Peer::Tls(s) => s.tx_len() as u64,
        }
    }

    /// Turn bytes lost in the socket towards this peer into the plaintext
    /// count to take off (see `MAX_RECORD_PLAINTEXT`): ciphertext is never
    /// shorter than its plaintext, so this never takes off too little.
    fn plaintext_lost(&self, lost: u64) -> u64 {
        match self {
            Peer::Plain(_) => lost,
            Peer::Tls(_) if lost > 0 => lost + MAX_RECORD_PLAINTEXT,
            Peer::Tls(_) => 0,
        }
    }

    fn has_tx(&self) -> bool {
        self.tx_len() > 0
    }

    /// Write queued ciphertext if the socket may take it.
    fn flush(&mut self, fd: BorrowedFd<'_>, io: &mut Ready) -> io::Result<bool> {
        if !io.writable {
            return Ok(false);
        }
        let r = match self {
            Peer::Plain(_) => Ok(true),
            Peer::Tls(s) => s.flush(fd),
        };
        if let Ok(false) = r {
            io.writable = false;
        }
        r
    }

    /// Deliver plaintext towards this peer; returns how much was taken.
    fn push(&mut self, fd: BorrowedFd<'_>, io: &mut Ready, data: &[u8]) -> io::Result<usize> {
        match self {
            Peer::Plain(_) => {
                if !io.writable {
                    return Ok(0);
                }
                match sys::send(fd, data) {
                    Ok(n) => {
                        // A short write filled the socket buffer.
                        io.writable = n == data.len();
                        Ok(n)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        io.writable = false;
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            }
            Peer::Tls(_) => {
                if self.has_tx() {
                    self.flush(fd, io)?;
                    if self.has_tx() {
                        return Ok(0);
                    }
                }
                let n = match self {
                    Peer::Tls(s) => s.encrypt(data)?,
                    Peer::Plain(_) => 0,
                };
                self.flush(fd, io)?;
                Ok(n)
            }
        }
    }

    /// Pass the end of stream on: close_notify (TLS), then FIN once every
    /// byte before it is written. `Ok(true)` when done.
    fn finish(&mut self, fd: BorrowedFd<'_>, io: &mut Ready) -> io::Result<bool> {
        match self {
            Peer::Plain(_) => {}
            Peer::Tls(s) => s.close_notify()?,
        }
        self.flush(fd, io)?;
        if self.has_tx() {
            return Ok(false);
        }
        let _ = sys::shutdown(fd, Shutdown::Write);
        Ok(true)
    }

    /// Take plaintext from this peer and offer it to `deliver`.
    fn pull(
        &mut self,
        fd: BorrowedFd<'_>,
        io: &mut Ready,
        deliver: &mut dyn FnMut(&[u8]) -> io::Result<usize>,
    ) -> Step {
        match self {
            Peer::Plain(buf) => {
                if !buf.is_empty() {
                    return match deliver(buf.data()) {
                        Ok(0) => Step::DstBlocked,
                        Ok(n) => {
                            buf.consume(n);
                            Step::Moved(n)
                        }
                        Err(e) => Step::DstFailed(e),
                    };
                }
                if !io.readable {
                    return Step::NeedRead;
                }
                let room = buf.spare();
                let len = room.len().min(MAX_CHUNK);
                let r = sys::recv(fd, &mut room[..len]);
                buf.commit(*r.as_ref().unwrap_or(&0));
                match r {
                    Ok(0) => Step::Eof,
                    Ok(n) => {
                        io.readable = n == len;
                        Step::Moved(0)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        io.readable = false;
                        Step::NeedRead
                    }
                    Err(e) => Step::SrcFailed(e),
                }
            }
            Peer::Tls(s) => tls_pull(&mut **s, fd, io, deliver),
        }
    }
}

fn tls_pull(
    s: &mut dyn TlsPeer,
    fd: BorrowedFd<'_>,
    io: &mut Ready,
    deliver: &mut dyn FnMut(&[u8]) -> io::Result<usize>,
) -> Step {
    match s.pull(deliver) {
        Pull::Moved(n) => Step::Moved(n),
        Pull::DstBlocked => Step::DstBlocked,
        Pull::TxFull => Step::SrcTxFull,
        Pull::Eof => Step::Eof,
        Pull::Failed(e) => Step::SrcFailed(tls_io(e)),
        Pull::DstFailed(e) => Step::DstFailed(e),
        Pull::NeedInput => {
            if !io.readable {
                return Step::NeedRead;
            }
            match s.read(fd) {
                // EOF without close_notify: passed on as an end of stream
                // all the same (what the client sent is all there is).
                Ok((0, _)) => Step::Eof,
                Ok((_, full)) => {
                    // A short read drained the socket: skip the read that
                    // would only say EAGAIN; the next poll says when.
                    io.readable = full;
                    Step::Moved(0)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.readable = false;
                    Step::NeedRead
                }
                Err(e) => Step::SrcFailed(e),
            }
        }
    }
}

/// Run one direction until it cannot move; returns whether anything moved.
fn step(
    src: &mut Peer,
    sfd: BorrowedFd<'_>,
    sio: &mut Ready,
    dst: &mut Peer,
    dfd: BorrowedFd<'_>,
    dio: &mut Ready,
    dir: &mut Dir,
) -> bool {
    let mut moved = false;
    dir.wait = Wait::None;
    loop {
        match dir.state {
            DirState::Open => {
                let mut deliver = |d: &[u8]| dst.push(dfd, dio, d);
                match src.pull(sfd, sio, &mut deliver) {
                    Step::Moved(n) => {
                        dir.bytes += n as u64;
                        moved = true;
                    }
                    Step::DstBlocked => {
                        dir.wait = Wait::DstWrite;
                        return moved;
                    }
                    Step::NeedRead => {
                        dir.wait = Wait::SrcRead;
                        return moved;
                    }
                    Step::SrcTxFull => {
                        dir.wait = Wait::SrcWrite;
                        return moved;
                    }
                    Step::Eof => {
                        dir.state = DirState::Finishing;
                        moved = true;
                    }
                    Step::SrcFailed(e) => {
                        dir.state = DirState::SrcFailed(e);
                        return true;
                    }
                    Step::DstFailed(e) => {
                        dir.state = DirState::DstFailed(e);
                        return true;
                    }
                }
            }
            DirState::Finishing => {
                return match dst.finish(dfd, dio) {
                    Ok(true) => {
                        dir.state = DirState::Eof;
                        true
                    }
                    Ok(false) => {
                        // Not a state change: waiting for the socket.
                        dir.wait = Wait::DstWrite;
                        moved
                    }
                    Err(e) => {
                        dir.state = DirState::DstFailed(e);
                        true
                    }
                };
            }
            _ => return moved,
        }
    }
}

/// Both directions of one terminated connection.
pub struct Pump<'s> {
    client: Peer,
    backend: Peer,
    cfd: BorrowedFd<'s>,
    bfd: BorrowedFd<'s>,
    /// `[client, backend]`.
    io: [Ready; 2],
    up: Dir,
    down: Dir,
    /// A failed write of queued TLS records: `[client, backend]`.
    flush_err: [Option<io::Error>; 2],
    last_active: Instant,
}

/// Which polls the pump needs: `[client, backend]`.
#[derive(Default)]
struct Needs {
    read: [bool; 2],
    write: [bool; 2],
}

impl<'s> Pump<'s> {
    pub fn new(client: Peer, backend: Peer, cfd: BorrowedFd<'s>, bfd: BorrowedFd<'s>) -> Pump<'s> {
        let ready = Ready {
            readable: true,
            writable: true,
        };
        Pump {
            client,
            backend,
            cfd,
            bfd,
            io: [ready; 2],
            up: Dir::new(),
            down: Dir::new(),
            flush_err: [None, None],
            last_active: Instant::now(),
        }
    }

    /// Do every non-blocking step possible.
    fn progress(&mut self) {
        let Pump {
            client,
            backend,
            cfd,
            bfd,
            io,
            up,
            down,
            flush_err,
            last_active,
        } = self;
        let [cio, bio] = io;
        loop {
            let before = (up.bytes, down.bytes);
            let mut moved = false;
            for (i, (peer, fd, pio)) in [
                (&mut *client, *cfd, &mut *cio),
                (&mut *backend, *bfd, &mut *bio),
            ]
            .into_iter()
            .enumerate()
            {
                if flush_err[i].is_none() && peer.has_tx() {
                    match peer.flush(fd, pio) {
                        Ok(_) => {}
                        Err(e) => flush_err[i] = Some(e),
                    }
                }
            }
            if flush_err.iter().any(Option::is_some) {
                return;
            }
            if up.running() {
                moved |= step(client, *cfd, cio, backend, *bfd, bio, up);
            }
            if down.running() {
                moved |= step(backend, *bfd, bio, client, *cfd, cio, down);
            }
            if (up.bytes, down.bytes) != before {
                *last_active = Instant::now();
            }
            if !moved || self_done(up, down) {
                return;
            }
        }
    }

    fn needs(&self) -> Needs {
        let mut n = Needs::default();
        let wait = |d: &Dir, w: Wait| d.running() && d.wait == w;
        n.read[0] = wait(&self.up, Wait::SrcRead);
        n.read[1] = wait(&self.down, Wait::SrcRead);
        n.write[0] = self.client.has_tx()
            || wait(&self.down, Wait::DstWrite)
            || wait(&self.up, Wait::SrcWrite);
        n.write[1] = self.backend.has_tx()
            || wait(&self.up, Wait::DstWrite)
            || wait(&self.down, Wait::SrcWrite);
        n
    }

    /// The outcome, once the pump is over (a failure, or both ends passed
    /// on): a failed write of queued records fails that peer's socket, then
    /// the rule of `forward::duplex` (`ending::settled`).
    fn outcome(&self) -> Option<Outcome> {
        if self.flush_err[0].is_some() {
            return Some(Outcome::ClientReset);
        }
        if self.flush_err[1].is_some() {
            return Some(Outcome::BackendReset);
        }
        ending::settled(self.up.progress(), self.down.progress())
    }

    /// One direction has ended cleanly (the terminationDelay clock runs).
    fn half_closed(&self) -> bool {
        self.up.progress() == Progress::Finished || self.down.progress() == Progress::Finished
    }

    fn into_report(self) -> Report {
        let mut error = None;
        for e in self.flush_err.into_iter().flatten() {
            error.get_or_insert(e);
        }
        for d in [self.up.state, self.down.state] {
            if let DirState::SrcFailed(e) | DirState::DstFailed(e) = d {
                error.get_or_insert(e);
            }
        }
        Report {
            up: self.up.bytes,
            down: self.down.bytes,
            error,
        }
    }

    /// Best effort: write what is queued for the client (an alert after a
    /// protocol error) without waiting.
    fn flush_client_now(&mut self) {
        let mut io = Ready {
            readable: false,
            writable: true,
        };
        let _ = self.client.flush(self.cfd, &mut io);
    }
}

fn self_done(up: &Dir, down: &Dir) -> bool {
    !up.running() && !down.running()
}

/// An empty slot for a future of the type `make` would return.
fn slot<F>(_make: impl FnOnce() -> F) -> Option<F> {
    None
}

/// Arm the poll in `slot` if `need` and it is not armed; poll it. Returns
/// whether it fired (the flag it stands for is then set).
fn poll_slot<F: Future<Output = io::Result<()>>>(
    mut slot: Pin<&mut Option<F>>,
    need: bool,
    make: impl FnOnce() -> F,
    cx: &mut Context<'_>,
    flag: &mut bool,
) -> bool {
    if need && slot.is_none() {
        slot.set(Some(make()));
    }
    if let Some(f) = slot.as_mut().as_pin_mut() {
        if f.poll(cx).is_ready() {
            // An error shows up again on the next system call, which reports it.
            slot.set(None);
            *flag = true;
            return true;
        }
    }
    false
}

/// Forward until both directions are done, a side fails, a deadline, or the
/// drain's `cut`.
pub async fn run(
    mut pump: Pump<'_>,
    client: &TcpStream,
    backend: &TcpStream,
    opts: &Opts,
    cut: &Cutoff,
) -> (Report, Outcome) {
    debug_assert_eq!(pump.cfd.as_raw_fd(), client.as_raw_fd());
    cut.forwarding();
    let mut cr = pin!(slot(|| client.readable(false)));
    let mut cw = pin!(slot(|| client.writable(false)));
    let mut br = pin!(slot(|| backend.readable(false)));
    let mut bw = pin!(slot(|| backend.writable(false)));
    let mut timers = Timers::new(opts);

    let outcome = poll_fn(|cx| {
        loop {
            pump.progress();
            if let Some(o) = pump.outcome() {
                return Poll::Ready(o);
            }
            let n = pump.needs();
            let [cio, bio] = &mut pump.io;
            let mut fired = false;
            fired |= poll_slot(
                cr.as_mut(),
                n.read[0],
                || client.readable(false),
                cx,
                &mut cio.readable,
            );
            fired |= poll_slot(
                cw.as_mut(),
                n.write[0],
                || client.writable(false),
                cx,
                &mut cio.writable,
            );
            fired |= poll_slot(
                br.as_mut(),
                n.read[1],
                || backend.readable(false),
                cx,
                &mut bio.readable,
            );
            fired |= poll_slot(
                bw.as_mut(),
                n.write[1],
                || backend.writable(false),
                cx,
                &mut bio.writable,
            );
            if !fired {
                break;
            }
        }
        timers.poll(cx, cut, pump.half_closed(), pump.last_active)
    })
    .await;

    if outcome == Outcome::ClientReset {
        // A protocol error from the client left an alert for it.
        pump.flush_client_now();
    }
    // The one ending policy of `forward::duplex` (forward/ending.rs).
    let client_side = Side {
        sock: client,
        writer: pump.down.progress().flow(),
        held: pump.client.tx_len(),
    };
    let backend_side = Side {
        sock: backend,
        writer: pump.up.progress().flow(),
        held: pump.backend.tx_len(),
    };
    let [down_lost, up_lost] = ending::close(outcome, client_side, backend_side, cut).await;
    let down_lost = pump.client.plaintext_lost(down_lost);
    let up_lost = pump.backend.plaintext_lost(up_lost);
    let mut report = pump.into_report();
    report.down = report.down.saturating_sub(down_lost);
    report.up = report.up.saturating_sub(up_lost);
    (report, outcome)
}
