//! Reloads under load, through the real binary: configs that alternate while
//! checksummed streams run and new connections arrive must cost no
//! connection and no byte, and hundreds of SIGHUPs must leak no descriptor
//! or thread.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// Two echo backends; the config alternates between them. The echoes come
/// back after the clients' FIN: a generous terminationDelay keeps a late one
/// on a loaded machine (in every config of the storm).
fn config(backend: SocketAddr, tag: &str) -> String {
    let svc = format!("s-{tag}");
    Cfg::new()
        .entrypoint("main")
        .router("r", "HostSNI(`*`)", &svc)
        .service(&svc, &[backend])
        .termination_delay("30s")
        .workers(2)
        .to_toml()
}

/// One checksummed echo exchange of `len` bytes on a fresh connection.
fn exchange(addr: SocketAddr, len: usize, seed: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data = pattern(len, seed);
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            w.write_all(&data)?;
            w.shutdown(Shutdown::Write)
        })
    };
    let (got, err) = read_to_end(&mut s);
    writer.join().unwrap().map_err(|e| format!("write: {e}"))?;
    if let Some(e) = err {
        return Err(format!("read after {} bytes: {e}", got.len()));
    }
    if got.len() != data.len() || checksum(&got) != checksum(&data) {
        return Err(format!(
            "got {} of {} bytes, or wrong bytes",
            got.len(),
            len
        ));
    }
    Ok(())
}

#[test]
fn reload_storm_under_load_costs_no_connection_and_no_byte() {
    let a = Backend::echo();
    let b = Backend::echo();
    let p = Proxy::start(&config(a.addr, "a"));
    let addr = p.addr("main");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));

    // Long streams that live across many reloads: 1 KiB every 5 ms, echoed
    // and checked as they go.
    let long: Vec<_> = (0..10u64)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || -> Result<u64, String> {
                let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut moved = 0u64;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let chunk = pattern(1024, i * 1_000_000 + round);
                    s.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
                    let mut back = vec![0u8; chunk.len()];
                    s.read_exact(&mut back)
                        .map_err(|e| format!("read after {moved} bytes: {e}"))?;
                    if back != chunk {
                        return Err(format!("wrong bytes after {moved}"));
                    }
                    moved += chunk.len() as u64;
                    round += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                let (rest, err) = read_to_end(&mut s);
                match (rest.is_empty(), err) {
                    (true, None) => Ok(moved),
                    (_, e) => Err(format!("end: {} stray bytes, {e:?}", rest.len())),
                }
            })
        })
        .collect();

    // Short connections arriving all the time.
    let short: Vec<_> = (0..6u64)
        .map(|t| {
            let stop = stop.clone();
            let done = done.clone();
            thread::spawn(move || -> Result<(), String> {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    exchange(addr, 16 * 1024, t * 1_000_000 + n)?;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();

    // Alternate the config every 100 ms for 4 s.
    let reloads = 40;
    for i in 0..reloads {
        let (backend, tag) = if i % 2 == 0 {
            (b.addr, "b")
        } else {
            (a.addr, "a")
        };
        p.write_config(&config(backend, tag));
        p.signal(1);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for h in long {
        match h.join().unwrap() {
            Ok(moved) => assert!(moved > 0, "a long stream moved nothing"),
            Err(e) => failures.push(format!("long stream: {e}")),
        }
    }
    for h in short {
        if let Err(e) = h.join().unwrap() {
            failures.push(format!("short connection: {e}"));
        }
    }
    assert!(failures.is_empty(), "failures: {failures:#?}");
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too few short connections completed to prove anything: {}",
        done.load(Ordering::Relaxed)
    );
    // Reloads really happened (SIGHUPs may coalesce, but not into nothing).
    let reloaded = p
        .logs()
        .iter()
        .filter(|l| l.contains("msg=reloaded"))
        .count();
    assert!(reloaded >= 5, "only {reloaded} reloads were applied");
    assert!(
        !p.logs().iter().any(|l| l.contains("reload failed")),
        "a valid config failed to reload"
    );
}

/// Descriptors and threads of a process, from /proc.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    (fds, threads)
}

#[test]
fn two_hundred_sighups_leak_no_descriptor_or_thread() {
    let a = Backend::echo();
    let b = Backend::echo();
    let p = Proxy::start(&config(a.addr, "a"));
    let addr = p.addr("main");
    // Warm both workers' pipe and buffer pools with the same traffic that
    // follows the reloads, so pooled descriptors are in the baseline.
    for i in 0..10 {
        exchange(addr, 64 * 1024, i).unwrap();
    }
    // Let start-up threads settle before taking the baseline.
    thread::sleep(Duration::from_millis(300));
    let (fds0, threads0) = fds_and_threads(p.pid());
    for i in 0..200 {
        let (backend, tag) = if i % 2 == 0 {
            (b.addr, "b")
        } else {
            (a.addr, "a")
        };
        p.write_config(&config(backend, tag));
        p.signal(1);
        // Paced so that most signals are separate reloads, not coalesced.
        thread::sleep(Duration::from_millis(5));
    }
    // Wait until the reloads are over: the count of applied reloads stops
    // moving, then the proxy still serves.
    let mut last = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        thread::sleep(Duration::from_millis(300));
        let n = p
            .logs()
            .iter()
            .filter(|l| l.contains("msg=reloaded"))
            .count();
        if n == last || Instant::now() > deadline {
            break;
        }
        last = n;
    }
    assert!(last >= 20, "only {last} of 200 SIGHUPs were applied");
    for i in 0..10 {
        exchange(addr, 64 * 1024, 100 + i).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let (fds1, threads1) = fds_and_threads(p.pid());
    assert!(
        fds1 <= fds0,
        "descriptors grew over 200 reloads: {fds0} -> {fds1}"
    );
    assert!(
        threads1 <= threads0,
        "threads grew over 200 reloads: {threads0} -> {threads1}"
    );
}

/// A writer that truncates before it writes leaves an empty file for a
/// moment. A SIGHUP that lands then must not apply it: the reload is
/// refused, the listener stays where it is and keeps serving, and the next
/// complete file is applied as usual.
#[test]
fn a_reload_never_applies_an_empty_file() {
    let a = Backend::echo();
    let b = Backend::echo();
    let p = Proxy::start(&config(a.addr, "a"));
    let addr = p.addr("main");
    exchange(addr, 1024, 1).unwrap();
    std::fs::write(&p.config_path, "").unwrap();
    p.signal(1);
    let refused = p.wait_logs(1, |l| {
        l.contains("reload failed") || l.contains("msg=reloaded")
    });
    assert!(
        refused
            .iter()
            .any(|l| l.contains("configuration file is empty")),
        "an empty file was not refused: {refused:?}"
    );
    exchange(addr, 64 * 1024, 2).unwrap();
    p.write_config(&config(b.addr, "b"));
    p.signal(1);
    p.wait_logs(1, |l| l.contains("msg=reloaded"));
    assert_eq!(p.addr("main"), addr);
    exchange(addr, 64 * 1024, 3).unwrap();
    assert!(
        !p.logs().iter().any(|l| l.contains("entrypoint removed")),
        "the empty file removed an entrypoint"
    );
}
