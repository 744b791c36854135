//! Client modes: pingpong (closed or open loop), churn, idle, bulk.
//! Each worker thread runs its own level-triggered epoll loop over its share of
//! the connections; results are merged at the end.

use crate::ev::{self, Epoll, ERR, IN, OUT};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn new_hist() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 100 s, 3 significant figures.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

#[derive(Default)]
pub struct Stats {
    pub hist: Option<Histogram<u64>>,
    pub completed: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub connect_errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub elapsed: Duration,
    pub backlog_at_end: u64,
    pub in_flight_at_end: u64,
    pub first_error: Option<String>,
}

impl Stats {
    fn with_hist() -> Self {
        Stats {
            hist: Some(new_hist()),
            ..Default::default()
        }
    }

    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    pub fn merge(&mut self, o: Stats) {
        match (&mut self.hist, o.hist) {
            (Some(a), Some(b)) => a.add(&b).expect("same bounds"),
            (None, Some(b)) => self.hist = Some(b),
            _ => {}
        }
        self.completed += o.completed;
        self.errors += o.errors;
        self.verify_failures += o.verify_failures;
        self.connect_errors += o.connect_errors;
        self.bytes_up += o.bytes_up;
        self.bytes_down += o.bytes_down;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.backlog_at_end += o.backlog_at_end;
        self.in_flight_at_end += o.in_flight_at_end;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Splits `total` into `parts` nearly equal shares.
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

fn fill_payload(buf: &mut [u8], conn_id: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (conn_id.wrapping_mul(31).wrapping_add(j as u64 * 7) % 251) as u8;
    }
}

/// Stamps a request number into the payload so a stale or misrouted reply fails the check.
fn stamp(buf: &mut [u8], seq: u64) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

fn join_all(handles: Vec<std::thread::JoinHandle<io::Result<Stats>>>) -> io::Result<Stats> {
    let mut total = Stats::default();
    let mut err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(s),
            Ok(Err(e)) => err = Some(e),
            Err(_) => err = Some(io::Error::other("worker thread panicked")),
        }
    }
    match err {
        Some(e) if total.completed == 0 && total.bytes_up + total.bytes_down == 0 => Err(e),
        Some(e) => {
            total.errors += 1;
            total.first_error.get_or_insert(e.to_string());
            Ok(total)
        }
        None => Ok(total),
    }
}

// ---------------------------------------------------------------- pingpong

#[derive(Clone)]
pub struct PingpongOpts {
    pub target: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub threads: usize,
}

struct PpConn {
    stream: Option<TcpStream>,
    tx: Vec<u8>,
    rx: Vec<u8>,
    sent: usize,
    recvd: usize,
    busy: bool,
    writing: bool,
    start: Instant,
    seq: u64,
}

pub fn pingpong(o: &PingpongOpts) -> io::Result<Stats> {
    let threads = o.threads.clamp(1, o.conns.max(1));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let o = o.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || pingpong_thread(&o, t, threads, &barrier))
        })
        .collect();
    join_all(handles)
}

