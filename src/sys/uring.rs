//! The completion seam: one extra io_uring per worker thread, owned by the
//! completion engine, beside monoio's own ring.
//!
//! monoio 0.2.4 keeps its ring private, and has no multishot receive and no
//! provided-buffer rings, so the forwarding path drives a ring of its own on
//! the `io-uring` crate. The ring has an eventfd registered: every completion
//! posted on it bumps the eventfd, and a monoio task awaits a read of that
//! eventfd (an ordinary read op on monoio's ring), then drains every
//! completion and submits once per wake-up. While it drains, notifications
//! are turned off (IORING_CQ_EVENTFD_DISABLED in the CQ ring's flags): the
//! SENDs it submits mostly complete inline, and without this each of those
//! completions bumped the eventfd and caused a second, empty wake-up (half
//! of all wake-ups under redis-benchmark). It turns them back on, then looks
//! at the queue once more before it waits, so nothing posted in between is
//! missed.
//!
//! All the `unsafe` of the completion path lives here:
//! - the provided-buffer ring (`IORING_REGISTER_PBUF_RING`): one mapping for
//!   the ring entries the kernel reads, one for the buffers it writes into;
//! - pushing submission entries, some of which carry pointers into those
//!   buffers (SEND);
//! - a second mapping of the CQ ring, for its flags word.
//!
//! Buffer stock: every buffer is in exactly one place: the kernel's ring
//! (published, not handed out yet), a connection's hands (filled by a
//! RECV, until its SEND completes), or the spares. Returned buffers become
//! spares, last in first out, and the kernel's ring is topped up from the
//! top of the spares to about twice what connections hold (at least 64, at
//! most a stock that doubles on every ENOBUFS and decays when none came for
//! a trim period). A steady load therefore reuses a few hot buffers instead
//! of cycling through all of them (which committed the whole 16 MiB), and
//! after a burst the surplus left in the kernel's ring is read back out
//! (`reclaim_stock`) so that spare buffers' memory can be released
//! (`release_spare_memory`).
//!
//! Memory rule: the kernel may write into a buffer, or read from it, until the
//! completion of the operation that uses it. The buffers are never exposed as
//! Rust references that outlive a call (the forwarding path passes a buffer
//! id and a range to SEND; only `copy_out`, at a handover, reads bytes of a
//! filled buffer, within the call), and both mappings outlive every
//! operation: `Drop` unmaps them only when no operation is in flight, and
//! otherwise leaks them on purpose (a worker's ring lives as long as the
//! worker, so this happens at most once per thread, at exit).
//!
//! Descriptor rule (the caller's part): an entry naming a descriptor is only
//! pushed while its owner keeps it open, and `submit` leaves the submission
//! queue empty, so no queued entry can outlive the descriptor it names. Once
//! submitted, the kernel holds its own reference to the socket.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// The buffer group id of the provided-buffer ring (one ring, one group).
const BUF_GROUP: u16 = 0;
/// The user data of the reads that take surplus buffers back out of the
/// kernel's ring (`reclaim_stock`); the engine's user data never has its low
/// four bits all set.
const RECLAIM_UD: u64 = u64::MAX;
/// Buffers the kernel's ring is stocked with at least (see `Ring::stock`):
/// enough for 64 directions receiving at once before the first ENOBUFS
/// doubles it; 1 MiB of 16 KiB buffers.
pub const MIN_STOCK: u16 = 64;

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    /// Bytes moved (>= 0) or a negated errno.
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// More completions will follow for this (multishot) operation.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// An anonymous private mapping, unmapped on drop unless leaked.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping of `len` bytes, no file; the
        // result is checked for MAP_FAILED. Pages are zero and page aligned
        // (the buffer ring requires a page-aligned base), and committed only
        // when touched, so idle buffers cost address space, not memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Mapping {
    /// A shared mapping of `len` bytes of the ring descriptor `fd` at
    /// `offset` (one of the IORING_OFF_* regions).
    fn of_ring(fd: RawFd, len: usize, offset: i64) -> io::Result<Mapping> {
        // SAFETY: a shared mapping of a region the kernel exports for this
        // ring; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

/// `struct io_uring_params` of the kernel ABI (include/uapi/linux/io_uring.h).
#[repr(C)]
#[derive(Default)]
struct RawParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: [u32; 10],
    cq_off: [u32; 10],
}

