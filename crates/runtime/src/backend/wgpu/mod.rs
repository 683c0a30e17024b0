//! The wgpu backend: Vulkan (Linux, Windows, Android), Metal (Apple), DX12
//! (Windows) through the `wgpu` crate, kernels in WGSL (`shaders/`), f32.
//! Owns the adapter and its one device and queue, the buffer table behind
//! [`BufferId`]s, the compiled pipelines, braid's streams and events over
//! the one queue, and the device's poison state.
//!
//! What a stream is here (see docs/backends.md): wgpu gives a device one
//! queue. A [`WgpuStream`] is an ordered sequence of command buffers: its
//! copies and kernels are encoded into the stream's open command encoder
//! (under the stream's own lock, so threads on different streams encode in
//! parallel), and the encoder is submitted to the queue when the stream must
//! make progress visible (`synchronize`, `query`, an event `record`, a
//! read-back) or after [`MAX_PENDING`] ops. An event is the submission index
//! of the stream's last submission plus a flag set by
//! `Queue::on_submitted_work_done`. Because the queue executes submissions in
//! order, `wait_event` needs no device work: the waited-for submission was
//! made before any later submission of the waiting stream. The guarantee
//! that differs from CUDA: streams do not overlap on the device (one queue),
//! so they give concurrency of host-side encoding, not of kernels.
//!
//! Errors: wgpu reports validation errors and out-of-memory through the
//! device's uncaptured-error handler, and device loss through a callback;
//! both poison the device (every later call fails with
//! [`Error::DevicePoisoned`]), as a sticky CUDA error does. Nothing here is
//! Linux-specific: the Metal path compiles in principle but is unverified on
//! Apple hardware.

use super::{Activation, Attention, Backend, BackendEvent, BackendKind, BackendStream, BufSlice, BufferId, Capabilities, DType, Gather, Gemm, Kernels, LayerNorm, MeanPool, Rope};
use crate::error::{Error, Result};
use std::any::Any;
use std::collections::HashMap;
use super::done_flag::DoneFlag;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use wgpu::util::DeviceExt;

pub mod profile;
pub use profile::{counters, report as profile_report, Counters};

/// Ops encoded on a stream before it is submitted without being asked to.
pub const MAX_PENDING: usize = 64;

const COMMON: &str = include_str!("shaders/common.wgsl");

/// One WGSL source file and the entry points it holds.
struct Source {
    file: &'static str,
    text: &'static str,
    /// For a file compiled per size class: the constants prepended for
    /// class `v` (see [`WgpuStream::dispatch_v`]).
    defines: Option<fn(u32) -> String>,
}

const ELEMENTWISE: Source = Source { file: "elementwise", text: include_str!("shaders/elementwise.wgsl"), defines: None };
const GEMM: Source = Source { file: "gemm", text: include_str!("shaders/gemm.wgsl"), defines: None };
const ROWS: Source = Source { file: "rows", text: include_str!("shaders/rows.wgsl"), defines: None };
const ATTENTION: Source = Source { file: "attention", text: include_str!("shaders/attention.wgsl"), defines: Some(attention_defines) };

/// Attention's compile-time sizes for head_dim capacity `hd` (16, 32, 64 or
/// 128): K and V tiles of 1024 floats each (8 KiB, well inside the 16 KiB
/// of workgroup memory every adapter has).
fn attention_defines(hd: u32) -> String {
    format!("const HD4: u32 = {}u;\nconst TK: u32 = {}u;\nconst TILE4: u32 = {}u;\n", hd / 4, 1024 / hd, 256)
}
const GATHER: Source = Source { file: "gather", text: include_str!("shaders/gather.wgsl"), defines: None };
const POOL: Source = Source { file: "pool", text: include_str!("shaders/pool.wgsl"), defines: None };

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "wgpu", reason: reason.into() }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported { backend: "wgpu", what: what.into() }
}

fn f32_only(dtype: DType) -> Result<()> {
    if dtype == DType::F32 {
        Ok(())
    } else {
        Err(unsupported(format!("{} kernels (f32 only)", dtype.name())))
    }
}

/// The activation code the shaders' `act` switches on.
fn act_code(a: Activation) -> u32 {
    match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::GeluErf => 2,
        Activation::GeluTanh => 3,
        Activation::Silu => 4,
    }
}

/// An adapter as `braid info` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    /// "Vulkan", "Metal", "Dx12", "Gl".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu" (lavapipe), ...
    pub device_type: String,
    pub driver: String,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // GL is not offered to braid: its compute support is too partial.
    desc.backends = desc.backends & (wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12);
    wgpu::Instance::new(desc)
}

