//! The safe op layer: every kernel and copy, as a safe method of [`Stream`]
//! over [`View`]s of live [`Buffer`]s. This is the one place that turns the
//! backends' `unsafe` entry points into safe calls; `braid-nn` uses nothing
//! else. Each call checks, before anything is enqueued:
//! - every operand is on this stream's device;
//! - every operand is large enough for what the descriptor says the kernel
//!   touches (overflow-checked);
//! - the output shares no byte with any input (no aliasing: the CPU backend
//!   builds a `&[f32]` and a `&mut [f32]` over them at once);
//! - the output may be written from this stream (its home stream, and not
//!   settled), so no other stream is reading it while the kernel writes;
//! - gather ids are in range of the table (they come from the host);
//!
//! and then orders the inputs for this stream ([`Buffer::prepare_read`]).
//! Views borrow their buffers for the call, and a buffer's memory goes back
//! to the allocator only after its home stream and every stream that read it
//! have passed their work (stream-ordered free), so the memory outlives the
//! enqueued kernel.
//!
//! Adding an op: a descriptor in `backend/mod.rs` (generic over its operand
//! type), a method on [`crate::backend::Kernels`], one method here that maps
//! each `View` field through [`Check::input`]/[`Check::output`]; see
//! `docs/backends.md`.

use crate::backend::{Activation, Attention, BufSlice, DType, Gather, Gemm, LayerNorm, MeanPool, Rope, SegmentMeanPool, VarlenAttention};
use crate::buffer::{Buffer, View};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::stream::Stream;

/// The operands of one call, collected while the backend descriptor is built.
pub struct Check<'s, 'a> {
    stream: &'s Stream,
    op: &'static str,
    inputs: Vec<View<'a>>,
    outputs: Vec<View<'a>>,
}

fn bytes(op: &str, what: &str, dims: &[usize], elem: usize) -> Result<usize> {
    dims.iter().try_fold(elem, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::InvalidArgument(format!("{op}: {what} of {dims:?} elements overflows")))
}

impl<'s, 'a> Check<'s, 'a> {
    pub fn new(stream: &'s Stream, op: &'static str) -> Self {
        Check { stream, op, inputs: Vec::new(), outputs: Vec::new() }
    }

    fn sized(&self, v: View<'a>, what: &str, dims: &[usize], elem: usize) -> Result<BufSlice> {
        if v.buf.device_id() != self.stream.device_id() {
            return Err(Error::DeviceMismatch(format!("{}: {what} is on device {} but the stream on device {}", self.op, v.buf.device_id(), self.stream.device_id())));
        }
        let need = bytes(self.op, what, dims, elem)?;
        if v.len < need {
            return Err(Error::InvalidArgument(format!("{}: {what} needs {need} bytes ({dims:?} x {elem}) but its view holds {}", self.op, v.len)));
        }
        Ok(v.raw())
    }

    /// An operand the kernel reads: `dims` elements of `elem` bytes.
    pub fn input(&mut self, v: View<'a>, what: &str, dims: &[usize], elem: usize) -> Result<BufSlice> {
        let s = self.sized(v, what, dims, elem)?;
        self.inputs.push(v);
        Ok(s)
    }

    pub fn opt_input(&mut self, v: Option<View<'a>>, what: &str, dims: &[usize], elem: usize) -> Result<Option<BufSlice>> {
        v.map(|v| self.input(v, what, dims, elem)).transpose()
    }

    /// An operand the kernel writes.
    pub fn output(&mut self, v: View<'a>, what: &str, dims: &[usize], elem: usize) -> Result<BufSlice> {
        let s = self.sized(v, what, dims, elem)?;
        v.buf.check_writable(self.stream, self.op)?;
        self.outputs.push(v);
        Ok(s)
    }

    /// The aliasing check, then stream order for the inputs.
    pub fn finish(self) -> Result<()> {
        for o in &self.outputs {
            let or = o.raw();
            for i in self.inputs.iter().chain(self.outputs.iter().filter(|x| !std::ptr::eq(*x, o))) {
                if or.overlaps(&i.raw()) {
                    return Err(Error::InvalidArgument(format!("{}: the output overlaps an operand (bytes {}..{} and {}..{} of one buffer); in-place ops are not allowed", self.op, or.offset, or.offset + or.len, i.offset, i.offset + i.len)));
                }
            }
        }
        for i in &self.inputs {
            i.buf.prepare_read(self.stream)?;
        }
        Ok(())
    }
}

