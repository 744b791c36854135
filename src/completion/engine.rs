//! The per-worker completion engine: the ring (`sys::uring::Ring`), the
//! connections' state machines, and the monoio task that drives them.
//!
//! One round (`Engine::round`): take every completion, apply each to its
//! connection, re-arm the directions parked on ENOBUFS if buffers came back,
//! publish the returned buffers, submit once. The driving task awaits the
//! ring's eventfd with a read on monoio's ring, then runs rounds until no
//! completion is left, so one wake-up serves every connection that has work.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;

use super::conn::{parse_user_data, Bulk, Conn, Handover, Ops, Stop};
use crate::forward::ending::Flow;
use crate::log;
use crate::sys::uring::{Completion, Ring};

/// Rounds per wake-up before yielding to monoio's other tasks (accepts,
/// handshakes, timers), so a flood of completions cannot starve them.
const ROUNDS_PER_WAKE: usize = 8;

/// The ring and the connections on it.
pub struct Engine {
    ring: Ring,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    parked: VecDeque<(u32, usize)>,
    /// Buffers given back in the current round (parked directions are
    /// re-armed only when some came back).
    returned: usize,
    scratch: Vec<Completion>,
    touched: Vec<u32>,
    /// The first ENOBUFS was logged (once per worker: a hint to give the
    /// ring more buffers, not an error).
    dry_logged: bool,
}

/// The `Ops` of one round: pushes to the ring, records parks and returns.
struct RingOps<'a> {
    ring: &'a mut Ring,
    parked: &'a mut VecDeque<(u32, usize)>,
    returned: &'a mut usize,
}

impl Ops for RingOps<'_> {
    fn recv(&mut self, fd: RawFd, ud: u64) -> io::Result<()> {
        self.ring.push_recv_multi(fd, ud)
    }
    fn send(&mut self, fd: RawFd, bid: u16, off: u32, len: u32, ud: u64) -> io::Result<()> {
        self.ring.push_send(fd, bid, off, len, ud)
    }
    fn shutdown(&mut self, fd: RawFd) -> io::Result<()> {
        crate::sys::remembered::shutdown(fd, std::net::Shutdown::Write)
    }
    fn cancel(&mut self, target: u64, ud: u64) -> io::Result<()> {
        self.ring.push_cancel(target, ud)
    }
    fn give_back(&mut self, bid: u16) {
        self.ring.give_back(bid);
        *self.returned += 1;
    }
    fn park(&mut self, slot: u32, dir: usize) {
        self.parked.push_back((slot, dir));
        // The kernel's ring ran dry: keep more buffers in it.
        self.ring.grow_stock();
    }
    fn copy_out(&mut self, bid: u16, off: u32, len: u32, out: &mut Vec<u8>) {
        self.ring.copy_out(bid, off, len, out);
    }
}

/// What the owner of a connection sees when it polls.
pub struct View {
    pub done: Option<(crate::forward::Outcome, Option<io::Error>)>,
    pub first_fin: Option<std::time::Instant>,
    pub last_active: std::time::Instant,
    /// Nothing is in flight and the connection is to continue on the
    /// readiness path: the owner calls `hand_over`.
    pub handover: bool,
}

/// A connection taken off the ring (`hand_over`).
pub struct Handed {
    /// Bytes the destinations accepted so far (client → backend, backend →
    /// client).
    pub up: u64,
    pub down: u64,
    /// Received but not sent yet, per direction (client → backend, backend
    /// → client): the readiness path writes them first.
    pub leftovers: [Vec<u8>; 2],
    pub last_active: std::time::Instant,
}

impl Engine {
    pub fn new(ring: Ring) -> Engine {
        Engine {
            ring,
            conns: Vec::new(),
            free: Vec::new(),
            parked: VecDeque::new(),
            returned: 0,
            scratch: Vec::new(),
            touched: Vec::new(),
            dry_logged: false,
        }
    }

