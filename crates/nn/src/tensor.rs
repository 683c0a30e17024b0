//! [`Tensor`]: a row-major array on a device (f32, or bf16 where the device
//! supports it). Owns creation from and copies to host memory, dtype casts,
//! reshapes, and the per-op plumbing every op shares ([`Tensor::prepare`]):
//! the calling thread's current stream, device and dtype agreement, and the
//! cross-stream rules of [`Storage`].
//!
//! Every op is enqueued on the calling thread's current stream and its
//! output is allocated there. Tensors are immutable once made, so any number
//! of threads may read one at once (see `storage.rs` for why that is safe).

use crate::storage::Storage;
use braid_runtime::{DType, Device, Error, Result, Stream, View};
use std::sync::Arc;

/// A row-major tensor on a device. Cheap to clone (clones share memory).
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?})", self.shape, self.dtype.name(), self.device)
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// `bf16` from `f32`, rounding to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// `f32` from `bf16` (exact).
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// `x` rounded (to nearest even) to what `dtype` stores, back as f32: what a
/// device sees after uploading `x` in `dtype`.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::BF16 => bf16_to_f32(f32_to_bf16(x)),
        DType::F16 => half::f16::from_f32(x).to_f32(),
    }
}

impl Tensor {
    /// A new tensor of `shape` on the current stream, contents unspecified.
    pub(crate) fn empty_on(device: &Device, stream: &Stream, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if !device.supports(dtype) {
            return Err(Error::Unsupported { backend: device.kind().name(), what: format!("{} tensors", dtype.name()) });
        }
        let bytes = numel(shape).checked_mul(dtype.size()).ok_or_else(|| Error::InvalidArgument(format!("tensor of shape {shape:?} is too large")))?;
        let storage = Storage::alloc(device, bytes, stream)?;
        Ok(Tensor { storage: Arc::new(storage), shape: shape.to_vec(), dtype, device: device.clone() })
    }

    /// An f32 tensor holding `data` (row-major) with `shape`.
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != data.len() {
            return Err(Error::Shape { op: "from_slice", detail: format!("{} values do not fill shape {shape:?} ({} elements)", data.len(), numel(shape)) });
        }
        let stream = device.current_stream()?;
        let t = Tensor::empty_on(device, &stream, shape, DType::F32)?;
        // Device memory holds f32 in the host's byte order (little-endian on
        // every platform braid's backends run on).
        stream.write_f32(t.view(), data)?;
        Ok(t)
    }

    /// A tensor of `dtype` holding `data`, converted on the device if needed.
    pub fn from_slice_as(device: &Device, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::from_slice(device, data, shape)?.to_dtype(dtype)
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let stream = device.current_stream()?;
        let t = Tensor::empty_on(device, &stream, shape, dtype)?;
        let n = numel(shape) * dtype.size();
        if n > 0 {
            stream.write(t.view(), &vec![0u8; n])?;
        }
        Ok(t)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// The tensor's memory as an operand of the runtime's safe op layer.
    pub fn view(&self) -> View<'_> {
        self.storage.view()
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The same memory with another shape of the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::Shape { op: "reshape", detail: format!("cannot view {:?} ({} elements) as {shape:?} ({} elements)", self.shape, self.numel(), numel(shape)) });
        }
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec(), dtype: self.dtype, device: self.device.clone() })
    }

    /// The calling thread's stream, after checking every input is on
    /// `device`. (The runtime's op layer makes the stream ready to read each
    /// input, see [`Storage`].)
    pub(crate) fn prepare(device: &Device, inputs: &[&Tensor]) -> Result<Stream> {
        let stream = device.current_stream()?;
        for t in inputs {
            if !t.device.same_as(device) {
                return Err(Error::DeviceMismatch(format!("tensor on {} used with tensors on {}", t.device.label(), device.label())));
            }
        }
        Ok(stream)
    }

    /// Wait until this tensor's contents are complete, then let every stream
    /// read it without further waits. Model loading calls this (through
    /// [`settle_all`]) so that weights shared across threads cost nothing.
    pub fn settle(&self) -> Result<()> {
        settle_all(&[self])
    }

    /// A copy converted to `dtype` (f32 <-> bf16), or `self` if it already is.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let stream = Tensor::prepare(&self.device, &[self])?;
        let out = Tensor::empty_on(&self.device, &stream, &self.shape, dtype)?;
        if self.numel() > 0 {
            stream.cast(self.view(), self.dtype, out.view(), dtype, self.numel())?;
        }
        Ok(out)
    }

    /// The contents as f32 on the host (waits for the work that makes them).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let t = self.to_dtype(DType::F32)?;
        let stream = Tensor::prepare(&t.device, &[&t])?;
        let mut out = vec![0f32; t.numel()];
        stream.read_f32(t.view(), &mut out)?;
        Ok(out)
    }
}

/// Synchronise the calling thread's stream (where the tensors were just
/// made) and the home stream of each tensor, then mark them settled: from
/// then on any stream reads them without waiting.
pub fn settle_all(tensors: &[&Tensor]) -> Result<()> {
    let Some(first) = tensors.first() else { return Ok(()) };
    let device = first.device.clone();
    device.current_stream()?.synchronize()?;
    let mut done: Vec<usize> = Vec::new();
    for t in tensors {
        let home = t.storage.home();
        if !done.contains(&home) {
            t.device.stream(home)?.synchronize()?;
            done.push(home);
        }
        t.storage.mark_settled();
    }
    Ok(())
}

/// A shape error for `op` naming both shapes.
pub(crate) fn shape_err(op: &'static str, what: impl Into<String>) -> Error {
    Error::Shape { op, detail: what.into() }
}

/// Check two dtypes agree.
pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype != b.dtype {
        return Err(Error::InvalidArgument(format!("{op}: dtypes differ: {} {:?} and {} {:?}", a.dtype.name(), a.shape, b.dtype.name(), b.shape)));
    }
    Ok(())
}
