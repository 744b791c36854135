//! Signals through the real binary: a reload that blocks (a FIFO where a
//! config file or a certificate should be) never keeps the process from
//! stopping, and the drain is not skipped by a repeated SIGTERM (`timeout(1)`
//! signals the process and then its group) but is ended by SIGQUIT.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGALRM: i32 = 14;
const SIGTERM: i32 = 15;

/// Bound for "the process reacts" waits: far above any healthy reaction,
/// far below the forever of the bugs these tests catch.
const REACT: Duration = Duration::from_secs(15);

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Poll the proxy's log for a line matching `pred` for up to `limit`.
fn saw_log(p: &Proxy, limit: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if p.logs().iter().any(|l| pred(l)) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A client that holds one proxied echo connection open (proved working).
fn hold(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s
}

/// The static part: a data entrypoint, the admin entrypoint with /ping, a
/// grace time long enough to watch the drain, dynamic config from `dynamic`.
fn static_config(dynamic: &Path) -> String {
    Cfg::new()
        .entrypoint("main")
        .set("entryPoints.main.transport.lifeCycle", "graceTimeOut", "5s")
        .entrypoint("traefik")
        .table("ping")
        .set("providers.file", "filename", dynamic)
        .workers(2)
        .to_toml()
}

/// The dynamic part: everything on `main` to `backend` (the connections held
/// here never half-close).
fn dynamic_config(backend: SocketAddr) -> String {
    Cfg::new()
        .router_on("r", "main", "HostSNI(`*`)", "s")
        .service("s", &[backend])
        .to_toml()
}

/// After a reload that is stuck reading a FIFO, SIGTERM still drains (/ping
/// answers 503, the open connection is served) and the process exits.
fn assert_stoppable_while_reload_blocks(p: &mut Proxy, conn: TcpStream) {
    let admin = p.addr("traefik");
    // The reload is stuck now (no writer will ever open the FIFO); the
    // gateway still answers and still forwards.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(ping(admin), 200, "healthy while a reload is blocked");
    let second = hold(p.addr("main"));
    let t = Instant::now();
    p.signal(SIGTERM);
    assert!(
        saw_log(p, REACT, |l| l.contains("msg=stopping")),
        "SIGTERM not seen while a reload is blocked; log:\n{}",
        p.logs().join("\n")
    );
    eprintln!(
        "SIGTERM seen {:?} after it was sent (reload blocked)",
        t.elapsed()
    );
    assert_eq!(ping(admin), 503, "/ping says draining");
    drop(conn);
    drop(second);
    let code = p.wait_exit(REACT);
    assert!(code.is_some(), "process did not exit after the drain");
}

#[test]
fn sigterm_stops_the_process_while_a_reload_reads_a_fifo_config() {
    let echo = Backend::echo();
    let dir = TempDir::new("fifo-config");
    let dynamic = dir.write("dyn.toml", &dynamic_config(echo.addr));
    let mut p = Proxy::start(&static_config(&dynamic));
    let conn = hold(p.addr("main"));
    // The same static config, its provider file now a FIFO.
    let fifo = dir.0.join("dyn.fifo");
    mkfifo(&fifo);
    std::fs::write(&p.config_path, static_config(&fifo)).unwrap();
    p.signal(SIGHUP);
    assert_stoppable_while_reload_blocks(&mut p, conn);
}

#[test]
fn sigterm_stops_the_process_while_a_reload_reads_a_fifo_certificate() {
    let echo = Backend::echo();
    let dir = TempDir::new("fifo-cert");
    let dynamic = dir.write("dyn.toml", &dynamic_config(echo.addr));
    let mut p = Proxy::start(&static_config(&dynamic));
    let conn = hold(p.addr("main"));
    let fifo = dir.0.join("cert.fifo");
    mkfifo(&fifo);
    let with_cert = format!(
        "{}\n[[tls.certificates]]\ncertFile = {:?}\nkeyFile = {:?}\n",
        dynamic_config(echo.addr),
        fifo.display().to_string(),
        fifo.display().to_string()
    );
    std::fs::write(&dynamic, with_cert).unwrap();
    p.signal(SIGHUP);
    assert_stoppable_while_reload_blocks(&mut p, conn);
}

#[test]
fn sigterm_stops_a_start_stuck_reading_a_fifo_certificate() {
    let echo = Backend::echo();
    let dir = TempDir::new("fifo-cert-start");
    let fifo = dir.0.join("cert.fifo");
    mkfifo(&fifo);
    let dynamic = dir.write(
        "dyn.toml",
        &format!(
            "{}\n[[tls.certificates]]\ncertFile = {:?}\nkeyFile = {:?}\n",
            dynamic_config(echo.addr),
            fifo.display().to_string(),
            fifo.display().to_string()
        ),
    );
    let main = dir.write("main.toml", &static_config(&dynamic));
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&main)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Give it time to get stuck in the FIFO. A loader that reads regular
    // files only refuses it instead: then it has exited with an error.
    thread::sleep(Duration::from_millis(500));
    if let Some(st) = child.try_wait().unwrap() {
        assert!(!st.success(), "a FIFO certificate cannot start");
        return;
    }
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + REACT;
    let mut exited = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(exited, "SIGTERM during a start stuck on a FIFO certificate");
}

