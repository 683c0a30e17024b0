//! The backend trait: everything a device must provide (streams, events, raw
//! memory, copies, the kernels the ops need) and nothing about pooling,
//! caching or scheduling, which live above it in this crate.
//!
//! Owns: [`Backend`], [`BackendStream`] (order, events, copies), [`Kernels`]
//! (the op set), the optional capabilities [`Capture`] and [`HostFns`] (asked
//! for as `Option<&dyn ...>`), [`BackendEvent`], [`BackendGraph`], and the
//! kernel descriptors ([`Gemm`], [`LayerNorm`], [`Attention`], ...).
//!
//! Memory is named by [`BufferId`] (one backend allocation, an opaque handle:
//! a device address on CUDA, a host address on the CPU, a table index on
//! wgpu) and operands by [`BufSlice`] (a buffer, a byte offset and a byte
//! length). Nothing above the backends does arithmetic on a handle: offsets
//! are taken with [`BufSlice::sub`] or the checked views of `crate::buffer`.
//!
//! Descriptors are generic over their operand type `P` (default
//! [`BufSlice`]): backends receive `Gemm<BufSlice>`; callers build
//! `Gemm<View>` over live [`crate::buffer::Buffer`]s and hand it to the safe
//! op layer (`crate::ops`, methods on [`crate::Stream`]), which checks sizes,
//! devices, aliasing and stream order and is the only caller of the unsafe
//! [`Kernels`] entry points outside the backends' own tests. Every kernel
//! entry point is *enqueued* on the stream it is called on and returns
//! before it runs. See `docs/backends.md` for what a new op or a new backend
//! must implement.

pub mod cpu;
pub mod done_flag;
#[cfg(all(feature = "cuda", not(loom)))]
pub mod cuda;
#[cfg(all(feature = "wgpu", not(loom)))]
pub mod wgpu;

use crate::error::{Error, Result};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// One allocation of a backend: an opaque handle, meaningful only to the
/// backend that made it (CUDA: the device address; CPU: the host address;
/// wgpu: an index into the device's buffer table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(u64);

impl BufferId {
    /// The handle a backend made. Only backends (and the allocator, which
    /// keys its pools by it) look inside.
    pub const fn from_raw(raw: u64) -> BufferId {
        BufferId(raw)
    }
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// A byte range of one allocation: the operand type of the backend entry
/// points. Plain data (no lifetime): a backend may capture it in work it
/// runs later; the caller's contract (see [`Kernels`]) keeps the allocation
/// alive until then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufSlice {
    pub buffer: BufferId,
    /// Bytes from the start of the allocation.
    pub offset: usize,
    /// Bytes in the range.
    pub len: usize,
}

impl BufSlice {
    /// The whole of an allocation of `len` bytes.
    pub const fn whole(buffer: BufferId, len: usize) -> BufSlice {
        BufSlice { buffer, offset: 0, len }
    }
    /// `len` bytes from `offset` within this range ([`Error::InvalidArgument`]
    /// if they do not fit).
    pub fn sub(self, offset: usize, len: usize) -> Result<BufSlice> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(BufSlice { buffer: self.buffer, offset: self.offset + offset, len }),
            _ => Err(Error::InvalidArgument(format!("range {offset}..{offset}+{len} outside a slice of {} bytes", self.len))),
        }
    }
    /// Do the two ranges share a byte?
    pub fn overlaps(&self, other: &BufSlice) -> bool {
        self.buffer == other.buffer && self.len > 0 && other.len > 0 && self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
    /// `raw + offset`: the address, for backends whose handles are addresses
    /// (CUDA, CPU).
    pub fn addr(&self) -> u64 {
        self.buffer.0 + self.offset as u64
    }
}

/// Which backend a device runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Cpu,
    Cuda,
    Wgpu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

/// Element type of kernel operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DType {
    #[default]
    F32,
    BF16,
    /// IEEE half precision (storage only: arithmetic and accumulation stay f32).
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
    /// Parse `f32`, `bf16` or `f16` (the CLI's `--dtype`); anything else is an error naming the choices.
    pub fn parse(s: &str) -> Result<DType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
            other => Err(Error::InvalidArgument(format!("unknown dtype {other:?}: expected f32, f16 or bf16"))),
        }
    }
    /// A half-precision storage type (bf16 or f16).
    pub fn is_half(self) -> bool {
        self != DType::F32
    }
}

