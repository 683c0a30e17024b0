//! The CPU backend: always built, so the same concurrency paths run where
//! there is no GPU. Owns the CPU's streams (each a real in-order executor: a
//! worker thread draining a FIFO queue, so enqueue returns at once and
//! synchronize waits, as on a GPU), its events (an [`EventState`] completed by
//! the stream when it reaches the record), and host memory standing in for
//! device memory.
//!
//! Kernels run on the stream's thread and split large work over one intra-op
//! pool shared by all streams ([`pool`]); an executor that runs dry, and a
//! `synchronize` still waiting, spin briefly before sleeping ([`progress`]),
//! so work enqueued back to back costs no thread wake-up.

pub mod kernels;
pub mod packed;
pub mod pool;
pub mod profile;
pub mod progress;
pub mod region;
pub mod varlen;

use super::{Activation, Attention, Backend, BackendEvent, BackendKind, BackendStream, BufSlice, BufferId, Capabilities, DType, Gather, Gemm, HostFns, Kernels, LayerNorm, MeanPool, Rope, SegmentMeanPool, VarlenAttention, WeightPack};
use crate::error::{Error, Result};
use crate::event_state::EventState;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use progress::Progress;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Alignment of CPU "device" allocations (a cache line, and enough for SIMD).
const ALIGN: usize = 64;

/// The host as a device.
pub struct CpuBackend {
    /// Every stream created, so `synchronize` can wait for all of them.
    streams: Mutex<Vec<Weak<CpuStream>>>,
    /// Which CPU device of the process this is (`cpu:N`): several CPU
    /// devices share the cores but nothing else (streams, memory, events).
    ordinal: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::with_ordinal(0)
    }

    /// CPU device `cpu:ordinal` (a label: every CPU device runs on the same cores).
    pub fn with_ordinal(ordinal: usize) -> Self {
        CpuBackend { streams: Mutex::new(Vec::new()), ordinal }
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported { backend: "cpu", what: what.into() }
}

fn f32_only(dtype: DType) -> Result<()> {
    if dtype == DType::F32 {
        Ok(())
    } else {
        Err(unsupported(format!("{} kernels", dtype.name())))
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn ordinal(&self) -> usize {
        self.ordinal
    }
    fn device_name(&self) -> String {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        format!("cpu ({n} hardware threads, {} intra-op threads, {})", pool::threads(), kernels::simd_level())
    }
    fn new_stream(&self) -> Result<Arc<dyn BackendStream>> {
        let s = Arc::new(CpuStream::spawn()?);
        let mut all = crate::sync_std_lock(&self.streams);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&s));
        Ok(s)
    }
    fn new_event(&self, _timing: bool) -> Result<Arc<dyn BackendEvent>> {
        Ok(Arc::new(CpuEvent { state: Arc::new(EventState::new()) }))
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { graph_capture: false, host_functions: true, dtypes: vec![DType::F32], timing: true, varlen_attention: true }
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|e| Error::InvalidArgument(format!("allocation of {bytes} bytes: {e}")))?;
        // SAFETY: layout has non-zero size (max(1)).
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::OutOfMemory { device: "cpu".into(), requested: bytes, reserved: 0, allocated: 0, detail: String::new() });
        }
        Ok(BufferId::from_raw(p as u64))
    }
    unsafe fn free(&self, buffer: BufferId, bytes: usize) {
        // SAFETY: the caller guarantees the buffer came from `alloc(bytes)`,
        // which used exactly this layout, and is freed once.
        unsafe { std::alloc::dealloc(buffer.raw() as *mut u8, std::alloc::Layout::from_size_align_unchecked(bytes.max(1), ALIGN)) }
    }
    fn synchronize(&self) -> Result<()> {
        let streams: Vec<_> = crate::sync_std_lock(&self.streams).iter().filter_map(|w| w.upgrade()).collect();
        let mut first = Ok(());
        for s in streams {
            let r = s.synchronize();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The CPU's prepared form of a GEMM weight: its packed panels, and the
/// operand range they were packed from (checked on every use with the shape).
struct CpuPack {
    w: BufSlice,
    pw: packed::PackedWeights,
}

type Job = Box<dyn FnOnce() -> Result<()> + Send>;

/// How long an executor that ran out of work spins on its queue before it
/// sleeps: long enough to cover the gap
/// between the kernels a forward pass enqueues back to back (so the next
/// enqueue finds the executor awake and costs no futex wake-up, ~15 µs
/// measured), short enough not to steal a core from the intra-op pool.
/// `BRAID_CPU_SPIN_US` overrides it (0 turns spinning off).
fn spin_limit() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| Duration::from_micros(std::env::var("BRAID_CPU_SPIN_US").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(20)))
}

