//! Start-up and the control plane: load the config, bind every listener
//! (errors stop start-up before anything is served), start one pinned worker
//! per core, then handle signals (SIGHUP reload, SIGTERM/SIGINT drain) and
//! file-provider changes. The control plane never touches a connection; it
//! only publishes snapshots and flips the stop flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::Config;
use crate::worker::{self, Shared, Snapshot};
use crate::{admin, config, health, log, sys};

/// How often the file provider's `watch = true` looks at modification times.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// Run until SIGTERM/SIGINT and the drain that follows.
pub fn run(path: &Path) -> Result<(), String> {
    let cfg = config::load(path).map_err(|e| e.to_string().trim_end().to_string())?;
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
    // Signals are handled by one thread with sigwait; block them before any
    // other thread exists so every thread inherits the mask.
    sys::block_control_signals().map_err(|e| format!("cannot block signals: {e}"))?;

    // Certificates are loaded before anything is bound: a bad config never
    // serves, not even for an instant.
    let snapshot = Snapshot::new(cfg)?;
    let cfg = &snapshot.config;
    let listeners = worker::bind_all(cfg, workers).map_err(|e| e.to_string())?;
    let admin_listener = match &cfg.admin {
        Some(a) => Some(admin::bind(a).map_err(|e| e.to_string())?),
        None => None,
    };
    let pin = cfg.runtime.pin_cores && !cores.is_empty();
    let rt = cfg.runtime.clone();
    let watch = cfg.watch.clone();
    let shared = Shared::new(snapshot);
    health::restart(&shared);
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

    let path_owned = path.to_path_buf();
    {
        let shared = shared.clone();
        let path = path_owned.clone();
        std::thread::Builder::new()
            .name("sluicegate-signals".into())
            .spawn(move || signal_loop(&path, &shared))
            .map_err(|e| format!("cannot start signal thread: {e}"))?;
    }
    if !watch.is_empty() {
        let shared = shared.clone();
        let path = path_owned.clone();
        std::thread::Builder::new()
            .name("sluicegate-watch".into())
            .spawn(move || watch_loop(&path, watch, &shared))
            .map_err(|e| format!("cannot start watcher: {e}"))?;
    }
    for h in handles {
        let _ = h.join();
    }
    log!(Info, "stopped");
    Ok(())
}

fn signal_loop(path: &Path, shared: &Arc<Shared>) {
    loop {
        match sys::wait_signal() {
            libc::SIGHUP => reload(path, shared, "SIGHUP"),
            sig => {
                if shared.stopping() {
                    log!(Warn, "second stop signal: exiting now");
                    std::process::exit(0);
                }
                let grace = shared
                    .current()
                    .config
                    .entrypoints
                    .iter()
                    .map(|e| e.grace_timeout)
                    .max()
                    .unwrap_or_default();
                log!(Info, "stopping", signal = sig, grace_ms = grace.as_millis());
                shared.stop();
            }
        }
    }
}

/// Load and publish a new config; an invalid one keeps the old snapshot.
fn reload(path: &Path, shared: &Shared, why: &str) {
    match config::load(path) {
        Ok(cfg) => {
            if let Err(why_not) = same_listeners(&shared.current().config, &cfg) {
                log!(
                    Error,
                    "reload refused: keeping the running config",
                    reason = why_not
                );
                return;
            }
            let warnings = cfg.warnings.clone();
            match Snapshot::new(cfg) {
                Ok(snap) => {
                    for w in &warnings {
                        log!(Warn, "config", warning = w);
                    }
                    // Known-down servers stay down until the new checks say
                    // otherwise; then the checks move to the new snapshot.
                    health::inherit(&snap, &shared.current());
                    shared.publish(snap);
                    health::restart(shared);
                    log!(Info, "reloaded", trigger = why);
                }
                Err(e) => {
                    for line in e.lines() {
                        log!(
                            Error,
                            "reload failed: keeping the running config",
                            error = line
                        );
                    }
                }
            }
        }
        Err(errs) => {
            for e in &errs.0 {
                log!(
                    Error,
                    "reload failed: keeping the running config",
                    error = e
                );
            }
        }
    }
}

/// Listeners are bound once at start; a reload may change everything else.
fn same_listeners(old: &Config, new: &Config) -> Result<(), String> {
    let admin_addr = |c: &Config| c.admin.as_ref().map(|a| a.address);
    if admin_addr(old) != admin_addr(new) {
        return Err("the admin entrypoint was added, removed or moved; restart to apply".into());
    }
    let key = |c: &Config| -> Vec<(String, std::net::SocketAddr, bool)> {
        c.entrypoints
            .iter()
            .map(|e| (e.name.clone(), e.address, e.v6only))
            .collect()
    };
    if key(old) == key(new) {
        Ok(())
    } else {
        Err("entrypoints changed (names or addresses); restart to apply".into())
    }
}

fn watch_loop(path: &Path, files: Vec<PathBuf>, shared: &Shared) {
    let stamp = |files: &[PathBuf]| -> Vec<Option<SystemTime>> {
        files.iter().map(|f| newest_mtime(f)).collect()
    };
    let mut last = stamp(&files);
    while !shared.stopping() {
        std::thread::sleep(WATCH_PERIOD);
        let now = stamp(&files);
        if now != last {
            last = now;
            reload(path, shared, "file changed");
        }
    }
}

/// A file's mtime, or the newest mtime of the entries of a directory.
fn newest_mtime(p: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(p).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(p)
            .ok()?
            .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
            .max()
    } else {
        meta.modified().ok()
    }
}