/// The backend descriptor of a GEMM, each operand checked for what it touches.
fn gemm_operands<'a>(c: &mut Check<'_, 'a>, g: &Gemm<View<'a>>) -> Result<Gemm> {
    let es = g.dtype.size();
    Ok(Gemm {
        m: g.m,
        n: g.n,
        k: g.k,
        a: c.input(g.a, "a", &[g.m, g.k], es)?,
        w: c.input(g.w, "w", &[g.n, g.k], es)?,
        bias: c.opt_input(g.bias, "bias", &[g.n], es)?,
        out: c.output(g.out, "out", &[g.m, g.n], es)?,
        act: g.act,
        dtype: g.dtype,
    })
}

impl Stream {
    /// Copy `src` into the start of `dst` (staged: `src` may be reused at once).
    pub fn write(&self, dst: View<'_>, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut c = Check::new(self, "write");
        let d = c.output(dst.sub(0, src.len())?, "destination", &[src.len()], 1)?;
        c.finish()?;
        // SAFETY: `d` lies in a live buffer of this device, written only from
        // its home stream (this one); the allocator frees it stream-ordered.
        unsafe { self.raw.h2d(src, d) }
    }

    /// [`Stream::write`] of f32 values.
    pub fn write_f32(&self, dst: View<'_>, src: &[f32]) -> Result<()> {
        self.write(dst, bytemuck::cast_slice(src))
    }

    /// Copy the start of `src` into `dst`; returns when the bytes are there.
    pub fn read(&self, src: View<'_>, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let mut c = Check::new(self, "read");
        let s = c.input(src.sub(0, dst.len())?, "source", &[dst.len()], 1)?;
        c.finish()?;
        // SAFETY: `s` lies in a live buffer (borrowed for the call, which
        // waits for the copy), ordered after its writes by `finish`.
        unsafe { self.raw.d2h(s, dst) }
    }

    /// [`Stream::read`] into f32 values.
    pub fn read_f32(&self, src: View<'_>, dst: &mut [f32]) -> Result<()> {
        self.read(src, bytemuck::cast_slice_mut(dst))
    }

    /// Device-to-device copy of `src` into the start of `dst`.
    pub fn copy(&self, src: View<'_>, dst: View<'_>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut c = Check::new(self, "copy");
        let s = c.input(src, "source", &[src.len()], 1)?;
        let d = c.output(dst.sub(0, src.len())?, "destination", &[src.len()], 1)?;
        c.finish()?;
        // SAFETY: checked by `finish` (sizes, device, no overlap, order).
        unsafe { self.raw.d2d(s, d) }
    }

    pub fn gemm(&self, g: &Gemm<View<'_>>) -> Result<()> {
        let mut c = Check::new(self, "gemm");
        let d = gemm_operands(&mut c, g)?;
        c.finish()?;
        // SAFETY: `finish` checked every operand's size, device, aliasing and
        // stream order; the views keep the buffers alive for the call and the
        // stream-ordered free keeps the memory until the kernel has run.
        unsafe { self.raw.gemm(&d) }
    }

    /// [`Stream::gemm`] where `g.w` is a weight: the backend may keep a
    /// prepared form of it (the CPU's packed panels) in the weight buffer's
    /// [`Buffer::gemm_pack`] and reuse it on later calls. The weight's buffer
    /// becomes read-only (a later write to it is refused), which is what
    /// keeps the prepared form valid for as long as it lives.
    pub fn gemm_weight(&self, g: &Gemm<View<'_>>) -> Result<()> {
        let mut c = Check::new(self, "gemm");
        let d = gemm_operands(&mut c, g)?;
        c.finish()?;
        // After the checks (a refused call changes nothing), before the
        // enqueue (which is what a later write must not overtake).
        let wbuf = g.w.buffer();
        wbuf.freeze_as_weight();
        // SAFETY: as in `gemm`; and `w`'s buffer accepts no write from now on
        // (`freeze_as_weight`, checked by every op's `Check::output`), and
        // writes accepted before are ordered before this call by `finish`, so
        // `w`'s bytes do not change while the pack (owned by the buffer,
        // dropped with it) lives.
        unsafe { self.raw.gemm_weight(&d, wbuf.gemm_pack()) }
    }

