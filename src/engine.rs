//! Start-up and the control plane: load the config, bind every listener
//! (errors stop start-up before anything is served), start one pinned worker
//! per core, then handle signals (SIGHUP reload, SIGTERM/SIGINT drain,
//! SIGQUIT stop now) and file-provider changes. The control plane never
//! touches a connection; it only publishes snapshots and flips the stop flag
//! (or asks the workers to cut what is left).
//!
//! Threads: the signal thread only waits for signals and flips flags, so a
//! stop signal always takes effect; reloads (SIGHUP and the watcher) run on
//! the reload thread, one at a time, each with `RELOAD_DEADLINE`, their IO on
//! a loader thread that may block without holding anything else up.
//!
//! Owns: start-up, the control threads, loading and applying a reload
//! (which entrypoints come and go; `state::Shared::reload` swaps the
//! snapshot). The top of the crate: it may depend on every module, and no
//! module depends on it.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use crate::model::{Config, EntryPointId};
use crate::state::{Shared, Snapshot, MAX_ENTRYPOINT_SLOTS};
use crate::worker;
use crate::{admin, config, health, log, sys};

/// How often the file provider's `watch = true` looks at modification times.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// Run until SIGTERM/SIGINT and the drain that follows.
pub fn run(path: &Path) -> Result<(), String> {
    let cfg = config::load(path).map_err(|e| e.to_string().trim_end().to_string())?;
    // The watched files' times as loaded: a change made while start-up is
    // still under way (before the watcher thread runs) is a change too.
    let watch_baseline = stamp(&cfg.watch);
    for w in &cfg.warnings {
        log!(Warn, "config", warning = w);
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let workers = cfg
        .runtime
        .workers
        .unwrap_or_else(|| cores.len().max(1))
        .max(1);
    let driver = worker::driver_name(cfg.runtime.driver);
    if cfg.runtime.driver == crate::model::Driver::IoUring && !monoio::utils::detect_uring() {
        return Err("runtime.driver = \"io_uring\" but io_uring is not available here".into());
    }
    // Certificates are loaded before anything is bound: a bad config never
    // serves, not even for an instant. Still before signals are blocked: a
    // start-up stuck reading a certificate (a FIFO, a device) must stay
    // stoppable by SIGTERM.
    let snapshot = Snapshot::new(cfg)?;
    // Signals are handled by one thread with sigwait; block them before any
    // other thread exists so every thread inherits the mask.
    sys::block_control_signals().map_err(|e| format!("cannot block signals: {e}"))?;
    let cfg = &snapshot.config;
    let listeners = worker::bind_all(cfg, workers).map_err(|e| e.to_string())?;
    let admin_listener = match &cfg.admin {
        Some(a) => Some(admin::bind(a).map_err(|e| e.to_string())?),
        None => None,
    };
    let pin = cfg.runtime.pin_cores && !cores.is_empty();
    let rt = cfg.runtime.clone();
    let watch = cfg.watch.clone();
    let kv = cfg.kv.clone();
    let acme = cfg.acme.clone();
    let shared = Shared::new(snapshot, health::start);
    shared
        .register_listeners(&listeners)
        .map_err(|e| format!("cannot keep a handle on the listeners: {e}"))?;
    shared.restart_checks();
    // ACME: certificates are obtained off the data path (the default one is
    // served until then).
    crate::acme::apply(&acme);
    if let Some(l) = admin_listener {
        admin::spawn(l, shared.clone()).map_err(|e| format!("cannot start admin thread: {e}"))?;
    }
    log!(
        Info,
        "starting",
        version = env!("CARGO_PKG_VERSION"),
        workers = workers,
        driver = driver,
        forwarding = format!("{:?}", rt.forwarding).to_lowercase(),
        pinned = pin
    );

    let mut handles = Vec::with_capacity(workers);
    for (id, ls) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let core = if pin {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let h = std::thread::Builder::new()
            .name(format!("sluicegate-w{id}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                if let Err(e) = worker::run(id, rt.driver, shared, ls) {
                    log!(Error, "worker failed", worker = id, error = e);
                }
            })
            .map_err(|e| format!("cannot start worker: {e}"))?;
        handles.push(h);
    }

    // Three control threads, so that no stop signal waits for IO: signals
    // (never blocks on anything but sigwait), reloads (one at a time, with a
    // deadline) and the file watcher (stat only).
    let (reload_tx, reload_rx) = mpsc::channel();
    {
        let shared = shared.clone();
        let path = path.to_path_buf();
        let tx = reload_tx.clone();
        std::thread::Builder::new()
            .name("sluicegate-reload".into())
            .spawn(move || {
                let base = shared.clone();
                let loader: Loader =
                    Arc::new(move |p: &Path| load_aligned(p, &base.current().config));
                reload_loop(&path, &shared, &tx, &reload_rx, loader, RELOAD_DEADLINE)
            })
            .map_err(|e| format!("cannot start reload thread: {e}"))?;
    }
    {
        let shared = shared.clone();
        let tx = reload_tx.clone();
        std::thread::Builder::new()
            .name("sluicegate-signals".into())
            .spawn(move || signal_loop(&shared, &tx))
            .map_err(|e| format!("cannot start signal thread: {e}"))?;
    }
    if !watch.is_empty() {
        let shared = shared.clone();
        let tx = reload_tx.clone();
        std::thread::Builder::new()
            .name("sluicegate-watch".into())
            .spawn(move || watch_loop(watch, watch_baseline, &shared, &tx))
            .map_err(|e| format!("cannot start watcher: {e}"))?;
    }
    if !kv.is_empty() {
        let (stop, tx) = (shared.clone(), reload_tx.clone());
        crate::kv::watch(
            kv,
            move || stop.stopping(),
            move || tx.send(ReloadMsg::Trigger("kv changed")).is_ok(),
        )
        .map_err(|e| format!("cannot start the KV watcher: {e}"))?;
    }
    drop(reload_tx);
    crate::notify::start(&shared, workers);
    for h in handles {
        let _ = h.join();
    }
    log!(Info, "stopped");
    Ok(())
}

