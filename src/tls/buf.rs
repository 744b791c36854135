//! Per-worker pool of the TLS pump's byte buffers.
//!
//! A TLS connection needs up to three buffers per side while bytes are in
//! flight (ciphertext in, ciphertext out, plaintext not yet delivered), and
//! none while idle: a buffer is taken when bytes arrive and given back as soon
//! as it is empty. So memory grows with bytes in flight, not with open
//! connections (an idle TLS session must cost less memory than in
//! HAProxy or nginx; measured in PERFORMANCE.md). The pool keeps at most `POOL_KEEP` spares so a burst does not pin
//! memory forever.

use std::cell::RefCell;

/// Size of every pooled buffer. Four maximal TLS records (4 × 16 KiB of
/// plaintext) per system call amortise the syscalls on bulk traffic; the
/// extra `SLACK` holds the per-record overhead (header, explicit nonce, tag:
/// at most 29 bytes each for TLS 1.2) and small control records (alerts,
/// key updates) queued behind a full buffer.
pub const BUF_SIZE: usize = 4 * 16 * 1024 + SLACK;
/// Room kept free for record overhead and control records.
pub const SLACK: usize = 2048;
/// Largest TLS record on the wire (header + 16 KiB + TLS 1.2's 2 KiB
/// expansion allowance): a partial record at the end of the queue is moved to
/// the front when less than this is free behind it, so it can complete.
pub const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;
/// Spare buffers kept per worker after a burst.
const POOL_KEEP: usize = 128;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A byte queue over a pooled buffer: `data()` is `buf[start..end]`. Holds no
/// memory while empty and released.
#[derive(Default)]
pub struct Buf {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Buf {
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.end],
            None => &[],
        }
    }

    /// The queued bytes, mutable (rustls decrypts in place there).
    pub fn data_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(b) => &mut b[self.start..self.end],
            None => &mut [],
        }
    }

    /// Drop `n` bytes from the front; give the buffer back once empty.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.release();
        }
    }

    /// Free space after the queued bytes, taking a buffer from the pool and
    /// moving the queued bytes to the front when that makes more room.
    pub fn spare(&mut self) -> &mut [u8] {
        let b = self.buf.get_or_insert_with(take);
        if self.start > 0 && b.len() - self.end < MAX_RECORD {
            b.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut b[self.end..]
    }

    /// Mark `n` bytes written into `spare()` as queued.
    pub fn commit(&mut self, n: usize) {
        self.end += n;
        if self.start == self.end {
            self.release();
        }
    }

    /// Append `bytes`; they must fit in `spare()` (callers size their input
    /// to `BUF_SIZE`). Returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = self.spare();
        let n = bytes.len().min(room.len());
        room[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// Give the buffer back to the pool (discarding what it held).
    pub fn release(&mut self) {
        self.start = 0;
        self.end = 0;
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

impl Drop for Buf {
    fn drop(&mut self) {
        self.release();
    }
}

fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_compacts_and_releases() {
        let mut b = Buf::default();
        assert!(b.data().is_empty());
        assert_eq!(b.push(b"hello world"), 11);
        b.consume(6);
        assert_eq!(b.data(), b"world");
        let room = b.spare().len();
        assert_eq!(b.data(), b"world");
        assert_eq!(room, BUF_SIZE - 11);
        b.consume(5);
        assert!(b.buf.is_none(), "an empty queue holds no buffer");
    }
}
