//! [`Storage`]: the device memory behind one or more tensors, and the rules
//! that make it safe to read from any stream of the device.
//!
//! Owns the cross-stream bookkeeping:
//! - memory is allocated on the stream of the thread that makes it (its
//!   *home* stream) and written only there (tensors are immutable once made);
//! - before another stream reads it, that stream waits for an event recorded
//!   on the home stream, unless the storage is *settled* (its home stream was
//!   synchronised after the last write, as model loading does for weights),
//!   in which case reads from any number of streams need no wait at all;
//! - every other stream that read it is noted (`used_on`), and when the last
//!   owner drops it the block is `record_stream`ed on each, so the caching
//!   allocator hands the memory out again only after those streams have
//!   passed their reads. This is what makes dropping a shared weight safe.

use braid_runtime::backend::WeightPack;
use braid_runtime::{Device, DeviceBlock, DevicePtr, Result, Stream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Device memory of one allocation, shared by tensors through an `Arc`.
pub struct Storage {
    block: Option<DeviceBlock>,
    home: usize,
    /// Streams other than `home` that read the block: bit i of word i/64.
    used_on: [AtomicU64; 2],
    settled: AtomicBool,
    /// The backend's prepared form of these bytes as a GEMM weight (the CPU's
    /// packed panels), made on first use. It lives and dies with this
    /// allocation, and the bytes never change after the op that made them,
    /// so it can never describe other data.
    gemm_pack: WeightPack,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("block", &self.block).field("settled", &self.settled.load(Ordering::Relaxed)).finish()
    }
}

impl Storage {
    /// `bytes` of memory on `stream` (the caller's current stream).
    pub fn alloc(device: &Device, bytes: usize, stream: &Stream) -> Result<Storage> {
        let block = device.alloc(bytes, stream)?;
        Ok(Storage { block: Some(block), home: stream.index(), used_on: [AtomicU64::new(0), AtomicU64::new(0)], settled: AtomicBool::new(false), gemm_pack: WeightPack::default() })
    }

    pub fn ptr(&self) -> DevicePtr {
        self.block.as_ref().map_or(0, |b| b.ptr())
    }

    /// The slot for a backend's packed form of these bytes as a GEMM weight.
    pub fn gemm_pack(&self) -> &WeightPack {
        &self.gemm_pack
    }
    pub fn bytes(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.requested())
    }

    /// Index of the stream the memory was allocated and written on.
    pub fn home(&self) -> usize {
        self.home
    }

    pub fn is_settled(&self) -> bool {
        // Acquire pairs with the Release in `mark_settled`: a reader that sees
        // `true` also sees that the home stream was synchronised.
        self.settled.load(Ordering::Acquire)
    }

    /// Record that every write to this memory has completed (the caller has
    /// synchronised the home stream after the last write).
    pub fn mark_settled(&self) {
        self.settled.store(true, Ordering::Release);
    }

    /// Make `stream` ready to read this memory: note the stream for the
    /// eventual free and, if the memory may still be being written on its
    /// home stream, make `stream` wait for the home stream's current end.
    pub fn prepare_read(&self, device: &Device, stream: &Stream) -> Result<()> {
        let s = stream.index();
        if s == self.home {
            return Ok(()); // same in-order stream: nothing to order or note
        }
        let word = &self.used_on[(s / 64).min(1)];
        let bit = 1u64 << (s % 64);
        // Relaxed: the bitmask is only read in `Drop`, which has exclusive
        // access (the `Arc` that owns us gives the needed happens-before).
        // Load first so shared weights read by many threads do not all write
        // the same cache line on every op.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        if !self.is_settled() {
            let home = device.stream(self.home)?;
            let ev = home.record_event()?;
            stream.wait_event(&ev)?;
        }
        Ok(())
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(mut block) = self.block.take() {
            for (w, word) in self.used_on.iter().enumerate() {
                let mut bits = word.load(Ordering::Relaxed);
                while bits != 0 {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    // An index the allocator does not know cannot have been
                    // used (streams come from the same pool); ignore.
                    let _ = block.record_stream(w * 64 + i);
                }
            }
            drop(block); // freed once the home stream and every stream above are past it
        }
    }
}
