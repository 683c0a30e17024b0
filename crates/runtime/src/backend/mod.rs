//! The backend trait: everything a device must provide (streams, events, raw
//! memory, copies, the kernels the ops need) and nothing about pooling,
//! caching or scheduling, which live above it in this crate.
//!
//! Owns: [`Backend`], [`BackendStream`], [`BackendEvent`], [`BackendGraph`] and
//! the kernel descriptors ([`Gemm`], [`LayerNorm`], [`Attention`], ...). All
//! buffers are raw device addresses ([`DevicePtr`]); on the CPU backend they are
//! host addresses. Every kernel entry point is *enqueued* on the stream it is
//! called on and returns before it runs: memory named by a descriptor must stay
//! allocated until the stream has passed the kernel, which the caching
//! allocator's stream-ordered reuse guarantees for tensors.

pub mod cpu;
#[cfg(all(feature = "cuda", not(loom)))]
pub mod cuda;

use crate::error::{Error, Result};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// A device address. On the CPU backend this is a host pointer cast to `u64`.
pub type DevicePtr = u64;

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
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
        }
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
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: DevicePtr,
    pub w: DevicePtr,
    pub bias: Option<DevicePtr>,
    pub out: DevicePtr,
    pub act: Activation,
    pub dtype: DType,
}

/// A slot for a backend's prepared form of one GEMM weight (the CPU
/// backend's packed panels), passed to [`BackendStream::gemm_weight`]. It
/// belongs to the weight's memory, not to an address: the tensor layer keeps
/// one per allocation (`braid_nn`'s `Storage`), made empty with it and
/// dropped with it, so memory the allocator hands out again comes with a new,
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
pub struct LayerNorm {
    pub x: DevicePtr,
    pub residual: Option<DevicePtr>,
    pub gamma: DevicePtr,
    pub beta: DevicePtr,
    pub out: DevicePtr,
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
pub struct Attention {
    pub q: DevicePtr,
    pub k: DevicePtr,
    pub v: DevicePtr,
    pub row_stride: usize,
    pub mask: Option<DevicePtr>,
    pub out: DevicePtr,
    pub batch: usize,
    pub seq: usize,
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
pub struct Rope {
    pub x: DevicePtr,
    pub out: DevicePtr,
    pub cos: DevicePtr,
    pub sin: DevicePtr,
    pub rows: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

/// `out[i,:] = table[ids[i],:]`; `ids` are `u32`, each checked against `rows`
/// before launch by the caller.
#[derive(Clone, Copy, Debug)]
pub struct Gather {
    pub table: DevicePtr,
    pub ids: DevicePtr,
    pub out: DevicePtr,
    pub n: usize,
    pub dim: usize,
    pub dtype: DType,
}

/// Mean over the sequence of `x[batch, seq, dim]`, counting only positions
/// where `mask[batch, seq]` (f32) is non-zero; `out` is `[batch, dim]`.
#[derive(Clone, Copy, Debug)]
pub struct MeanPool {
    pub x: DevicePtr,
    pub mask: Option<DevicePtr>,
    pub out: DevicePtr,
    pub batch: usize,
    pub seq: usize,
    pub dim: usize,
    pub dtype: DType,
}

/// A device: its streams, events, raw memory. Implementations are shared by
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
    /// Raw device memory. Out-of-memory must be reported as
    /// [`Error::OutOfMemory`] so the caching allocator can retry.
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    /// Give memory back to the device.
    ///
    /// # Safety
    /// `ptr` came from [`Backend::alloc`] of this backend with this `bytes`, is
    /// freed once, and no stream will touch it again (all work using it has
    /// completed).
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize);
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
    fn as_any(&self) -> &dyn Any;
}

/// One in-order stream of a backend. Calls from several threads are allowed
/// (it is `Sync`) and are ordered in the order they reach the stream.
///
/// # Safety of the copy and kernel entry points
/// They take raw [`DevicePtr`]s and are `unsafe`: the caller guarantees every
/// pointer a call names was allocated on this backend, is large enough for the
/// elements the descriptor describes, and stays allocated until the stream has
/// passed the call (`braid-nn`'s tensors hold this by construction: their
/// memory comes from the stream-ordered caching allocator). Index operands
/// (`Gather::ids`) are in range.
pub trait BackendStream: Send + Sync + 'static {
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

