//! The copy pump: readiness, then non-blocking `recv` into a pooled buffer and
//! `send` of exactly those bytes. Best for small request/response traffic,
//! where a splice's two system calls and pipe cost more than one copy.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::buffers::PooledBuf;
use super::{pass_fin, write_all, Dir, DirEnd};
use crate::sys;

pub(crate) async fn pump(dir: Dir<'_>, buffer_size: usize) -> DirEnd {
    let src_fd = dir.src.as_raw_fd();
    loop {
        if let Err(e) = dir.src.readable(false).await {
            return DirEnd::SrcFailed(e);
        }
        // Read until the socket is drained; a full buffer means more may be
        // waiting, so try again before going back to the poller.
        loop {
            let mut buf = PooledBuf::take(buffer_size);
            let b = buf.as_mut();
            let n = match sys::recv(src_fd, b) {
                Ok(0) => {
                    pass_fin(dir.dst);
                    return DirEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return DirEnd::SrcFailed(e),
            };
            if let Err(e) = write_all(dir.dst, &b[..n]).await {
                return DirEnd::DstFailed(e);
            }
            dir.bytes.set(dir.bytes.get() + n as u64);
            dir.last_active.set(Instant::now());
            if n < b.len() {
                break;
            }
        }
    }
}