/// Activation applied elementwise (also as a GEMM epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    /// GELU with the exact erf form (BERT, PyTorch's default).
    GeluErf,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// SiLU (swish): `x · sigmoid(x)` (SwiGLU's gate, NomicBert).
    Silu,
}

/// `out[m,n] = act(a[m,k] · w[n,k]ᵀ + bias[n])`, all row-major, `w` laid out
/// as a `Linear` layer stores its weight (out_features × in_features).
#[derive(Clone, Copy, Debug)]
pub struct Gemm<P = BufSlice> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: P,
    pub w: P,
    pub bias: Option<P>,
    pub out: P,
    pub act: Activation,
    pub dtype: DType,
}

/// A slot for a backend's prepared form of one GEMM weight (the CPU
/// backend's packed panels), passed to [`Kernels::gemm_weight`]. It
/// belongs to the weight's memory, not to an address: each
/// [`Buffer`](crate::Buffer) keeps one, made empty with it and dropped with
/// it (and `Stream::gemm_weight` makes the buffer read-only), so memory the allocator hands out again comes with a new,
/// empty slot and a stale pack cannot be served. The backend fills it on the
/// first GEMM that uses the weight, in stream order (after the weight's
/// writes), and checks on every use that it was made for the same address and
/// shape. Cloning shares the slot.
#[derive(Clone, Default)]
pub struct WeightPack(Arc<std::sync::OnceLock<Arc<dyn Any + Send + Sync>>>);

impl WeightPack {
    /// The prepared form, made by `make` if this is the first use.
    pub fn get_or_init(&self, make: impl FnOnce() -> Arc<dyn Any + Send + Sync>) -> &Arc<dyn Any + Send + Sync> {
        self.0.get_or_init(make)
    }
    /// The prepared form, if one was made.
    pub fn get(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        self.0.get()
    }
}

impl std::fmt::Debug for WeightPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightPack({})", if self.0.get().is_some() { "made" } else { "empty" })
    }
}

/// `out = LayerNorm(x + residual) * gamma + beta` over the last dimension.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm<P = BufSlice> {
    pub x: P,
    pub residual: Option<P>,
    pub gamma: P,
    pub beta: P,
    pub out: P,
    pub rows: usize,
    pub cols: usize,
    pub eps: f32,
    pub dtype: DType,
}

/// Scaled-dot-product attention over `heads` heads.
///
/// `q`, `k`, `v` each hold `batch*seq` tokens of `heads*head_dim` values;
/// consecutive tokens are `row_stride` elements apart (so they may point into
/// one packed QKV buffer with `row_stride = 3*heads*head_dim`). `mask`, if
/// given, is `[batch, seq]` f32 with 1 for real tokens and 0 for padding keys.
/// `out` is `[batch, seq, heads*head_dim]`, dense.
#[derive(Clone, Copy, Debug)]
pub struct Attention<P = BufSlice> {
    pub q: P,
    pub k: P,
    pub v: P,
    pub row_stride: usize,
    pub mask: Option<P>,
    pub out: P,
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub dtype: DType,
}

/// Scaled-dot-product attention over a packed token stream (flash-attention's
/// varlen layout): no padding anywhere. Sequence `b` is the tokens
/// `cu_seqlens[b] .. cu_seqlens[b+1]` of the stream, and attends only to
/// itself. `cu_seqlens` is `batch + 1` non-decreasing `u32` on the device,
/// starting at 0 and ending at the stream's token count; `max_seq` is the
/// longest sequence (it sizes the launch). `q`, `k`, `v` are rows
/// `row_stride` elements apart as in [`Attention`]; `out` is `[tokens,
/// heads*head_dim]`, dense. Softmax statistics are f32 in every dtype.
///
/// `C` is the type of `cu_seqlens`: a device [`BufSlice`] for the backends,
/// the host offsets (`&[u32]`) for callers of the safe op
/// (`Stream::attention_varlen`), which checks them and uploads them; `batch`
/// and `max_seq` must then agree with them.
#[derive(Clone, Copy, Debug)]
pub struct VarlenAttention<P = BufSlice, C = P> {
    pub q: P,
    pub k: P,
    pub v: P,
    pub row_stride: usize,
    pub cu_seqlens: C,
    pub out: P,
    pub batch: usize,
    pub max_seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub dtype: DType,
}

