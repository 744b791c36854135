//! The only module with `unsafe`: thin wrappers over the Linux system calls the
//! data path needs and std/socket2 do not offer on a raw descriptor:
//! non-blocking send/recv, shutdown, SO_LINGER, SIOCOUTQ, splice and pipes,
//! and signal masks for the control thread.
//!
//! Every function on a descriptor takes it as a `BorrowedFd`: the caller
//! owns the socket, and the borrow proves it is open for the call (nothing
//! here closes what it did not create). monoio's sockets offer only
//! `AsRawFd`; `fd` and `listener_fd` borrow theirs. The completion ring
//! (`uring`), whose operations outlive any borrow, and `remembered`, for a
//! descriptor kept by number past its borrow, are the two places that take
//! a raw descriptor, each saying who keeps it open. Errors come back as
//! `io::Error`; nothing here panics.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

pub mod uring;

/// The descriptor of a monoio stream, borrowed for as long as the stream.
pub fn fd(s: &monoio::net::TcpStream) -> BorrowedFd<'_> {
    // SAFETY: a monoio `TcpStream` owns its descriptor and closes it only
    // when dropped; the borrow cannot outlive `s`.
    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }
}

/// The descriptor of a monoio listener, borrowed for as long as the listener.
pub fn listener_fd(l: &monoio::net::TcpListener) -> BorrowedFd<'_> {
    // SAFETY: a monoio `TcpListener` owns its descriptor and closes it only
    // when dropped; the borrow cannot outlive `l`.
    unsafe { BorrowedFd::borrow_raw(l.as_raw_fd()) }
}

/// Calls on a descriptor kept by number past the borrow it came from (the
/// drain's note of a dialed backend, the completion engine's registered
/// sockets): the one who kept it guarantees the socket stays open while the
/// number is used, as the borrow would have.
pub mod remembered {
    use std::io;
    use std::os::fd::{BorrowedFd, RawFd};

    fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
        // SAFETY: the callers of this module keep `fd` open while they use
        // it (see the module doc); the borrow does not leave the call.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// `super::set_linger_zero` on a remembered descriptor.
    pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
        super::set_linger_zero(borrow(fd))
    }

    /// `super::shutdown` on a remembered descriptor.
    pub fn shutdown(fd: RawFd, how: std::net::Shutdown) -> io::Result<()> {
        super::shutdown(borrow(fd), how)
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Put a descriptor in non-blocking mode with one `ioctl(FIONBIO)` (instead
/// of an `fcntl` pair). monoio's io_uring driver creates the sockets it
/// dials blocking; our readiness-driven IO must never block the worker.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from the pointer we pass; the descriptor
    // is the caller's.
    cvt(unsafe { libc::ioctl(fd, libc::FIONBIO, &on as *const libc::c_int) }).map(|_| ())
}

/// Whether a descriptor has O_NONBLOCK set.
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl F_GETFL on a descriptor the caller owns; no pointer.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// Block the calling thread until `fd` is readable (or has an error or
/// hang-up pending). For threads that must not sit in a blocking `accept`:
/// Linux reserves the new connection's descriptor number *before* it waits,
/// so a thread parked in `accept` holds one slot of the descriptor table
/// that `/proc/self/fd` does not show, and the data path runs out one
/// descriptor early. Waiting in `poll` reserves nothing.
pub fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd, valid for reads and writes for the call.
        match cvt(unsafe { libc::poll(&mut pfd, 1, -1) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `accept4` with SOCK_NONBLOCK | SOCK_CLOEXEC on a listening socket: the
/// accepted stream and its peer address. EAGAIN when the backlog is empty.
pub fn accept4(
    listener: BorrowedFd<'_>,
) -> io::Result<(std::net::TcpStream, std::net::SocketAddr)> {
    use std::os::fd::FromRawFd;
    // SAFETY: an all-zero sockaddr_storage is a valid value for the kernel
    // to overwrite; `len` tells it the room it has.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let fd = loop {
        // SAFETY: `storage`/`len` are valid for writes for the call.
        let r = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // SAFETY: the kernel wrote a sockaddr of `len` bytes into `storage`.
    let addr = unsafe { socket2::SockAddr::new(storage, len) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP socket"))?;
    Ok((stream, peer))
}

/// TCP keep-alive on accepted client sockets, with Traefik's effective
/// values. Traefik wraps every entrypoint listener in `tcpKeepAliveListener`
/// (`pkg/server/server_entrypoint_tcp.go`): `SetKeepAlive(true)` and
/// `SetKeepAlivePeriod(3 * time.Minute)` per accepted connection. Since Go
/// 1.23 (Traefik builds with 1.26) `SetKeepAlivePeriod` sets only the idle
/// time (`TCP_KEEPIDLE`); the interval and the count stay as Go's accept set
/// them with its `KeepAliveConfig` defaults: 15 s between probes
/// (`TCP_KEEPINTVL`) and 9 probes (`TCP_KEEPCNT`). A peer that vanished
/// without FIN or RST is dropped after 180 + 9 × 15 = 315 s of silence.
pub const CLIENT_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(180);
/// See `CLIENT_KEEPALIVE_IDLE`.
pub const CLIENT_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
/// See `CLIENT_KEEPALIVE_IDLE`.
pub const CLIENT_KEEPALIVE_COUNT: u32 = 9;

/// Enable client keep-alive (`CLIENT_KEEPALIVE_*`) on a listening socket.
/// Linux copies SO_KEEPALIVE and the three TCP_KEEP* values into every
/// socket accepted from it (the child is a clone of the listener), so no
/// accepted socket needs a system call of its own; the unit test below
/// checks that the kernel does so.
pub fn set_client_keepalive(listener: &socket2::Socket) -> io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(CLIENT_KEEPALIVE_IDLE)
        .with_interval(CLIENT_KEEPALIVE_INTERVAL)
        .with_retries(CLIENT_KEEPALIVE_COUNT);
    listener.set_tcp_keepalive(&params)
}

/// Non-blocking receive into `buf`. `Ok(0)` is EOF.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Non-blocking send; MSG_NOSIGNAL so a reset peer gives EPIPE, not SIGPIPE.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    loop {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
        let r = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `shutdown(2)`; ENOTCONN (peer already gone) is not an error worth reporting.
pub fn shutdown(fd: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain syscall on a caller-owned descriptor.
    match cvt(unsafe { libc::shutdown(fd, how) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// SO_LINGER {on, 0}: the next close() sends RST instead of FIN. Used to pass an
/// abortive close on as an abortive close (reliability promise 2).
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a valid linger struct and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Bytes in the socket's send queue not yet acknowledged by the peer
/// (SIOCOUTQ). Before an abortive close we wait for this to reach zero so the
/// bytes read before a reset are delivered first.
pub fn unsent_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int to the pointer we pass.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) })?;
    Ok(n.max(0) as usize)
}

/// The TCP state of a socket (`tcpi_state` of TCP_INFO: 1 = ESTABLISHED,
/// 7 = CLOSE, ...), or `None` if it cannot be read.
pub fn tcp_state(fd: BorrowedFd<'_>) -> Option<u8> {
    let fd = fd.as_raw_fd();
    // SAFETY: `info` is a zeroed tcp_info the kernel fills up to `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (r == 0).then_some(info.tcpi_state)
    }
}

/// TCP_CLOSE in `tcp_state`: the connection is gone (reset or fully closed).
pub const TCP_STATE_CLOSE: u8 = 7;

/// Pending socket error (SO_ERROR), cleared by reading it.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> Option<io::Error> {
    let fd = fd.as_raw_fd();
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err`/`len` are valid for getsockopt to write an int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Some(io::Error::last_os_error())
    } else if err != 0 {
        Some(io::Error::from_raw_os_error(err))
    } else {
        None
    }
}

/// A pipe used as the in-kernel buffer for splice. Closed on drop.
#[derive(Debug)]
pub struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    /// Capacity after F_SETPIPE_SZ (the kernel may round or refuse).
    pub capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe sized to `size` bytes if the kernel allows it.
    pub fn new(size: usize) -> io::Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 returned two new descriptors that nothing else owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut pipe = Pipe {
            rd,
            wr,
            capacity: 64 * 1024,
        };
        let wfd = pipe.wr.as_raw_fd();
        // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ on the pipe we just created.
        unsafe {
            libc::fcntl(wfd, libc::F_SETPIPE_SZ, size as libc::c_int);
            let got = libc::fcntl(wfd, libc::F_GETPIPE_SZ);
            if got > 0 {
                pipe.capacity = got as usize;
            }
        }
        Ok(pipe)
    }

    /// The read end.
    pub fn rd(&self) -> BorrowedFd<'_> {
        self.rd.as_fd()
    }

    /// The write end.
    pub fn wr(&self) -> BorrowedFd<'_> {
        self.wr.as_fd()
    }
}

/// Non-blocking splice of up to `len` bytes from `from` to `to` (one of them a
/// pipe). `Ok(0)` from a socket is EOF.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: null offsets are valid for sockets and pipes; no memory is
        // passed to the kernel.
        let r = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Block the signals the control thread handles in the calling thread (and the
/// threads it spawns afterwards), so that only `wait_signal` sees them.
pub fn block_control_signals() -> io::Result<()> {
    let set = control_sigset();
    // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // A write to a reset socket must give EPIPE, never kill the process.
    // SAFETY: setting SIGPIPE to SIG_IGN is async-signal-safe and process-wide.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

fn control_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the zeroed set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Wait for one of SIGHUP, SIGTERM, SIGINT, SIGQUIT (blocked beforehand).
pub fn wait_signal() -> i32 {
    let set = control_sigset();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is initialised and `sig` is valid for one int.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        if r == 0 {
            return sig;
        }
    }
}

/// Errors of a dial that are this process's or this host's own shortage, not
/// the server's fault, with their metric label: descriptors (per process,
/// system-wide), socket buffers, kernel memory, local ports. A server must
/// never be ejected for them: every other server would fail the same way.
pub const LOCAL_RESOURCE_ERRORS: [(i32, &str); 5] = [
    (libc::EMFILE, "emfile"),
    (libc::ENFILE, "enfile"),
    (libc::ENOBUFS, "enobufs"),
    (libc::ENOMEM, "enomem"),
    (libc::EADDRNOTAVAIL, "eaddrnotavail"),
];

/// The index in `LOCAL_RESOURCE_ERRORS` of `e`, if it is one of them.
pub fn local_resource_error(e: &io::Error) -> Option<usize> {
    let code = e.raw_os_error()?;
    LOCAL_RESOURCE_ERRORS.iter().position(|&(c, _)| c == code)
}

/// Open a file the configuration names for reading without blocking in
/// `open` itself: `O_NONBLOCK` makes opening a FIFO return at once (instead
/// of waiting for a writer for ever), and `O_NOCTTY` keeps a terminal device
/// from becoming the controlling terminal. The caller then checks on the
/// opened descriptor (`fstat`, no race with a rename) that it is a regular
/// file; for regular files `O_NONBLOCK` changes nothing. No `unsafe`: the
/// flags are passed through std.
pub fn open_for_reading(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

// The global allocator (main.rs) is mimalloc; linking its crate here makes
// its C symbols available to the library and its tests as well.
use mimalloc as _;

extern "C" {
    /// mimalloc's `mi_collect`: free empty pages of the calling thread's
    /// heap and purge (give back to the OS) memory freed more than its purge
    /// delay ago.
    fn mi_collect(force: bool);
}

/// Return memory this thread freed to the OS now. mimalloc purges freed
/// memory lazily, on its next allocation call in the thread that freed it;
/// an idle worker makes none, so what a burst freed would otherwise stay
/// resident until the next burst (218 MB stayed resident after bursts with a
/// 16 MiB `bufferSize`). Cheap on an idle heap: called once per pool trim.
pub fn allocator_collect() {
    // SAFETY: mi_collect takes no pointers and may be called at any time from
    // any thread; it only touches the allocator's own state.
    unsafe { mi_collect(false) }
}

/// `clock_gettime(CLOCK_MONOTONIC)` in microseconds: the clock systemd's
/// `MONOTONIC_USEC=` (sent with `RELOADING=1`) is read on. `Instant` uses the
/// same clock but does not expose its value.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail (it would leave zeros).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// What the accept path relies on instead of two system calls per
    /// connection: a socket from `accept4` is non-blocking (SOCK_NONBLOCK)
    /// and inherits TCP_NODELAY from its listener (Linux copies the option
    /// into the child socket), so nothing has to set either again.
    /// A listening socket on 127.0.0.1, configured by `set` before bind.
    fn loopback_listener(
        set: impl FnOnce(&socket2::Socket),
    ) -> (socket2::Socket, std::net::SocketAddr) {
        use socket2::{Domain, Protocol, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        set(&l);
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        l.bind(&any.into()).unwrap();
        l.listen(8).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        (l, addr)
    }

    #[test]
    fn accepted_sockets_are_nonblocking_and_inherit_nodelay() {
        for nodelay in [true, false] {
            let (l, addr) = loopback_listener(|l| l.set_nodelay(nodelay).unwrap());
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (accepted, peer) = accept4(l.as_fd()).unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(is_nonblocking(accepted.as_fd()).unwrap());
            assert_eq!(accepted.nodelay().unwrap(), nodelay, "inherited");
        }
    }

    /// Client keep-alive is set once on the listener and inherited by every
    /// accepted socket, values included (the accept path relies on it).
    #[test]
    fn accepted_sockets_inherit_client_keepalive() {
        use socket2::Socket;
        let (l, addr) = loopback_listener(|l| set_client_keepalive(l).unwrap());
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = accept4(l.as_fd()).unwrap();
        let a = Socket::from(accepted);
        assert!(a.keepalive().unwrap(), "SO_KEEPALIVE inherited");
        assert_eq!(a.keepalive_time().unwrap(), CLIENT_KEEPALIVE_IDLE);
        assert_eq!(a.keepalive_interval().unwrap(), CLIENT_KEEPALIVE_INTERVAL);
        assert_eq!(a.keepalive_retries().unwrap(), CLIENT_KEEPALIVE_COUNT);
        assert_eq!(
            (
                CLIENT_KEEPALIVE_IDLE.as_secs(),
                CLIENT_KEEPALIVE_INTERVAL.as_secs()
            ),
            (180, 15),
            "Traefik's effective values"
        );
        // Without it, an accepted socket has no keep-alive at all.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (s, _) = accept4(plain.as_fd()).unwrap();
        assert!(!Socket::from(s).keepalive().unwrap());
    }

    #[test]
    fn set_nonblocking_sets_o_nonblock() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(!is_nonblocking(s.as_fd()).unwrap());
        set_nonblocking(s.as_fd()).unwrap();
        assert!(is_nonblocking(s.as_fd()).unwrap());
    }
}