/// Threads of a process (its /proc task count).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_blocked_reload_times_out_keeps_the_old_config_and_never_stacks_threads() {
    let a = Backend::greeting(b"A");
    let b = Backend::greeting(b"B");
    let dir = TempDir::new("fifo-deadline");
    let dynamic = dir.write("dyn.toml", &dynamic_config(a.addr));
    let p = Proxy::start(&static_config(&dynamic));
    let addr = p.addr("main");
    let who = || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = [0u8; 1];
        s.read_exact(&mut c).unwrap();
        c[0]
    };
    assert_eq!(who(), b'A');
    let fifo = dir.0.join("dyn.fifo");
    mkfifo(&fifo);
    std::fs::write(&p.config_path, static_config(&fifo)).unwrap();
    p.signal(SIGHUP);
    // Either RELOAD_DEADLINE (10 s) passes while the loader is stuck in the
    // FIFO, or a loader that reads only regular files refuses it at once:
    // both are an error, and the old config stays.
    let lines = p.wait_logs(1, |l| {
        l.contains("reload failed: keeping the running config")
    });
    assert!(lines[0].contains("level=error"), "{}", lines[0]);
    assert_eq!(who(), b'A', "the running config is kept");
    assert_eq!(ping(p.addr("traefik")), 200);
    let blocked = lines[0].contains("not finished after");
    if blocked {
        // More triggers while the loader is stuck: deferred, no new threads.
        let before = threads(p.pid());
        for _ in 0..5 {
            p.signal(SIGHUP);
            thread::sleep(Duration::from_millis(50));
        }
        p.wait_logs(1, |l| {
            l.contains("reload deferred: the previous reload is still blocked")
        });
        thread::sleep(Duration::from_millis(300));
        assert!(
            threads(p.pid()) <= before,
            "reload triggers stacked threads: {before} -> {}",
            threads(p.pid())
        );
    }
    // Back to a regular file, pointing at B.
    std::fs::write(&dynamic, dynamic_config(b.addr)).unwrap();
    std::fs::write(&p.config_path, static_config(&dynamic)).unwrap();
    if blocked {
        // Unblock the stuck loader (a writer opens the FIFO and writes
        // nothing): its late result is discarded, and the deferred trigger
        // reloads the files as they are now.
        std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        p.wait_logs(1, |l| l.contains("late reload result discarded"));
    } else {
        p.signal(SIGHUP);
    }
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(who(), b'B');
}

/// A backend that streams 16 KiB chunks every 20 ms until told to finish,
/// then sends `TAIL_CHUNKS` more and closes cleanly; it records every byte it
/// sent so the client's copy can be compared, and whether it got to the end
/// (a proxy that went away makes its writes fail).
struct Streamer {
    backend: Backend,
    finish: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<u8>>>,
    completed: Arc<AtomicBool>,
}

/// Chunks sent after the stop signal: ~0.4 s of stream that must survive it.
const TAIL_CHUNKS: u64 = 20;