fn pingpong_thread(
    o: &PingpongOpts,
    t: usize,
    threads: usize,
    barrier: &Barrier,
) -> io::Result<Stats> {
    let n = share(o.conns, threads, t);
    let mut st = Stats::with_hist();
    let mut conns = Vec::with_capacity(n);
    let mut ep = Epoll::new(n.max(16))?;
    let mut connect_err = None;
    for i in 0..n {
        match ev::connect_ready(&o.target, CONNECT_TIMEOUT) {
            Ok(s) => {
                ep.add(s.as_raw_fd(), i as u64, IN)?;
                let id = (t * 1_000_003 + i) as u64;
                let mut tx = vec![0u8; o.size];
                fill_payload(&mut tx, id);
                conns.push(PpConn {
                    stream: Some(s),
                    tx,
                    rx: vec![0u8; o.size],
                    sent: 0,
                    recvd: 0,
                    busy: false,
                    writing: false,
                    start: Instant::now(),
                    seq: 0,
                });
            }
            Err(e) => {
                st.connect_errors += 1;
                connect_err.get_or_insert(e);
            }
        }
    }
    barrier.wait();
    if conns.is_empty() {
        return Err(connect_err.unwrap_or_else(|| io::Error::other("no connections")));
    }
    let open = o.rate.map(|r| r / threads as f64);
    // The default 50 us timer slack is kept on purpose: 1 ns slack (PR_SET_TIMERSLACK)
    // measured no better here and cost more CPU per request.
    let start = Instant::now();
    let end = start + o.duration;
    let interval = open.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    // Stagger threads' schedules so their sends interleave.
    let mut next_due =
        start + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(t as f64 / threads as f64));
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut idle: Vec<usize> = Vec::new();

    // Closed loop: every connection starts a request at once.
    if open.is_none() {
        for (i, c) in conns.iter_mut().enumerate() {
            begin(&ep, c, i, start, &mut st);
        }
    } else {
        idle.extend((0..conns.len()).rev());
    }

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(iv) = interval {
            while next_due <= now {
                backlog.push_back(next_due);
                next_due += iv;
            }
            while !backlog.is_empty() {
                let Some(i) = idle.pop() else { break };
                let due = backlog.pop_front().unwrap();
                begin(&ep, &mut conns[i], i, due, &mut st);
            }
        }
        let wake = if interval.is_some() {
            next_due.min(end)
        } else {
            end
        };
        let n_ev = ep.wait(Some(wake.saturating_duration_since(now)))?;
        for k in 0..n_ev {
            let (token, events) = ep.event(k);
            let i = token as usize;
            let done = step(&ep, &mut conns[i], i, events, &mut st);
            match done {
                Step::Pending => {}
                Step::Done => {
                    let now = Instant::now();
                    if now > end {
                        continue; // finished after the window: not counted
                    }
                    let c = &mut conns[i];
                    let lat = now.duration_since(c.start).as_nanos() as u64;
                    if let Some(h) = st.hist.as_mut() {
                        h.saturating_record(lat.max(1));
                    }
                    st.completed += 1;
                    st.bytes_up += o.size as u64;
                    st.bytes_down += o.size as u64;
                    c.busy = false;
                    if interval.is_none() {
                        begin(&ep, c, i, now, &mut st);
                    } else if let Some(due) = backlog.pop_front() {
                        begin(&ep, c, i, due, &mut st);
                    } else {
                        idle.push(i);
                    }
                }
                Step::Dead => {}
            }
        }
        if conns.iter().all(|c| c.stream.is_none()) {
            break;
        }
    }
    st.elapsed = Instant::now().min(end).duration_since(start);
    st.backlog_at_end = backlog.len() as u64;
    st.in_flight_at_end = conns
        .iter()
        .filter(|c| c.busy && c.stream.is_some())
        .count() as u64;
    Ok(st)
}

enum Step {
    Pending,
    Done,
    Dead,
}

fn kill(ep: &Epoll, c: &mut PpConn, st: &mut Stats, why: impl FnOnce() -> String) -> Step {
    if let Some(s) = c.stream.take() {
        let _ = ep.delete(s.as_raw_fd());
        st.error(why);
    }
    c.busy = false;
    Step::Dead
}

fn begin(ep: &Epoll, c: &mut PpConn, i: usize, start: Instant, st: &mut Stats) {
    if c.stream.is_none() {
        return;
    }
    c.seq += 1;
    stamp(&mut c.tx, c.seq);
    c.sent = 0;
    c.recvd = 0;
    c.busy = true;
    c.start = start;
    let _ = flush(ep, c, i, st);
}

/// Writes what it can; asks for OUT readiness when the socket is full.
fn flush(ep: &Epoll, c: &mut PpConn, i: usize, st: &mut Stats) -> Result<(), ()> {
    let Some(s) = c.stream.as_mut() else {
        return Err(());
    };
    while c.sent < c.tx.len() {
        match s.write(&c.tx[c.sent..]) {
            Ok(n) => c.sent += n,
            Err(e) if ev::would_block(&e) => break,
            Err(e) => {
                kill(ep, c, st, || format!("write: {e}"));
                return Err(());
            }
        }
    }
    let want_out = c.sent < c.tx.len();
    if want_out != c.writing {
        c.writing = want_out;
        let fd = s.as_raw_fd();
        let _ = ep.modify(fd, i as u64, if want_out { IN | OUT } else { IN });
    }
    Ok(())
}

