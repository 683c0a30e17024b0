//! Pinned (page-locked) host staging buffers for one stream's copies. `h2d`
//! copies the caller's bytes into a pinned buffer and enqueues an async DMA
//! from it, so it returns at once and the caller may reuse its slice; the
//! buffer goes back to the pool and is reused only after the event recorded
//! behind the DMA says the copy finished. `d2h` DMAs into a pinned buffer and
//! waits on this stream only. Large copies go in chunks of [`MAX_CHUNK`].

use super::context::Ctx;
use crate::error::Result;
use cudarc::driver::sys::{self, CUevent, CUresult, CUstream};
use std::sync::Mutex;

/// The largest staging buffer; bigger copies are split.
pub(crate) const MAX_CHUNK: usize = 16 << 20;
/// The smallest staging buffer (small copies share a size class).
const MIN_BUF: usize = 64 << 10;
/// Buffers kept per stream.
const MAX_BUFS: usize = 8;

struct Staging {
    ptr: *mut u8,
    cap: usize,
    /// Recorded behind the last DMA that reads/writes this buffer.
    done: CUevent,
    /// A DMA may still be using the buffer (until `done` completes).
    busy: bool,
}

/// The per-stream pool. The mutex also serialises copies issued on the same
/// stream from several threads (they are ordered on the stream anyway).
pub(crate) struct PinnedPool {
    bufs: Mutex<Vec<Staging>>,
}

// SAFETY: the raw pointers are pinned host allocations and CUDA event
// handles owned by this pool; every access goes through the mutex.
unsafe impl Send for PinnedPool {}
// SAFETY: as above.
unsafe impl Sync for PinnedPool {}

impl PinnedPool {
    pub(crate) fn new() -> Self {
        PinnedPool { bufs: Mutex::new(Vec::new()) }
    }

    /// Index of a free buffer of at least `len` bytes (allocating, or waiting
    /// for an in-flight one, as needed). Context must be current.
    fn acquire(ctx: &Ctx, bufs: &mut Vec<Staging>, len: usize) -> Result<usize> {
        // Best fit among buffers that are idle or whose DMA has finished.
        let mut best: Option<(usize, usize)> = None;
        for (i, b) in bufs.iter_mut().enumerate() {
            if b.cap < len {
                continue;
            }
            if b.busy {
                // SAFETY: `done` is a live event owned by this pool.
                match unsafe { sys::cuEventQuery(b.done) } {
                    CUresult::CUDA_SUCCESS => b.busy = false,
                    CUresult::CUDA_ERROR_NOT_READY => continue,
                    e => return Err(ctx.error("cuEventQuery", e)),
                }
            }
            if best.is_none_or(|(_, cap)| cap > b.cap) {
                best = Some((i, b.cap));
            }
        }
        if let Some((i, _)) = best {
            return Ok(i);
        }
        if bufs.len() >= MAX_BUFS {
            // All big-enough buffers are in flight: wait for one of them.
            if let Some(i) = bufs.iter().position(|b| b.cap >= len) {
                // SAFETY: `done` is a live event owned by this pool.
                let r = unsafe { sys::cuEventSynchronize(bufs[i].done) };
                ctx.check("cuEventSynchronize", r)?;
                bufs[i].busy = false;
                return Ok(i);
            }
            // Make room: wait for the oldest buffer (index 0) and free it.
            let old = bufs.remove(0);
            // SAFETY: the event and pointer belong to this pool; after the
            // synchronize no DMA uses the buffer.
            unsafe { free_staging(&old) };
        }
        let cap = len.next_power_of_two().max(MIN_BUF);
        let mut ptr: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: plain pinned allocation of `cap` bytes in the current context.
        let r = unsafe { sys::cuMemHostAlloc(&mut ptr, cap, 0) };
        ctx.check("cuMemHostAlloc", r)?;
        let mut done: CUevent = std::ptr::null_mut();
        // SAFETY: creating an event in the current context.
        let r = unsafe { sys::cuEventCreate(&mut done, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32) };
        if r != CUresult::CUDA_SUCCESS {
            // SAFETY: `ptr` was allocated above and is unused.
            unsafe { sys::cuMemFreeHost(ptr) };
            return Err(ctx.error("cuEventCreate", r));
        }
        bufs.push(Staging { ptr: ptr as *mut u8, cap, done, busy: false });
        Ok(bufs.len() - 1)
    }