/// How long a reload (reading and compiling the config, loading its
/// certificates) may take before it is given up and the running config kept.
/// A healthy reload of a large config takes well under a second; a reload
/// still running after this is reading something that never ends (a FIFO,
/// a device, a stuck network file system) and will not finish by waiting.
pub const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// A repeated SIGTERM/SIGINT this soon after the first stop signal is the
/// same request delivered twice (`timeout(1)` signals the process and then
/// its group within a millisecond; a supervisor may send one per process),
/// not an operator insisting: it is logged and the drain goes on.
pub const STOP_REPEAT_WINDOW: Duration = Duration::from_secs(2);

/// What the stop-signal thread does with a signal, given when the first stop
/// signal arrived (`None`: not stopping yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopAction {
    /// Hand a reload request to the reload thread.
    Reload,
    /// First stop signal: stop accepting and drain.
    Drain,
    /// A repeated stop signal that must not cancel the drain.
    Ignore,
    /// End the drain now: every live connection is reset.
    Cut,
}

fn stop_action(sig: i32, first_stop: Option<Instant>, now: Instant) -> StopAction {
    match (sig, first_stop) {
        (libc::SIGHUP, _) => StopAction::Reload,
        // SIGQUIT is the "now" signal at any time, as in nginx and HAProxy.
        (libc::SIGQUIT, _) => StopAction::Cut,
        (_, None) => StopAction::Drain,
        // A second SIGINT after the window is a person pressing Ctrl-C
        // again: they want out. A second SIGTERM never cuts: supervisors
        // send SIGTERM and escalate with SIGKILL, never with another SIGTERM.
        (libc::SIGINT, Some(t)) if now.duration_since(t) >= STOP_REPEAT_WINDOW => StopAction::Cut,
        _ => StopAction::Ignore,
    }
}