/// How long `synchronize` spins before it sleeps: `BRAID_CPU_WAIT_SPIN_US`,
/// default 0. Off by default because, measured on a loaded 2-core machine, a
/// waiter spinning on the core its executor needs doubles the round trip
/// (see docs/cpu.md); a machine with cores to spare may turn it on.
fn wait_spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| Duration::from_micros(std::env::var("BRAID_CPU_WAIT_SPIN_US").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)))
}

/// A CPU stream: one executor thread, FIFO.
pub struct CpuStream {
    tx: mpsc::Sender<Job>,
    /// Jobs sent so far. A job takes its number with `fetch_add` and only then
    /// is sent; see `synchronize` for why that suffices.
    enqueued: AtomicU64,
    progress: Arc<Progress>,
}

impl CpuStream {
    fn spawn() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let progress = Arc::new(Progress::new());
        let pr = progress.clone();
        std::thread::Builder::new()
            .name("braid-cpu-stream".into())
            .spawn(move || {
                let spin = spin_limit();
                loop {
                    // Spin on the queue a little before parking in `recv`, so
                    // an enqueue soon after the last job needs no wake-up.
                    let mut next = None;
                    if !spin.is_zero() {
                        progress::spin_until(spin, || match rx.try_recv() {
                            Ok(j) => {
                                next = Some(Ok(j));
                                true
                            }
                            Err(mpsc::TryRecvError::Empty) => false,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                next = Some(Err(()));
                                true
                            }
                        });
                    }
                    // Ends when every sender (the stream) is gone and the queue is drained.
                    let job = match next {
                        Some(Ok(j)) => j,
                        Some(Err(())) => break,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => break,
                        },
                    };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                        .unwrap_or_else(|p| Err(Error::JobPanicked(crate::panic_message(&p))));
                    pr.complete(r);
                }
            })
            .map_err(|e| Error::Backend { backend: "cpu", call: "spawn stream thread".into(), code: e.raw_os_error().unwrap_or(-1) as i64, name: "io".into(), message: e.to_string() })?;
        Ok(CpuStream { tx, enqueued: AtomicU64::new(0), progress })
    }

    fn enqueue(&self, job: Job) -> Result<()> {
        // Relaxed is enough: the count is only compared by `synchronize`
        // after this thread's send, and the channel orders the jobs.
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(job).map_err(|_| Error::DeviceShutDown("cpu stream".into()))
    }

    /// Enqueue a kernel job named `op` (for `BRAID_CPU_PROFILE`, see
    /// [`profile`]; `detail` and `flops` are evaluated only when profiling).
    fn enqueue_op(&self, op: &'static str, detail: impl FnOnce() -> String + Send + 'static, flops: f64, job: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        self.enqueue(Box::new(move || {
            let t = profile::Timer::start();
            let r = job();
            t.stop(op, detail, flops);
            r
        }))
    }

    fn wait_until(&self, target: u64) -> Result<()> {
        self.progress.wait_until(target, wait_spin())
    }
}

/// A `Send` copy of an operand captured by a job: its host address and the
/// length the caller vouched for.
#[derive(Clone, Copy)]
struct P {
    addr: u64,
    len: usize,
}

fn arg(s: BufSlice) -> P {
    P { addr: s.addr(), len: s.len }
}

impl P {
    /// # Safety
    /// The range is live until the job that calls this ends (the contract
    /// of [`Kernels`]). `n` f32s must fit in the range: checked (a contract
    /// violation panics in the job, which the executor reports as an error,
    /// rather than reading out of bounds).
    unsafe fn f32<'a>(self, n: usize) -> &'a [f32] {
        assert!(n.checked_mul(4).is_some_and(|b| b <= self.len), "operand of {} bytes read as {n} f32", self.len);
        // SAFETY: forwarded from the caller's contract above; the length is checked.
        unsafe { std::slice::from_raw_parts(self.addr as *const f32, n) }
    }
    /// # Safety
    /// As [`P::f32`], and nothing else reads or writes it during the job: the
    /// stream runs one job at a time, other streams touch it only after an
    /// event orders them, and the output of a kernel shares no byte with its
    /// inputs (the contract of [`Kernels`], checked by the safe op layer).
    #[allow(clippy::mut_from_ref)]
    unsafe fn f32_mut<'a>(self, n: usize) -> &'a mut [f32] {
        assert!(n.checked_mul(4).is_some_and(|b| b <= self.len), "operand of {} bytes written as {n} f32", self.len);
        // SAFETY: forwarded from the caller's contract above.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut f32, n) }
    }
}

