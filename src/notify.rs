//! The service manager's readiness protocol (systemd's `sd_notify`), spoken
//! directly: each message is one datagram of `KEY=value` lines sent to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). No libsystemd; without `$NOTIFY_SOCKET` every call here is a
//! no-op and no thread is started.
//!
//! What is sent, and when (the engine calls one function at each point):
//! - `READY=1` once every listener is bound, the workers run and the first
//!   health verdict of every checked server is in (all servers start up, so
//!   readiness before that would send traffic to a dead one), or at once
//!   when nothing is checked. The wait is bounded by the time the checks can
//!   take (their timeouts, one server after another per service) so a check
//!   that never ran cannot hold start-up for ever.
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload starts (SIGHUP or a
//!   watched file), and `READY=1` when it has ended, applied or not: the
//!   service manager only learns that the reload is over, the log says how.
//! - `STOPPING=1` at the first stop signal, when the drain starts.
//! - `STATUS=` lines with the phase and connection counts, at most once a
//!   second and only when they change (`systemctl status` shows the last).
//! - `WATCHDOG=1` every `WATCHDOG_USEC`/2 when the service manager asked for
//!   it (`WATCHDOG_USEC` set and `WATCHDOG_PID` unset or ours). A ping is
//!   proof that the workers are alive: each worker stamps a clock on every
//!   turn of its housekeeping loop (every 50 ms, an atomic store), and the
//!   ping is withheld while a worker has not stamped for a period, so a
//!   worker stuck in a loop or a blocking call gets the service restarted.
//!   During the drain the pings go on unconditionally (workers finish and
//!   return; the stop timeout is what bounds the drain).
//!
//! Ordering: the phase (starting, ready, reloading, stopping) and every
//! phase message change under one lock, so the sequence the manager sees is
//! always READY, then RELOADING/READY pairs, then STOPPING, never a READY
//! after STOPPING whichever thread gets there first.
//!
//! Owns: the notify socket, the phase and the watchdog's worker clocks. May
//! depend on `state`, `metrics`, `model`, `sys` and `log`; never on
//! `worker` (workers call `worker_alive` here).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::model::{Config, ServiceKind};
use crate::state::Shared;
use crate::{log, sys};

/// How often `STATUS=` may change.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How often start-up looks at the first health verdicts.
const READY_POLL: Duration = Duration::from_millis(10);
/// Longest wait for the first health verdicts, whatever the timeouts say
/// (systemd's default start timeout is 90 s).
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// A worker counts as stuck after this long without a stamp (or half the
/// watchdog interval, if longer): 20 housekeeping turns, so a loaded
/// machine's late timer is not mistaken for a hang.
const STALE_MIN: Duration = Duration::from_secs(1);
/// A datagram that cannot be sent within this is dropped (with a warning):
/// the signal thread sends `STOPPING=1` and must never hang on it.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Starting,
    Ready,
    Reloading,
    Stopping,
}

struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    phase: Mutex<Phase>,
    warned: AtomicBool,
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get_or_init(Notifier::from_env).as_ref()
}

/// The address `$NOTIFY_SOCKET` names: an absolute path, or `@name` for a
/// socket in the abstract namespace (the leading `@` stands for the NUL).
fn parse_address(value: &OsStr) -> Result<SocketAddr, String> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value).map_err(|e| e.to_string()),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).map_err(|e| e.to_string())
        }
        _ => Err("not a path or an @abstract name (vsock addresses are not supported)".into()),
    }
}

impl Notifier {
    fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        let made = parse_address(&value).and_then(|addr| {
            let sock = UnixDatagram::unbound().map_err(|e| e.to_string())?;
            sock.set_write_timeout(Some(SEND_TIMEOUT))
                .map_err(|e| e.to_string())?;
            Ok((sock, addr))
        });
        match made {
            Ok((sock, addr)) => Some(Notifier {
                sock,
                addr,
                phase: Mutex::new(Phase::Starting),
                warned: AtomicBool::new(false),
            }),
            Err(e) => {
                log!(
                    Warn,
                    "NOTIFY_SOCKET ignored",
                    notify_socket = value.to_string_lossy(),
                    error = e
                );
                None
            }
        }
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            // Once: a manager that went away would otherwise fill the log.
            if !self.warned.swap(true, Ordering::Relaxed) {
                log!(
                    Warn,
                    "cannot notify the service manager",
                    error = e,
                    message = msg.lines().next().unwrap_or_default()
                );
            }
        }
    }

    /// Move from `from` to `to` and send `msg`, atomically; nothing happens
    /// in any other phase.
    fn transition(&self, from: &[Phase], to: Phase, msg: impl FnOnce() -> String) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if !from.contains(&phase) {
            return false;
        }
        *phase = to;
        self.send(&msg());
        true
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Per-worker stamps for the watchdog: milliseconds since `epoch` of each
/// worker's last housekeeping turn. Only set up when a watchdog is asked for.
struct Beats {
    epoch: Instant,
    last_ms: Vec<AtomicU64>,
}

