//! The stream-ordered caching allocator (after PyTorch's CUDA caching
//! allocator). Owns device memory once it has been asked of the backend: which
//! block is live, which is cached free on which stream, which waits for other
//! streams (`record_stream`), the watermark trimming, `empty_cache`, the
//! out-of-memory retry, and the stats.
//!
//! Rules (each one an invariant the loom model and the proptest check):
//! - a [`Block`] is an owned value: handing it out moves it out of the free
//!   pool under that pool's lock, so no block is ever handed out twice;
//! - a block freed on stream S goes straight back to S's free pool: S is
//!   in-order, so S's next user queues behind the previous one;
//! - a block also used on other streams (`record_stream`) goes to the pending
//!   list with a fence (an event) recorded on each of those streams, and back
//!   to S's pool only when every fence has completed;
//! - every byte reserved from the backend is in exactly one of: a live block,
//!   a free pool, the pending list.
//!
//! Locks are per stream pool; the pending list has its own; stats are atomics.
//! No global lock on the hot path.

use crate::error::{Error, Result};
use crate::sync::{lock, Arc, AtomicU64, AtomicUsize, Mutex, Ordering};
use std::collections::BTreeMap;

/// Requests up to this size are "small": rounded to 512 bytes.
pub const SMALL_LIMIT: usize = 1 << 20;
const SMALL_ROUND: usize = 512;
/// Larger requests are rounded to 128 KiB.
const LARGE_ROUND: usize = 128 << 10;

/// Where the allocator gets memory and stream-order fences from: the device
/// (see `Device`), or a fake in tests and loom models.
pub trait MemorySource: Send + Sync + 'static {
    /// Short name for errors ("cuda:0", "cpu").
    fn name(&self) -> String;
    /// Raw memory; out-of-memory is [`Error::OutOfMemory`].
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// # Safety
    /// `ptr` came from `alloc(bytes)`, is freed once, and no stream uses it.
    unsafe fn free(&self, ptr: u64, bytes: usize);
    /// Mark the current end of stream `stream`: the fence completes when the
    /// stream has finished everything enqueued before it.
    fn fence(&self, stream: usize) -> Result<Box<dyn Fence>>;
}

/// A point in a stream's order.
pub trait Fence: Send + Sync {
    fn is_done(&self) -> bool;
    /// Block until done.
    fn wait(&self) -> Result<()>;
}

/// Allocator settings.
#[derive(Clone, Copy, Debug)]
pub struct AllocConfig {
    /// Streams (indices `0..streams`) whose pools the allocator keeps.
    pub streams: usize,
    /// Reserved bytes above which free blocks are trimmed, oldest first.
    pub high_watermark: Option<usize>,
}

/// A snapshot of the allocator's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in live blocks (rounded sizes).
    pub allocated: usize,
    /// Bytes held from the backend (live + cached free + pending).
    pub reserved: usize,
    pub peak_allocated: usize,
    pub peak_reserved: usize,
    /// Blocks handed out.
    pub allocations: u64,
    /// Of those, served from the cache.
    pub cache_hits: u64,
    /// Backend allocations made.
    pub backend_allocs: u64,
    /// Backend allocations that failed with out-of-memory.
    pub oom_retries: u64,
    /// Blocks waiting for other streams.
    pub pending_blocks: usize,
}

#[derive(Debug)]
struct FreeBlock {
    /// Last time (allocator tick) it was freed: for LRU trimming.
    tick: u64,
}

/// Cached free blocks of one stream, best-fit by (size, ptr).
#[derive(Debug, Default)]
struct FreePool {
    blocks: BTreeMap<(usize, u64), FreeBlock>,
}

struct Pending {
    ptr: u64,
    size: usize,
    stream: usize,
    fences: Vec<Box<dyn Fence>>,
}

struct Inner<M: MemorySource> {
    mem: M,
    config: AllocConfig,
    pools: Vec<Mutex<FreePool>>,
    pending: Mutex<Vec<Pending>>,
    tick: AtomicU64,
    allocated: AtomicUsize,
    reserved: AtomicUsize,
    peak_allocated: AtomicUsize,
    peak_reserved: AtomicUsize,
    allocations: AtomicU64,
    cache_hits: AtomicU64,
    backend_allocs: AtomicU64,
    oom_retries: AtomicU64,
    pending_count: AtomicUsize,
}

/// The caching allocator; cheap to clone (shared).
pub struct CachingAllocator<M: MemorySource> {
    inner: Arc<Inner<M>>,
}