fn step(ep: &Epoll, c: &mut PpConn, i: usize, events: u32, st: &mut Stats) -> Step {
    if c.stream.is_none() {
        return Step::Dead;
    }
    if events & OUT != 0 && c.writing && flush(ep, c, i, st).is_err() {
        return Step::Dead;
    }
    if events & (IN | ERR) == 0 {
        return Step::Pending;
    }
    let s = c.stream.as_mut().unwrap();
    let want = c.tx.len();
    if !c.busy || c.recvd >= want {
        // Unsolicited bytes or EOF while idle.
        let mut scratch = [0u8; 512];
        return match s.read(&mut scratch) {
            Ok(0) => kill(ep, c, st, || "connection closed by peer while idle".into()),
            Ok(_) => {
                st.verify_failures += 1;
                kill(ep, c, st, || "unexpected bytes while idle".into())
            }
            Err(e) if ev::would_block(&e) => Step::Pending,
            Err(e) => kill(ep, c, st, || format!("read: {e}")),
        };
    }
    match s.read(&mut c.rx[c.recvd..want]) {
        Ok(0) => kill(ep, c, st, || "connection closed by peer mid-request".into()),
        Ok(n) => {
            c.recvd += n;
            if c.recvd < want {
                return Step::Pending;
            }
            if c.rx != c.tx {
                st.verify_failures += 1;
                return kill(ep, c, st, || {
                    "echoed bytes differ from the bytes sent".into()
                });
            }
            if c.sent < want {
                // Cannot happen with an echo peer, but do not start a new request early.
                st.verify_failures += 1;
                return kill(ep, c, st, || {
                    "reply arrived before the request was sent".into()
                });
            }
            Step::Done
        }
        Err(e) if ev::would_block(&e) => Step::Pending,
        Err(e) => kill(ep, c, st, || format!("read: {e}")),
    }
}

// ---------------------------------------------------------------- churn

#[derive(Clone)]
pub struct ChurnOpts {
    pub target: SocketAddr,
    pub sources: Vec<std::net::IpAddr>,
    pub conns: usize,
    pub size: usize,
    pub duration: Duration,
    pub threads: usize,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum CState {
    Off,
    Connecting,
    Exchanging,
}

struct CConn {
    stream: Option<TcpStream>,
    state: CState,
    gen: u32,
    start: Instant,
    first_byte: bool,
    sent: usize,
    recvd: usize,
    retry_at: Option<Instant>,
    writing: bool,
}

pub fn churn(o: &ChurnOpts) -> io::Result<Stats> {
    let threads = o.threads.clamp(1, o.conns.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let o = o.clone();
            std::thread::spawn(move || churn_thread(&o, share(o.conns, threads, t)))
        })
        .collect();
    join_all(handles)
}