fn adapters(inst: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu finds (Vulkan, Metal, DX12).
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let i = a.get_info();
            AdapterSummary { index, name: i.name, backend: format!("{:?}", i.backend), device_type: format!("{:?}", i.device_type), driver: format!("{} {}", i.driver, i.driver_info).trim().to_string() }
        })
        .collect()
}

/// Index of the adapter `auto` prefers: the first discrete GPU, if any.
pub fn discrete_adapter() -> Option<usize> {
    list_adapters().into_iter().find(|a| a.device_type == "DiscreteGpu").map(|a| a.index)
}

/// A compute pipeline and its bind group layout.
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Bytes of kernel parameters: every shader's `P` struct is at most 16 words.
const PARAM_BYTES: u32 = 64;

/// A cached bind group's key: the pipeline (file, entry point, size class)
/// and the buffer ids bound at bindings 1.. (0 for the dummy buffer bound
/// where an operand is absent).
type BindKey = (&'static str, &'static str, u32, [u64; 8]);

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    buffers: Mutex<HashMap<u64, wgpu::Buffer>>,
    next_id: AtomicU64,
    pipelines: Mutex<HashMap<(&'static str, &'static str, u32), Arc<Pipeline>>>,
    /// Bind groups by (entry point, buffers): the caching allocator hands the
    /// same buffers out forward after forward, so a model's dispatches hit.
    /// Entries naming a buffer go when it is freed ([`Backend::free`]).
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// Kernel parameters travel as immediates (Vulkan push constants, Metal
    /// `setBytes`, DX12 root constants) where the adapter has them, else in
    /// a uniform buffer made per dispatch (slow: a buffer and a bind group
    /// each).
    immediates: bool,
    /// The first fatal error (validation, out of memory, device lost).
    poison: Arc<OnceLock<String>>,
    label: String,
    /// Bound where an optional operand is absent.
    dummy: wgpu::Buffer,
    max_buffer: u64,
    max_binding: u64,
}

impl Shared {
    fn check(&self) -> Result<()> {
        match self.poison.get() {
            Some(cause) => Err(Error::DevicePoisoned { device: self.label.clone(), cause: cause.clone() }),
            None => Ok(()),
        }
    }

    fn buffer(&self, id: BufferId) -> Result<wgpu::Buffer> {
        crate::sync_std_lock(&self.buffers).get(&id.raw()).cloned().ok_or_else(|| Error::InvalidArgument(format!("buffer {id:?} is not a live allocation of {}", self.label)))
    }

    fn pipeline(&self, src: &Source, entry: &'static str, variant: u32, inputs: usize) -> Result<Arc<Pipeline>> {
        if let Some(p) = crate::sync_std_lock(&self.pipelines).get(&(src.file, entry, variant)) {
            return Ok(p.clone());
        }
        let defines = src.defines.map_or(String::new(), |f| f(variant));
        let mut text = format!("{defines}{COMMON}\n{}", src.text);
        if self.immediates {
            // The same `P` struct, as immediate data instead of a uniform.
            text = text.replace("@group(0) @binding(0) var<uniform> p: P;", "var<immediate> p: P;");
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(src.file), source: wgpu::ShaderSource::Wgsl(text.into()) });
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Storage { read_only }, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut entries = Vec::new();
        if !self.immediates {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer { ty: wgpu::BufferBindingType::Uniform, has_dynamic_offset: false, min_binding_size: None },
                count: None,
            });
        }
        for i in 0..inputs {
            entries.push(storage(i as u32 + 1, true));
        }
        entries.push(storage(inputs as u32 + 1, false));
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor { label: Some(entry), bind_group_layouts: &[Some(&layout)], immediate_size: if self.immediates { PARAM_BYTES } else { 0 } });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        self.check()?;
        let p = Arc::new(Pipeline { pipeline, layout });
        Ok(crate::sync_std_lock(&self.pipelines).entry((src.file, entry, variant)).or_insert(p).clone())
    }
}

/// One adapter as a braid device.
pub struct WgpuBackend {
    sh: Arc<Shared>,
    ordinal: usize,
    name: String,
    streams: Mutex<Vec<Weak<WgpuStream>>>,
}