/// Rotary position embedding (the rotate-half form of GPT-NeoX, Llama,
/// ModernBERT) on packed qkv rows `x[rows, 3*heads*head_dim]`: each head of
/// the q and k parts becomes `x·cos + rotate_half(x)·sin`, the v part is
/// copied. Row `r` is at position `r % seq`; `cos` and `sin` are f32
/// `[seq, head_dim]`; `head_dim` is even.
#[derive(Clone, Copy, Debug)]
pub struct Rope<P = BufSlice> {
    pub x: P,
    pub out: P,
    pub cos: P,
    pub sin: P,
    pub rows: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

/// `out[i,:] = table[ids[i],:]`; `ids` are `u32`, each checked against `rows`
/// before launch by the caller.
#[derive(Clone, Copy, Debug)]
pub struct Gather<P = BufSlice> {
    pub table: P,
    pub ids: P,
    pub out: P,
    pub n: usize,
    pub dim: usize,
    pub dtype: DType,
}

/// Mean over the sequence of `x[batch, seq, dim]`, counting only positions
/// where `mask[batch, seq]` (f32) is non-zero; `out` is `[batch, dim]`.
#[derive(Clone, Copy, Debug)]
pub struct MeanPool<P = BufSlice> {
    pub x: P,
    pub mask: Option<P>,
    pub out: P,
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub dtype: DType,
}

/// Mean pooling per segment of a packed token stream (the layout of
/// [`VarlenAttention`]): `out[i, :]` is the mean of rows `cu_seqlens[i] ..
/// cu_seqlens[i + 1]` of `x[tokens, dim]`, accumulated in f32; an empty
/// segment gives zeros. `C` is as in [`VarlenAttention`]: a device
/// [`BufSlice`] of `segments + 1` u32 offsets for the backends, the host
/// offsets for callers of the safe op (`Stream::segment_mean_pool`), which
/// checks and uploads them. Devices with
/// [`Capabilities::varlen_attention`] implement it.
#[derive(Clone, Copy, Debug)]
pub struct SegmentMeanPool<P = BufSlice, C = P> {
    pub x: P,
    pub cu_seqlens: C,
    pub out: P,
    pub segments: usize,
    pub dim: usize,
    pub dtype: DType,
}

/// What a device can do beyond the common boundary. The CLI and the
/// benchmark ask this instead of testing the backend kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Streams offer [`BackendStream::capture`] (CUDA graphs).
    pub graph_capture: bool,
    /// Streams offer [`BackendStream::host_fns`].
    pub host_functions: bool,
    /// Operand types the kernels accept.
    pub dtypes: Vec<DType>,
    /// Events measure device time ([`BackendEvent::elapsed_ms`]).
    pub timing: bool,
    /// Streams run [`Kernels::attention_varlen`] (packed, padding-free
    /// attention); where false, models take the padded path.
    pub varlen_attention: bool,
}

/// A device: its streams, events, memory. Implementations are shared by
/// all threads (`Send + Sync`); per-thread state lives in streams.
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;
    /// Which device of its kind (CUDA ordinal; 0 for the CPU).
    fn ordinal(&self) -> usize {
        0
    }
    /// Human-readable device name, e.g. "NVIDIA H100 80GB HBM3" or "cpu (16 threads)".
    fn device_name(&self) -> String;
    /// A new stream: an in-order queue of work, independent of other streams.
    fn new_stream(&self) -> Result<Arc<dyn BackendStream>>;
    /// A new event; `timing` enables [`BackendEvent::elapsed_ms`].
    fn new_event(&self, timing: bool) -> Result<Arc<dyn BackendEvent>>;
    /// A new allocation of `bytes` bytes. Out-of-memory must be reported as
    /// [`Error::OutOfMemory`] so the caching allocator can retry.
    fn alloc(&self, bytes: usize) -> Result<BufferId>;
    /// Give memory back to the device.
    ///
    /// # Safety
    /// `buffer` came from [`Backend::alloc`] of this backend with this
    /// `bytes`, is freed once, and no stream will touch it again (all work
    /// using it has completed).
    unsafe fn free(&self, buffer: BufferId, bytes: usize);
    /// `(free, total)` device memory in bytes, if the backend knows it.
    fn memory_info(&self) -> Option<(usize, usize)> {
        None
    }
    /// Wait for every stream of the device.
    fn synchronize(&self) -> Result<()>;
    /// Supported kernel operand types.
    fn supports(&self, dtype: DType) -> bool {
        dtype == DType::F32
    }
    /// What the device offers beyond streams, events, copies and kernels.
    fn capabilities(&self) -> Capabilities {
        Capabilities { dtypes: [DType::F32, DType::BF16, DType::F16].into_iter().filter(|d| self.supports(*d)).collect(), ..Capabilities::default() }
    }
    fn as_any(&self) -> &dyn Any;
}