    fn ops(&mut self) -> (RingOps<'_>, &mut Vec<Option<Conn>>) {
        (
            RingOps {
                ring: &mut self.ring,
                parked: &mut self.parked,
                returned: &mut self.returned,
            },
            &mut self.conns,
        )
    }

    /// Start forwarding between two open sockets; the caller keeps them open
    /// until `finish` or `hand_over` (or `orphan` and the final completions).
    /// `bulk_run`: hand the connection over to the readiness path when it
    /// turns into a bulk flow (`conn::BULK_RUN`, the run given here).
    pub fn register(
        &mut self,
        client: RawFd,
        backend: RawFd,
        bulk_run: Option<u64>,
    ) -> io::Result<u32> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.conns.len())
                    .map_err(|_| io::Error::other("too many connections"))?;
                self.conns.push(None);
                s
            }
        };
        let bulk = bulk_run.map(|run| Bulk {
            buffer_size: self.ring.buffer_size(),
            run,
        });
        self.conns[slot as usize] = Some(Conn::new(slot, client, backend, bulk));
        self.touch(slot);
        if let Err(e) = self.flush() {
            // The receives may be queued already: never hand these sockets
            // to another forwarding path; wind this connection down here.
            self.orphan(slot);
            return Err(e);
        }
        Ok(slot)
    }

    /// Poll a connection: its end if it is done, its timers' inputs, and
    /// the waker to use when that changes.
    pub fn view(&mut self, slot: u32, waker: &Waker) -> Option<View> {
        let c = self.conns.get_mut(slot as usize)?.as_mut()?;
        match &c.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => c.waker = Some(waker.clone()),
        }
        Some(View {
            done: c.outcome(),
            first_fin: c.first_fin,
            last_active: c.last_active,
            handover: c.handover() == Handover::Ready,
        })
    }

    /// Take a connection whose handover is ready off the ring: its byte
    /// counts and unsent bytes; its buffers go back and the slot is freed.
    /// The sockets are left as they are (open, no FIN passed on).
    pub fn hand_over(&mut self, slot: u32) -> Option<Handed> {
        let (mut ops, conns) = self.ops();
        let c = conns.get_mut(slot as usize)?.as_mut()?;
        if c.handover() != Handover::Ready {
            return None;
        }
        let (up, down) = c.bytes();
        let last_active = c.last_active;
        let leftovers = c.take_leftovers(&mut ops);
        self.conns[slot as usize] = None;
        self.free.push(slot);
        // Publish the buffers (and re-arm directions parked for want of
        // them).
        if let Err(e) = self.flush() {
            log!(Warn, "completion ring submit failed", error = e);
        }
        Some(Handed {
            up,
            down,
            leftovers,
            last_active,
        })
    }

    /// Wind a connection down (timer); `view` reports it done once the last
    /// operation completed.
    pub fn stop(&mut self, slot: u32, why: Stop) {
        let (mut ops, conns) = self.ops();
        if let Some(Some(c)) = conns.get_mut(slot as usize) {
            c.stop(why, &mut ops);
        }
        let _ = self.flush();
        self.reap(slot);
    }

    /// Remove a finished connection and return its byte counts and how each
    /// direction stood.
    pub fn finish(&mut self, slot: u32) -> (u64, u64, [Flow; 2]) {
        let bytes = match self.conns.get(slot as usize) {
            Some(Some(c)) if c.outcome().is_some() => {
                let (up, down) = c.bytes();
                (up, down, c.flows())
            }
            _ => return (0, 0, [Flow::Failed; 2]),
        };
        self.conns[slot as usize] = None;
        self.free.push(slot);
        bytes
    }

    /// The owner went away before the end: cancel everything; the slot is
    /// freed when the final completions have arrived.
    pub fn orphan(&mut self, slot: u32) {
        self.stop(slot, Stop::Orphan);
    }

    /// Free an orphan whose operations are all done.
    fn reap(&mut self, slot: u32) {
        if let Some(Some(c)) = self.conns.get(slot as usize) {
            if c.is_orphan() && c.outcome().is_some() {
                self.conns[slot as usize] = None;
                self.free.push(slot);
            }
        }
    }

    fn touch(&mut self, slot: u32) {
        if let Some(Some(c)) = self.conns.get_mut(slot as usize) {
            if !c.touched {
                c.touched = true;
                self.touched.push(slot);
            }
        }
    }

    /// Step the touched connections, re-arm parked directions, publish the
    /// returned buffers and submit.
    fn flush(&mut self) -> io::Result<()> {
        // New connections: their first step arms the receives.
        let touched = std::mem::take(&mut self.touched);
        for &slot in &touched {
            let (mut ops, conns) = self.ops();
            if let Some(Some(c)) = conns.get_mut(slot as usize) {
                if c.touched {
                    c.touched = false;
                    c.kick(&mut ops);
                }
            }
        }
        self.touched = touched;
        self.touched.clear();
        // A parked direction with the stock below every buffer is the ring
        // adapting to a burst; with all of them stocked it is a shortage.
        if !self.parked.is_empty()
            && !self.dry_logged
            && self.ring.stock() == self.ring.buffer_count()
        {
            self.dry_logged = true;
            log!(
                Info,
                "completion buffers ran out; receives wait for buffers to come back",
                buffers = self.ring.buffer_count()
            );
        }
        // Stock the kernel's ring from the spares first: a direction parked
        // for want of buffers may find them there (the stock just grew).
        let added = self.ring.publish_buffers();
        if (self.returned > 0 || added > 0) && !self.parked.is_empty() {
            // Re-arm every parked direction: a re-armed RECV waits without a
            // buffer until bytes arrive, and one that finds the ring empty
            // again parks again, until the next buffer comes back. Re-arming
            // all of them (not one per returned buffer) is what guarantees
            // that none stays parked while the ring has buffers.
            let parked = std::mem::take(&mut self.parked);
            for (slot, dir) in parked {
                let (mut ops, conns) = self.ops();
                if let Some(Some(c)) = conns.get_mut(slot as usize) {
                    c.unpark(dir, &mut ops);
                }
            }
        }
        self.returned = 0;
        self.ring.submit()
    }

    /// Give the ring buffers' memory back: all of it once the worker has no
    /// connection on the ring (no operation in flight), else that of the
    /// spare buffers below the top `MIN_STOCK` (cold since a burst: the
    /// kernel's ring is stocked from the top of the spares, so a steady load
    /// keeps reusing the same few hot buffers and never faults them in
    /// again).
    /// Called every `POOL_TRIM_PERIOD`.
    fn trim(&mut self) {
        if self.conns.iter().all(Option::is_none) && self.ring.release_buffer_memory() {
            return;
        }
        // In use: the spares below the top `MIN_STOCK` are cold (the
        // kernel's ring is stocked from the top); a burst's buffers come
        // back to the spares and their memory goes back here.
        self.ring.decay_stock();
        self.ring
            .release_spare_memory(usize::from(crate::sys::uring::MIN_STOCK));
        // What a burst left stocked in the kernel's ring beyond the stock
        // comes back to the spares for the next trim to release.
        let keep = u64::from(self.ring.stock());
        match self.ring.reclaim_stock(keep) {
            Ok(0) => {}
            Ok(_) => {
                if let Err(e) = self.ring.submit() {
                    log!(Warn, "completion ring submit failed", error = e);
                }
            }
            Err(e) => log!(Warn, "completion ring submit failed", error = e),
        }
    }

    /// One round: apply every available completion, then flush. Returns the
    /// number of completions applied; wakers to call go into `wake`.
    pub fn round(&mut self, wake: &mut Vec<Waker>) -> usize {
        let mut cqes = std::mem::take(&mut self.scratch);
        cqes.clear();
        self.ring.completions(&mut cqes);
        let n = cqes.len();
        for c in &cqes {
            let Some((slot, dir, kind)) = parse_user_data(c.user_data) else {
                continue;
            };
            let (mut ops, conns) = self.ops();
            let Some(Some(conn)) = conns.get_mut(slot as usize) else {
                // Not ours any more (cannot happen: a slot is freed only
                // after its last completion); give a stray buffer back.
                if let Some(bid) = c.buffer() {
                    ops.give_back(bid);
                }
                continue;
            };
            let fin_before = conn.first_fin.is_some();
            conn.complete(dir, kind, c, &mut ops);
            let done = conn.outcome().is_some();
            let handover = conn.handover() == Handover::Ready;
            if done || handover || (!fin_before && conn.first_fin.is_some()) {
                if let Some(w) = conn.waker.take() {
                    wake.push(w);
                }
            }
            if done {
                self.reap(slot);
            }
        }
        self.scratch = cqes;
        if let Err(e) = self.flush() {
            log!(Warn, "completion ring submit failed", error = e);
        }
        n
    }
}