fn churn_thread(o: &ChurnOpts, n: usize) -> io::Result<Stats> {
    let mut st = Stats::with_hist();
    let mut ep = Epoll::new(n.max(16))?;
    let mut tx = vec![0u8; o.size];
    fill_payload(&mut tx, 7);
    let mut rx = vec![0u8; o.size.max(1)];
    let start = Instant::now();
    let end = start + o.duration;
    let mut slots: Vec<CConn> = (0..n)
        .map(|_| CConn {
            stream: None,
            state: CState::Off,
            gen: 0,
            start,
            first_byte: false,
            sent: 0,
            recvd: 0,
            retry_at: Some(start),
            writing: false,
        })
        .collect();
    let token = |i: usize, gen: u32| (i as u64) | ((gen as u64) << 32);
    let mut src_rr = n * 7919;

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // (Re)start slots that are due.
        let mut next_retry = end;
        for (i, c) in slots.iter_mut().enumerate() {
            if c.state != CState::Off {
                continue;
            }
            match c.retry_at {
                Some(t) if t <= now => {}
                Some(t) => {
                    next_retry = next_retry.min(t);
                    continue;
                }
                None => continue,
            }
            c.gen = c.gen.wrapping_add(1);
            c.start = Instant::now();
            c.first_byte = false;
            c.sent = 0;
            c.recvd = 0;
            c.writing = true;
            let src = (!o.sources.is_empty()).then(|| o.sources[src_rr % o.sources.len()]);
            src_rr = src_rr.wrapping_add(1);
            match ev::connect_nonblocking(&o.target, src) {
                Ok(mut s) => {
                    // On loopback the handshake has usually completed inside connect():
                    // send at once and wait only for the reply (saves a wake-up and two
                    // syscalls per connection). ENOTCONN/EAGAIN: wait for writability.
                    let mut interest = OUT;
                    match s.write(&tx) {
                        Ok(n) => {
                            c.sent = n;
                            if n == tx.len() {
                                c.writing = false;
                                interest = IN;
                            }
                        }
                        Err(e)
                            if ev::would_block(&e) || e.raw_os_error() == Some(libc::ENOTCONN) => {}
                        Err(e) => {
                            // The connect failed (e.g. refused) and write reported it.
                            st.connect_errors += 1;
                            st.first_error.get_or_insert(format!("connect: {e}"));
                            c.retry_at = Some(now + Duration::from_millis(10));
                            next_retry = next_retry.min(now + Duration::from_millis(10));
                            continue;
                        }
                    }
                    if ep.add(s.as_raw_fd(), token(i, c.gen), interest).is_err() {
                        st.connect_errors += 1;
                        c.retry_at = Some(now + Duration::from_millis(10));
                        continue;
                    }
                    c.stream = Some(s);
                    c.state = if c.sent > 0 {
                        CState::Exchanging
                    } else {
                        CState::Connecting
                    };
                    c.retry_at = None;
                }
                Err(e) => {
                    st.connect_errors += 1;
                    st.first_error.get_or_insert(format!("connect: {e}"));
                    c.retry_at = Some(now + Duration::from_millis(10));
                    next_retry = next_retry.min(now + Duration::from_millis(10));
                }
            }
        }
        let n_ev = ep.wait(Some(next_retry.saturating_duration_since(now)))?;
        for k in 0..n_ev {
            let (tok, events) = ep.event(k);
            let i = (tok & 0xffff_ffff) as usize;
            let c = &mut slots[i];
            if (tok >> 32) as u32 != c.gen || c.stream.is_none() {
                continue;
            }
            let outcome = churn_step(&ep, c, token(i, c.gen), events, &tx, &mut rx, &mut st);
            match outcome {
                Step::Pending => {}
                Step::Done | Step::Dead => {
                    // close() drops the fd from the epoll set (it was never dup'ed).
                    drop(c.stream.take());
                    let done = matches!(outcome, Step::Done);
                    c.state = CState::Off;
                    let now = Instant::now();
                    c.retry_at = Some(if done {
                        now
                    } else {
                        now + Duration::from_millis(10)
                    });
                    if done && now <= end {
                        st.completed += 1;
                        st.bytes_up += o.size as u64;
                        st.bytes_down += o.size as u64;
                    }
                }
            }
        }
    }
    st.elapsed = Instant::now().min(end).duration_since(start);
    st.in_flight_at_end = slots.iter().filter(|c| c.state != CState::Off).count() as u64;
    Ok(st)
}

