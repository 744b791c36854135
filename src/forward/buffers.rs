//! Per-worker pool of forwarding buffers.
//!
//! A buffer is taken only after the source is readable and given back as soon
//! as its bytes were written, so idle connections hold no buffer and memory
//! grows with bytes in flight, not with connections. The pool keeps at most
//! `POOL_KEEP` spare buffers so a burst does not pin memory forever.

use std::cell::RefCell;

/// Spare buffers kept per worker after a burst.
const POOL_KEEP: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
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
                while let Some(b) = p.pop() {
                    if b.len() == size {
                        return Some(b);
                    }
                }
                None
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
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_KEEP {
                    p.push(b);
                }
            });
        }
    }
}