thread_local! {
    /// This worker's engine; created on first use on an io_uring worker.
    static ENGINE: RefCell<Option<Rc<RefCell<Engine>>>> = const { RefCell::new(None) };
}

/// This worker's engine, created (and its driving task spawned) on first use.
pub fn get(make: impl FnOnce() -> io::Result<Ring>) -> io::Result<Rc<RefCell<Engine>>> {
    if let Some(e) = ENGINE.with(|e| e.borrow().clone()) {
        return Ok(e);
    }
    let mut ring = make()?;
    let efd = ring
        .take_eventfd()
        .ok_or_else(|| io::Error::other("ring without eventfd"))?;
    let efd = monoio::fs::File::from_std(efd)?;
    log!(
        Info,
        "completion ring ready",
        buffers = ring.buffer_count(),
        buffer_size = ring.buffer_size()
    );
    let engine = Rc::new(RefCell::new(Engine::new(ring)));
    ENGINE.with(|e| *e.borrow_mut() = Some(engine.clone()));
    monoio::spawn(drive(engine.clone(), efd));
    monoio::spawn(trim_every_period(engine.clone()));
    Ok(engine)
}

/// Every `POOL_TRIM_PERIOD`, give back the buffers' memory if the ring is
/// not in use (`Engine::trim`), like the readiness pools' trim.
async fn trim_every_period(engine: Rc<RefCell<Engine>>) {
    loop {
        monoio::time::sleep(crate::forward::POOL_TRIM_PERIOD).await;
        if let Ok(mut e) = engine.try_borrow_mut() {
            e.trim();
        }
    }
}