static BEATS: OnceLock<Beats> = OnceLock::new();

impl Beats {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The worker that has been silent longest, if longer than `stale`.
    fn silent(&self, stale: Duration) -> Option<(usize, u64)> {
        let now = self.now_ms();
        self.last_ms
            .iter()
            .map(|t| now.saturating_sub(t.load(Ordering::Relaxed)))
            .enumerate()
            .max_by_key(|&(_, quiet)| quiet)
            .filter(|&(_, quiet)| quiet > stale.as_millis() as u64)
    }
}

/// Worker `id` is alive (called on every housekeeping turn; one atomic store
/// when a watchdog runs, nothing otherwise).
pub fn worker_alive(id: usize) {
    if let Some(b) = BEATS.get() {
        if let Some(slot) = b.last_ms.get(id) {
            slot.store(b.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The ping period the service manager asks for: half of `WATCHDOG_USEC`,
/// when it is set, valid, and `WATCHDOG_PID` is unset or `pid`.
fn watchdog_period(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Longest time the first health verdicts can take: each service's checker
/// probes its servers one after another, each probe bounded by `timeout`.
fn first_verdicts_bound(cfg: &Config) -> Duration {
    let longest = cfg
        .services
        .iter()
        .filter_map(|s| match &s.kind {
            ServiceKind::LoadBalancer(lb) => lb
                .health_check
                .as_ref()
                .map(|hc| hc.timeout * lb.servers.len() as u32),
            ServiceKind::Weighted(_) => None,
        })
        .max()
        .unwrap_or_default();
    (longest + Duration::from_secs(1)).min(READY_WAIT_MAX)
}

/// The `STATUS=` text for `phase`.
fn status_text(phase: Phase, pending: usize, accepted: u64, open: u64) -> String {
    match phase {
        Phase::Starting => {
            format!("starting; waiting for the first health verdicts of {pending} servers")
        }
        Phase::Ready => format!("serving; connections: {open} open, {accepted} accepted"),
        Phase::Reloading => format!("reloading; connections: {open} open, {accepted} accepted"),
        Phase::Stopping => format!("draining; connections: {open} open"),
    }
}

fn status_now(shared: &Shared, phase: Phase) -> String {
    let (accepted, open) = crate::metrics::registry().connection_totals();
    let pending = shared.current().health.first_verdicts_pending();
    status_text(phase, pending, accepted, open)
}

/// Start notifying (after the listeners are bound and the workers and the
/// control threads run): `READY=1` follows once the first health verdicts
/// are in, then status lines and watchdog pings. `workers` is the number of
/// worker threads (ids `0..workers`).
pub fn start(shared: &Arc<Shared>, workers: usize) {
    let Some(n) = notifier() else {
        return;
    };
    let pid = std::process::id();
    let watchdog = watchdog_period(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        pid,
    );
    if watchdog.is_some() {
        let epoch = Instant::now();
        let _ = BEATS.set(Beats {
            epoch,
            last_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        });
    }
    let shared2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("sluicegate-notify".into())
        .stack_size(128 * 1024)
        .spawn(move || supervise(n, &shared2, watchdog));
    if let Err(e) = spawned {
        // Without the thread: ready now rather than never (no watchdog).
        log!(Error, "cannot start the notify thread", error = e);
        n.transition(&[Phase::Starting], Phase::Ready, || "READY=1".into());
    }
}

/// The notify thread: readiness, status lines, watchdog pings.
fn supervise(n: &Notifier, shared: &Shared, watchdog: Option<Duration>) {
    let started = Instant::now();
    let bound = first_verdicts_bound(&shared.current().config);
    let stale = watchdog.map(|p| p.max(STALE_MIN));
    let mut next_ping = started;
    let mut next_status = started;
    let mut last_status = String::new();
    let mut withheld = false;
    loop {
        let now = Instant::now();
        if n.phase() == Phase::Starting && !shared.stopping() {
            let pending = shared.current().health.first_verdicts_pending();
            let waited = started.elapsed();
            if pending == 0 || waited >= bound {
                if pending > 0 {
                    log!(
                        Warn,
                        "ready before every first health verdict",
                        servers_unprobed = pending,
                        waited_ms = waited.as_millis()
                    );
                }
                // The log line first: a reader of both sees it before READY.
                n.transition(&[Phase::Starting], Phase::Ready, || {
                    log!(Info, "ready", waited_ms = waited.as_millis());
                    last_status = status_now(shared, Phase::Ready);
                    format!("READY=1\nSTATUS={last_status}")
                });
                next_status = now + STATUS_PERIOD;
            }
        }
        if let (Some(period), Some(stale)) = (watchdog, stale) {
            if now >= next_ping {
                next_ping = now + period;
                let silent = BEATS.get().and_then(|b| b.silent(stale));
                match silent {
                    Some((worker, quiet)) if !shared.stopping() => {
                        if !withheld {
                            log!(
                                Error,
                                "watchdog ping withheld: a worker is not running its loop",
                                worker = worker,
                                silent_ms = quiet
                            );
                        }
                        withheld = true;
                    }
                    _ => {
                        if withheld {
                            log!(Info, "watchdog pings resumed: every worker runs");
                        }
                        withheld = false;
                        n.send("WATCHDOG=1");
                    }
                }
            }
        }
        if now >= next_status {
            next_status = now + STATUS_PERIOD;
            let text = status_now(shared, n.phase());
            if text != last_status {
                n.send(&format!("STATUS={text}"));
                last_status = text;
            }
        }
        let mut wake = next_status;
        if watchdog.is_some() {
            wake = wake.min(next_ping);
        }
        if n.phase() == Phase::Starting {
            wake = wake.min(now + READY_POLL);
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}

/// A reload starts: `RELOADING=1` and the monotonic clock, as systemd wants
/// them (in one datagram). Only once ready; during start-up nothing is sent.
pub fn reloading() {
    if let Some(n) = notifier() {
        n.transition(&[Phase::Ready], Phase::Reloading, || {
            format!("RELOADING=1\nMONOTONIC_USEC={}", sys::monotonic_usec())
        });
    }
}

/// No reload is running any more (applied, refused, failed or given up):
/// `READY=1` if `reloading` had said one started. Idempotent.
pub fn reloaded() {
    if let Some(n) = notifier() {
        n.transition(&[Phase::Reloading], Phase::Ready, || "READY=1".into());
    }
}

/// The drain starts: `STOPPING=1` (once) with the connections still open.
pub fn stopping(shared: &Shared) {
    if let Some(n) = notifier() {
        n.transition(
            &[Phase::Starting, Phase::Ready, Phase::Reloading],
            Phase::Stopping,
            || format!("STOPPING=1\nSTATUS={}", status_now(shared, Phase::Stopping)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let p = parse_address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        use std::os::linux::net::SocketAddrExt;
        let a = parse_address(OsStr::new("@sd-notify/x")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"sd-notify/x"[..]));
        assert!(parse_address(OsStr::new("relative/path")).is_err());
        assert!(parse_address(OsStr::new("vsock:2:1234")).is_err());
        assert!(parse_address(OsStr::new("")).is_err());
    }

    #[test]
    fn watchdog_needs_a_period_and_our_pid() {
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_period(Some("1000000"), None, 42), half);
        assert_eq!(watchdog_period(Some("1000000"), Some("42"), 42), half);
        assert_eq!(watchdog_period(Some("1000000"), Some("43"), 42), None);
        assert_eq!(watchdog_period(Some("1000000"), Some("x"), 42), None);
        assert_eq!(watchdog_period(Some("0"), None, 42), None);
        assert_eq!(watchdog_period(Some("soon"), None, 42), None);
        assert_eq!(watchdog_period(None, Some("42"), 42), None);
    }

    #[test]
    fn a_silent_worker_is_found_after_the_stale_time() {
        let b = Beats {
            epoch: Instant::now() - Duration::from_secs(10),
            last_ms: vec![AtomicU64::new(0), AtomicU64::new(0)],
        };
        let now = b.now_ms();
        b.last_ms[0].store(now, Ordering::Relaxed);
        b.last_ms[1].store(now - 3_000, Ordering::Relaxed);
        let (w, quiet) = b.silent(Duration::from_secs(1)).unwrap();
        assert_eq!(w, 1);
        assert!((3_000..4_000).contains(&quiet), "{quiet}");
        assert_eq!(b.silent(Duration::from_secs(5)), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_text(Phase::Ready, 0, 12, 3),
            "serving; connections: 3 open, 12 accepted"
        );
        assert_eq!(
            status_text(Phase::Stopping, 0, 12, 3),
            "draining; connections: 3 open"
        );
        assert_eq!(
            status_text(Phase::Starting, 2, 0, 0),
            "starting; waiting for the first health verdicts of 2 servers"
        );
    }
}