impl<M: MemorySource> Clone for CachingAllocator<M> {
    fn clone(&self) -> Self {
        CachingAllocator { inner: self.inner.clone() }
    }
}

/// Memory handed out by the allocator. Dropping it frees it (stream-ordered).
pub struct Block<M: MemorySource> {
    ptr: u64,
    size: usize,
    requested: usize,
    stream: usize,
    /// Other streams the block was used on (bit i = stream i).
    used_on: u128,
    inner: Arc<Inner<M>>,
}

impl<M: MemorySource> std::fmt::Debug for Block<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("ptr", &format_args!("{:#x}", self.ptr)).field("size", &self.size).field("stream", &self.stream).finish()
    }
}

/// Round a request to the allocator's granularity.
pub fn round_size(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    let r = if bytes <= SMALL_LIMIT { SMALL_ROUND } else { LARGE_ROUND };
    bytes.div_ceil(r) * r
}

/// The largest cached block that may serve a request of `rounded` bytes:
/// small requests accept up to twice their size, large ones 1/8 more.
fn max_fit(rounded: usize) -> usize {
    if rounded <= SMALL_LIMIT {
        rounded * 2
    } else {
        rounded + rounded / 8
    }
}

fn bump_peak(peak: &AtomicUsize, value: usize) {
    // Relaxed: the peak is a statistic; fetch_max keeps it monotone.
    peak.fetch_max(value, Ordering::Relaxed);
}

impl<M: MemorySource> CachingAllocator<M> {
    /// An allocator keeping per-stream pools for streams `0..config.streams`
    /// (at most 128).
    pub fn new(mem: M, config: AllocConfig) -> Result<Self> {
        if config.streams == 0 || config.streams > 128 {
            return Err(Error::InvalidArgument(format!("the allocator tracks 1..=128 streams, not {}", config.streams)));
        }
        let pools = (0..config.streams).map(|_| Mutex::new(FreePool::default())).collect();
        Ok(CachingAllocator {
            inner: Arc::new(Inner {
                mem,
                config,
                pools,
                pending: Mutex::new(Vec::new()),
                tick: AtomicU64::new(0),
                allocated: AtomicUsize::new(0),
                reserved: AtomicUsize::new(0),
                peak_allocated: AtomicUsize::new(0),
                peak_reserved: AtomicUsize::new(0),
                allocations: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                backend_allocs: AtomicU64::new(0),
                oom_retries: AtomicU64::new(0),
                pending_count: AtomicUsize::new(0),
            }),
        })
    }

    pub fn source(&self) -> &M {
        &self.inner.mem
    }

    /// A block of at least `bytes` bytes for use on stream `stream`.
    pub fn alloc(&self, bytes: usize, stream: usize) -> Result<Block<M>> {
        let inner = &self.inner;
        if stream >= inner.pools.len() {
            return Err(Error::InvalidArgument(format!("stream index {stream} out of range (allocator has {} streams)", inner.pools.len())));
        }
        let rounded = round_size(bytes);
        if rounded < bytes {
            return Err(Error::InvalidArgument(format!("allocation of {bytes} bytes overflows")));
        }
        let block = match self.take_cached(rounded, stream) {
            Some(b) => Some(b),
            None => {
                // Blocks waiting on other streams may have become free.
                if inner.pending_count.load(Ordering::Relaxed) > 0 {
                    self.reclaim_pending(false);
                    self.take_cached(rounded, stream)
                } else {
                    None
                }
            }
        };
        let (ptr, size) = match block {
            Some(b) => {
                inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                b
            }
            None => (self.backend_alloc(rounded)?, rounded),
        };
        // Relaxed on stats: they are counters read for reports, not for
        // synchronisation; the block itself is handed over by the pool mutex.
        let now = inner.allocated.fetch_add(size, Ordering::Relaxed) + size;
        bump_peak(&inner.peak_allocated, now);
        inner.allocations.fetch_add(1, Ordering::Relaxed);
        let block = Block { ptr, size, requested: bytes, stream, used_on: 0, inner: inner.clone() };
        self.trim_to_watermark();
        Ok(block)
    }

    fn take_cached(&self, rounded: usize, stream: usize) -> Option<(u64, usize)> {
        let mut pool = lock(&self.inner.pools[stream]);
        let key = pool.blocks.range((rounded, 0)..).next().map(|(k, _)| *k)?;
        if key.0 > max_fit(rounded) {
            return None;
        }
        pool.blocks.remove(&key);
        Some((key.1, key.0))
    }

