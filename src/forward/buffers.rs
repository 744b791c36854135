//! Per-worker pool of forwarding buffers.
//!
//! A buffer is taken only after the source is readable and given back as soon
//! as its bytes were written, so idle connections hold no buffer and memory
//! grows with bytes in flight, not with connections. While busy the pool
//! keeps at most `POOL_KEEP` spares (`LARGE_KEEP` of a large `bufferSize`);
//! spares that no connection needed for a whole `POOL_TRIM_PERIOD` are freed
//! down to `IDLE_KEEP_BYTES` (`trim`), so a burst does not pin memory.

use std::cell::RefCell;

/// Spare buffers kept per worker while busy (the default 64 KiB buffers:
/// 16 MiB at most).
const POOL_KEEP: usize = 256;
/// A buffer above this size is large (`bufferSize` goes up to 16 MiB): a
/// burst of them must not leave hundreds of MiB in the pool.
const LARGE_BUF: usize = 1024 * 1024;
/// Spare large buffers kept per worker while busy.
const LARGE_KEEP: usize = 4;
/// Spare bytes kept per worker once idle: 16 default buffers, no large one.
const IDLE_KEEP_BYTES: usize = 1024 * 1024;

struct Pool {
    spares: Vec<Box<[u8]>>,
    /// Fewest spares since the last trim: that many were not needed during
    /// the whole period.
    low: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { spares: Vec::new(), low: 0 }) };
}

/// Free the spares that stayed unused for the last period, down to the idle
/// level (`forward::trim_pools`).
pub fn trim() {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let size = p.spares.first().map_or(1, |b| b.len().max(1));
        let keep = IDLE_KEEP_BYTES / size;
        let free = p.low.min(p.spares.len().saturating_sub(keep));
        let left = p.spares.len() - free;
        p.spares.truncate(left);
        p.low = left;
    });
}

/// A pooled buffer; returns itself to the pool on drop.
pub struct PooledBuf {
    buf: Option<Box<[u8]>>,
}

impl PooledBuf {
    pub fn take(size: usize) -> PooledBuf {
        let buf = POOL
            .with(|p| {
                let mut p = p.borrow_mut();
                // Sizes only change on reload; drop spares of another size.
                let mut found = None;
                while let Some(b) = p.spares.pop() {
                    if b.len() == size {
                        found = Some(b);
                        break;
                    }
                }
                p.low = p.low.min(p.spares.len());
                found
            })
            .unwrap_or_else(|| vec![0u8; size].into_boxed_slice());
        PooledBuf { buf: Some(buf) }
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let cap = if b.len() > LARGE_BUF {
                LARGE_KEEP
            } else {
                POOL_KEEP
            };
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.spares.len() < cap {
                    p.spares.push(b);
                }
            });
        }
    }
}