impl HostFns for CpuStream {
    fn host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()> {
        self.enqueue(Box::new(move || {
            f();
            Ok(())
        }))
    }
}

impl BackendStream for CpuStream {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn synchronize(&self) -> Result<()> {
        // Every job this thread enqueued was sent before this load, and any job
        // sent before ours took its number before being sent, so the first
        // `target` jobs in channel order include all of ours.
        let target = self.enqueued.load(Ordering::Relaxed);
        self.wait_until(target)
    }
    fn query(&self) -> Result<bool> {
        let target = self.enqueued.load(Ordering::Relaxed);
        Ok(self.progress.completed() >= target)
    }
    fn record(&self, event: &dyn BackendEvent) -> Result<()> {
        let ev = cpu_event(event)?;
        let state = ev.state.clone();
        let generation = state.record();
        self.enqueue(Box::new(move || {
            state.complete(generation);
            Ok(())
        }))
    }
    fn wait_event(&self, event: &dyn BackendEvent) -> Result<()> {
        let ev = cpu_event(event)?;
        let state = ev.state.clone();
        let target = state.target();
        if state.is_complete(target) {
            return Ok(());
        }
        self.enqueue(Box::new(move || state.wait(target, None)))
    }
    fn host_fns(&self) -> Option<&dyn HostFns> {
        Some(self)
    }
    unsafe fn h2d(&self, src: &[u8], dst: BufSlice) -> Result<()> {
        if src.len() > dst.len {
            return Err(Error::InvalidArgument(format!("h2d of {} bytes into {}", src.len(), dst.len)));
        }
        let staged = src.to_vec();
        let dst = arg(dst);
        self.enqueue(Box::new(move || {
            // SAFETY: caller contract: dst holds src.len() bytes (checked), live until this job ran.
            unsafe { std::ptr::copy_nonoverlapping(staged.as_ptr(), dst.addr as *mut u8, staged.len()) };
            Ok(())
        }))
    }
    unsafe fn d2h(&self, src: BufSlice, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.len {
            return Err(Error::InvalidArgument(format!("d2h of {} bytes from {}", dst.len(), src.len)));
        }
        // The copy runs on the stream (after the work ahead of it) into a
        // staging buffer, then lands in `dst` here: `dst` is never touched by
        // the executor thread, so an early error return cannot leave a write
        // in flight into the caller's memory.
        let len = dst.len();
        let staging = Arc::new(Mutex::new(vec![0u8; len]));
        let st = staging.clone();
        let src = arg(src);
        self.enqueue(Box::new(move || {
            let mut buf = crate::sync_std_lock(&st);
            // SAFETY: caller contract: src holds len bytes (checked), live until this job ran.
            unsafe { std::ptr::copy_nonoverlapping(src.addr as *const u8, buf.as_mut_ptr(), len) };
            Ok(())
        }))?;
        self.synchronize()?;
        dst.copy_from_slice(&crate::sync_std_lock(&staging));
        Ok(())
    }
    unsafe fn d2d(&self, src: BufSlice, dst: BufSlice) -> Result<()> {
        if src.len > dst.len {
            return Err(Error::InvalidArgument(format!("d2d of {} bytes into {}", src.len, dst.len)));
        }
        let (s, d, bytes) = (arg(src), arg(dst), src.len);
        self.enqueue(Box::new(move || {
            // SAFETY: caller contract: both regions hold `bytes` (checked) and
            // are live; `copy` tolerates overlap.
            unsafe { std::ptr::copy(s.addr as *const u8, d.addr as *mut u8, bytes) };
            Ok(())
        }))
    }
}

