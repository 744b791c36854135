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
            in_flight: 0,
            stash: VecDeque::new(),
        };
        for bid in 0..count {
            r.give_back(bid);
        }
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

    /// Give buffer `bid` back to the kernel (visible after `publish_buffers`).
    /// The caller gives back only a buffer the kernel handed out and whose
    /// SEND has completed (or that was never sent).
    pub fn give_back(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let slot = (self.tail & (self.count - 1)) as usize;
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: `slot < count`, so the entry lies inside the entries
        // mapping; the kernel reads only entries between its head and the
        // published tail, and this slot is past the published tail.
        let entry = unsafe { &mut *base.add(slot) };
        // SAFETY: `bid < count`, so the buffer lies inside the mapping.
        let addr = unsafe { self.buffers.ptr.add(bid as usize * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
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

    /// Publish the buffers given back since the last call.
    pub fn publish_buffers(&mut self) {
        let base = self.entries.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the tail field of a buffer ring overlays the `resv` field
        // of its first entry, which lies in our mapping; the kernel reads it
        // with acquire semantics, so a release store publishes the entries
        // written before it.
        unsafe {
            let tail = types::BufRingEntry::tail(base) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Queue an entry, submitting first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module either carries no
            // pointer (RECV with buffer select, ASYNC_CANCEL) or a
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
    /// Returns whether it was done.
    pub fn release_buffer_memory(&mut self) -> bool {
        if self.in_flight > 0 || !self.ring.submission().is_empty() {
            return false;
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
        r == 0
    }

    /// Move every available completion to `out` (stashed ones first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        self.stash_completions();
        for c in self.stash.drain(..) {
            if !c.more() {
                self.in_flight = self.in_flight.saturating_sub(1);
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