/// Open adapter `ordinal` (in [`list_adapters`] order).
pub fn try_new(ordinal: usize) -> Result<Arc<WgpuBackend>> {
    let inst = instance();
    let all = adapters(&inst);
    if all.is_empty() {
        return Err(unavailable("no wgpu adapter (no Vulkan, Metal or DX12 driver found; on Debian, `apt-get install mesa-vulkan-drivers` gives the software one)"));
    }
    let adapter = all.into_iter().nth(ordinal).ok_or_else(|| unavailable(format!("wgpu:{ordinal}: there is no adapter {ordinal}")))?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    let immediates = adapter.features().contains(wgpu::Features::IMMEDIATES) && limits.max_immediate_size >= PARAM_BYTES;
    let desc = wgpu::DeviceDescriptor {
        label: Some("braid"),
        required_features: if immediates { wgpu::Features::IMMEDIATES } else { wgpu::Features::empty() },
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| unavailable(format!("wgpu:{ordinal} ({}): request_device failed: {e}", info.name)))?;
    let label = format!("wgpu:{ordinal}");
    let poison: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let p = poison.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let _ = p.set(format!("wgpu error: {e}"));
    }));
    let p = poison.clone();
    device.set_device_lost_callback(move |reason, msg| {
        let _ = p.set(format!("device lost ({reason:?}): {msg}"));
    });
    let dummy = device.create_buffer(&wgpu::BufferDescriptor { label: Some("dummy"), size: 16, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    let name = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
    let sh = Arc::new(Shared {
        device,
        queue,
        buffers: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        pipelines: Mutex::new(HashMap::new()),
        bind_groups: Mutex::new(HashMap::new()),
        immediates,
        poison,
        label,
        dummy,
        max_buffer: limits.max_buffer_size,
        max_binding: limits.max_storage_buffer_binding_size as u64,
    });
    Ok(Arc::new(WgpuBackend { sh, ordinal, name, streams: Mutex::new(Vec::new()) }))
}

impl WgpuBackend {
    /// Make the device fail as a lost device does (tests and drills).
    pub fn lose_device_for_test(&self) {
        self.sh.device.destroy();
        let _ = self.sh.poison.set("device destroyed (lose_device_for_test)".into());
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn ordinal(&self) -> usize {
        self.ordinal
    }
    fn device_name(&self) -> String {
        self.name.clone()
    }
    fn new_stream(&self) -> Result<Arc<dyn BackendStream>> {
        self.sh.check()?;
        let s = Arc::new(WgpuStream { sh: self.sh.clone(), st: Mutex::new(StreamState::default()) });
        let mut all = crate::sync_std_lock(&self.streams);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&s));
        Ok(s)
    }
    fn new_event(&self, _timing: bool) -> Result<Arc<dyn BackendEvent>> {
        Ok(Arc::new(WgpuEvent { sh: self.sh.clone(), at: Mutex::new(None) }))
    }
    fn alloc(&self, bytes: usize) -> Result<BufferId> {
        self.sh.check()?;
        let size = (bytes.max(4) as u64).div_ceil(4) * 4;
        if size > self.sh.max_buffer || size > self.sh.max_binding {
            return Err(Error::OutOfMemory {
                device: self.sh.label.clone(),
                requested: bytes,
                reserved: 0,
                allocated: 0,
                detail: format!(" (the adapter's largest buffer binding is {} bytes)", self.sh.max_binding.min(self.sh.max_buffer)),
            });
        }
        let scope = self.sh.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.sh.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory { device: self.sh.label.clone(), requested: bytes, reserved: 0, allocated: 0, detail: format!(" ({e})") });
        }
        // Relaxed: only uniqueness of the id matters.
        let id = self.sh.next_id.fetch_add(1, Ordering::Relaxed);
        crate::sync_std_lock(&self.sh.buffers).insert(id, buf);
        Ok(BufferId::from_raw(id))
    }
    unsafe fn free(&self, buffer: BufferId, _bytes: usize) {
        // wgpu keeps the memory alive until submitted work using it is done;
        // the contract says there is none.
        crate::sync_std_lock(&self.sh.buffers).remove(&buffer.raw());
        crate::sync_std_lock(&self.sh.bind_groups).retain(|k, _| !k.3.contains(&buffer.raw()));
    }
    fn synchronize(&self) -> Result<()> {
        let streams: Vec<_> = crate::sync_std_lock(&self.streams).iter().filter_map(|w| w.upgrade()).collect();
        for s in streams {
            s.synchronize()?;
        }
        self.sh.check()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { graph_capture: false, host_functions: false, dtypes: vec![DType::F32], timing: false, varlen_attention: false }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The last submission of a stream: its index and whether it has completed.
#[derive(Clone)]
struct Submitted {
    index: wgpu::SubmissionIndex,
    done: DoneFlag,
}

#[derive(Default)]
struct StreamState {
    /// The open compute pass on `encoder`: consecutive kernels share one
    /// pass (wgpu orders each dispatch's reads after earlier writes inside
    /// it). Ended before a copy and before the encoder is finished. Declared
    /// before `encoder` so that it is dropped first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    pending: usize,
    last: Option<Submitted>,
}

/// A braid stream on the device's one queue: an ordered sequence of
/// command buffers (see the module docs).
pub struct WgpuStream {
    sh: Arc<Shared>,
    st: Mutex<StreamState>,
}

impl WgpuStream {
    /// Encode `f` on this stream's open encoder, submitting after
    /// [`MAX_PENDING`] ops.
    fn encode(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        self.sh.check()?;
        let mut st = crate::sync_std_lock(&self.st);
        st.pass = None;
        let enc = st.encoder.get_or_insert_with(|| self.sh.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("braid stream") }));
        f(enc);
        st.pending += 1;
        if st.pending >= MAX_PENDING {
            self.submit(&mut st);
        }
        Ok(())
    }

    /// Record a kernel into this stream's open compute pass (opening the
    /// encoder and the pass if needed), submitting after [`MAX_PENDING`] ops.
    fn encode_kernel(&self, f: impl FnOnce(&mut wgpu::ComputePass<'static>)) -> Result<()> {
        self.sh.check()?;
        let mut st = crate::sync_std_lock(&self.st);
        let st = &mut *st;
        if st.pass.is_none() {
            let enc = st.encoder.get_or_insert_with(|| self.sh.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("braid stream") }));
            st.pass = Some(enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("braid kernels"), timestamp_writes: None }).forget_lifetime());
        }
        f(st.pass.as_mut().expect("opened above"));
        st.pending += 1;
        if st.pending >= MAX_PENDING {
            self.submit(st);
        }
        Ok(())
    }

    /// Submit the open encoder (if any); the stream's last submission.
    fn submit(&self, st: &mut StreamState) -> Option<Submitted> {
        // The pass must end before its encoder finishes.
        st.pass = None;
        if let Some(enc) = st.encoder.take() {
            profile::SUBMITS.add(1);
            let index = self.sh.queue.submit([enc.finish()]);
            let done = DoneFlag::new();
            let d = done.clone();
            self.sh.queue.on_submitted_work_done(move || d.set());
            st.last = Some(Submitted { index, done });
            st.pending = 0;
        }
        st.last.clone()
    }

    fn flush(&self) -> Option<Submitted> {
        let mut st = crate::sync_std_lock(&self.st);
        self.submit(&mut st)
    }

    fn wait(&self, s: &Submitted, timeout: Option<Duration>) -> Result<()> {
        if s.done.is_set() {
            return self.sh.check();
        }
        wait_on(&self.sh, s, timeout)
    }

    /// Bind `inputs` (read-only) and `out` (written), with `params` as the
    /// uniform, and dispatch `groups` workgroups of `entry`.
    fn dispatch(&self, src: &Source, entry: &'static str, params: &[u32], inputs: &[Option<BufSlice>], out: BufSlice, groups: (u32, u32, u32)) -> Result<()> {
        self.dispatch_v(src, entry, 0, params, inputs, out, groups)
    }

    /// [`Self::dispatch`] of size class `variant` of a file compiled per
    /// class (its `defines` give the constants; 0 for other files).
    #[allow(clippy::too_many_arguments)]
    fn dispatch_v(&self, src: &Source, entry: &'static str, variant: u32, params: &[u32], inputs: &[Option<BufSlice>], out: BufSlice, groups: (u32, u32, u32)) -> Result<()> {
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        let pipe = self.sh.pipeline(src, entry, variant, inputs.len())?;
        if params.len() * 4 > PARAM_BYTES as usize {
            return Err(Error::InvalidArgument(format!("{entry}: {} kernel parameters (at most {})", params.len(), PARAM_BYTES / 4)));
        }
        if inputs.len() + 1 > 8 {
            return Err(Error::InvalidArgument(format!("{entry}: {} operands (at most 8)", inputs.len() + 1)));
        }
        if inputs.iter().flatten().any(|s| s.buffer == out.buffer) {
            return Err(unsupported(format!("{entry}: the output shares a buffer with an input")));
        }
        // Every shader's parameter struct is at most 16 words: pad to that,
        // so the data is never smaller than the struct.
        let mut p = [0u32; PARAM_BYTES as usize / 4];
        p[..params.len()].copy_from_slice(params);
        let ids: Vec<u64> = inputs.iter().map(|s| s.map_or(0, |s| s.buffer.raw())).chain([out.buffer.raw()]).collect();
        let bg = if self.sh.immediates {
            let mut key: BindKey = (src.file, entry, variant, [0; 8]);
            key.3[..ids.len()].copy_from_slice(&ids);
            let cached = crate::sync_std_lock(&self.sh.bind_groups).get(&key).cloned();
            match cached {
                Some(bg) => bg,
                None => {
                    let bg = self.bind_group(&pipe, entry, &ids, None)?;
                    crate::sync_std_lock(&self.sh.bind_groups).insert(key, bg.clone());
                    bg
                }
            }
        } else {
            profile::UNIFORM_BUFFERS.add(1);
            let ubuf = self.sh.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("params"), contents: bytemuck::cast_slice(&p), usage: wgpu::BufferUsages::UNIFORM });
            self.bind_group(&pipe, entry, &ids, Some(&ubuf))?
        };
        profile::DISPATCHES.add(1);
        let immediates = self.sh.immediates;
        let t0 = profile::enabled().then(std::time::Instant::now);
        self.encode_kernel(|pass| {
            pass.set_pipeline(&pipe.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            if immediates {
                pass.set_immediates(0, bytemuck::cast_slice(&p));
            }
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        })?;
        if let Some(t0) = t0 {
            // Profile mode: this kernel alone, to completion.
            if let Some(s) = self.flush() {
                self.wait(&s, None)?;
            }
            profile::record(src.file, entry, t0.elapsed());
        }
        Ok(())
    }

    /// A bind group for `ids` (buffer ids at bindings 1.., 0 for the dummy)
    /// and, without immediates, the uniform `params` at binding 0.
    fn bind_group(&self, pipe: &Pipeline, entry: &'static str, ids: &[u64], params: Option<&wgpu::Buffer>) -> Result<wgpu::BindGroup> {
        let mut bufs: Vec<wgpu::Buffer> = Vec::with_capacity(ids.len());
        {
            let table = crate::sync_std_lock(&self.sh.buffers);
            for &id in ids {
                bufs.push(match id {
                    0 => self.sh.dummy.clone(),
                    id => table.get(&id).cloned().ok_or_else(|| Error::InvalidArgument(format!("buffer {id} is not a live allocation of {}", self.sh.label)))?,
                });
            }
        }
        let mut entries = Vec::with_capacity(bufs.len() + 1);
        if let Some(u) = params {
            entries.push(wgpu::BindGroupEntry { binding: 0, resource: u.as_entire_binding() });
        }
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        profile::BIND_GROUPS.add(1);
        Ok(self.sh.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(entry), layout: &pipe.layout, entries: &entries }))
    }
}