    fn backend_alloc(&self, rounded: usize) -> Result<u64> {
        let inner = &self.inner;
        let ptr = match inner.mem.alloc(rounded) {
            Ok(p) => p,
            Err(Error::OutOfMemory { .. }) => {
                // Free the cache (waiting for pending blocks) and retry once.
                inner.oom_retries.fetch_add(1, Ordering::Relaxed);
                self.empty_cache();
                match inner.mem.alloc(rounded) {
                    Ok(p) => p,
                    Err(Error::OutOfMemory { detail, .. }) => {
                        return Err(Error::OutOfMemory {
                            device: inner.mem.name(),
                            requested: rounded,
                            reserved: inner.reserved.load(Ordering::Relaxed),
                            allocated: inner.allocated.load(Ordering::Relaxed),
                            detail,
                        })
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        inner.backend_allocs.fetch_add(1, Ordering::Relaxed);
        let now = inner.reserved.fetch_add(rounded, Ordering::Relaxed) + rounded;
        bump_peak(&inner.peak_reserved, now);
        Ok(ptr)
    }

    /// Move pending blocks whose fences have completed back to their pool;
    /// with `wait`, wait for all of them first.
    fn reclaim_pending(&self, wait: bool) {
        let inner = &self.inner;
        let ready: Vec<Pending> = {
            let mut pending = lock(&inner.pending);
            if wait {
                std::mem::take(&mut *pending)
            } else {
                let mut ready = Vec::new();
                let mut i = 0;
                while i < pending.len() {
                    if pending[i].fences.iter().all(|f| f.is_done()) {
                        ready.push(pending.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                ready
            }
        };
        for p in ready {
            if wait {
                if p.fences.iter().any(|f| f.wait().is_err()) {
                    // A stream that failed may still touch the memory: never
                    // reuse or free it (leak, accounted as reserved).
                    inner.pending_count.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
            }
            inner.pending_count.fetch_sub(1, Ordering::Relaxed);
            self.put_free(p.ptr, p.size, p.stream);
        }
    }

    fn put_free(&self, ptr: u64, size: usize, stream: usize) {
        let tick = self.inner.tick.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pools[stream]).blocks.insert((size, ptr), FreeBlock { tick });
    }

    fn free_block(&self, ptr: u64, size: usize, stream: usize, used_on: u128) {
        let inner = &self.inner;
        inner.allocated.fetch_sub(size, Ordering::Relaxed);
        let others = used_on & !(1u128 << stream);
        if others == 0 {
            self.put_free(ptr, size, stream);
        } else {
            let mut fences = Vec::new();
            for s in 0..inner.pools.len() {
                if others & (1u128 << s) != 0 {
                    match inner.mem.fence(s) {
                        Ok(f) => fences.push(f),
                        Err(_) => {
                            // Cannot tell when stream s is done with it: leak
                            // rather than risk reuse while it may be in use.
                            return;
                        }
                    }
                }
            }
            inner.pending_count.fetch_add(1, Ordering::Relaxed);
            lock(&inner.pending).push(Pending { ptr, size, stream, fences });
        }
        self.trim_to_watermark();
    }

    /// Free cached blocks, least recently freed first, until reserved is at
    /// or below the high watermark.
    fn trim_to_watermark(&self) {
        let Some(high) = self.inner.config.high_watermark else { return };
        if self.inner.reserved.load(Ordering::Relaxed) <= high {
            return;
        }
        let mut candidates: Vec<(u64, usize, usize, u64)> = Vec::new(); // (tick, stream, size, ptr)
        for (s, pool) in self.inner.pools.iter().enumerate() {
            for (&(size, ptr), fb) in lock(pool).blocks.iter() {
                candidates.push((fb.tick, s, size, ptr));
            }
        }
        candidates.sort_unstable();
        let mut fenced = 0u128;
        for (_, s, size, ptr) in candidates {
            if self.inner.reserved.load(Ordering::Relaxed) <= high {
                break;
            }
            if lock(&self.inner.pools[s]).blocks.remove(&(size, ptr)).is_some() {
                self.release_to_backend(s, ptr, size, &mut fenced);
            }
        }
    }

    /// Free a block taken out of stream `stream`'s free pool. A cached block
    /// may still be in use by work queued on its own stream (reuse on that
    /// stream is ordered, freeing is not), so the first release per stream
    /// waits for a fence on it (`fenced` remembers which streams are done).
    fn release_to_backend(&self, stream: usize, ptr: u64, size: usize, fenced: &mut u128) {
        if *fenced & (1u128 << stream) == 0 {
            let ok = self.inner.mem.fence(stream).and_then(|f| f.wait()).is_ok();
            if !ok {
                // Cannot prove the stream is done with it: leak (stays reserved).
                return;
            }
            *fenced |= 1u128 << stream;
        }
        // SAFETY: the block was just removed from a free pool, so it is not
        // live and no other path can free it; blocks reach a free pool only
        // when every other stream is past their last use, and its own stream
        // has passed the fence waited for above.
        unsafe { self.inner.mem.free(ptr, size) };
        self.inner.reserved.fetch_sub(size, Ordering::Relaxed);
    }

    /// Return every cached free block (and, after waiting for them, every
    /// pending block) to the backend. Reserved falls to the bytes in live blocks.
    pub fn empty_cache(&self) {
        self.reclaim_pending(true);
        let mut fenced = 0u128;
        for (s, pool) in self.inner.pools.iter().enumerate() {
            let blocks = std::mem::take(&mut lock(pool).blocks);
            for ((size, ptr), _) in blocks {
                self.release_to_backend(s, ptr, size, &mut fenced);
            }
        }
    }

    pub fn stats(&self) -> AllocStats {
        let i = &self.inner;
        AllocStats {
            allocated: i.allocated.load(Ordering::Relaxed),
            reserved: i.reserved.load(Ordering::Relaxed),
            peak_allocated: i.peak_allocated.load(Ordering::Relaxed),
            peak_reserved: i.peak_reserved.load(Ordering::Relaxed),
            allocations: i.allocations.load(Ordering::Relaxed),
            cache_hits: i.cache_hits.load(Ordering::Relaxed),
            backend_allocs: i.backend_allocs.load(Ordering::Relaxed),
            oom_retries: i.oom_retries.load(Ordering::Relaxed),
            pending_blocks: i.pending_count.load(Ordering::Relaxed),
        }
    }

    /// Cached free bytes per stream (for checks).
    pub fn cached_bytes(&self) -> usize {
        self.inner.pools.iter().map(|p| lock(p).blocks.keys().map(|k| k.0).sum::<usize>()).sum()
    }

    /// Bytes waiting on other streams (for checks).
    pub fn pending_bytes(&self) -> usize {
        lock(&self.inner.pending).iter().map(|p| p.size).sum()
    }
}

impl<M: MemorySource> Block<M> {
    /// The handle the memory source returned (for a device, the raw value
    /// of a [`crate::backend::BufferId`]; see `DeviceBlock::slice`).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// The memory source the block came from.
    pub fn source(&self) -> &M {
        &self.inner.mem
    }
    /// Usable size (the rounded size; at least what was requested).
    pub fn size(&self) -> usize {
        self.size
    }
    /// What was asked for.
    pub fn requested(&self) -> usize {
        self.requested
    }
    /// The stream the block belongs to.
    pub fn stream(&self) -> usize {
        self.stream
    }
    /// Note that the block is (also) used on stream `stream`: when freed it
    /// will not be reused until that stream has passed its current end.
    pub fn record_stream(&mut self, stream: usize) -> Result<()> {
        if stream >= self.inner.pools.len() {
            return Err(Error::InvalidArgument(format!("stream index {stream} out of range")));
        }
        self.used_on |= 1u128 << stream;
        Ok(())
    }
}

impl<M: MemorySource> Drop for Block<M> {
    fn drop(&mut self) {
        let a = CachingAllocator { inner: self.inner.clone() };
        a.free_block(self.ptr, self.size, self.stream, self.used_on);
    }
}

impl<M: MemorySource> Drop for Inner<M> {
    fn drop(&mut self) {
        // No block is live (each holds an `Arc` to us). Pending blocks go back
        // once their streams are past them; a failed fence leaks (see
        // reclaim_pending).
        for p in std::mem::take(&mut *lock(&self.pending)) {
            if p.fences.iter().all(|f| f.wait().is_ok()) {
                // SAFETY: every stream that used the block has passed its fence.
                unsafe { self.mem.free(p.ptr, p.size) };
            }
        }
        for (s, pool) in self.pools.iter().enumerate() {
            let blocks = std::mem::take(&mut lock(pool).blocks);
            if blocks.is_empty() || self.mem.fence(s).and_then(|f| f.wait()).is_err() {
                continue; // nothing to free, or cannot prove the stream is done: leak
            }
            for ((size, ptr), _) in blocks {
                // SAFETY: cached free blocks are unused by other streams, and
                // their own stream has passed the fence just waited for.
                unsafe { self.mem.free(ptr, size) };
            }
        }
    }
}
