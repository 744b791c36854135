//! Test backends: an echo server and a sink/source server, epoll, one loop per
//! thread, sharing one listening socket (EPOLLEXCLUSIVE wakes one thread).
//!
//! sink-server protocol: the first byte a client sends selects the mode:
//! `D` = the server streams data to the client (download) and discards what it
//! reads, `B` = both (discard + stream), anything else = discard only (upload).

use crate::ev::{self, Epoll, ERR, EXCLUSIVE, IN, OUT};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Echo,
    Sink,
}

const LISTENER: u64 = u64::MAX;
const BUF: usize = 64 * 1024;

enum Mode {
    Echo,
    Undecided,
    Discard,
    Source,
}

struct Conn {
    stream: TcpStream,
    mode: Mode,
    /// Echo bytes not yet written back (we stop reading while this is non-empty).
    pending: Vec<u8>,
    pending_off: usize,
}

pub fn bind(listen: &str, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let addr = ev::resolve(listen)?;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Runs the server until `max_seconds` (0 = forever). Listens on every address
/// given (several 127.x addresses let each proxy under test dial its own backend
/// address, so TIME_WAIT sockets of one run do not slow the next one's connects).
/// Prints `listening ADDR` per address first.
pub fn run(kind: Kind, listen: &[String], threads: usize, max_seconds: f64) -> io::Result<()> {
    let mut listeners = Vec::new();
    {
        let mut out = io::stdout().lock();
        for a in listen {
            let l =
                bind(a, 4096).map_err(|e| io::Error::new(e.kind(), format!("listen {a}: {e}")))?;
            writeln!(out, "listening {}", l.local_addr()?)?;
            listeners.push(l);
        }
        out.flush()?;
    }
    let listeners = Arc::new(listeners);
    let deadline =
        (max_seconds > 0.0).then(|| Instant::now() + Duration::from_secs_f64(max_seconds));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let l = listeners.clone();
            std::thread::spawn(move || serve(kind, &l, deadline))
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("server thread panicked"))??;
    }
    Ok(())
}

fn serve(kind: Kind, listeners: &[TcpListener], deadline: Option<Instant>) -> io::Result<()> {
    let mut ep = Epoll::new(256)?;
    for (i, l) in listeners.iter().enumerate() {
        ep.add(l.as_raw_fd(), LISTENER - i as u64, IN | EXCLUSIVE)?;
    }
    let first_listener = LISTENER - listeners.len() as u64 + 1;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let source = vec![0x5au8; 256 * 1024];
    loop {
        let timeout = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(());
                }
                Some((d - now).min(Duration::from_millis(500)))
            }
            None => None,
        };
        let n = ep.wait(timeout)?;
        for i in 0..n {
            let (token, events) = ep.event(i);
            if token >= first_listener {
                let listener = &listeners[(LISTENER - token) as usize];
                // Accept a batch; other threads may win the race (EAGAIN).
                for _ in 0..64 {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nodelay(true);
                            if s.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            let mode = if kind == Kind::Echo {
                                Mode::Echo
                            } else {
                                Mode::Undecided
                            };
                            if ep.add(s.as_raw_fd(), idx as u64, IN).is_err() {
                                free.push(idx);
                                continue;
                            }
                            conns[idx] = Some(Conn {
                                stream: s,
                                mode,
                                pending: Vec::new(),
                                pending_off: 0,
                            });
                        }
                        Err(e) if ev::would_block(&e) => break,
                        Err(e)
                            if e.raw_os_error() == Some(libc::EMFILE)
                                || e.raw_os_error() == Some(libc::ENFILE) =>
                        {
                            // Out of descriptors: back off briefly rather than spin.
                            std::thread::sleep(Duration::from_millis(5));
                            break;
                        }
                        Err(_) => break,
                    }
                }
                continue;
            }
            let idx = token as usize;
            let keep = match conns.get_mut(idx).and_then(|c| c.as_mut()) {
                Some(c) => handle(&ep, idx, c, events, &mut buf, &source),
                None => continue,
            };
            if !keep {
                if let Some(c) = conns[idx].take() {
                    let _ = ep.delete(c.stream.as_raw_fd());
                }
                free.push(idx);
            }
        }
    }
}

/// Returns false when the connection must be closed.
fn handle(
    ep: &Epoll,
    idx: usize,
    c: &mut Conn,
    events: u32,
    buf: &mut [u8],
    source: &[u8],
) -> bool {
    let fd = c.stream.as_raw_fd();
    match c.mode {
        Mode::Echo => {
            if !c.pending.is_empty() {
                if events & (OUT | ERR) == 0 {
                    return true;
                }
                match c.stream.write(&c.pending[c.pending_off..]) {
                    Ok(n) => {
                        c.pending_off += n;
                        if c.pending_off == c.pending.len() {
                            c.pending.clear();
                            c.pending_off = 0;
                            return ep.modify(fd, idx as u64, IN).is_ok();
                        }
                        true
                    }
                    Err(e) if ev::would_block(&e) => true,
                    Err(_) => false,
                }
            } else {
                let r = match c.stream.read(buf) {
                    Ok(0) => return false,
                    Ok(r) => r,
                    Err(e) if ev::would_block(&e) => return true,
                    Err(_) => return false,
                };
                let mut off = 0;
                while off < r {
                    match c.stream.write(&buf[off..r]) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if ev::would_block(&e) => break,
                        Err(_) => return false,
                    }
                }
                if off < r {
                    c.pending.extend_from_slice(&buf[off..r]);
                    c.pending_off = 0;
                    return ep.modify(fd, idx as u64, OUT).is_ok();
                }
                true
            }
        }
        Mode::Undecided | Mode::Discard | Mode::Source => {
            if events & (IN | ERR) != 0 {
                match c.stream.read(buf) {
                    Ok(0) => return false,
                    Ok(r) => {
                        if matches!(c.mode, Mode::Undecided) {
                            if buf[0] == b'D' || buf[0] == b'B' {
                                c.mode = Mode::Source;
                                if ep.modify(fd, idx as u64, IN | OUT).is_err() {
                                    return false;
                                }
                            } else {
                                c.mode = Mode::Discard;
                            }
                        }
                        let _ = r;
                    }
                    Err(e) if ev::would_block(&e) => {}
                    Err(_) => return false,
                }
            }
            if matches!(c.mode, Mode::Source) && events & OUT != 0 {
                match c.stream.write(source) {
                    Ok(_) => {}
                    Err(e) if ev::would_block(&e) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}