/// Element offset of an operand (kernels index whole buffers).
fn el(s: BufSlice) -> Result<u32> {
    if s.offset % 4 != 0 {
        return Err(unsupported(format!("an operand at byte offset {} (wgpu kernels need 4-byte aligned operands)", s.offset)));
    }
    u32::try_from(s.offset / 4).map_err(|_| unsupported("an operand beyond 16 GiB"))
}

fn opt_el(s: Option<BufSlice>) -> Result<u32> {
    s.map_or(Ok(0), el)
}

fn u(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} = {v} exceeds u32 on wgpu")))
}

/// Workgroups for `n` items of `size` per group, as a 2-D grid (x at most 65535).
fn grid(n: usize, size: usize) -> Result<(u32, u32, u32)> {
    let groups = n.div_ceil(size);
    let x = groups.min(65535);
    let y = groups.div_ceil(65535.max(1));
    if y > 65535 {
        return Err(Error::InvalidArgument(format!("{n} elements exceed the wgpu dispatch grid")));
    }
    Ok((u(x, "groups")?, u(y, "groups")?, if groups == 0 { 0 } else { 1 }))
}

fn wait_on(sh: &Shared, s: &Submitted, timeout: Option<Duration>) -> Result<()> {
    profile::WAITS.add(1);
    match sh.device.poll(wgpu::PollType::Wait { submission_index: Some(s.index.clone()), timeout }) {
        Ok(_) => {}
        Err(wgpu::PollError::Timeout) => return Err(Error::Timeout(timeout.unwrap_or_default())),
        Err(e) => {
            let _ = sh.poison.set(format!("poll failed: {e}"));
        }
    }
    sh.check()
}

