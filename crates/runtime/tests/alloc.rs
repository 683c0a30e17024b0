//! The caching allocator over a fake memory source with manually advanced
//! streams: model-based proptests of its invariants (single- and
//! multi-threaded), the cross-stream reuse rule, watermark trimming and the
//! out-of-memory retry. The allocator over real CPU streams is exercised in
//! `device.rs`.

use braid_runtime::alloc::{round_size, AllocConfig, Block, CachingAllocator, Fence, MemorySource};
use braid_runtime::{Error, Result};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const STREAMS: usize = 4;

/// Fake device memory: a bump allocator (addresses never reused by the
/// source, so any overlap of live blocks is the allocator's doing), a byte
/// limit for out-of-memory, and streams whose progress the test advances.
#[derive(Default)]
struct FakeMem {
    next: AtomicU64,
    used: AtomicUsize,
    limit: usize,
    live: Mutex<BTreeMap<u64, usize>>,
    enqueued: [AtomicU64; STREAMS],
    done: Arc<[AtomicU64; STREAMS]>,
}

impl FakeMem {
    fn new(limit: usize) -> Self {
        FakeMem { next: AtomicU64::new(0x1000), limit, ..Default::default() }
    }
    /// Work is enqueued on stream s (a fence taken now waits for it).
    fn enqueue(&self, s: usize) {
        self.enqueued[s].fetch_add(1, Ordering::SeqCst);
    }
    /// Stream s catches up with everything enqueued.
    fn advance(&self, s: usize) {
        self.done[s].store(self.enqueued[s].load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

struct FakeFence {
    done: Arc<[AtomicU64; STREAMS]>,
    stream: usize,
    target: u64,
}

impl Fence for FakeFence {
    fn is_done(&self) -> bool {
        self.done[self.stream].load(Ordering::SeqCst) >= self.target
    }
    fn wait(&self) -> Result<()> {
        // The fake stream "runs" when waited on.
        self.done[self.stream].fetch_max(self.target, Ordering::SeqCst);
        Ok(())
    }
}

/// The allocator's handle on the shared fake memory.
struct Shared(Arc<FakeMem>);

impl std::ops::Deref for Shared {
    type Target = FakeMem;
    fn deref(&self) -> &FakeMem {
        &self.0
    }
}

impl MemorySource for Shared {
    fn name(&self) -> String {
        "fake".into()
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        if self.used.fetch_add(bytes, Ordering::SeqCst) + bytes > self.limit {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::OutOfMemory { device: "fake".into(), requested: bytes, reserved: 0, allocated: 0, detail: String::new() });
        }
        let p = self.next.fetch_add(bytes as u64, Ordering::SeqCst);
        self.live.lock().unwrap().insert(p, bytes);
        Ok(p)
    }
    unsafe fn free(&self, ptr: u64, bytes: usize) {
        let got = self.live.lock().unwrap().remove(&ptr);
        assert_eq!(got, Some(bytes), "freed {ptr:#x} that was not allocated with {bytes} bytes (double free?)");
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }
    fn fence(&self, stream: usize) -> Result<Box<dyn Fence>> {
        self.enqueue(stream);
        Ok(Box::new(FakeFence { done: self.done.clone(), stream, target: self.enqueued[stream].load(Ordering::SeqCst) }))
    }
}

type Alloc = CachingAllocator<Shared>;

fn allocator(limit: usize, high: Option<usize>) -> (Arc<FakeMem>, Alloc) {
    let mem = Arc::new(FakeMem::new(limit));
    (mem.clone(), CachingAllocator::new(Shared(mem), AllocConfig { streams: STREAMS, high_watermark: high }).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, stream: usize },
    Free(usize),
    RecordStream(usize, usize),
    Advance(usize),
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![1usize..4096, 4096usize..(3 << 20)], 0..STREAMS).prop_map(|(size, stream)| Op::Alloc { size, stream }),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), 0..STREAMS).prop_map(|(i, s)| Op::RecordStream(i, s)),
        2 => (0..STREAMS).prop_map(Op::Advance),
        1 => Just(Op::EmptyCache),
    ]
}

fn assert_no_overlap(live: &[Block<Shared>]) {
    let mut ranges: Vec<(u64, u64)> = live.iter().map(|b| (b.ptr(), b.ptr() + b.size() as u64)).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "live blocks overlap: {:x?} and {:x?}", w[0], w[1]);
    }
}

