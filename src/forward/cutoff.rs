//! The per-connection cut signal of a drain.
//!
//! The worker creates one `Cutoff` per accepted connection and keeps it in
//! its registry (worker.rs) with the connection's entrypoint; when that
//! entrypoint's `graceTimeOut` has passed since the stop (or `cut_now`), the
//! worker cuts it. Whatever phase the connection is in then ends: before
//! forwarding (peek, dial, TLS handshake) the session drops the phase and
//! resets the client (and a dialed backend); while forwarding, `duplex` and
//! the TLS pump end with `Outcome::Drained` and apply the ending policy
//! (ending.rs); a graceful close in progress stops waiting.
//!
//! Single-threaded and cheap: two flags, a waker slot and a descriptor, no
//! allocation beyond the `Rc` (one per connection).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Where a connection is, as far as a cut is concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Peek, routing, dial, TLS handshake: a cut drops the phase.
    Before,
    /// `duplex` or the TLS pump runs: they end themselves on a cut.
    Forwarding,
    /// Forwarding ended; only the close of the sockets is left. A cut here
    /// only shortens a graceful close (it is not counted as cut).
    Ending,
}

pub struct Cutoff {
    cut: Cell<bool>,
    phase: Cell<Phase>,
    waker: Cell<Option<Waker>>,
    /// The backend socket once dialed, so a cut before forwarding can reset
    /// it before the phase that owns it is dropped. Kept by number (the
    /// phase owns the socket): it is only used while that phase is alive,
    /// through `sys::remembered`.
    backend: Cell<Option<RawFd>>,
    /// `(load-balancer service name, server address as written)` of a
    /// session whose service closes sessions of servers that go down
    /// (`onServerDown = "close"`); the worker cuts it when that server
    /// stops being pickable in the current snapshot. Names, not indices,
    /// so a session outlives a reload that renumbers services.
    target: RefCell<Option<(String, String)>>,
    /// The cut came from `onServerDown = "close"`, not from a drain (the
    /// access log then says `server_down`).
    server_down: Cell<bool>,
}

impl Default for Cutoff {
    fn default() -> Self {
        Cutoff {
            cut: Cell::new(false),
            phase: Cell::new(Phase::Before),
            waker: Cell::new(None),
            backend: Cell::new(None),
            target: RefCell::new(None),
            server_down: Cell::new(false),
        }
    }
}

impl Cutoff {
    pub fn new() -> Rc<Cutoff> {
        Rc::new(Cutoff::default())
    }

    /// Cut the connection (idempotent). Returns whether this cut ends a
    /// connection that was still working (not yet cut, not already closing),
    /// i.e. whether it counts as "cut" in the drain's log line.
    pub fn cut(&self) -> bool {
        if self.cut.replace(true) {
            return false;
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        self.phase.get() != Phase::Ending
    }

    pub fn is_cut(&self) -> bool {
        self.cut.get()
    }

    /// Ready once cut; otherwise the task is woken by the cut.
    pub fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.cut.get() {
            return Poll::Ready(());
        }
        let w = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(w));
        Poll::Pending
    }

    /// Forwarding starts: from now on the pump handles a cut itself.
    pub fn forwarding(&self) {
        self.phase.set(Phase::Forwarding);
    }

    /// Forwarding is over; the sockets are being closed.
    pub fn ending(&self) {
        self.phase.set(Phase::Ending);
    }

    /// Whether a cut now must drop the phase in progress (no pump runs yet).
    pub fn before_forwarding(&self) -> bool {
        self.phase.get() == Phase::Before
    }

    pub fn set_backend(&self, fd: RawFd) {
        self.backend.set(Some(fd));
    }

    pub fn backend(&self) -> Option<RawFd> {
        self.backend.get()
    }

    /// Cut because the server went away (onServerDown = "close"); same
    /// return as `cut`.
    pub fn cut_server_down(&self) -> bool {
        if !self.cut.get() {
            self.server_down.set(true);
        }
        self.cut()
    }

    /// Whether the cut was `cut_server_down`.
    pub fn was_server_down(&self) -> bool {
        self.server_down.get()
    }

    /// Mark this session as one to close when its server goes away.
    pub fn set_target(&self, service: &str, server: &str) {
        *self.target.borrow_mut() = Some((service.to_string(), server.to_string()));
    }

    /// Whether `f(service, server)` says this session must go.
    pub fn target_is(&self, f: impl FnOnce(&str, &str) -> bool) -> bool {
        self.target
            .borrow()
            .as_ref()
            .is_some_and(|(svc, server)| f(svc, server))
    }
}