impl Streamer {
    fn start() -> Streamer {
        let finish = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let completed = Arc::new(AtomicBool::new(false));
        let (f, rec, done) = (finish.clone(), sent.clone(), completed.clone());
        let backend = Backend::start(move |mut s| {
            let mut seed = 1u64;
            let mut tail = 0;
            while tail < TAIL_CHUNKS {
                let chunk = pattern(16 * 1024, seed);
                seed += 1;
                if s.write_all(&chunk).is_err() {
                    return;
                }
                rec.lock().unwrap().extend_from_slice(&chunk);
                if f.load(Ordering::Acquire) {
                    tail += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            // Before the close that the client sees as EOF.
            done.store(true, Ordering::Release);
        });
        Streamer {
            backend,
            finish,
            sent,
            completed,
        }
    }
}

/// Downloads from `backend` on `main`, drained for `grace`. The backend
/// closes its side when a download is sent; a generous terminationDelay
/// keeps that FIN from ending the connection before the client has read it.
fn stream_config(backend: SocketAddr, driver: &str, mode: &str, grace: &str) -> String {
    Cfg::new()
        .entrypoint("main")
        .set(
            "entryPoints.main.transport.lifeCycle",
            "graceTimeOut",
            grace,
        )
        .router("r", "HostSNI(`*`)", "s")
        .service("s", &[backend])
        .termination_delay("30s")
        .workers(2)
        .runtime(driver, mode)
        .to_toml()
}

/// Connect and read the first bytes: the download is under way.
fn start_download(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut first = vec![0u8; 1024];
    s.read_exact(&mut first).unwrap();
    (s, first)
}

/// Read the rest of the download; the whole must equal what the backend
/// sent and end in a clean EOF.
fn finish_download(mut s: TcpStream, mut got: Vec<u8>, st: &Streamer, what: &str) {
    let (rest, err) = read_to_end(&mut s);
    got.extend_from_slice(&rest);
    let sent = st.sent.lock().unwrap().clone();
    assert!(err.is_none(), "{what}: stream ended by {err:?}");
    assert!(
        st.completed.load(Ordering::Acquire),
        "{what}: the backend could not send its whole reply"
    );
    assert!(
        got.len() >= TAIL_CHUNKS as usize * 16 * 1024,
        "{what}: {} bytes",
        got.len()
    );
    assert_eq!(
        got.len(),
        sent.len(),
        "{what}: the drain must deliver the whole stream"
    );
    assert_eq!(checksum(&got), checksum(&sent), "{what}: byte-exact");
}

#[test]
fn timeout_double_sigterm_does_not_skip_the_drain() {
    if !require_tool("timeout", "coreutils") {
        return;
    }
    // The kernel merges the pair into one pending SIGTERM when the signal
    // thread has not dequeued the first yet (often, under load); a few rounds
    // per variant make sure the pair is also seen as two signals.
    for round in 0..TIMEOUT_ROUNDS {
        for (driver, mode) in VARIANTS {
            let what = format!("{driver}/{mode} round {round}");
            let st = Streamer::start();
            // `timeout` as users run it: on expiry it sends SIGTERM to the
            // child and then to its process group, microseconds apart.
            // SIGALRM is how its own timer expires, so sending it makes
            // `timeout` do exactly that now instead of after 10 minutes.
            let mut p = Proxy::start_with(
                &stream_config(st.backend.addr, driver, mode, "30s"),
                &["timeout", "600"],
            );
            let (s, got) = start_download(p.addr("main"));
            p.signal(SIGALRM);
            p.wait_logs(1, |l| l.contains("msg=stopping"));
            st.finish.store(true, Ordering::Release);
            finish_download(s, got, &st, &what);
            assert!(
                p.wait_exit(REACT).is_some(),
                "{what}: exits after the drain"
            );
        }
    }
}

/// Rounds of `timeout_double_sigterm_does_not_skip_the_drain` per variant.
const TIMEOUT_ROUNDS: usize = 3;

#[test]
fn a_second_sigterm_is_logged_and_the_drain_goes_on() {
    for (driver, mode) in VARIANTS {
        let what = format!("{driver}/{mode}");
        let st = Streamer::start();
        let mut p = Proxy::start(&stream_config(st.backend.addr, driver, mode, "30s"));
        let (s, got) = start_download(p.addr("main"));
        p.signal(SIGTERM);
        p.wait_logs(1, |l| l.contains("msg=stopping"));
        p.signal(SIGTERM);
        let ignored = p.wait_logs(1, |l| l.contains("repeated stop signal ignored"));
        assert_eq!(field(&ignored[0], "signal").as_deref(), Some("15"));
        st.finish.store(true, Ordering::Release);
        finish_download(s, got, &st, &what);
        assert!(
            p.wait_exit(REACT).is_some(),
            "{what}: exits after the drain"
        );
    }
}

/// A stop-now signal during a drain with a long grace time: the process
/// exits promptly and the cut download ends in an error (a reset), never in
/// a clean EOF that would make a truncated reply look complete.
fn assert_cut(signals: &[(i32, Duration)]) {
    for (driver, mode) in VARIANTS {
        let what = format!("{driver}/{mode} {signals:?}");
        // The backend never finishes on its own: any EOF is a truncation.
        let st = Streamer::start();
        let mut p = Proxy::start(&stream_config(st.backend.addr, driver, mode, "120s"));
        let (mut s, _) = start_download(p.addr("main"));
        for &(sig, pause) in signals {
            p.signal(sig);
            thread::sleep(pause);
        }
        let code = p.wait_exit(REACT);
        assert!(
            code.is_some(),
            "{what}: did not exit promptly; log:\n{}",
            p.logs().join("\n")
        );
        let (_, err) = read_to_end(&mut s);
        assert!(
            err.is_some(),
            "{what}: a cut stream must not end in a clean EOF"
        );
    }
}

#[test]
fn sigquit_resets_open_connections_and_exits_at_once() {
    assert_cut(&[(SIGQUIT, Duration::ZERO)]);
}

#[test]
fn a_second_sigint_after_the_window_ends_the_drain() {
    // STOP_REPEAT_WINDOW is 2 s; wait past it before the second Ctrl-C.
    assert_cut(&[
        (SIGINT, Duration::from_millis(2500)),
        (SIGINT, Duration::ZERO),
    ]);
}