/// Blocks freed with uses on other streams: (ptr, stream, fence target).
type Guarded = Vec<(u64, usize, u64)>;

fn run_ops(mem: &Arc<FakeMem>, a: &Alloc, ops: &[Op], guarded: &mut Guarded) {
    let mut live: Vec<(Block<Shared>, u128)> = Vec::new();
    for op in ops {
        match *op {
            Op::Alloc { size, stream } => {
                let b = a.alloc(size, stream).expect("fake memory is large enough");
                assert!(b.size() >= size && b.size() == round_size(b.size()));
                // Cross-stream rule: a block freed while other streams could
                // still use it comes back only after they passed their fence.
                for &(p, s, target) in guarded.iter() {
                    if p == b.ptr() {
                        assert!(mem.done[s].load(Ordering::SeqCst) >= target, "block {p:#x} reused before stream {s} passed its fence");
                    }
                }
                guarded.retain(|&(p, _, _)| p != b.ptr());
                mem.enqueue(stream);
                live.push((b, 0));
            }
            Op::Free(i) if !live.is_empty() => {
                let (b, used) = live.swap_remove(i % live.len());
                let stream = b.stream();
                let ptr = b.ptr();
                drop(b);
                for s in 0..STREAMS {
                    if s != stream && used & (1 << s) != 0 {
                        guarded.push((ptr, s, mem.enqueued[s].load(Ordering::SeqCst)));
                    }
                }
            }
            Op::RecordStream(i, s) if !live.is_empty() => {
                let n = live.len();
                let (b, used) = &mut live[i % n];
                b.record_stream(s).unwrap();
                *used |= 1 << s;
                mem.enqueue(s); // the other stream now has work using it
            }
            Op::Advance(s) => mem.advance(s),
            Op::EmptyCache => a.empty_cache(),
            _ => {}
        }
        let blocks: Vec<_> = live.iter().map(|(b, _)| b).collect();
        let mut r: Vec<(u64, u64)> = blocks.iter().map(|b| (b.ptr(), b.ptr() + b.size() as u64)).collect();
        r.sort();
        for w in r.windows(2) {
            assert!(w[0].1 <= w[1].0, "live blocks overlap");
        }
        let st = a.stats();
        let live_bytes: usize = blocks.iter().map(|b| b.size()).sum();
        assert_eq!(st.allocated, live_bytes, "allocated stat");
        assert_eq!(st.reserved, live_bytes + a.cached_bytes() + a.pending_bytes(), "every reserved byte is live, cached or pending");
        assert_eq!(st.reserved, mem.used.load(Ordering::SeqCst), "reserved matches the backend");
        assert!(st.peak_reserved >= st.reserved && st.peak_allocated >= st.allocated);
    }
    let blocks: Vec<_> = live.into_iter().map(|(b, _)| b).collect();
    assert_no_overlap(&blocks);
    drop(blocks);
    a.empty_cache();
    let st = a.stats();
    assert_eq!((st.allocated, st.reserved, st.pending_blocks), (0, 0, 0), "reserved back to its floor after empty_cache");
    assert!(mem.live.lock().unwrap().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let (mem, a) = allocator(usize::MAX / 4, None);
        run_ops(&mem, &a, &ops, &mut Vec::new());
    }

    #[test]
    fn invariants_hold_with_watermark(ops in proptest::collection::vec(op(), 1..120)) {
        let (mem, a) = allocator(usize::MAX / 4, Some(4 << 20));
        run_ops(&mem, &a, &ops, &mut Vec::new());
    }

    /// Several threads allocating, freeing and recording streams at once:
    /// live blocks of all threads never overlap; stats end consistent.
    #[test]
    fn threads_never_share_blocks(seqs in proptest::collection::vec(proptest::collection::vec((1usize..100_000, 0..STREAMS, any::<bool>()), 1..60), 3..5)) {
        let (mem, a) = allocator(usize::MAX / 4, Some(8 << 20));
        let live = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
        std::thread::scope(|s| {
            for seq in &seqs {
                let (a, live, mem) = (a.clone(), live.clone(), mem.clone());
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for &(size, stream, record) in seq {
                        let mut b = a.alloc(size, stream).unwrap();
                        {
                            let mut l = live.lock().unwrap();
                            let end = b.ptr() + b.size() as u64;
                            if let Some((&p, &e)) = l.range(..end).next_back() {
                                assert!(e <= b.ptr() || p >= end, "overlap with live block {p:#x}..{e:#x}");
                            }
                            l.insert(b.ptr(), end);
                        }
                        if record {
                            b.record_stream((stream + 1) % STREAMS).unwrap();
                            mem.enqueue((stream + 1) % STREAMS);
                        }
                        mine.push(b);
                        if mine.len() > 3 {
                            let b = mine.remove(0);
                            live.lock().unwrap().remove(&b.ptr());
                            drop(b);
                            mem.advance((stream + 1) % STREAMS);
                        }
                    }
                    for b in mine {
                        live.lock().unwrap().remove(&b.ptr());
                    }
                });
            }
        });
        a.empty_cache();
        let st = a.stats();
        prop_assert_eq!((st.allocated, st.reserved), (0, 0));
    }
}