/// One in-order stream of a backend: order, events, copies, and (through
/// the [`Kernels`] supertrait) the op set. Calls from several threads are
/// allowed (it is `Sync`) and are ordered in the order they reach the stream.
///
/// # Safety of the copy and kernel entry points
/// They take [`BufSlice`]s and are `unsafe`: the caller guarantees every
/// slice a call names lies inside a live allocation of this backend, is
/// large enough for the elements the descriptor describes, stays allocated
/// until the stream has passed the call, is not written by another stream
/// meanwhile, and that the output of a kernel shares no byte with any of its
/// inputs (no aliasing: a backend may build a shared and a mutable view over
/// them at once). Index operands are in range (`Gather::ids`) or well formed
/// (`VarlenAttention::cu_seqlens`: rising from 0, no segment over
/// `max_seq`). The safe op layer (`crate::ops`) checks all of it; `braid-nn`
/// only goes through it.
pub trait BackendStream: Kernels + Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    /// Block until all work enqueued so far has completed; reports the first
    /// error a kernel on this stream raised since the last synchronize.
    fn synchronize(&self) -> Result<()>;
    /// Has all work enqueued so far completed?
    fn query(&self) -> Result<bool>;
    /// Record `event` at the current end of this stream.
    fn record(&self, event: &dyn BackendEvent) -> Result<()>;
    /// Make later work on this stream wait for `event` (host does not block).
    fn wait_event(&self, event: &dyn BackendEvent) -> Result<()>;

    /// Copy `src` to `dst` (`dst.len == src.len()`). `src` is staged before
    /// return: the caller may reuse it at once.
    unsafe fn h2d(&self, src: &[u8], dst: BufSlice) -> Result<()>;
    /// Copy `src` to `dst` (`src.len == dst.len()`); returns when the bytes
    /// are in `dst` (it waits for the work ahead on this stream, not for
    /// other streams).
    unsafe fn d2h(&self, src: BufSlice, dst: &mut [u8]) -> Result<()>;
    /// Device-to-device copy of `src.len` bytes (`dst.len == src.len`).
    unsafe fn d2d(&self, src: BufSlice, dst: BufSlice) -> Result<()>;

    /// Graph capture, where the backend has it (CUDA).
    fn capture(&self) -> Option<&dyn Capture> {
        None
    }
    /// Host functions in stream order, where the backend has them.
    fn host_fns(&self) -> Option<&dyn HostFns> {
        None
    }
}