impl Kernels for CpuStream {
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        f32_only(g.dtype)?;
        let g = *g;
        let (a, w, b, o) = (arg(g.a), arg(g.w), g.bias.map(arg), arg(g.out));
        self.enqueue_op("gemm", move || format!("m{} n{} k{} unpacked", g.m, g.n, g.k), 2.0 * g.m as f64 * g.n as f64 * g.k as f64, move || {
            // SAFETY (all four): caller contract on the descriptor's sizes and lifetimes.
            unsafe {
                kernels::gemm(g.m, g.n, g.k, a.f32(g.m * g.k), w.f32(g.n * g.k), b.map(|b| b.f32(g.n)), o.f32_mut(g.m * g.n), g.act);
            }
            Ok(())
        })
    }
    unsafe fn gemm_weight(&self, g: &Gemm, pack: &WeightPack) -> Result<()> {
        f32_only(g.dtype)?;
        // Every row count takes the pack, batch 1 too: the packed tile (rows
        // past m repeated, computed but not stored) beat the one-row dot path
        // at every m from 1 to 7 (`examples/cpu_small_ops.rs`, docs/cpu.md).
        let g = *g;
        let pack = pack.clone();
        let (a, w, b, o) = (arg(g.a), arg(g.w), g.bias.map(arg), arg(g.out));
        self.enqueue_op("gemm", move || format!("n{} k{}", g.n, g.k), 2.0 * g.m as f64 * g.n as f64 * g.k as f64, move || {
            // SAFETY (all four): caller contract on the descriptor's sizes and
            // lifetimes; `w` is not written while `pack` lives.
            unsafe {
                let wv = w.f32(g.n * g.k);
                let made = pack.get_or_init(|| Arc::new(CpuPack { w: g.w, pw: packed::PackedWeights::pack(wv, g.n, g.k) }));
                match made.downcast_ref::<CpuPack>() {
                    Some(p) if p.w == g.w && p.pw.n() == g.n && p.pw.k() == g.k => {
                        kernels::gemm_packed(g.m, a.f32(g.m * g.k), &p.pw, b.map(|b| b.f32(g.n)), o.f32_mut(g.m * g.n), g.act)
                    }
                    // The same memory seen with another shape (a reshaped
                    // view): correct, unpacked.
                    _ => kernels::gemm(g.m, g.n, g.k, a.f32(g.m * g.k), wv, b.map(|b| b.f32(g.n)), o.f32_mut(g.m * g.n), g.act),
                }
            }
            Ok(())
        })
    }
    unsafe fn add(&self, a: BufSlice, b: BufSlice, out: BufSlice, n: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let (a, b, o) = (arg(a), arg(b), arg(out));
        self.enqueue_op("add", move || String::new(), 0.0, move || {
            // SAFETY: caller contract; `out` may alias `a` or `b` only elementwise,
            // which `add` reads before it writes each element.
            unsafe { kernels::add(a.f32(n), b.f32(n), o.f32_mut(n)) };
            Ok(())
        })
    }
    unsafe fn activation(&self, x: BufSlice, out: BufSlice, n: usize, act: Activation, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let (x, o) = (arg(x), arg(out));
        self.enqueue_op("activation", move || format!("{act:?}"), 0.0, move || {
            // SAFETY: caller contract (elementwise, in-place allowed).
            unsafe { kernels::activation(x.f32(n), o.f32_mut(n), act) };
            Ok(())
        })
    }
    unsafe fn layer_norm(&self, p: &LayerNorm) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let n = p.rows * p.cols;
        let (x, r, g, b, o) = (arg(p.x), p.residual.map(arg), arg(p.gamma), arg(p.beta), arg(p.out));
        self.enqueue_op("layer_norm", move || format!("cols {}{}", p.cols, if p.residual.is_some() { " +residual" } else { "" }), 0.0, move || {
            // SAFETY: caller contract; rows are copied to a scratch row before
            // `out` is written, so in-place is allowed.
            unsafe { kernels::layer_norm(x.f32(n), r.map(|r| r.f32(n)), g.f32(p.cols), b.f32(p.cols), o.f32_mut(n), p.rows, p.cols, p.eps) };
            Ok(())
        })
    }
    unsafe fn softmax(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let (x, o) = (arg(x), arg(out));
        self.enqueue_op("softmax", move || String::new(), 0.0, move || {
            // SAFETY: caller contract.
            unsafe { kernels::softmax(x.f32(rows * cols), o.f32_mut(rows * cols), rows, cols) };
            Ok(())
        })
    }
    unsafe fn attention(&self, p: &Attention) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let d = p.heads * p.head_dim;
        let tokens = p.batch * p.seq;
        // q/k/v span up to the last token's last element.
        let span = if tokens == 0 { 0 } else { (tokens - 1) * p.row_stride + d };
        let (q, k, v, m, o) = (arg(p.q), arg(p.k), arg(p.v), p.mask.map(arg), arg(p.out));
        self.enqueue_op("attention", move || format!("seq {} heads {} dim {}", p.seq, p.heads, p.head_dim), 4.0 * (p.batch * p.seq * p.seq * p.heads * p.head_dim) as f64, move || {
            // SAFETY: caller contract on the layout documented on `Attention`.
            unsafe {
                kernels::attention(q.f32(span), k.f32(span), v.f32(span), p.row_stride, m.map(|m| m.f32(tokens)), o.f32_mut(tokens * d), p.batch, p.seq, p.heads, p.head_dim, p.scale)
            };
            Ok(())
        })
    }
    unsafe fn attention_varlen(&self, p: &VarlenAttention) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let d = p.heads * p.head_dim;
        let (cu, q, k, v, o) = (arg(p.cu_seqlens), arg(p.q), arg(p.k), arg(p.v), arg(p.out));
        self.enqueue_op("attention_varlen", move || format!("heads {} dim {}", p.heads, p.head_dim), 0.0, move || {
            // SAFETY: caller contract on `VarlenAttention`: cu_seqlens holds
            // batch+1 u32 (length checked here; read on the stream, after the
            // upload before it).
            let cu = unsafe {
                assert!((p.batch + 1) * 4 <= cu.len, "attention_varlen cu_seqlens");
                std::slice::from_raw_parts(cu.addr as *const u32, p.batch + 1)
            };
            let tokens = *cu.last().unwrap_or(&0) as usize;
            let span = if tokens == 0 { 0 } else { (tokens - 1) * p.row_stride + d };
            // SAFETY: caller contract: q/k/v hold `tokens` rows of row_stride
            // and out tokens*d (every length checked by `P::f32`; the offsets
            // are checked against them by `varlen::attention_varlen`).
            unsafe { varlen::attention_varlen(q.f32(span), k.f32(span), v.f32(span), p.row_stride, cu, o.f32_mut(tokens * d), p.heads, p.head_dim, p.scale) }
        })
    }
    unsafe fn glu(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let (x, o) = (arg(x), arg(out));
        self.enqueue_op("glu", move || String::new(), 0.0, move || {
            // SAFETY: caller contract: x holds rows*2*cols, out rows*cols f32.
            unsafe { kernels::glu(x.f32(rows * 2 * cols), o.f32_mut(rows * cols), cols, act) };
            Ok(())
        })
    }
    unsafe fn rope_qkv(&self, p: &Rope) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let n = p.rows * 3 * p.heads * p.head_dim;
        let t = p.seq * p.head_dim;
        let (x, o, c, s) = (arg(p.x), arg(p.out), arg(p.cos), arg(p.sin));
        self.enqueue_op("rope_qkv", move || String::new(), 0.0, move || {
            // SAFETY: caller contract on the layout documented on `Rope`.
            unsafe { kernels::rope_qkv(x.f32(n), o.f32_mut(n), c.f32(t), s.f32(t), p.seq, p.heads, p.head_dim) };
            Ok(())
        })
    }
    unsafe fn attention_bias(&self, p: &Attention, bias: BufSlice) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let d = p.heads * p.head_dim;
        let tokens = p.batch * p.seq;
        let span = if tokens == 0 { 0 } else { (tokens - 1) * p.row_stride + d };
        let (q, k, v, m, o, bb) = (arg(p.q), arg(p.k), arg(p.v), p.mask.map(arg), arg(p.out), arg(bias));
        self.enqueue_op("attention_bias", move || format!("seq {} heads {} dim {}", p.seq, p.heads, p.head_dim), 4.0 * (p.batch * p.seq * p.seq * p.heads * p.head_dim) as f64, move || {
            // SAFETY: caller contract on the layout documented on `Attention`;
            // `bias` holds heads*seq*seq f32 (the trait's contract).
            unsafe {
                kernels::attention_bias(q.f32(span), k.f32(span), v.f32(span), p.row_stride, m.map(|m| m.f32(tokens)), Some(bb.f32(p.heads * p.seq * p.seq)), o.f32_mut(tokens * d), p.batch, p.seq, p.heads, p.head_dim, p.scale)
            };
            Ok(())
        })
    }
    unsafe fn gather(&self, p: &Gather) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let (t, ids, o) = (arg(p.table), arg(p.ids), arg(p.out));
        self.enqueue_op("gather", move || String::new(), 0.0, move || {
            // SAFETY: caller contract: `ids` holds n u32 (checked here).
            let ids = unsafe {
                assert!(p.n * 4 <= ids.len, "gather ids");
                std::slice::from_raw_parts(ids.addr as *const u32, p.n)
            };
            let rows = t.len / (p.dim * 4);
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= rows) {
                return Err(Error::InvalidArgument(format!("gather: id {bad} out of range for a table of {rows} rows")));
            }
            // SAFETY: caller contract on sizes and lifetimes; ids checked above.
            unsafe { kernels::gather(t.f32(rows * p.dim), ids, o.f32_mut(p.n * p.dim), p.dim) };
            Ok(())
        })
    }
    unsafe fn mean_pool(&self, p: &MeanPool) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let (x, m, o) = (arg(p.x), p.mask.map(arg), arg(p.out));
        self.enqueue_op("mean_pool", move || String::new(), 0.0, move || {
            // SAFETY: caller contract.
            unsafe { kernels::mean_pool(x.f32(p.batch * p.seq * p.dim), m.map(|m| m.f32(p.batch * p.seq)), o.f32_mut(p.batch * p.dim), p.batch, p.seq, p.dim) };
            Ok(())
        })
    }
    unsafe fn segment_mean_pool(&self, p: &SegmentMeanPool) -> Result<()> {
        f32_only(p.dtype)?;
        let p = *p;
        let (cu, x, o) = (arg(p.cu_seqlens), arg(p.x), arg(p.out));
        self.enqueue_op("segment_mean_pool", move || String::new(), 0.0, move || {
            // SAFETY: caller contract on `SegmentMeanPool`: cu_seqlens holds
            // segments+1 u32 (length asserted here; read on the stream, after
            // the upload before it).
            let cu = unsafe {
                assert!((p.segments + 1) * 4 <= cu.len, "segment_mean_pool cu_seqlens");
                std::slice::from_raw_parts(cu.addr as *const u32, p.segments + 1)
            };
            let tokens = *cu.last().unwrap_or(&0) as usize;
            // SAFETY: caller contract: x holds `tokens` rows of dim, out
            // segments*dim (lengths checked by `P::f32`; the offsets against
            // them by `varlen::segment_mean_pool`).
            unsafe { varlen::segment_mean_pool(x.f32(tokens * p.dim), cu, o.f32_mut(p.segments * p.dim), p.dim) }
        })
    }
    unsafe fn l2_normalize(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let (x, o) = (arg(x), arg(out));
        self.enqueue_op("l2_normalize", move || String::new(), 0.0, move || {
            // SAFETY: caller contract (row norm computed before the row is written).
            unsafe { kernels::l2_normalize(x.f32(rows * cols), o.f32_mut(rows * cols), rows, cols) };
            Ok(())
        })
    }
}

fn cpu_event(e: &dyn BackendEvent) -> Result<&CpuEvent> {
    e.as_any().downcast_ref::<CpuEvent>().ok_or_else(|| Error::DeviceMismatch("event of another backend used on a cpu stream".into()))
}

/// A CPU event: completed by the executor thread of the stream it was recorded on.
pub struct CpuEvent {
    state: Arc<EventState>,
}

impl BackendEvent for CpuEvent {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn query(&self) -> Result<bool> {
        Ok(self.state.is_complete(self.state.target()))
    }
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        self.state.wait(self.state.target(), timeout)
    }
    fn elapsed_ms(&self, earlier: &dyn BackendEvent) -> Result<f32> {
        let e = cpu_event(earlier)?;
        match (e.state.completed_at(), self.state.completed_at()) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(a).as_secs_f32() * 1e3 * if b >= a { 1.0 } else { -1.0 }),
            _ => Err(Error::InvalidArgument("elapsed time needs two completed events".into())),
        }
    }
}