    pub fn add(&self, a: View<'_>, b: View<'_>, out: View<'_>, n: usize, dtype: DType) -> Result<()> {
        let es = dtype.size();
        let mut c = Check::new(self, "add");
        let (a, b, o) = (c.input(a, "a", &[n], es)?, c.input(b, "b", &[n], es)?, c.output(out, "out", &[n], es)?);
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.add(a, b, o, n, dtype) }
    }

    pub fn activation(&self, x: View<'_>, out: View<'_>, n: usize, act: Activation, dtype: DType) -> Result<()> {
        let es = dtype.size();
        let mut c = Check::new(self, "activation");
        let (x, o) = (c.input(x, "x", &[n], es)?, c.output(out, "out", &[n], es)?);
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.activation(x, o, n, act, dtype) }
    }

    pub fn layer_norm(&self, p: &LayerNorm<View<'_>>) -> Result<()> {
        let es = p.dtype.size();
        let mut c = Check::new(self, "layer_norm");
        let d = LayerNorm {
            x: c.input(p.x, "x", &[p.rows, p.cols], es)?,
            residual: c.opt_input(p.residual, "residual", &[p.rows, p.cols], es)?,
            gamma: c.input(p.gamma, "gamma", &[p.cols], es)?,
            beta: c.input(p.beta, "beta", &[p.cols], es)?,
            out: c.output(p.out, "out", &[p.rows, p.cols], es)?,
            rows: p.rows,
            cols: p.cols,
            eps: p.eps,
            dtype: p.dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.layer_norm(&d) }
    }

    pub fn softmax(&self, x: View<'_>, out: View<'_>, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        let es = dtype.size();
        let mut c = Check::new(self, "softmax");
        let (x, o) = (c.input(x, "x", &[rows, cols], es)?, c.output(out, "out", &[rows, cols], es)?);
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.softmax(x, o, rows, cols, dtype) }
    }

    fn attention_desc<'a>(&self, c: &mut Check<'_, 'a>, p: &Attention<View<'a>>) -> Result<Attention> {
        let es = p.dtype.size();
        let d = p.heads.checked_mul(p.head_dim).ok_or_else(|| Error::InvalidArgument("attention: heads*head_dim overflows".into()))?;
        let tokens = p.batch.checked_mul(p.seq).ok_or_else(|| Error::InvalidArgument("attention: batch*seq overflows".into()))?;
        if p.row_stride < d {
            return Err(Error::InvalidArgument(format!("attention: row stride {} is less than heads*head_dim {d}", p.row_stride)));
        }
        // q/k/v span up to the last token's last element.
        let span = if tokens == 0 { 0 } else { bytes("attention", "q/k/v", &[tokens - 1, p.row_stride], 1)? + d };
        Ok(Attention {
            q: c.input(p.q, "q", &[span], es)?,
            k: c.input(p.k, "k", &[span], es)?,
            v: c.input(p.v, "v", &[span], es)?,
            row_stride: p.row_stride,
            mask: c.opt_input(p.mask, "mask", &[tokens], 4)?,
            out: c.output(p.out, "out", &[tokens, d], es)?,
            batch: p.batch,
            seq: p.seq,
            heads: p.heads,
            head_dim: p.head_dim,
            scale: p.scale,
            dtype: p.dtype,
        })
    }

    pub fn attention(&self, p: &Attention<View<'_>>) -> Result<()> {
        let mut c = Check::new(self, "attention");
        let d = self.attention_desc(&mut c, p)?;
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.attention(&d) }
    }

    pub fn attention_bias(&self, p: &Attention<View<'_>>, bias: View<'_>) -> Result<()> {
        let mut c = Check::new(self, "attention");
        let d = self.attention_desc(&mut c, p)?;
        let b = c.input(bias, "bias", &[p.heads, p.seq, p.seq], 4)?;
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.attention_bias(&d, b) }
    }

    /// Packed (varlen) attention: `p.cu_seqlens` are the host offsets of
    /// the sequences in the token stream. They are checked here (they rise
    /// from 0; `batch` is their count less one and `max_seq` their longest
    /// segment, as the descriptor says) and uploaded to the device; q/k/v
    /// and out are checked against the stream's last offset. An empty
    /// stream enqueues nothing. A device without the kernel answers
    /// [`Error::Unsupported`] (see `Capabilities::varlen_attention`).
    pub fn attention_varlen(&self, device: &Device, p: &VarlenAttention<View<'_>, &[u32]>) -> Result<()> {
        let op = "attention_varlen";
        let cu = p.cu_seqlens;
        if p.batch.checked_add(1) != Some(cu.len()) || cu.first() != Some(&0) || cu.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::InvalidArgument(format!("{op}: cu_seqlens must be batch+1 offsets (batch {}) rising from 0, got {cu:?}", p.batch)));
        }
        let longest = cu.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        if longest != p.max_seq {
            return Err(Error::InvalidArgument(format!("{op}: max_seq {} but the longest sequence of cu_seqlens has {longest} tokens", p.max_seq)));
        }
        let tokens = *cu.last().unwrap_or(&0) as usize;
        let d = p.heads.checked_mul(p.head_dim).ok_or_else(|| Error::InvalidArgument(format!("{op}: heads*head_dim overflows")))?;
        if p.row_stride < d {
            return Err(Error::InvalidArgument(format!("{op}: row stride {} is less than heads*head_dim {d}", p.row_stride)));
        }
        if tokens == 0 || d == 0 {
            return Ok(());
        }
        if device.id() != self.device_id() {
            return Err(Error::DeviceMismatch(format!("{op}: stream of device {} used with device {}", self.device_id(), device.id())));
        }
        let device_cu = Buffer::alloc(device, cu.len() * 4, self)?;
        self.write(device_cu.view(), bytemuck::cast_slice(cu))?;
        let es = p.dtype.size();
        // q/k/v span up to the last token's last element.
        let span = bytes(op, "q/k/v", &[tokens - 1, p.row_stride], 1)? + d;
        let mut c = Check::new(self, op);
        let desc = VarlenAttention {
            q: c.input(p.q, "q", &[span], es)?,
            k: c.input(p.k, "k", &[span], es)?,
            v: c.input(p.v, "v", &[span], es)?,
            row_stride: p.row_stride,
            cu_seqlens: c.input(device_cu.view(), "cu_seqlens", &[cu.len()], 4)?,
            out: c.output(p.out, "out", &[tokens, d], es)?,
            batch: p.batch,
            max_seq: p.max_seq,
            heads: p.heads,
            head_dim: p.head_dim,
            scale: p.scale,
            dtype: p.dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`; the offsets (checked above: batch+1 of them,
        // rising from 0 to `tokens`, no segment longer than max_seq) are in
        // `device_cu`, written on this stream before the kernel and freed
        // stream-ordered after it.
        unsafe { self.raw.attention_varlen(&desc) }
    }

    pub fn glu(&self, x: View<'_>, out: View<'_>, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()> {
        let es = dtype.size();
        let mut c = Check::new(self, "glu");
        let (x, o) = (c.input(x, "x", &[rows, 2, cols], es)?, c.output(out, "out", &[rows, cols], es)?);
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.glu(x, o, rows, cols, act, dtype) }
    }

    pub fn rope_qkv(&self, p: &Rope<View<'_>>) -> Result<()> {
        let es = p.dtype.size();
        let mut c = Check::new(self, "rope");
        let d = Rope {
            x: c.input(p.x, "x", &[p.rows, 3, p.heads, p.head_dim], es)?,
            out: c.output(p.out, "out", &[p.rows, 3, p.heads, p.head_dim], es)?,
            cos: c.input(p.cos, "cos", &[p.seq, p.head_dim], 4)?,
            sin: c.input(p.sin, "sin", &[p.seq, p.head_dim], 4)?,
            rows: p.rows,
            seq: p.seq,
            heads: p.heads,
            head_dim: p.head_dim,
            dtype: p.dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.rope_qkv(&d) }
    }

    /// `out[i,:] = table[ids[i],:]` for `table` `[rows, dim]`: the ids come
    /// from the host, are checked against `rows` and uploaded here.
    pub fn gather(&self, device: &Device, table: View<'_>, rows: usize, ids: &[u32], out: View<'_>, dim: usize, dtype: DType) -> Result<()> {
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
            return Err(Error::InvalidArgument(format!("gather: id {id} at position {i} is out of range for a table of {rows} rows")));
        }
        if ids.is_empty() || dim == 0 {
            return Ok(());
        }
        if device.id() != self.device_id() {
            return Err(Error::DeviceMismatch(format!("gather: stream of device {} used with device {}", self.device_id(), device.id())));
        }
        let device_ids = Buffer::alloc(device, ids.len() * 4, self)?;
        self.write(device_ids.view(), bytemuck::cast_slice(ids))?;
        let es = dtype.size();
        let mut c = Check::new(self, "gather");
        let d = Gather {
            table: c.input(table, "table", &[rows, dim], es)?,
            ids: c.input(device_ids.view(), "ids", &[ids.len()], 4)?,
            out: c.output(out, "out", &[ids.len(), dim], es)?,
            n: ids.len(),
            dim,
            dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`; every id is < rows (checked above). The id
        // buffer is freed stream-ordered, after the kernel.
        unsafe { self.raw.gather(&d) }
    }

    pub fn mean_pool(&self, p: &MeanPool<View<'_>>) -> Result<()> {
        let es = p.dtype.size();
        let mut c = Check::new(self, "mean_pool");
        let d = MeanPool {
            x: c.input(p.x, "x", &[p.batch, p.seq, p.dim], es)?,
            mask: c.opt_input(p.mask, "mask", &[p.batch, p.seq], 4)?,
            out: c.output(p.out, "out", &[p.batch, p.dim], es)?,
            batch: p.batch,
            seq: p.seq,
            dim: p.dim,
            dtype: p.dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.mean_pool(&d) }
    }

    /// Mean pooling per segment of a packed stream: `p.cu_seqlens` are the
    /// host offsets (checked here: `segments + 1` of them rising from 0 to
    /// the stream's token count, which `x` must hold) and uploaded to the
    /// device. A device without the kernel answers [`Error::Unsupported`].
    pub fn segment_mean_pool(&self, device: &Device, p: &SegmentMeanPool<View<'_>, &[u32]>) -> Result<()> {
        let op = "segment_mean_pool";
        let cu = p.cu_seqlens;
        if p.segments.checked_add(1) != Some(cu.len()) || cu.first() != Some(&0) || cu.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::InvalidArgument(format!("{op}: cu_seqlens must be segments+1 offsets (segments {}) rising from 0, got {cu:?}", p.segments)));
        }
        if p.segments == 0 || p.dim == 0 {
            return Ok(());
        }
        if device.id() != self.device_id() {
            return Err(Error::DeviceMismatch(format!("{op}: stream of device {} used with device {}", self.device_id(), device.id())));
        }
        let tokens = *cu.last().unwrap_or(&0) as usize;
        let device_cu = Buffer::alloc(device, cu.len() * 4, self)?;
        self.write(device_cu.view(), bytemuck::cast_slice(cu))?;
        let es = p.dtype.size();
        let mut c = Check::new(self, op);
        let desc = SegmentMeanPool {
            x: c.input(p.x, "x", &[tokens, p.dim], es)?,
            cu_seqlens: c.input(device_cu.view(), "cu_seqlens", &[cu.len()], 4)?,
            out: c.output(p.out, "out", &[p.segments, p.dim], es)?,
            segments: p.segments,
            dim: p.dim,
            dtype: p.dtype,
        };
        c.finish()?;
        // SAFETY: as in `gemm`; the offsets (checked above: segments+1 of
        // them, rising from 0 to `tokens`, the rows `x` holds) are in
        // `device_cu`, written on this stream before the kernel and freed
        // stream-ordered after it.
        unsafe { self.raw.segment_mean_pool(&desc) }
    }

    pub fn l2_normalize(&self, x: View<'_>, out: View<'_>, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        let es = dtype.size();
        let mut c = Check::new(self, "l2_normalize");
        let (x, o) = (c.input(x, "x", &[rows, cols], es)?, c.output(out, "out", &[rows, cols], es)?);
        c.finish()?;
        // SAFETY: as in `gemm`.
        unsafe { self.raw.l2_normalize(x, o, rows, cols, dtype) }
    }

    pub fn cast(&self, x: View<'_>, from: DType, out: View<'_>, to: DType, n: usize) -> Result<()> {
        let mut c = Check::new(self, "cast");
        let (x, o) = (c.input(x, "x", &[n], from.size())?, c.output(out, "out", &[n], to.size())?);
        c.finish()?;
        if from == to {
            // SAFETY: as in `gemm` (a plain copy of n elements).
            return unsafe { self.raw.d2d(x.sub(0, n * from.size())?, o.sub(0, n * from.size())?) };
        }
        // SAFETY: as in `gemm`.
        unsafe { self.raw.cast(x, from, o, to, n) }
    }
}