/// The stop-signal thread. It never does IO beyond a log line and never
/// waits for anything but the next signal, so a stop signal is seen however
/// long a reload takes (the reload runs on the reload thread).
fn signal_loop(shared: &Arc<Shared>, reloads: &mpsc::Sender<ReloadMsg>) {
    let mut first_stop: Option<Instant> = None;
    loop {
        let sig = sys::wait_signal();
        let now = Instant::now();
        match stop_action(sig, first_stop, now) {
            StopAction::Reload => {
                if !shared.stopping() {
                    let _ = reloads.send(ReloadMsg::Trigger("SIGHUP"));
                }
            }
            StopAction::Drain => {
                first_stop = Some(now);
                crate::notify::stopping(shared);
                let grace = shared
                    .current()
                    .config
                    .entrypoints
                    .iter()
                    .map(|e| e.grace_timeout)
                    .max()
                    .unwrap_or_default();
                // Stop first: a test (or an operator) that sees the log line
                // must find /ping answering 503 already.
                let at = shared.stop();
                let accept_ms = close_after_accept_grace(shared, at);
                log!(
                    Info,
                    "stopping",
                    signal = sig,
                    accept_grace_ms = accept_ms,
                    grace_ms = grace.as_millis()
                );
            }
            StopAction::Ignore => {
                let since = first_stop.map_or(0, |t| now.duration_since(t).as_millis());
                log!(
                    Warn,
                    "repeated stop signal ignored: draining",
                    signal = sig,
                    since_first_ms = since
                );
            }
            StopAction::Cut => {
                if first_stop.is_none() {
                    first_stop = Some(now);
                    shared.stop();
                    crate::notify::stopping(shared);
                }
                log!(Warn, "stop now: resetting open connections", signal = sig);
                // Never `process::exit` here: connections still open would
                // end with a clean FIN and look complete. Workers reset them
                // and return; `run` then returns as after a drain.
                shared.cut_now();
            }
        }
    }
}

/// Entrypoints with a `requestAcceptGraceTimeout` keep accepting that long
/// after the stop at `at` (Traefik's: a load balancer that has seen /ping
/// turn 503 stops sending, connections already on their way are still
/// served); a timer thread then closes each one, so the signal thread stays
/// free for SIGQUIT. Returns the longest accept grace, in milliseconds.
fn close_after_accept_grace(shared: &Arc<Shared>, at: Instant) -> u128 {
    let mut pending: Vec<(Duration, EntryPointId)> = shared
        .current()
        .config
        .enumerate_entrypoints()
        .filter(|(_, e)| !e.accept_grace.is_zero())
        .map(|(i, e)| (e.accept_grace, i))
        .collect();
    pending.sort();
    let Some(&(longest, _)) = pending.last() else {
        return 0;
    };
    let timer = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("sluicegate-stop".into())
        .spawn(move || {
            for (after, ep) in pending {
                if let Some(left) = (at + after).checked_duration_since(Instant::now()) {
                    std::thread::sleep(left);
                }
                timer.close_entrypoint(ep);
            }
        });
    if let Err(e) = spawned {
        // Never keep accepting for ever: close now instead.
        log!(
            Error,
            "cannot start the stop timer: accepting ends now",
            error = e
        );
        for (ep, _) in shared.current().config.enumerate_entrypoints() {
            shared.close_entrypoint(ep);
        }
    }
    longest.as_millis()
}