/// Where the CQ ring's flags word lies in the CQ ring mapping: the kernel
/// reports it in `io_uring_params.cq_off.flags` at setup, and the `io-uring`
/// crate keeps that private, so a one-entry probe ring is set up to read it
/// (the layout is the same for every ring of this kernel).
fn cq_flags_offset() -> io::Result<u32> {
    let mut p = RawParams::default();
    // SAFETY: io_uring_setup(2) with a valid, writable params struct of the
    // kernel's layout; the returned descriptor is owned and closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut p as *mut RawParams) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    // cq_off: head, tail, ring_mask, ring_entries, overflow, cqes, flags, ...
    Ok(p.cq_off[6])
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned; `Ring::drop`
        // forgets the mappings instead of dropping them while the kernel may
        // still use them.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A worker's completion ring with its provided-buffer ring.
pub struct Ring {
    ring: IoUring,
    eventfd: Option<OwnedFd>,
    /// `count` entries of `io_uring_buf` shared with the kernel.
    entries: Mapping,
    /// `count` buffers of `size` bytes, back to back.
    buffers: Mapping,
    count: u16,
    size: u32,
    /// Our copy of the buffer ring's tail; published by `publish_buffers`.
    tail: u16,
    /// Buffers neither in the kernel's ring nor held by a connection, most
    /// recently returned last: `publish_buffers` hands the top ones to the
    /// kernel, so a few hot buffers are reused and the rest stay cold
    /// (untouched, or released by `release_spare_memory`).
    spare: Vec<u16>,
    /// At most how many buffers the kernel's ring is stocked with: doubled
    /// on every ENOBUFS (`grow_stock`) up to `count`, cut back by
    /// `decay_stock` when a trim period passed without one. Within it the
    /// ring is stocked with twice what the connections hold (`target`), so
    /// the buffers that come back at the end of a burst stay spare, where
    /// their memory can be released.
    stock: u16,
    /// An ENOBUFS since the last `decay_stock`.
    grew: bool,
    /// Buffers published to the kernel's ring, and buffers the kernel handed
    /// out (completions carrying one), both counted from the start: the
    /// difference is what the kernel's ring holds (or a little more, for
    /// completions not seen yet).
    published: u64,
    consumed: u64,
    /// Per buffer: filled by the kernel since its memory was last released.
    dirty: Vec<bool>,
    /// An eventfd in semaphore mode that `reclaim_stock` reads from with
    /// buffer select: each read takes one buffer out of the kernel's ring.
    reclaim_fd: std::fs::File,
    /// Reclaiming reads in flight, and counts written to `reclaim_fd` that
    /// no read took (a read that found the ring empty).
    reclaiming: usize,
    reclaim_unread: u64,
    /// Operations submitted (or queued) whose final completion has not been
    /// seen: while this is not zero, the mappings must stay.
    in_flight: usize,
    /// Completions taken out of the queue while `submit` made room; handed
    /// out first by the next `completions`.
    stash: VecDeque<Completion>,
    /// The CQ ring's flags word (a second mapping of the CQ ring), to turn
    /// eventfd notifications off while the completions are being handled.
    cq_map: Mapping,
    cq_flags_off: usize,
}

impl Ring {
    /// A ring of `sq_entries` submission entries with `count` buffers of
    /// `size` bytes registered as buffer group 0. `count` must be a power of
    /// two (a kernel rule for buffer rings), at most 32768.
    pub fn new(sq_entries: u32, count: u16, size: u32, tuned: bool) -> io::Result<Ring> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768, size not zero",
            ));
        }
        let mut b = IoUring::builder();
        if tuned {
            // One thread submits (SINGLE_ISSUER); completions are run when the
            // thread enters the kernel anyway, no interrupt each (COOP_TASKRUN).
            b.setup_single_issuer().setup_coop_taskrun();
        }
        let ring = b.build(sq_entries)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a new descriptor nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        // SAFETY: as above; a semaphore eventfd (each read takes 1).
        let rfd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
        if rfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a new descriptor nothing else owns.
        let reclaim_fd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(rfd) });
        ring.submitter().register_eventfd(efd)?;

        let entries = Mapping::new(count as usize * std::mem::size_of::<types::BufRingEntry>())?;
        let buffers = Mapping::new(count as usize * size as usize)?;
        // SAFETY: `entries` is a page-aligned mapping of `count` entries
        // that stays mapped while the kernel may read it (see `Drop`).
        unsafe {
            ring.submitter()
                .register_buf_ring(entries.ptr as u64, count, BUF_GROUP)?;
        }
        use std::os::fd::AsRawFd;
        let cq_flags_off = cq_flags_offset()? as usize;
        let cq_map = Mapping::of_ring(ring.as_raw_fd(), cq_flags_off + 4, 0x800_0000)?;
        let mut r = Ring {
            cq_map,
            cq_flags_off,
            ring,
            eventfd: Some(eventfd),
            entries,
            buffers,
            count,
            size,
            tail: 0,
            // Buffer 0 on top: the first ones handed out.
            spare: (0..count).rev().collect(),
            stock: MIN_STOCK.min(count),
            grew: false,
            published: 0,
            consumed: 0,
            dirty: vec![false; count as usize],
            reclaim_fd,
            reclaiming: 0,
            reclaim_unread: 0,
            in_flight: 0,
            stash: VecDeque::new(),
        };
        r.publish_buffers();
        Ok(r)
    }

    /// The eventfd bumped by every completion, for the waiting task to read
    /// (taken once: the caller owns it from then on).
    pub fn take_eventfd(&mut self) -> Option<std::fs::File> {
        self.eventfd.take().map(std::fs::File::from)
    }

    /// Turn eventfd notifications on or off (IORING_CQ_EVENTFD_DISABLED).
    pub fn set_eventfd_enabled(&self, on: bool) {
        // SAFETY: the flags word lies inside `cq_map` (offset reported by the
        // kernel), 4-byte aligned, and the kernel reads it with READ_ONCE.
        let flags = unsafe {
            &*(self.cq_map.ptr.add(self.cq_flags_off) as *const std::sync::atomic::AtomicU32)
        };
        // SeqCst: the store must be visible before the caller's next look at
        // the completion queue (store then load, as on the kernel's side).
        if on {
            flags.fetch_and(!1, Ordering::SeqCst);
        } else {
            flags.fetch_or(1, Ordering::SeqCst);
        }
    }

    /// Whether completions wait in the queue (or the stash).
    pub fn has_completions(&mut self) -> bool {
        if !self.stash.is_empty() {
            return true;
        }
        let mut cq = self.ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    pub fn buffer_size(&self) -> u32 {
        self.size
    }

    pub fn buffer_count(&self) -> u16 {
        self.count
    }

    /// Operations whose final completion has not been seen yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Give buffer `bid` back (to the kernel's ring by the next
    /// `publish_buffers`, if it needs stocking). The caller gives back only a
    /// buffer the kernel handed out and whose SEND has completed (or that was
    /// never sent).
    pub fn give_back(&mut self, bid: u16) {
        if bid < self.count {
            self.spare.push(bid);
        }
    }

    /// A receive found the kernel's ring empty: stock it with twice as many
    /// buffers from now on (up to all of them).
    pub fn grow_stock(&mut self) {
        self.stock = self.stock.saturating_mul(2).min(self.count);
        self.grew = true;
    }

    /// Called once per trim period: without an ENOBUFS in the period, a
    /// quarter of the stock is enough from now on (at least `MIN_STOCK`).
    pub fn decay_stock(&mut self) {
        if !self.grew {
            self.stock = (self.stock / 4).max(MIN_STOCK).min(self.count);
        }
        self.grew = false;
    }

    /// How many buffers the kernel's ring should hold now: twice what the
    /// connections hold (a burst's demand), at least `MIN_STOCK`, at most
    /// `stock`.
    fn target(&self) -> u64 {
        let idle = self.spare.len() as u64 + self.stocked();
        let held = u64::from(self.count).saturating_sub(idle);
        (2 * held)
            .max(u64::from(MIN_STOCK))
            .min(u64::from(self.stock))
    }

    /// How many buffers the kernel's ring is kept stocked with.
    pub fn stock(&self) -> u16 {
        self.stock
    }

    /// Buffers in the kernel's ring now (at most; see `consumed`).
    fn stocked(&self) -> u64 {
        self.published.saturating_sub(self.consumed)
    }

    fn push_buffer(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: `slot < count`, so the entry lies inside the entries
        // mapping; the kernel reads only entries between its head and the
        // published tail, and this slot is past the published tail (the
        // kernel's ring never holds more than `count` buffers: each bid is
        // either spare, in the ring, or handed out, once).
        let entry = unsafe { &mut *base.add(slot) };
        // SAFETY: `bid < count`, so the buffer lies inside the mapping.
        let addr = unsafe { self.buffers.ptr.add(bid as usize * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.published += 1;
    }

    /// Append bytes `offset..len` of buffer `bid` to `out`. The caller passes
    /// a buffer the kernel filled with at least `len` bytes by a RECV whose
    /// completion has been seen, and not given back yet (a connection handed
    /// over to the readiness path takes its unsent bytes this way).
    pub fn copy_out(&self, bid: u16, offset: u32, len: u32, out: &mut Vec<u8>) {
        if bid >= self.count || offset >= len || len > self.size {
            return;
        }
        let start = bid as usize * self.size as usize + offset as usize;
        // SAFETY: checked above: `start..start + (len - offset)` lies inside
        // the buffers mapping (bid < count, len <= size). The RECV that
        // filled the buffer has completed and the buffer has not been given
        // back, so the kernel does not write it now (a SEND may read it,
        // which does not conflict); the slice lives only for this copy.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.buffers.ptr.add(start), (len - offset) as usize)
        };
        out.extend_from_slice(bytes);
    }

    /// Stock the kernel's ring up to `target` buffers from the top of the
    /// spares (the most recently used first) and publish them. Returns how
    /// many were added.
    pub fn publish_buffers(&mut self) -> usize {
        let mut added = 0;
        while self.stocked() < self.target() {
            let Some(bid) = self.spare.pop() else { break };
            self.push_buffer(bid);
            added += 1;
        }
        if added == 0 {
            return 0;
        }
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the tail field of a buffer ring overlays the `resv` field
        // of its first entry, which lies in our mapping; the kernel reads it
        // with acquire semantics, so a release store publishes the entries
        // written before it.
        unsafe {
            let tail = types::BufRingEntry::tail(base) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        added
    }

    /// Take the buffers the kernel's ring holds beyond `keep` back out of
    /// it, so that their memory can be released: the ring is a FIFO, and
    /// after a burst it may stay stocked with hundreds of filled buffers
    /// that idle connections will not consume for a long time. Each read of
    /// the engine's own semaphore eventfd with buffer select consumes the
    /// oldest entry; its completion (never shown to the caller) makes the
    /// buffer spare. Returns how many reads were queued.
    pub fn reclaim_stock(&mut self, keep: u64) -> io::Result<usize> {
        if self.reclaiming > 0 {
            return Ok(0);
        }
        let excess = self.stocked().saturating_sub(keep);
        if excess == 0 {
            return Ok(0);
        }
        let add = excess.saturating_sub(self.reclaim_unread);
        if add > 0 {
            use std::io::Write;
            (&self.reclaim_fd).write_all(&add.to_ne_bytes())?;
            self.reclaim_unread += add;
        }
        use std::os::fd::AsRawFd;
        let fd = self.reclaim_fd.as_raw_fd();
        for _ in 0..excess {
            // Eight bytes: an eventfd read needs them; the kernel writes
            // them into the buffer it selects.
            let e = opcode::Read::new(types::Fd(fd), std::ptr::null_mut(), 8)
                .buf_group(BUF_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(RECLAIM_UD);
            self.push(e)?;
            self.reclaiming += 1;
        }
        Ok(excess as usize)
    }

    /// Give back the memory of spare buffers below the top `keep` of the
    /// spare stack (the coldest) that were filled since their memory was
    /// last released. Spare buffers are neither in the kernel's ring nor
    /// held by a connection, so nothing reads or writes them now. Returns
    /// the bytes released.
    pub fn release_spare_memory(&mut self, keep: usize) -> usize {
        let cold = self.spare.len().saturating_sub(keep);
        let mut bids: Vec<u16> = self.spare[..cold]
            .iter()
            .copied()
            .filter(|&b| self.dirty[b as usize])
            .collect();
        bids.sort_unstable();
        let size = self.size as usize;
        let mut released = 0;
        let mut i = 0;
        while i < bids.len() {
            // One madvise per run of adjacent buffers.
            let mut j = i + 1;
            while j < bids.len() && bids[j] == bids[j - 1] + 1 {
                j += 1;
            }
            let start = bids[i] as usize * size;
            let len = (j - i) * size;
            // SAFETY: `start..start + len` lies inside the buffers mapping
            // (every bid < count); these buffers are spare, so no operation
            // uses them and no reference to them exists; MADV_DONTNEED on a
            // private anonymous mapping makes them read as zeros later.
            let r = unsafe {
                libc::madvise(self.buffers.ptr.add(start).cast(), len, libc::MADV_DONTNEED)
            };
            if r == 0 {
                for &b in &bids[i..j] {
                    self.dirty[b as usize] = false;
                }
                released += len;
            }
            i = j;
        }
        released
    }

    /// Queue an entry, submitting first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module either carries no
            // pointer (RECV and READ with buffer select, ASYNC_CANCEL) or a
            // pointer into `buffers` (SEND), which outlives the operation
            // (see the module doc).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Multishot RECV from `fd` into provided buffers.
    pub fn push_recv_multi(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::RecvMulti::new(types::Fd(fd), BUF_GROUP)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// SEND of bytes `offset..len` of buffer `bid` to `fd`. The buffer must
    /// be one the kernel handed out and not given back yet.
    pub fn push_send(
        &mut self,
        fd: RawFd,
        bid: u16,
        offset: u32,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        if bid >= self.count || offset >= len || len > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send range outside the buffer",
            ));
        }
        let start = bid as usize * self.size as usize + offset as usize;
        // SAFETY: checked above: `start + (len - offset)` stays inside the
        // buffers mapping (bid < count, len <= size).
        let ptr = unsafe { self.buffers.ptr.add(start) };
        let e = opcode::Send::new(types::Fd(fd), ptr, len - offset)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// ASYNC_CANCEL of the operation with `target` user data.
    pub fn push_cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    /// Submit everything queued; on return the submission queue is empty.
    /// When the kernel refuses for a full completion queue (EBUSY), the
    /// completions are moved to the stash to make room, and it is retried.
    pub fn submit(&mut self) -> io::Result<()> {
        loop {
            // With nothing queued, enter only to flush completions the
            // kernel kept aside for a full completion queue (the crate's
            // submit asks for them when the overflow flag is set).
            let sq = self.ring.submission();
            if sq.is_empty() && !sq.cq_overflow() {
                return Ok(());
            }
            let idle = sq.is_empty();
            drop(sq);
            match self.ring.submit() {
                Ok(_) if idle => return Ok(()),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.stash_completions(),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.stash_completions(),
                Err(e) => return Err(e),
            }
        }
    }

    fn stash_completions(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            self.stash.push_back(Completion {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
            });
        }
    }

    /// Give the buffers' memory back to the system (they read as zeros and
    /// are committed again as the kernel fills them). Only with no
    /// operation in flight, when no RECV can be writing into one: the caller
    /// also makes sure no connection holds a filled buffer it still needs.
    /// Returns whether it was done (or nothing was filled since the last
    /// time).
    pub fn release_buffer_memory(&mut self) -> bool {
        if self.in_flight > 0 || !self.ring.submission().is_empty() {
            return false;
        }
        if !self.dirty.contains(&true) {
            self.stock = MIN_STOCK.min(self.count);
            return true;
        }
        // SAFETY: `ptr`/`len` are the buffers mapping (anonymous, private);
        // MADV_DONTNEED drops its pages, which later accesses fault in as
        // zero pages. No operation is in flight or queued, so the kernel is
        // not reading or writing any buffer now, and the mapping stays.
        let r = unsafe {
            libc::madvise(
                self.buffers.ptr.cast(),
                self.buffers.len,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            self.dirty.iter_mut().for_each(|d| *d = false);
            // Idle: a burst's stock is not kept either.
            self.stock = MIN_STOCK.min(self.count);
        }
        r == 0
    }

    /// Move every available completion to `out` (stashed ones first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        self.stash_completions();
        for c in std::mem::take(&mut self.stash) {
            if !c.more() {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            if let Some(bid) = c.buffer() {
                self.consumed += 1;
                if let Some(d) = self.dirty.get_mut(bid as usize) {
                    *d = true;
                }
            }
            if c.user_data == RECLAIM_UD {
                self.reclaiming = self.reclaiming.saturating_sub(1);
                // Without a buffer the ring was empty (ENOBUFS): the count
                // stays unread for the next reclaim.
                if let Some(bid) = c.buffer() {
                    self.reclaim_unread = self.reclaim_unread.saturating_sub(1);
                    self.give_back(bid);
                }
                continue;
            }
            out.push(c);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // The kernel tears the ring down asynchronously and may still
            // write into (or read from) the buffers: never unmap them then.
            let entries = std::mem::replace(
                &mut self.entries,
                Mapping {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                },
            );
            let buffers = std::mem::replace(
                &mut self.buffers,
                Mapping {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                },
            );
            std::mem::forget(entries);
            std::mem::forget(buffers);
        }
    }
}
