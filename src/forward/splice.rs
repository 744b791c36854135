//! The splice pump (zero copy): bytes move socket → pipe → socket inside the
//! kernel with non-blocking `splice()` calls made inline on the worker after a
//! readiness poll (HAProxy's way; io_uring's SPLICE op always runs in kernel
//! worker threads, which costs more than it saves).
//!
//! Pipes come from a per-worker pool and are held only while bytes are in
//! them: an idle connection holds no pipe. A pipe that could not be emptied
//! (the destination failed) is closed, never returned to the pool. When the
//! worker already has `MAX_PIPES_IN_USE` pipes busy, the pump moves that chunk
//! with a pooled copy buffer instead, so pipe memory stays bounded
//! (fs.pipe-user-pages-soft would otherwise shrink new pipes to one page).

use std::cell::{Cell, RefCell};
use std::io;
use std::time::Instant;

use super::copy::copy_once;
use super::{pass_fin, Dir, DirEnd};
use crate::sys;

/// Requested pipe size: bulk flows move up to this much per splice pair.
pub const PIPE_SIZE: usize = 256 * 1024;
/// Pipes busy at once per worker before falling back to copying.
pub const MAX_PIPES_IN_USE: usize = 256;
/// Spare pipes kept per worker while busy.
const POOL_KEEP: usize = 64;
/// Spare pipes kept per worker once idle (2 descriptors each): spares that
/// no connection needed for a whole `POOL_TRIM_PERIOD` are closed down to
/// this (`trim`).
pub const IDLE_KEEP: usize = 2;

thread_local! {
    static PIPES: RefCell<Vec<sys::Pipe>> = const { RefCell::new(Vec::new()) };
    /// Fewest spare pipes since the last trim.
    static LOW: Cell<usize> = const { Cell::new(0) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
}

/// Close the spare pipes that stayed unused for the last period, down to
/// `IDLE_KEEP` (`forward::trim_pools`).
pub fn trim() {
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        let free = LOW.with(Cell::get).min(p.len().saturating_sub(IDLE_KEEP));
        let left = p.len() - free;
        p.truncate(left);
        LOW.with(|l| l.set(left));
    });
}

/// A pipe taken from the pool; goes back on drop if it is known to be empty.
struct PooledPipe {
    pipe: Option<sys::Pipe>,
    empty: bool,
}

impl PooledPipe {
    fn take() -> Option<PooledPipe> {
        if IN_USE.with(|n| n.get()) >= MAX_PIPES_IN_USE {
            return None;
        }
        let spare = PIPES.with(|p| {
            let mut p = p.borrow_mut();
            let spare = p.pop();
            LOW.with(|l| l.set(l.get().min(p.len())));
            spare
        });
        let pipe = match spare {
            Some(p) => p,
            None => sys::Pipe::new(PIPE_SIZE).ok()?,
        };
        IN_USE.with(|n| n.set(n.get() + 1));
        Some(PooledPipe {
            pipe: Some(pipe),
            empty: true,
        })
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        IN_USE.with(|n| n.set(n.get() - 1));
        if let Some(p) = self.pipe.take() {
            if self.empty {
                PIPES.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.len() < POOL_KEEP {
                        pool.push(p);
                    }
                });
            }
        }
    }
}

/// `adaptive` (forwarding = "auto"): copy until a read fills the whole
/// buffer, i.e. until the flow is bulky, then splice for the rest of it.
/// Small request/response traffic never pays for pipes; bulk flows move
/// without copies after their first buffer.
pub(crate) async fn pump(dir: Dir<'_>, buffer_size: usize, adaptive: bool) -> DirEnd {
    let src_fd = sys::fd(dir.src);
    let dst_fd = sys::fd(dir.dst);
    let mut bulky = !adaptive;
    loop {
        if let Err(e) = dir.src.readable(false).await {
            return DirEnd::SrcFailed(e);
        }
        loop {
            if !bulky {
                match copy_once(&dir, buffer_size).await {
                    Ok(Some(true)) => {
                        bulky = true;
                        continue;
                    }
                    Ok(Some(false)) => break,
                    Ok(None) => return DirEnd::Eof,
                    Err(end) => return end,
                }
            }
            let Some(mut pp) = PooledPipe::take() else {
                // Over the pipe budget: move this chunk by copying.
                match copy_once(&dir, buffer_size).await {
                    Ok(Some(full)) if full => continue,
                    Ok(Some(_)) => break,
                    Ok(None) => return DirEnd::Eof,
                    Err(end) => return end,
                }
            };
            let (wr, rd, cap) = match &pp.pipe {
                Some(p) => (p.wr(), p.rd(), p.capacity),
                None => return DirEnd::SrcFailed(io::Error::other("pipe missing")),
            };
            let n = match sys::splice(src_fd, wr, cap) {
                Ok(0) => {
                    pass_fin(dir.dst);
                    return DirEnd::Eof;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return DirEnd::SrcFailed(e),
            };
            pp.empty = false;
            let mut left = n;
            while left > 0 {
                match sys::splice(rd, dst_fd, left) {
                    Ok(m) => {
                        // Counted as written (see copy.rs).
                        left -= m;
                        dir.bytes.set(dir.bytes.get() + m as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = dir.dst.writable(false).await {
                            return DirEnd::DstFailed(e);
                        }
                    }
                    Err(e) => return DirEnd::DstFailed(e),
                }
            }
            pp.empty = true;
            drop(pp);
            dir.last_active.set(Instant::now());
            if n < cap {
                break;
            }
        }
    }
}