fn churn_step(
    ep: &Epoll,
    c: &mut CConn,
    tok: u64,
    events: u32,
    tx: &[u8],
    rx: &mut [u8],
    st: &mut Stats,
) -> Step {
    let s = c.stream.as_mut().unwrap();
    if c.state == CState::Connecting {
        if events & (OUT | ERR) == 0 {
            return Step::Pending;
        }
        match s.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                st.connect_errors += 1;
                st.first_error.get_or_insert(format!("connect: {e}"));
                return Step::Dead;
            }
        }
        c.state = CState::Exchanging;
    }
    if c.writing && events & (OUT | ERR) != 0 {
        while c.sent < tx.len() {
            match s.write(&tx[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if ev::would_block(&e) => break,
                Err(e) => {
                    st.error(|| format!("write: {e}"));
                    return Step::Dead;
                }
            }
        }
        if c.sent == tx.len() {
            c.writing = false;
            if ep.modify(s.as_raw_fd(), tok, IN).is_err() {
                return Step::Dead;
            }
        }
        if tx.is_empty() {
            return Step::Done;
        }
        return Step::Pending;
    }
    if events & (IN | ERR) == 0 {
        return Step::Pending;
    }
    match s.read(&mut rx[c.recvd..tx.len()]) {
        Ok(0) => {
            st.error(|| "connection closed by peer before the reply".into());
            Step::Dead
        }
        Ok(n) => {
            if !c.first_byte {
                c.first_byte = true;
                let lat = c.start.elapsed().as_nanos() as u64;
                if let Some(h) = st.hist.as_mut() {
                    h.saturating_record(lat.max(1));
                }
            }
            let before = c.recvd;
            c.recvd += n;
            if rx[before..c.recvd] != tx[before..c.recvd] {
                st.verify_failures += 1;
                st.error(|| "echoed bytes differ from the bytes sent".into());
                return Step::Dead;
            }
            if c.recvd == tx.len() {
                Step::Done
            } else {
                Step::Pending
            }
        }
        Err(e) if ev::would_block(&e) => Step::Pending,
        Err(e) => {
            st.error(|| format!("read: {e}"));
            Step::Dead
        }
    }
}

// ---------------------------------------------------------------- idle

pub struct IdleOpts {
    pub target: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub hold: Duration,
    pub settle: Duration,
    pub pids: Vec<u32>,
    pub deadline: Duration,
}

#[derive(Default, Clone, Copy)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: Option<u64>,
}

/// Sum of VmRSS (and Pss from smaps_rollup, when readable for every pid).
pub fn read_mem(pids: &[u32]) -> Option<Mem> {
    if pids.is_empty() {
        return None;
    }
    let mut m = Mem {
        rss_kib: 0,
        pss_kib: Some(0),
    };
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        m.rss_kib += field_kib(&status, "VmRSS:")?;
        let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|s| field_kib(&s, "Pss:"));
        m.pss_kib = match (m.pss_kib, pss) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    Some(m)
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l[key.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub struct IdleResult {
    pub opened: usize,
    pub stats: Stats,
    pub before: Option<Mem>,
    pub after: Option<Mem>,
    pub after_hold: Option<Mem>,
    pub setup: Duration,
}

pub fn idle(o: &IdleOpts) -> io::Result<IdleResult> {
    let t0 = Instant::now();
    let give_up = t0 + o.deadline;
    let mut st = Stats::with_hist();
    let before = read_mem(&o.pids);
    let mut tx = vec![0u8; o.size.max(1)];
    fill_payload(&mut tx, 11);
    let mut rx = vec![0u8; tx.len()];
    let mut open: Vec<TcpStream> = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        if Instant::now() >= give_up {
            st.error(|| format!("setup deadline reached after {i} connections"));
            break;
        }
        stamp(&mut tx, i as u64);
        let t = Instant::now();
        let r = (|| -> io::Result<TcpStream> {
            let mut s = TcpStream::connect_timeout(&o.target, CONNECT_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&tx)?;
            s.read_exact(&mut rx)?;
            Ok(s)
        })();
        match r {
            Ok(s) => {
                if rx != tx {
                    st.verify_failures += 1;
                }
                if let Some(h) = st.hist.as_mut() {
                    h.saturating_record(t.elapsed().as_nanos().max(1) as u64);
                }
                st.completed += 1;
                st.bytes_up += tx.len() as u64;
                st.bytes_down += tx.len() as u64;
                open.push(s);
            }
            Err(e) => {
                // Likely a descriptor limit or a refusing proxy: stop here, report what we hold.
                st.error(|| format!("connection {i}: {e}"));
                break;
            }
        }
    }
    let setup = t0.elapsed();
    std::thread::sleep(o.settle);
    let after = read_mem(&o.pids);
    // Check the connections are still alive (the proxy did not time them out).
    let hold_end = Instant::now() + o.hold;
    while Instant::now() < hold_end {
        std::thread::sleep((hold_end - Instant::now()).min(Duration::from_millis(200)));
    }
    let after_hold = read_mem(&o.pids);
    let opened = open.len();
    drop(open);
    st.elapsed = t0.elapsed();
    Ok(IdleResult {
        opened,
        stats: st,
        before,
        after,
        after_hold,
        setup,
    })
}