/// Messages to the reload thread.
enum ReloadMsg {
    /// Reload the config; the reason is logged (`SIGHUP`, `file changed`).
    Trigger(&'static str),
    /// The loader finished attempt `id`.
    Loaded(u64, Box<Loaded>),
}

/// The function a loader thread runs (`load_aligned`; tests substitute one
/// that blocks).
type Loader = Arc<dyn Fn(&Path) -> Loaded + Send + Sync>;

/// What the loader thread produced: a compiled snapshot ready to publish
/// with the config's warnings, or the errors (one per line).
type Loaded = Result<(Snapshot, Vec<String>), Vec<String>>;

/// Read, validate and compile the config and load its certificates: all the
/// IO of a reload, on the loader thread, where blocking harms nothing.
/// Entrypoints keep the slots they have in `running` (see
/// `align_entrypoints`).
fn load_aligned(path: &Path, running: &Config) -> Loaded {
    // A writer that truncates and then writes (an editor, `cp`, a shell
    // redirect) leaves an empty file for a moment; applied, it would close
    // every listener. At start an empty file only warns; a reload refuses it.
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        return Err(vec![format!(
            "{}: the configuration file is empty (still being written?); a reload never applies an empty file",
            path.display()
        )]);
    }
    let mut cfg = config::load(path)
        .map_err(|errs| errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    align_entrypoints(&mut cfg, running).map_err(|e| vec![e])?;
    let warnings = cfg.warnings.clone();
    let snap = Snapshot::new(cfg).map_err(|e| e.lines().map(str::to_owned).collect::<Vec<_>>())?;
    Ok((snap, warnings))
}

/// The reload thread: one reload at a time, each with `RELOAD_DEADLINE`.
///
/// The IO runs on a separate loader thread, because a read that blocks
/// cannot be interrupted from outside; this thread only waits for the
/// loader's answer with a deadline. Triggers that arrive while a reload runs
/// (or while a timed-out loader is still stuck) are coalesced into one
/// reload that starts when the loader is free: there is never more than one
/// loader thread, whatever the loader does.
fn reload_loop(
    path: &Path,
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<ReloadMsg>,
    rx: &mpsc::Receiver<ReloadMsg>,
    loader: Loader,
    deadline: Duration,
) {
    /// The loader's current attempt.
    struct Running {
        id: u64,
        why: &'static str,
        started: Instant,
        /// Past its deadline: the error is logged, its result is discarded.
        expired: bool,
    }
    let mut running: Option<Running> = None;
    let mut pending: Option<&'static str> = None;
    let mut next_id = 0u64;
    loop {
        let msg = match &running {
            Some(r) if !r.expired => {
                let left = deadline.saturating_sub(r.started.elapsed());
                rx.recv_timeout(left)
            }
            _ => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(ReloadMsg::Trigger(why)) => {
                if shared.stopping() {
                    continue;
                }
                match &running {
                    None => pending = Some(why),
                    Some(r) => {
                        if r.expired && pending.is_none() {
                            // The loader is stuck in a read that may never
                            // return; starting another one would only stack
                            // stuck threads.
                            log!(
                                Error,
                                "reload deferred: the previous reload is still blocked",
                                trigger = why,
                                blocked_ms = r.started.elapsed().as_millis()
                            );
                        } else if !r.expired && pending.is_none() {
                            log!(
                                Info,
                                "reload requested while one is running: it will follow",
                                trigger = why,
                                running_ms = r.started.elapsed().as_millis()
                            );
                        }
                        pending = Some(why);
                    }
                }
            }
            Ok(ReloadMsg::Loaded(id, loaded)) => {
                if let Some(r) = running.take_if(|r| r.id == id) {
                    if r.expired {
                        log!(
                            Warn,
                            "late reload result discarded",
                            trigger = r.why,
                            took_ms = r.started.elapsed().as_millis()
                        );
                    } else if !shared.stopping() {
                        apply(shared, *loaded, r.why);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(r) = running.as_mut() {
                    r.expired = true;
                    log!(
                        Error,
                        "reload failed: keeping the running config",
                        trigger = r.why,
                        error = format!(
                            "not finished after {} ms (is a configured file a FIFO or a device?)",
                            deadline.as_millis()
                        )
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if running.is_none() {
            if let Some(why) = pending.take() {
                next_id += 1;
                let id = next_id;
                crate::notify::reloading();
                let (path, tx, loader) = (path.to_path_buf(), tx.clone(), loader.clone());
                let spawned = std::thread::Builder::new()
                    .name("sluicegate-load".into())
                    .spawn(move || {
                        let loaded = loader(&path);
                        let _ = tx.send(ReloadMsg::Loaded(id, Box::new(loaded)));
                    });
                match spawned {
                    Ok(_) => {
                        running = Some(Running {
                            id,
                            why,
                            started: Instant::now(),
                            expired: false,
                        })
                    }
                    Err(e) => log!(
                        Error,
                        "reload failed: keeping the running config",
                        trigger = why,
                        error = format!("cannot start the loader thread: {e}")
                    ),
                }
            }
        }
        // No reload in progress (or one given up): the manager may know.
        if running.as_ref().is_none_or(|r| r.expired) {
            crate::notify::reloaded();
        }
    }
}

/// Publish a loaded snapshot; an invalid config keeps the old snapshot.
fn apply(shared: &Shared, loaded: Loaded, why: &str) {
    match loaded {
        Ok((snap, warnings)) => {
            let old = shared.current();
            if let Err(why_not) = same_listeners(&old.config, &snap.config) {
                log!(
                    Error,
                    "reload refused: keeping the running config",
                    reason = why_not
                );
                return;
            }
            // Entrypoints the reload adds are bound before anything changes:
            // one that cannot listen keeps the running config.
            let (added, removed) = entrypoint_changes(&old.config, &snap.config);
            let mut bound = Vec::with_capacity(added.len());
            for &ep in &added {
                match worker::bind_entrypoint(snap.config.entrypoint(ep), shared.workers()) {
                    Ok(socks) => bound.push((ep, socks)),
                    Err(e) => {
                        log!(
                            Error,
                            "reload refused: keeping the running config",
                            reason = e
                        );
                        return;
                    }
                }
            }
            for w in &warnings {
                log!(Warn, "config", warning = w);
            }
            let graces: Vec<Duration> = removed
                .iter()
                .map(|&ep| old.config.entrypoint(ep).grace_timeout)
                .collect();
            let names = |eps: &[EntryPointId], c: &Config| -> Vec<String> {
                eps.iter().map(|&e| c.entrypoint(e).name.clone()).collect()
            };
            let (added_names, removed_names) =
                (names(&added, &snap.config), names(&removed, &old.config));
            let acme = snap.config.acme.clone();
            // Known-down servers stay down until the new checks say
            // otherwise, open connections and queues stay counted, and the
            // checks move to the new snapshot.
            shared.reload(snap);
            crate::acme::apply(&acme);
            // After the publish: a worker never accepts on an entrypoint its
            // snapshot does not have.
            for (ep, socks) in bound {
                if let Err(e) = shared.add_listeners(ep, socks) {
                    log!(
                        Error,
                        "cannot hand an added entrypoint to the workers",
                        error = e
                    );
                }
            }
            let now = Instant::now();
            for (&ep, grace) in removed.iter().zip(graces) {
                shared.remove_entrypoint(ep, now + grace);
            }
            for n in &added_names {
                log!(Info, "entrypoint added", entrypoint = n);
            }
            for n in &removed_names {
                log!(Info, "entrypoint removed: draining", entrypoint = n);
            }
            log!(Info, "reloaded", trigger = why);
        }
        Err(errors) => {
            for e in &errors {
                log!(
                    Error,
                    "reload failed: keeping the running config",
                    error = e
                );
            }
        }
    }
}

/// The admin listener is bound once at start; entrypoints may change (see
/// `align_entrypoints`), with one exception: `reusePort` of an entrypoint
/// that stays.
fn same_listeners(old: &Config, new: &Config) -> Result<(), String> {
    let admin_addr = |c: &Config| c.admin.as_ref().map(|a| (a.address, a.reuse_port));
    if admin_addr(old) != admin_addr(new) {
        return Err("the admin entrypoint was added, removed or moved; restart to apply".into());
    }
    // Slots are aligned: the same slot is the same listener.
    for (o, n) in old.entrypoints.iter().zip(&new.entrypoints) {
        if !o.removed && !n.removed && o.reuse_port != n.reuse_port {
            return Err(format!(
                "entrypoint `{}`: reusePort changed ({} -> {}); restart to apply",
                n.name, o.reuse_port, n.reuse_port
            ));
        }
    }
    Ok(())
}

/// What a listener is: an entrypoint whose address changes is removed and
/// added again (a new socket); one that keeps its name and address keeps its
/// slot and listener, with every other setting reloaded (also when renamed,
/// except on port 0).
fn listener_key(e: &crate::model::EntryPoint) -> (std::net::SocketAddr, bool) {
    (e.address, e.v6only)
}

/// Reorders a reloaded config's entrypoints so that every entrypoint that
/// stays keeps its slot (its `EntryPointId`) of the running config: workers,
/// metrics and live connections name entrypoints by id, and a slot never
/// changes meaning while the process runs. Entrypoints that went away stay as
/// `removed` tombstones (no router, no listener) while they drain; new ones
/// take a tombstone of the same name and address, else a new slot at the
/// end. Router entrypoint ids are remapped to match.
fn align_entrypoints(new: &mut Config, old: &Config) -> Result<(), String> {
    let incoming = std::mem::take(&mut new.entrypoints);
    let mut slots: Vec<Option<crate::model::EntryPoint>> = vec![None; old.entrypoints.len()];
    let mut remap = vec![usize::MAX; incoming.len()];
    let mut appended = Vec::new();
    for (i, e) in incoming.into_iter().enumerate() {
        let free = |at: &usize| slots[*at].is_none();
        let same = |o: &crate::model::EntryPoint| listener_key(o) == listener_key(&e);
        // The same name on the same address; else (renamed) the same
        // address, unless it is port 0, which names no particular socket.
        let at = (0..old.entrypoints.len())
            .filter(free)
            .find(|&at| same(&old.entrypoints[at]) && old.entrypoints[at].name == e.name)
            .or_else(|| {
                (e.address.port() != 0)
                    .then(|| {
                        (0..old.entrypoints.len())
                            .filter(free)
                            .find(|&at| same(&old.entrypoints[at]))
                    })
                    .flatten()
            });
        match at {
            Some(at) => {
                remap[i] = at;
                slots[at] = Some(e);
            }
            None => appended.push((i, e)),
        }
    }
    let mut out: Vec<crate::model::EntryPoint> = Vec::with_capacity(slots.len() + appended.len());
    for (at, slot) in slots.into_iter().enumerate() {
        out.push(slot.unwrap_or_else(|| crate::model::EntryPoint {
            removed: true,
            ..old.entrypoints[at].clone()
        }));
    }
    for (i, e) in appended {
        remap[i] = out.len();
        out.push(e);
    }
    if out.len() > MAX_ENTRYPOINT_SLOTS {
        return Err(format!(
            "more than {} entrypoints added and removed since start; restart to apply",
            MAX_ENTRYPOINT_SLOTS
        ));
    }
    for r in &mut new.routers {
        for ep in &mut r.entrypoints {
            *ep = EntryPointId::from_index(remap[ep.index()]);
        }
    }
    new.entrypoints = out;
    Ok(())
}

/// Entrypoint slots a reload adds (no listener in the running config) and
/// removes (one that had a listener became a tombstone).
fn entrypoint_changes(old: &Config, new: &Config) -> (Vec<EntryPointId>, Vec<EntryPointId>) {
    let live = |c: &Config, i: EntryPointId| c.get_entrypoint(i).is_some_and(|e| !e.removed);
    let n = old.entrypoints.len().max(new.entrypoints.len());
    let slots = || (0..n).map(EntryPointId::from_index);
    let added = slots().filter(|&i| live(new, i) && !live(old, i)).collect();
    let removed = slots().filter(|&i| live(old, i) && !live(new, i)).collect();
    (added, removed)
}

/// Looks at modification times only (a `stat` never blocks on a FIFO) and
/// hands changes to the reload thread.
fn watch_loop(
    files: Vec<PathBuf>,
    mut last: Vec<Option<SystemTime>>,
    shared: &Shared,
    reloads: &mpsc::Sender<ReloadMsg>,
) {
    while !shared.stopping() {
        std::thread::sleep(WATCH_PERIOD);
        let now = stamp(&files);
        if now != last {
            last = now;
            let _ = reloads.send(ReloadMsg::Trigger("file changed"));
        }
    }
}

/// The newest modification time of each watched path.
fn stamp(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| newest_mtime(f)).collect()
}

/// A file's mtime, or for a directory the newest of its own mtime (which
/// moves when an entry is created, renamed or deleted: deleting a file that
/// is not the newest must be seen too) and its entries' (a file edited in
/// place, a subdirectory whose entries changed).
fn newest_mtime(p: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(p).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(p)
            .ok()?
            .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
            .chain(meta.modified().ok())
            .max()
    } else {
        meta.modified().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A compiled snapshot whose only server is `server`.
    fn snapshot(server: &str) -> Snapshot {
        let text = format!(
            "[entryPoints.main]\naddress = \"127.0.0.1:0\"\n[tcp.routers.r]\nrule = \"HostSNI(`*`)\"\nservice = \"s\"\n[tcp.services.s.loadBalancer]\n[[tcp.services.s.loadBalancer.servers]]\naddress = \"{server}\"\n"
        );
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-engine-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = config::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Snapshot::new(cfg).unwrap()
    }

    fn server_of(shared: &Shared) -> String {
        let first = crate::model::ServiceId::from_index(0);
        match &shared.current().config.service(first).kind {
            crate::model::ServiceKind::LoadBalancer(lb) => lb.servers[0].address_text.clone(),
            _ => unreachable!(),
        }
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The deadline logic with a loader that blocks like a read of a FIFO:
    /// the old config stays, triggers during the stuck load start no second
    /// loader, the stuck load's late result is never published, and the
    /// coalesced trigger reloads once the loader is free.
    #[test]
    fn a_stuck_reload_expires_and_triggers_coalesce_without_new_loaders() {
        let shared = Shared::new(snapshot("127.0.0.1:1"), crate::health::start);
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let loader: Loader = {
            let calls = calls.clone();
            Arc::new(move |_: &Path| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Stuck until the test opens the gate; then a valid
                    // config that must not be published any more.
                    let _ = gate.lock().unwrap().recv();
                    return Ok((snapshot("127.0.0.1:2"), Vec::new()));
                }
                Ok((snapshot("127.0.0.1:3"), Vec::new()))
            })
        };
        let (tx, rx) = mpsc::channel();
        {
            let (shared, tx) = (shared.clone(), tx.clone());
            std::thread::spawn(move || {
                reload_loop(
                    Path::new("unused"),
                    &shared,
                    &tx,
                    &rx,
                    loader,
                    Duration::from_millis(100),
                )
            });
        }
        tx.send(ReloadMsg::Trigger("test")).unwrap();
        wait_until("the first load", || calls.load(Ordering::SeqCst) == 1);
        // Well past the deadline, more triggers: still one loader.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            tx.send(ReloadMsg::Trigger("test")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no loader stacked");
        assert_eq!(server_of(&shared), "127.0.0.1:1", "old config kept");
        // The stuck load returns: discarded; the coalesced trigger runs once.
        gate_tx.send(()).unwrap();
        wait_until("the deferred reload", || {
            server_of(&shared) == "127.0.0.1:3"
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "five triggers, one reload");
    }

    #[test]
    fn repeated_stop_signals_keep_draining_until_sigquit_or_a_late_sigint() {
        let t0 = Instant::now();
        let soon = t0 + STOP_REPEAT_WINDOW / 2;
        let late = t0 + STOP_REPEAT_WINDOW;
        assert_eq!(stop_action(libc::SIGHUP, None, t0), StopAction::Reload);
        assert_eq!(stop_action(libc::SIGTERM, None, t0), StopAction::Drain);
        assert_eq!(stop_action(libc::SIGINT, None, t0), StopAction::Drain);
        assert_eq!(stop_action(libc::SIGQUIT, None, t0), StopAction::Cut);
        // `timeout(1)`'s pair, or Ctrl-C and a supervisor's SIGTERM at once.
        assert_eq!(
            stop_action(libc::SIGTERM, Some(t0), soon),
            StopAction::Ignore
        );
        assert_eq!(
            stop_action(libc::SIGINT, Some(t0), soon),
            StopAction::Ignore
        );
        // A SIGTERM never cuts; a second Ctrl-C after the window does.
        assert_eq!(
            stop_action(libc::SIGTERM, Some(t0), late),
            StopAction::Ignore
        );
        assert_eq!(stop_action(libc::SIGINT, Some(t0), late), StopAction::Cut);
        assert_eq!(stop_action(libc::SIGQUIT, Some(t0), soon), StopAction::Cut);
        assert_eq!(
            stop_action(libc::SIGHUP, Some(t0), soon),
            StopAction::Reload
        );
    }
}
