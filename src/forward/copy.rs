//! The copy pump: readiness, then non-blocking `recv` into a pooled buffer and
//! `send` of exactly those bytes. Best for small request/response traffic,
//! where a splice's two system calls and pipe cost more than one copy.

use std::io;
use std::time::Instant;

use super::buffers::PooledBuf;
use super::{pass_fin, Dir, DirEnd};
use crate::sys;

pub(crate) async fn pump(dir: Dir<'_>, buffer_size: usize) -> DirEnd {
    loop {
        if let Err(e) = dir.src.readable(false).await {
            return DirEnd::SrcFailed(e);
        }
        // Read until the socket is drained; a full buffer means more may be
        // waiting, so try again before going back to the poller.
        loop {
            match copy_once(&dir, buffer_size).await {
                Ok(Some(true)) => continue,
                Ok(Some(false)) => break,
                Ok(None) => return DirEnd::Eof,
                Err(end) => return end,
            }
        }
    }
}

/// One read and the write of what it read. `Ok(Some(full))`: done (`full` =
/// the buffer was filled, so more may be waiting); `Ok(None)`: EOF, passed
/// on. The buffer is back in the pool before this returns.
pub(crate) async fn copy_once(dir: &Dir<'_>, buffer_size: usize) -> Result<Option<bool>, DirEnd> {
    let mut buf = PooledBuf::take(buffer_size);
    let b = buf.as_mut();
    let n = match sys::recv(sys::fd(dir.src), b) {
        Ok(0) => {
            pass_fin(dir.dst);
            return Ok(None);
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(false)),
        Err(e) => return Err(DirEnd::SrcFailed(e)),
    };
    // Counted as written, so a pump dropped mid-write has counted exactly
    // what its destination socket took.
    let dfd = sys::fd(dir.dst);
    let mut rest = &b[..n];
    while !rest.is_empty() {
        match sys::send(dfd, rest) {
            Ok(k) => {
                rest = &rest[k..];
                dir.bytes.set(dir.bytes.get() + k as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                dir.dst.writable(false).await.map_err(DirEnd::DstFailed)?
            }
            Err(e) => return Err(DirEnd::DstFailed(e)),
        }
    }
    dir.last_active.set(Instant::now());
    Ok(Some(n == b.len()))
}