    /// Enqueue `src` → device `dst` on `stream`; returns once `src` is staged.
    ///
    /// # Safety
    /// `dst..dst+src.len()` is device memory valid until the stream passes
    /// the copy; `stream` belongs to `ctx`, which is current.
    pub(crate) unsafe fn h2d(&self, ctx: &Ctx, stream: CUstream, src: &[u8], dst: u64) -> Result<()> {
        let mut bufs = crate::sync_std_lock(&self.bufs);
        for (n, chunk) in src.chunks(MAX_CHUNK).enumerate() {
            let i = Self::acquire(ctx, &mut bufs, chunk.len())?;
            let b = &mut bufs[i];
            // SAFETY: `b.ptr` has `b.cap >= chunk.len()` bytes and no DMA uses
            // it (acquire returned an idle buffer); the regions are disjoint.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), b.ptr, chunk.len()) };
            let off = (n * MAX_CHUNK) as u64;
            // SAFETY: pinned source, device destination in range per the contract.
            let r = unsafe { sys::cuMemcpyHtoDAsync_v2(dst + off, b.ptr as *const _, chunk.len(), stream) };
            ctx.check("cuMemcpyHtoDAsync", r)?;
            // SAFETY: `done` is live; recording on a live stream of this context.
            let r = unsafe { sys::cuEventRecord(b.done, stream) };
            ctx.check("cuEventRecord", r)?;
            b.busy = true;
        }
        Ok(())
    }

    /// Copy device `src` → `dst`, waiting for this stream only.
    ///
    /// # Safety
    /// `src..src+dst.len()` is valid device memory; `stream` belongs to
    /// `ctx`, which is current.
    pub(crate) unsafe fn d2h(&self, ctx: &Ctx, stream: CUstream, src: u64, dst: &mut [u8]) -> Result<()> {
        let mut bufs = crate::sync_std_lock(&self.bufs);
        for (n, chunk) in dst.chunks_mut(MAX_CHUNK).enumerate() {
            let i = Self::acquire(ctx, &mut bufs, chunk.len())?;
            let b = &mut bufs[i];
            let off = (n * MAX_CHUNK) as u64;
            // SAFETY: pinned destination of enough bytes, device source in range.
            let r = unsafe { sys::cuMemcpyDtoHAsync_v2(b.ptr as *mut _, src + off, chunk.len(), stream) };
            ctx.check("cuMemcpyDtoHAsync", r)?;
            // SAFETY: live stream of the current context.
            let r = unsafe { sys::cuStreamSynchronize(stream) };
            ctx.check("cuStreamSynchronize", r)?;
            // SAFETY: the DMA into `b.ptr` has completed (stream synchronized).
            unsafe { std::ptr::copy_nonoverlapping(b.ptr, chunk.as_mut_ptr(), chunk.len()) };
        }
        Ok(())
    }

    /// Free every buffer (waiting for in-flight DMAs). Context must be current.
    pub(crate) fn clear(&self) {
        let mut bufs = crate::sync_std_lock(&self.bufs);
        for b in bufs.drain(..) {
            // SAFETY: each buffer and event is owned by this pool and freed once.
            unsafe { free_staging(&b) };
        }
    }

    /// Number of pinned buffers held (tests).
    pub(crate) fn len(&self) -> usize {
        crate::sync_std_lock(&self.bufs).len()
    }
}

/// # Safety
/// `b` is owned by the pool and removed from it; the context is current.
unsafe fn free_staging(b: &Staging) {
    // SAFETY: per the contract; synchronize first so no DMA still uses it.
    unsafe {
        if b.busy {
            let _ = sys::cuEventSynchronize(b.done);
        }
        let _ = sys::cuEventDestroy_v2(b.done);
        let _ = sys::cuMemFreeHost(b.ptr as *mut _);
    }
}
