//! A minimal level-triggered epoll loop and socket helpers (Linux only).

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::Duration;

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
    pwait2: bool,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Self> {
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(16)],
            pwait2: true,
        })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest,
            u64: token,
        };
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    pub fn modify(&self, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for events; `None` blocks. Uses epoll_pwait2 (ns timeout) where the
    /// kernel has it, so open-loop schedules are not rounded to milliseconds.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let max = self.events.len() as i32;
        loop {
            let n = if self.pwait2 {
                let ts = timeout.map(|d| libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                });
                let tsp = ts
                    .as_ref()
                    .map_or(std::ptr::null(), |t| t as *const libc::timespec);
                unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        self.fd,
                        self.events.as_mut_ptr(),
                        max,
                        tsp,
                        std::ptr::null::<libc::sigset_t>(),
                        0usize,
                    ) as i32
                }
            } else {
                let ms = match timeout {
                    None => -1,
                    Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
                };
                unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), max, ms) }
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) if self.pwait2 => self.pwait2 = false,
                _ => return Err(e),
            }
        }
    }

    /// (token, events) of the i-th ready event of the last wait.
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

pub fn resolve(target: &str) -> io::Result<SocketAddr> {
    target.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot resolve {target}"),
        )
    })
}

/// Starts a non-blocking connect; the socket becomes writable when it completes.
/// `source`: local address to bind first (port chosen at connect time, with
/// IP_BIND_ADDRESS_NO_PORT, so the ephemeral port search is per source address).
pub fn connect_nonblocking(
    addr: &SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_nodelay(true)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&(*addr).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) })
}

/// Blocking connect with a timeout, then non-blocking + TCP_NODELAY.
pub fn connect_ready(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Source addresses to spread client connections over: 127.0.0.2.. for an IPv4
/// loopback target (each source address has its own ephemeral port range, which keeps
/// connect()'s port search short when many sockets sit in TIME_WAIT), else none.
pub fn loopback_sources(target: &SocketAddr, n: usize) -> Vec<std::net::IpAddr> {
    match target {
        SocketAddr::V4(a) if a.ip().is_loopback() && n > 0 => (0..n.min(250))
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect(),
        _ => Vec::new(),
    }
}

pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

/// Process CPU time (user + system) of this process, in seconds.
pub fn self_cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