impl BackendStream for WgpuStream {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn synchronize(&self) -> Result<()> {
        match self.flush() {
            Some(s) => self.wait(&s, None),
            None => self.sh.check(),
        }
    }
    fn query(&self) -> Result<bool> {
        self.sh.check()?;
        let Some(s) = self.flush() else { return Ok(true) };
        if s.done.is_set() {
            return Ok(true);
        }
        let _ = self.sh.device.poll(wgpu::PollType::Poll);
        Ok(s.done.is_set())
    }
    fn record(&self, event: &dyn BackendEvent) -> Result<()> {
        let ev = event.as_any().downcast_ref::<WgpuEvent>().ok_or_else(|| Error::DeviceMismatch("event of another backend recorded on a wgpu stream".into()))?;
        if !Arc::ptr_eq(&ev.sh, &self.sh) {
            return Err(Error::DeviceMismatch("event of another wgpu device".into()));
        }
        self.sh.check()?;
        *crate::sync_std_lock(&ev.at) = self.flush();
        Ok(())
    }
    fn wait_event(&self, event: &dyn BackendEvent) -> Result<()> {
        let ev = event.as_any().downcast_ref::<WgpuEvent>().ok_or_else(|| Error::DeviceMismatch("event of another backend waited on by a wgpu stream".into()))?;
        if !Arc::ptr_eq(&ev.sh, &self.sh) {
            return Err(Error::DeviceMismatch("event of another wgpu device".into()));
        }
        // The event's submission is already on the queue (record submits),
        // and the queue runs submissions in order: everything this stream
        // submits from now on runs after it. Nothing to encode.
        self.sh.check()
    }
    unsafe fn h2d(&self, src: &[u8], dst: BufSlice) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if src.len() > dst.len {
            return Err(Error::InvalidArgument(format!("h2d of {} bytes into {}", src.len(), dst.len)));
        }
        if src.len() % 4 != 0 || dst.offset % 4 != 0 {
            return Err(unsupported(format!("a copy of {} bytes at offset {} (wgpu copies whole 4-byte words)", src.len(), dst.offset)));
        }
        let d = self.sh.buffer(dst.buffer)?;
        // Staged now (the caller may reuse `src`), copied in stream order.
        profile::STAGING_BUFFERS.add(1);
        let staging = self.sh.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("h2d"), contents: src, usage: wgpu::BufferUsages::COPY_SRC });
        let len = src.len() as u64;
        self.encode(|enc| enc.copy_buffer_to_buffer(&staging, 0, &d, dst.offset as u64, len))
    }
    unsafe fn d2h(&self, src: BufSlice, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if dst.len() > src.len {
            return Err(Error::InvalidArgument(format!("d2h of {} bytes from {}", dst.len(), src.len)));
        }
        if src.offset % 4 != 0 {
            return Err(unsupported(format!("a read-back at byte offset {} (wgpu copies whole 4-byte words)", src.offset)));
        }
        let s = self.sh.buffer(src.buffer)?;
        // Whole words: the allocation is a whole number of words, so rounding
        // the length up stays inside it.
        let len = (dst.len() as u64).div_ceil(4) * 4;
        if src.offset as u64 + len > s.size() {
            return Err(Error::InvalidArgument(format!("d2h of {len} bytes at {} beyond a buffer of {}", src.offset, s.size())));
        }
        profile::STAGING_BUFFERS.add(1);
        let rb = self.sh.device.create_buffer(&wgpu::BufferDescriptor { label: Some("d2h"), size: len, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        self.encode(|enc| enc.copy_buffer_to_buffer(&s, src.offset as u64, &rb, 0, len))?;
        let sub = self.flush().expect("just encoded");
        let (tx, rx) = std::sync::mpsc::channel();
        rb.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait(&sub, None)?;
        let mapped = loop {
            match rx.try_recv() {
                Ok(r) => break r,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.sh.check()?;
                    let _ = self.sh.device.poll(wgpu::PollType::wait_indefinitely());
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(Error::DevicePoisoned { device: self.sh.label.clone(), cause: "read-back mapping dropped".into() }),
            }
        };
        mapped.map_err(|e| Error::DevicePoisoned { device: self.sh.label.clone(), cause: format!("read-back mapping failed: {e}") })?;
        {
            let view = rb.slice(..).get_mapped_range().map_err(|e| Error::DevicePoisoned { device: self.sh.label.clone(), cause: format!("read-back view: {e}") })?;
            dst.copy_from_slice(&view[..dst.len()]);
        }
        rb.unmap();
        Ok(())
    }
    unsafe fn d2d(&self, src: BufSlice, dst: BufSlice) -> Result<()> {
        if src.len == 0 {
            return Ok(());
        }
        if src.len > dst.len {
            return Err(Error::InvalidArgument(format!("d2d of {} bytes into {}", src.len, dst.len)));
        }
        if src.len % 4 != 0 || src.offset % 4 != 0 || dst.offset % 4 != 0 {
            return Err(unsupported("a device copy not in whole 4-byte words"));
        }
        if src.buffer == dst.buffer {
            return Err(unsupported("a device copy within one buffer"));
        }
        let (s, d) = (self.sh.buffer(src.buffer)?, self.sh.buffer(dst.buffer)?);
        self.encode(|enc| enc.copy_buffer_to_buffer(&s, src.offset as u64, &d, dst.offset as u64, src.len as u64))
    }
}

impl Kernels for WgpuStream {
    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        f32_only(g.dtype)?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let params = [u(g.m, "m")?, u(g.n, "n")?, u(g.k, "k")?, act_code(g.act), el(g.a)?, el(g.w)?, opt_el(g.bias)?, el(g.out)?, g.bias.is_some() as u32];
        let groups = (u(g.n.div_ceil(64), "n")?, u(g.m.div_ceil(64), "m")?, 1);
        if groups.0 > 65535 || groups.1 > 65535 {
            return Err(Error::InvalidArgument(format!("gemm {}x{} exceeds the wgpu dispatch grid", g.m, g.n)));
        }
        self.dispatch(&GEMM, "main", &params, &[Some(g.a), Some(g.w), g.bias], g.out, groups)
    }
    unsafe fn add(&self, a: BufSlice, b: BufSlice, out: BufSlice, n: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let params = [u(n, "n")?, el(a)?, el(b)?, el(out)?, 0, 1];
        self.dispatch(&ELEMENTWISE, "add", &params, &[Some(a), Some(b)], out, grid(n, 256)?)
    }
    unsafe fn activation(&self, x: BufSlice, out: BufSlice, n: usize, act: Activation, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let params = [u(n, "n")?, el(x)?, 0, el(out)?, act_code(act), 1];
        self.dispatch(&ELEMENTWISE, "activation", &params, &[Some(x), None], out, grid(n, 256)?)
    }
    unsafe fn layer_norm(&self, p: &LayerNorm) -> Result<()> {
        f32_only(p.dtype)?;
        let params = [u(p.rows, "rows")?, u(p.cols, "cols")?, el(p.x)?, opt_el(p.residual)?, el(p.gamma)?, el(p.beta)?, el(p.out)?, p.residual.is_some() as u32, p.eps.to_bits()];
        self.dispatch(&ROWS, "layer_norm", &params, &[Some(p.x), p.residual, Some(p.gamma), Some(p.beta)], p.out, grid(p.rows, 1)?)
    }
    unsafe fn softmax(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        if cols == 0 {
            return Ok(());
        }
        let params = [u(rows, "rows")?, u(cols, "cols")?, el(x)?, 0, 0, 0, el(out)?, 0, 0];
        self.dispatch(&ROWS, "softmax", &params, &[Some(x), None, None, None], out, grid(rows, 1)?)
    }
    unsafe fn attention(&self, p: &Attention) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.attention_impl(p, None) }
    }
    unsafe fn attention_bias(&self, p: &Attention, bias: BufSlice) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.attention_impl(p, Some(bias)) }
    }
    unsafe fn glu(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, act: Activation, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        let n = rows * cols;
        if n == 0 {
            return Ok(());
        }
        let params = [u(n, "n")?, el(x)?, 0, el(out)?, act_code(act), u(cols, "cols")?];
        self.dispatch(&ELEMENTWISE, "glu", &params, &[Some(x), None], out, grid(n, 256)?)
    }
    unsafe fn rope_qkv(&self, p: &Rope) -> Result<()> {
        f32_only(p.dtype)?;
        let n = p.rows * 3 * p.heads * p.head_dim;
        if n == 0 {
            return Ok(());
        }
        if p.head_dim % 2 != 0 || p.seq == 0 {
            return Err(Error::InvalidArgument(format!("rope: head_dim {} must be even and seq {} positive", p.head_dim, p.seq)));
        }
        let params = [u(n, "n")?, 0, el(p.x)?, 0, el(p.out)?, u(p.seq, "seq")?, 0, 0, u(p.heads, "heads")?, u(p.head_dim, "head_dim")?, el(p.cos)?, el(p.sin)?];
        self.dispatch(&POOL, "rope", &params, &[Some(p.x), Some(p.cos), Some(p.sin)], p.out, grid(n, 256)?)
    }
    unsafe fn gather(&self, p: &Gather) -> Result<()> {
        f32_only(p.dtype)?;
        let n = p.n * p.dim;
        if n == 0 {
            return Ok(());
        }
        let rows = p.table.len / (p.dim * 4);
        let params = [u(n, "n")?, u(p.dim, "dim")?, el(p.table)?, el(p.ids)?, el(p.out)?, u(rows, "rows")?];
        self.dispatch(&GATHER, "gather", &params, &[Some(p.table), Some(p.ids)], p.out, grid(n, 256)?)
    }
    unsafe fn mean_pool(&self, p: &MeanPool) -> Result<()> {
        f32_only(p.dtype)?;
        let n = p.batch * p.dim;
        if n == 0 {
            return Ok(());
        }
        let params = [0, u(p.dim, "dim")?, el(p.x)?, opt_el(p.mask)?, el(p.out)?, u(p.seq, "seq")?, u(p.batch, "batch")?, p.mask.is_some() as u32];
        self.dispatch(&POOL, "mean_pool", &params, &[Some(p.x), p.mask, None], p.out, grid(n, 256)?)
    }
    unsafe fn l2_normalize(&self, x: BufSlice, out: BufSlice, rows: usize, cols: usize, dtype: DType) -> Result<()> {
        f32_only(dtype)?;
        if cols == 0 {
            return Ok(());
        }
        let params = [u(rows, "rows")?, u(cols, "cols")?, el(x)?, 0, 0, 0, el(out)?, 0, 0];
        self.dispatch(&ROWS, "l2_normalize", &params, &[Some(x), None, None, None], out, grid(rows, 1)?)
    }
}

