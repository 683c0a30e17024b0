//! [`Buffer`]: device memory behind one or more tensors, with the rules that
//! make it safe to read from any stream of its device, and [`View`], a
//! checked byte range of a live buffer (the operand type of the safe op
//! layer, `ops.rs`).
//!
//! Owns the cross-stream bookkeeping (moved here from `braid-nn` so that the
//! safe op layer can enforce it):
//! - memory is allocated on the stream of the thread that makes it (its
//!   *home* stream) and written only there (the op layer refuses a write
//!   from another stream, or to a settled buffer);
//! - before another stream reads it, that stream waits for an event recorded
//!   on the home stream, unless the buffer is *settled* (its home stream was
//!   synchronised after the last write, as model loading does for weights),
//!   in which case reads from any number of streams need no wait at all;
//! - every other stream that read it is noted (`used_on`), and when the last
//!   owner drops it the block is `record_stream`ed on each, so the caching
//!   allocator hands the memory out again only after those streams have
//!   passed their reads. This is what makes dropping a shared weight safe;
//! - a buffer used as a GEMM weight through `Stream::gemm_weight` carries the
//!   backend's prepared form of it (the CPU's packed panels, a
//!   [`WeightPack`]) and from then on is read-only, like a settled one, so
//!   the pack can never describe other bytes: it lives and dies with the
//!   allocation, and memory handed out again comes with a new, empty slot.

use crate::backend::{BufSlice, BufferId, WeightPack};
use crate::device::{Device, DeviceBlock};
use crate::error::{Error, Result};
use crate::stream::Stream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Device memory of one allocation, shared by tensors through an `Arc`.
pub struct Buffer {
    block: Option<DeviceBlock>,
    device_id: u64,
    home: usize,
    /// Streams other than `home` that read the block: bit i of word i/64.
    used_on: [AtomicU64; 2],
    settled: AtomicBool,
    /// Set (before the op is enqueued) when the buffer is first used as a
    /// packed GEMM weight: no write is accepted afterwards.
    weight: AtomicBool,
    /// The backend's prepared form of these bytes as a GEMM weight, made on
    /// first use in stream order (after the writes enqueued before it).
    gemm_pack: WeightPack,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("block", &self.block).field("settled", &self.settled.load(Ordering::Relaxed)).finish()
    }
}

impl Buffer {
    /// `bytes` of memory on `stream` (the caller's current stream).
    pub fn alloc(device: &Device, bytes: usize, stream: &Stream) -> Result<Buffer> {
        let block = device.alloc(bytes, stream)?;
        Ok(Buffer { block: Some(block), device_id: device.id(), home: stream.index(), used_on: [AtomicU64::new(0), AtomicU64::new(0)], settled: AtomicBool::new(false), weight: AtomicBool::new(false), gemm_pack: WeightPack::default() })
    }

    pub fn bytes(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.requested())
    }

    /// Id of the device the memory is on.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The backend handle of the allocation: opaque, for comparing only
    /// (two live buffers never share one; a freed one may come back).
    pub fn id(&self) -> BufferId {
        self.slice().buffer
    }

    /// The slot for a backend's prepared form of these bytes as a GEMM
    /// weight (filled by the first [`Stream::gemm_weight`] that can use it).
    pub fn gemm_pack(&self) -> &WeightPack {
        &self.gemm_pack
    }

    /// Make the buffer read-only for good because a backend may keep a
    /// prepared copy of its bytes (see [`Buffer::gemm_pack`]).
    pub(crate) fn freeze_as_weight(&self) {
        // Release: pairs with the Acquire in `check_writable`, so a write
        // checked after this store is refused. A write checked before it is
        // ordered before the GEMM as any write before a read is (stream order
        // on the home stream, the event `Check::finish` records otherwise),
        // and the pack is made in stream order, after it. Load first so that
        // many threads using a weight do not all write its cache line.
        if !self.weight.load(Ordering::Relaxed) {
            self.weight.store(true, Ordering::Release);
        }
    }

    /// Index of the stream the memory was allocated and written on.
    pub fn home(&self) -> usize {
        self.home
    }

    /// The whole buffer as an operand.
    pub fn view(&self) -> View<'_> {
        View { buf: self, offset: 0, len: self.bytes() }
    }

    pub fn is_settled(&self) -> bool {
        // Acquire pairs with the Release in `mark_settled`: a reader that sees
        // `true` also sees that the home stream was synchronised.
        self.settled.load(Ordering::Acquire)
    }

    /// Record that every write to this memory has completed (the caller has
    /// synchronised the home stream after the last write).
    pub fn mark_settled(&self) {
        // Release: pairs with the Acquire in `is_settled`.
        self.settled.store(true, Ordering::Release);
    }

    pub(crate) fn slice(&self) -> BufSlice {
        self.block.as_ref().expect("a live buffer has its block until drop").slice()
    }

    /// Make `stream` ready to read this memory: note the stream for the
    /// eventual free and, if the memory may still be being written on its
    /// home stream, make `stream` wait for the home stream's current end.
    pub fn prepare_read(&self, stream: &Stream) -> Result<()> {
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
            let block = self.block.as_ref().expect("live buffer");
            let home = block.source().stream(self.home)?;
            let ev = home.record_event()?;
            stream.wait_event(&ev)?;
        }
        Ok(())
    }

    /// May `stream` write this memory? Only its home stream, and only until
    /// it is settled (tensors are immutable once made).
    pub(crate) fn check_writable(&self, stream: &Stream, op: &str) -> Result<()> {
        if stream.index() != self.home {
            return Err(Error::InvalidArgument(format!("{op}: output buffer belongs to stream {} but the op runs on stream {}", self.home, stream.index())));
        }
        if self.is_settled() {
            return Err(Error::InvalidArgument(format!("{op}: output buffer is settled (read-only)")));
        }
        // Acquire: pairs with the Release in `freeze_as_weight`.
        if self.weight.load(Ordering::Acquire) {
            return Err(Error::InvalidArgument(format!("{op}: output buffer was used as a GEMM weight (read-only: its packed form must stay valid)")));
        }
        Ok(())
    }
}

impl Drop for Buffer {
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

/// A byte range of a live [`Buffer`], borrowed for as long as the view is
/// used: the operand type of the safe op layer. Views never name memory
/// outside their buffer (`sub` checks).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub(crate) buf: &'a Buffer,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl<'a> View<'a> {
    /// `len` bytes from `offset` within this view.
    pub fn sub(&self, offset: usize, len: usize) -> Result<View<'a>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(View { buf: self.buf, offset: self.offset + offset, len }),
            _ => Err(Error::InvalidArgument(format!("view {offset}..{offset}+{len} outside a range of {} bytes", self.len))),
        }
    }
    /// Everything from `offset` to the end of this view.
    pub fn from(&self, offset: usize) -> Result<View<'a>> {
        self.sub(offset, self.len.checked_sub(offset).ok_or_else(|| Error::InvalidArgument(format!("offset {offset} beyond a range of {} bytes", self.len)))?)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn buffer(&self) -> &'a Buffer {
        self.buf
    }
    pub(crate) fn raw(&self) -> BufSlice {
        let whole = self.buf.slice();
        BufSlice { buffer: whole.buffer, offset: whole.offset + self.offset, len: self.len }
    }
}