/// The op set: what every backend implements (an op a backend lacks returns
/// [`Error::Unsupported`], never a wrong answer). Contract: as for the copy
/// entry points of [`BackendStream`].
pub trait Kernels {
    unsafe fn gemm(&self, g: &Gemm) -> Result<()>;
    /// [`gemm`](Self::gemm) where `g.w` does not change while `pack` lives
    /// (a weight: tensors are immutable once made): the backend may keep a
    /// prepared form of the weight in `pack` and use it on later calls. The
    /// default ignores `pack`.
    ///
    /// # Safety
    /// As [`gemm`](Self::gemm); and `g.w`'s bytes are not written while
    /// `pack` (or a clone) is alive.
    unsafe fn gemm_weight(&self, g: &Gemm, pack: &WeightPack) -> Result<()> {
        let _ = pack;
        // SAFETY: the caller's contract is gemm's.
        unsafe { self.gemm(g) }
    }
    /// `out[i] = a[i] + b[i]` for `n` elements.
    unsafe fn add(&self, a: BufSlice, b: BufSlice, out: BufSlice, n: usize, dtype: DType) -> Result<()>;
    /// `out[i] = act(x[i])` for `n` elements.
    unsafe fn activation(&self, x: BufSlice, out: BufSlice, n: usize, act: Activation, dtype: DType) -> Result<()>;
    unsafe fn layer_norm(&self, p: &LayerNorm) -> Result<()>;
    /// Row-wise softmax of `x[rows, cols]`.
    unsafe fn softmax(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()>;
    unsafe fn attention(&self, p: &Attention) -> Result<()>;
    /// As [`attention`](Self::attention), with `bias` (f32 `[heads, seq,
    /// seq]`, shared by every batch row) added to each head's scaled scores
    /// before the softmax: MPNet's relative-position bias, ALiBi and the like.
    unsafe fn attention_bias(&self, p: &Attention, bias: BufSlice) -> Result<()>;
    /// See [`VarlenAttention`]. The caller has checked `cu_seqlens` (on the
    /// host, before upload) against the stream's length and `max_seq`.
    unsafe fn attention_varlen(&self, p: &VarlenAttention) -> Result<()> {
        let _ = p;
        Err(Error::Unsupported { backend: "this", what: "packed (varlen) attention".into() })
    }
    /// Gated linear unit: `out[r, i] = act(x[r, i]) · x[r, cols + i]` for
    /// `x[rows, 2*cols]` and `out[rows, cols]` (GeGLU with GELU, ReGLU with ReLU).
    unsafe fn glu(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()>;
    /// See [`Rope`].
    unsafe fn rope_qkv(&self, p: &Rope) -> Result<()>;
    unsafe fn gather(&self, p: &Gather) -> Result<()>;
    unsafe fn mean_pool(&self, p: &MeanPool) -> Result<()>;
    /// See [`SegmentMeanPool`]; part of the packed-batch op set that
    /// [`Capabilities::varlen_attention`] announces.
    unsafe fn segment_mean_pool(&self, p: &SegmentMeanPool) -> Result<()> {
        let _ = p;
        Err(Error::Unsupported { backend: "this", what: "segment mean pooling of packed batches".into() })
    }
    /// Row-wise `x / max(‖x‖₂, 1e-12)` of `x[rows, cols]`.
    unsafe fn l2_normalize(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()>;
    /// Convert `n` elements between f32 and bf16.
    unsafe fn cast(&self, x: BufSlice, from: DType, out: BufSlice, to: DType, n: usize) -> Result<()> {
        let _ = (x, out, n);
        Err(Error::Unsupported { backend: "this", what: format!("cast {} -> {}", from.name(), to.name()) })
    }
}

/// Graph capture on a stream (CUDA graphs): asked for with
/// [`BackendStream::capture`].
pub trait Capture {
    /// Start capturing the work enqueued on this stream into a graph.
    fn begin_capture(&self) -> Result<()>;
    /// Stop capturing; the captured work did not run and is returned as a graph.
    fn end_capture(&self) -> Result<Arc<dyn BackendGraph>>;
}

/// Host functions in stream order: asked for with [`BackendStream::host_fns`].
pub trait HostFns {
    /// Run `f` on the host when the stream reaches this point (later work on
    /// the stream waits for it), like `cuLaunchHostFunc`.
    fn host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()>;
}

/// A marker in a stream's order.
pub trait BackendEvent: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    /// Has the work before the last record completed? (`true` if never recorded.)
    fn query(&self) -> Result<bool>;
    /// Block until the work before the last record has completed, or until
    /// `timeout` passes ([`Error::Timeout`]).
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()>;
    /// Milliseconds between `earlier` and this event (both recorded, timing on).
    fn elapsed_ms(&self, earlier: &dyn BackendEvent) -> Result<f32>;
}

/// A captured sequence of work, replayed on a stream of the backend that
/// captured it.
pub trait BackendGraph: Send + Sync + 'static {
    fn launch(&self, stream: &dyn BackendStream) -> Result<()>;
}