    /// Copy `src` to device memory at `dst`. `src` is staged before return:
    /// the caller may reuse it at once.
    unsafe fn h2d(&self, src: &[u8], dst: DevicePtr) -> Result<()>;
    /// Copy device memory to `dst`; returns when the bytes are in `dst`
    /// (it waits for the work ahead on this stream, not for other streams).
    unsafe fn d2h(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Device-to-device copy of `bytes` bytes.
    unsafe fn d2d(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()>;

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
    unsafe fn add(&self, a: DevicePtr, b: DevicePtr, out: DevicePtr, n: usize, dtype: DType) -> Result<()>;
    /// `out[i] = act(x[i])` for `n` elements.
    unsafe fn activation(&self, x: DevicePtr, out: DevicePtr, n: usize, act: Activation, dtype: DType) -> Result<()>;
    unsafe fn layer_norm(&self, p: &LayerNorm) -> Result<()>;
    /// Row-wise softmax of `x[rows, cols]`.
    unsafe fn softmax(&self, x: DevicePtr, out: DevicePtr, rows: usize, cols: usize, dtype: DType) -> Result<()>;
    unsafe fn attention(&self, p: &Attention) -> Result<()>;
    /// As [`attention`](Self::attention), with `bias` (f32 `[heads, seq,
    /// seq]`, shared by every batch row) added to each head's scaled scores
    /// before the softmax: MPNet's relative-position bias, ALiBi and the like.
    unsafe fn attention_bias(&self, p: &Attention, bias: DevicePtr) -> Result<()>;
    /// Gated linear unit: `out[r, i] = act(x[r, i]) · x[r, cols + i]` for
    /// `x[rows, 2*cols]` and `out[rows, cols]` (GeGLU with GELU, ReGLU with ReLU).
    unsafe fn glu(&self, x: DevicePtr, out: DevicePtr, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()>;
    /// See [`Rope`].
    unsafe fn rope_qkv(&self, p: &Rope) -> Result<()>;
    unsafe fn gather(&self, p: &Gather) -> Result<()>;
    unsafe fn mean_pool(&self, p: &MeanPool) -> Result<()>;
    /// Row-wise `x / max(‖x‖₂, 1e-12)` of `x[rows, cols]`.
    unsafe fn l2_normalize(&self, x: DevicePtr, out: DevicePtr, rows: usize, cols: usize, dtype: DType) -> Result<()>;
    /// Convert `n` elements between f32 and bf16.
    unsafe fn cast(&self, x: DevicePtr, from: DType, out: DevicePtr, to: DType, n: usize) -> Result<()> {
        let _ = (x, out, n);
        if from == to {
            return Ok(());
        }
        Err(Error::Unsupported { backend: "this", what: format!("cast {} -> {}", from.name(), to.name()) })
    }

    /// Run `f` on the host when the stream reaches this point (later work on
    /// the stream waits for it), like `cuLaunchHostFunc`.
    fn host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()> {
        let _ = f;
        Err(Error::Unsupported { backend: "this", what: "host functions".into() })
    }

    /// Start capturing the work enqueued on this stream into a graph.
    fn begin_capture(&self) -> Result<()> {
        Err(Error::Unsupported { backend: "this", what: "graph capture".into() })
    }
    /// Stop capturing; the captured work did not run and is returned as a graph.
    fn end_capture(&self) -> Result<Arc<dyn BackendGraph>> {
        Err(Error::Unsupported { backend: "this", what: "graph capture".into() })
    }
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

/// A captured sequence of work, replayed on a stream.
pub trait BackendGraph: Send + Sync + 'static {
    fn launch(&self, stream: &dyn BackendStream) -> Result<()>;
}