/// The driving task: wait for the eventfd, then run rounds.
async fn drive(engine: Rc<RefCell<Engine>>, efd: monoio::fs::File) {
    let mut buf = vec![0u8; 8];
    let mut wake = Vec::new();
    loop {
        let (res, b) = efd.read_at(buf, 0).await;
        buf = b;
        if let Err(e) = res {
            // An eventfd read does not fail; if it ever does, do not spin.
            log!(Warn, "completion eventfd read failed", error = e);
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut rounds = 0;
        // Completions posted while we drain (inline SENDs, mostly) are seen
        // by the next round: they need not wake us again.
        engine.borrow().ring.set_eventfd_enabled(false);
        loop {
            let n = engine.borrow_mut().round(&mut wake);
            for w in wake.drain(..) {
                w.wake();
            }
            if n == 0 {
                // Notifications back on, then one more look: a completion
                // posted after the last round and before this point did not
                // bump the eventfd.
                let mut e = engine.borrow_mut();
                e.ring.set_eventfd_enabled(true);
                if !e.ring.has_completions() {
                    break;
                }
                e.ring.set_eventfd_enabled(false);
                continue;
            }
            rounds += 1;
            if rounds % ROUNDS_PER_WAKE == 0 {
                // Let the other tasks run, then carry on: completions
                // already counted by the eventfd would not wake us again.
                YieldNow(false).await;
            }
        }
    }
}

/// Returns `Pending` once (after asking to be polled again), then `Ready`.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