impl WgpuStream {
    unsafe fn attention_impl(&self, p: &Attention, bias: Option<BufSlice>) -> Result<()> {
        f32_only(p.dtype)?;
        if p.batch == 0 || p.seq == 0 || p.heads == 0 || p.head_dim == 0 {
            return Ok(());
        }
        if p.head_dim > 128 {
            return Err(unsupported(format!("attention with head_dim {} > 128", p.head_dim)));
        }
        if p.heads > 65535 || p.batch > 65535 {
            return Err(Error::InvalidArgument(format!("attention: heads ({}) and batch ({}) must be at most 65535 on wgpu", p.heads, p.batch)));
        }
        let params = [
            u(p.seq, "seq")?,
            u(p.heads, "heads")?,
            u(p.head_dim, "head_dim")?,
            u(p.row_stride, "row_stride")?,
            el(p.q)?,
            el(p.k)?,
            el(p.v)?,
            opt_el(p.mask)?,
            el(p.out)?,
            opt_el(bias)?,
            p.mask.is_some() as u32,
            bias.is_some() as u32,
            p.scale.to_bits(),
            u(p.batch, "batch")?,
        ];
        let groups = (u(p.seq.div_ceil(64), "seq")?, p.heads as u32, p.batch as u32);
        let class = p.head_dim.next_power_of_two().max(16) as u32;
        self.dispatch_v(&ATTENTION, "main", class, &params, &[Some(p.q), Some(p.k), Some(p.v), p.mask, bias], p.out, groups)
    }
}

/// A marker in a wgpu stream: the stream's last submission when recorded.
pub struct WgpuEvent {
    sh: Arc<Shared>,
    at: Mutex<Option<Submitted>>,
}

impl BackendEvent for WgpuEvent {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn query(&self) -> Result<bool> {
        self.sh.check()?;
        let Some(s) = crate::sync_std_lock(&self.at).clone() else { return Ok(true) };
        if s.done.is_set() {
            return Ok(true);
        }
        let _ = self.sh.device.poll(wgpu::PollType::Poll);
        Ok(s.done.is_set())
    }
    fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        let Some(s) = crate::sync_std_lock(&self.at).clone() else { return self.sh.check() };
        if s.done.is_set() {
            return self.sh.check();
        }
        wait_on(&self.sh, &s, timeout)
    }
    fn elapsed_ms(&self, _earlier: &dyn BackendEvent) -> Result<f32> {
        Err(unsupported("timing events (use host timing)"))
    }
}
