//! The splice pump (zero copy): bytes move socket → pipe → socket inside the
//! kernel with non-blocking `splice()` calls made inline on the worker after a
//! readiness poll (HAProxy's way; io_uring's SPLICE op always runs in kernel
//! worker threads). Pipes come from a per-worker pool and are held only while
//! bytes are in the pipe.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{pass_fin, Dir, DirEnd};
use crate::sys;

/// Requested pipe size. Larger pipes mean fewer splice calls on bulk flows.
pub const PIPE_SIZE: usize = 1024 * 1024;

pub(crate) async fn pump(dir: Dir<'_>) -> DirEnd {
    let src_fd = dir.src.as_raw_fd();
    let dst_fd = dir.dst.as_raw_fd();
    let mut pipe: Option<sys::Pipe> = None;
    loop {
        if let Err(e) = dir.src.readable(false).await {
            return DirEnd::SrcFailed(e);
        }
        loop {
            let p = match &pipe {
                Some(p) => p,
                None => match sys::Pipe::new(PIPE_SIZE) {
                    Ok(p) => pipe.insert(p),
                    Err(e) => return DirEnd::SrcFailed(e),
                },
            };
            let n = match sys::splice(src_fd, p.wr, p.capacity) {
                Ok(0) => {
                    pass_fin(dir.dst);
                    return DirEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return DirEnd::SrcFailed(e),
            };
            let mut left = n;
            while left > 0 {
                match sys::splice(p.rd, dst_fd, left) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = dir.dst.writable(false).await {
                            return DirEnd::DstFailed(e);
                        }
                    }
                    Err(e) => return DirEnd::DstFailed(e),
                }
            }
            dir.bytes.set(dir.bytes.get() + n as u64);
            dir.last_active.set(Instant::now());
            if n < p.capacity {
                break;
            }
        }
    }
}