// ---------------------------------------------------------------- bulk

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Up,
    Down,
    Both,
}

#[derive(Clone)]
pub struct BulkOpts {
    pub target: SocketAddr,
    pub streams: usize,
    pub duration: Duration,
    pub direction: Direction,
    pub threads: usize,
    pub chunk: usize,
}

pub fn bulk(o: &BulkOpts) -> io::Result<Stats> {
    let threads = o.threads.clamp(1, o.streams.max(1));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let o = o.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || bulk_thread(&o, share(o.streams, threads, t), &barrier))
        })
        .collect();
    join_all(handles)
}

fn bulk_thread(o: &BulkOpts, n: usize, barrier: &Barrier) -> io::Result<Stats> {
    let mut st = Stats::default();
    let mut ep = Epoll::new(n.max(16))?;
    let mut streams: Vec<Option<TcpStream>> = Vec::with_capacity(n);
    let header = match o.direction {
        Direction::Up => b'U',
        Direction::Down => b'D',
        Direction::Both => b'B',
    };
    let interest = match o.direction {
        Direction::Up => OUT,
        Direction::Down => IN,
        Direction::Both => IN | OUT,
    };
    let mut err = None;
    for i in 0..n {
        let r = (|| -> io::Result<TcpStream> {
            let mut s = TcpStream::connect_timeout(&o.target, CONNECT_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.write_all(&[header])?;
            s.set_nonblocking(true)?;
            ep.add(s.as_raw_fd(), i as u64, interest)?;
            Ok(s)
        })();
        match r {
            Ok(s) => streams.push(Some(s)),
            Err(e) => {
                st.connect_errors += 1;
                err.get_or_insert(e);
                streams.push(None);
            }
        }
    }
    barrier.wait();
    if streams.iter().all(|s| s.is_none()) {
        return Err(err.unwrap_or_else(|| io::Error::other("no streams")));
    }
    let mut wbuf = vec![0u8; o.chunk];
    fill_payload(&mut wbuf, 3);
    let mut rbuf = vec![0u8; o.chunk];
    let start = Instant::now();
    let end = start + o.duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let n_ev = ep.wait(Some(end - now))?;
        for k in 0..n_ev {
            let (tok, events) = ep.event(k);
            let i = tok as usize;
            let Some(s) = streams[i].as_mut() else {
                continue;
            };
            let mut dead = false;
            if events & OUT != 0 {
                match s.write(&wbuf) {
                    Ok(w) => st.bytes_up += w as u64,
                    Err(e) if ev::would_block(&e) => {}
                    Err(e) => {
                        st.error(|| format!("write: {e}"));
                        dead = true;
                    }
                }
            }
            if !dead && events & (IN | ERR) != 0 {
                match s.read(&mut rbuf) {
                    Ok(0) => {
                        st.error(|| "stream closed by peer".into());
                        dead = true;
                    }
                    Ok(r) => st.bytes_down += r as u64,
                    Err(e) if ev::would_block(&e) => {}
                    Err(e) => {
                        st.error(|| format!("read: {e}"));
                        dead = true;
                    }
                }
            }
            if dead {
                if let Some(s) = streams[i].take() {
                    let _ = ep.delete(s.as_raw_fd());
                }
            }
        }
        if streams.iter().all(|s| s.is_none()) {
            break;
        }
    }
    st.elapsed = Instant::now().min(end).duration_since(start);
    st.completed = streams.iter().filter(|s| s.is_some()).count() as u64;
    Ok(st)
}