#[test]
fn same_stream_reuse_is_immediate_other_stream_waits() {
    let (mem, a) = allocator(1 << 30, None);
    let b = a.alloc(1000, 0).unwrap();
    let p = b.ptr();
    drop(b);
    let again = a.alloc(1000, 0).unwrap();
    assert_eq!(again.ptr(), p, "a block freed on stream 0 is reusable at once on stream 0");
    drop(again);
    assert_ne!(a.alloc(1000, 1).unwrap().ptr(), p, "free pools are per stream");

    let mut b = a.alloc(5000, 2).unwrap();
    let p = b.ptr();
    b.record_stream(3).unwrap();
    mem.enqueue(3);
    drop(b);
    assert_eq!(a.stats().pending_blocks, 1);
    let other = a.alloc(5000, 2).unwrap();
    assert_ne!(other.ptr(), p, "handed out while stream 3 may still use it");
    mem.advance(3);
    let reused = a.alloc(5000, 2).unwrap();
    assert_eq!(reused.ptr(), p, "reclaimed once stream 3 passed the fence");
    assert_eq!(a.stats().pending_blocks, 0);
    assert!(a.stats().cache_hits >= 2);
}

#[test]
fn watermark_trims_least_recently_freed_first() {
    let (_mem, a) = allocator(1 << 30, Some(3 << 20));
    let blocks: Vec<_> = (0..4).map(|_| a.alloc(1 << 20, 0).unwrap()).collect();
    let ptrs: Vec<u64> = blocks.iter().map(|b| b.ptr()).collect();
    for b in blocks {
        drop(b);
    }
    // 4 MiB reserved > 3 MiB watermark: the first freed (oldest) went back.
    let st = a.stats();
    assert!(st.reserved <= 3 << 20, "{st:?}");
    let b = a.alloc(1 << 20, 0).unwrap();
    assert_ne!(b.ptr(), ptrs[0], "the oldest free block should have been trimmed");
}

#[test]
fn out_of_memory_frees_cache_retries_then_errors() {
    let (mem, a) = allocator(4 << 20, None);
    let b1 = a.alloc(3 << 20, 0).unwrap();
    drop(b1); // cached on stream 0
    // Stream 1 needs 3 MiB: only possible after the cache is emptied.
    let b2 = a.alloc(3 << 20, 1).unwrap();
    assert_eq!(a.stats().oom_retries, 1);
    // Too much even after emptying: a clear error, and the allocator still works.
    match a.alloc(2 << 20, 2) {
        Err(Error::OutOfMemory { requested, reserved, allocated, .. }) => {
            assert_eq!(requested, 2 << 20);
            assert_eq!(reserved, 3 << 20);
            assert_eq!(allocated, 3 << 20);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    drop(b2);
    let ok = a.alloc(1 << 20, 2).unwrap();
    assert!(ok.size() >= 1 << 20);
    drop(ok);
    a.empty_cache();
    assert_eq!(mem.used.load(Ordering::SeqCst), 0);
}

#[test]
fn bad_stream_index_is_an_error() {
    let (_m, a) = allocator(1 << 20, None);
    assert!(matches!(a.alloc(10, STREAMS), Err(Error::InvalidArgument(_))));
    let mut b = a.alloc(10, 0).unwrap();
    assert!(matches!(b.record_stream(999), Err(Error::InvalidArgument(_))));
}
