//! [`Device`]: one backend with its stream pool, caching allocator and
//! throttle, shared by every thread that uses it. Owns device selection
//! (`Device::auto`: CUDA, then a discrete wgpu adapter, then the CPU), the device's lifecycle (shutdown while
//! other threads hold streams or have work in flight) and the glue that lets
//! the allocator record fences on the pool's streams.

use crate::alloc::{AllocConfig, AllocStats, Block, CachingAllocator, Fence, MemorySource};
use crate::backend::{cpu::CpuBackend, Backend, BackendEvent, BackendKind, BufSlice, BufferId, Capabilities, DType};
use crate::config::PoolConfig;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pool::StreamPool;
use crate::stream::Stream;
use crate::throttle::Throttle;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

static NEXT_DEVICE_ID: AtomicU64 = AtomicU64::new(1);

/// Device memory as the allocator sees it: the backend plus the pool, so that
/// fences are events recorded on the pool's streams.
pub struct DeviceMemory {
    backend: Arc<dyn Backend>,
    pool: StreamPool,
    name: String,
    device_id: u64,
}

impl DeviceMemory {
    /// Id of the [`Device`] the memory belongs to.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }
    /// Stream `index` of the device's pool.
    pub(crate) fn stream(&self, index: usize) -> Result<Stream> {
        self.pool.stream(index)
    }
}

struct EventFence(Arc<dyn BackendEvent>);

impl Fence for EventFence {
    fn is_done(&self) -> bool {
        self.0.query().unwrap_or(false)
    }
    fn wait(&self) -> Result<()> {
        self.0.synchronize(None)
    }
}

impl MemorySource for DeviceMemory {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.backend.alloc(bytes).map(BufferId::raw)
    }
    unsafe fn free(&self, ptr: u64, bytes: usize) {
        // SAFETY: forwarded: the allocator frees a block once, after every
        // stream that used it is past it; `ptr` is the raw handle `alloc` made.
        unsafe { self.backend.free(BufferId::from_raw(ptr), bytes) }
    }
    fn fence(&self, stream: usize) -> Result<Box<dyn Fence>> {
        let s = self.pool.stream(stream)?;
        let ev = self.backend.new_event(false)?;
        s.raw().record(&*ev)?;
        Ok(Box::new(EventFence(ev)))
    }
}

/// Device memory from the caching allocator. Dropping it frees it, ordered
/// after the work already enqueued on its stream.
pub type DeviceBlock = Block<DeviceMemory>;

impl Block<DeviceMemory> {
    /// The bytes asked for, as a backend operand. Using it is `unsafe`
    /// (the backend entry points); safe code goes through
    /// [`crate::buffer::Buffer`] and the checked ops on [`Stream`].
    pub fn slice(&self) -> BufSlice {
        BufSlice::whole(BufferId::from_raw(self.ptr()), self.requested())
    }
}

struct DeviceInner {
    id: u64,
    backend: Arc<dyn Backend>,
    pool: StreamPool,
    allocator: CachingAllocator<DeviceMemory>,
    throttle: Throttle,
    shut_down: AtomicBool,
    /// Set by [`Device::inject_fault`]: the device then fails every call as
    /// a poisoned CUDA context does.
    fault: std::sync::OnceLock<String>,
    label: String,
}

/// A device and everything braid keeps for it. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.label)
    }
}

/// Options for building a device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub pool: PoolConfig,
    /// Cap on model forwards in flight (`BRAID_MAX_INFLIGHT`): the batcher
    /// glue of braid-nn and `CommandBuffer::submit` hold a permit of
    /// [`Device::throttle`]; `None` = unlimited.
    pub max_inflight: Option<usize>,
    /// Reserved bytes above which the allocator trims its cache.
    pub high_watermark: Option<usize>,
}

impl DeviceOptions {
    /// Defaults overridden by the `BRAID_*` environment variables.
    pub fn from_env() -> Result<Self> {
        crate::config::check_cpu_knobs(|k| std::env::var(k).ok(), crate::backend::cpu::packed::cpu_has_avx512())?;
        Ok(DeviceOptions { pool: PoolConfig::from_env()?, max_inflight: crate::config::max_inflight_from_env()?, high_watermark: None })
    }
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions { pool: PoolConfig::default(), max_inflight: None, high_watermark: None }
    }
}

impl Device {
    /// A device over any backend.
    pub fn with_backend(backend: Arc<dyn Backend>, options: DeviceOptions) -> Result<Device> {
        crate::fork::register();
        crate::fork::check()?;
        options.pool.validate()?;
        // Relaxed: only uniqueness of the id matters.
        let id = NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed);
        let pool = StreamPool::new(backend.clone(), options.pool, id)?;
        // "cuda:0 (#3)": the device as a user names it, and which Device
        // instance of this process (two instances never share memory).
        let label = format!("{}:{} (#{id})", backend.kind().name(), backend.ordinal());
        let mem = DeviceMemory { backend: backend.clone(), pool: pool.clone(), name: label.clone(), device_id: id };
        let allocator = CachingAllocator::new(mem, AllocConfig { streams: options.pool.size, high_watermark: options.high_watermark })?;
        Ok(Device {
            inner: Arc::new(DeviceInner { id, backend, pool, allocator, throttle: Throttle::new(options.max_inflight), shut_down: AtomicBool::new(false), fault: std::sync::OnceLock::new(), label }),
        })
    }

    /// The CPU as a device, with settings from the environment.
    pub fn cpu() -> Result<Device> {
        Self::cpu_with(DeviceOptions::from_env()?)
    }

    pub fn cpu_with(options: DeviceOptions) -> Result<Device> {
        Self::with_backend(Arc::new(CpuBackend::new()), options)
    }

    /// CUDA device `ordinal`, with settings from the environment.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Self::cuda_with(ordinal, DeviceOptions::from_env()?)
    }

    #[allow(unused_variables)]
    pub fn cuda_with(ordinal: usize, options: DeviceOptions) -> Result<Device> {
        #[cfg(all(feature = "cuda", not(loom)))]
        {
            let b = crate::backend::cuda::try_new(ordinal)?;
            Self::with_backend(b, options)
        }
        #[cfg(not(all(feature = "cuda", not(loom))))]
        Err(Error::Unavailable { backend: "cuda", reason: "braid was built without the `cuda` feature".into() })
    }

    /// wgpu adapter `ordinal` (Vulkan, Metal, DX12), with settings from the environment.
    pub fn wgpu(ordinal: usize) -> Result<Device> {
        Self::wgpu_with(ordinal, DeviceOptions::from_env()?)
    }

    #[allow(unused_variables)]
    pub fn wgpu_with(ordinal: usize, options: DeviceOptions) -> Result<Device> {
        #[cfg(all(feature = "wgpu", not(loom)))]
        {
            let b = crate::backend::wgpu::try_new(ordinal)?;
            Self::with_backend(b, options)
        }
        #[cfg(not(all(feature = "wgpu", not(loom))))]
        Err(Error::Unavailable { backend: "wgpu", reason: "braid was built without the `wgpu` feature".into() })
    }

    /// How many wgpu adapters there are ([`Error::Unavailable`] without the feature).
    pub fn wgpu_count() -> Result<usize> {
        #[cfg(all(feature = "wgpu", not(loom)))]
        {
            Ok(crate::backend::wgpu::list_adapters().len())
        }
        #[cfg(not(all(feature = "wgpu", not(loom))))]
        Err(Error::Unavailable { backend: "wgpu", reason: "braid was built without the `wgpu` feature".into() })
    }

    /// The best device found: CUDA, then a discrete wgpu adapter, then the CPU.
    pub fn auto() -> Result<Device> {
        Self::auto_with(DeviceOptions::from_env()?)
    }

    fn auto_with(options: DeviceOptions) -> Result<Device> {
        match Self::cuda_with(0, options.clone()) {
            Ok(d) => return Ok(d),
            Err(Error::Unavailable { .. }) => {}
            Err(e) => return Err(e),
        }
        #[cfg(all(feature = "wgpu", not(loom)))]
        if let Some(i) = crate::backend::wgpu::discrete_adapter() {
            match Self::wgpu_with(i, options.clone()) {
                Ok(d) => return Ok(d),
                Err(Error::Unavailable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Self::cpu_with(options)
    }

    /// One device by name: `auto`, `cpu`, `cpu:N`, `cuda`, `cuda:N`, `wgpu`, `wgpu:N`. A name
    /// of several devices (`cuda:all`, `cuda:0,1`) is an error here; see
    /// [`Device::parse_many`].
    pub fn parse(name: &str) -> Result<Device> {
        Self::parse_with(name, DeviceOptions::from_env()?)
    }

    /// As [`Device::parse`], with these options (e.g. a cache budget in
    /// `high_watermark`).
    pub fn parse_with(name: &str, options: DeviceOptions) -> Result<Device> {
        let mut all = Self::parse_many_with(name, options)?;
        if all.len() != 1 {
            return Err(Error::InvalidArgument(format!("{name:?} names {} devices where one is expected", all.len())));
        }
        Ok(all.remove(0))
    }

    /// One or more devices by name: `auto`, `cpu`, `cuda`, or a kind with a
    /// list of ordinals (`cuda:0,1`, `cpu:0,1`) or `all` (`cuda:all`: every
    /// CUDA device the driver sees; `cpu:all` is one CPU device). Several
    /// CPU devices in one process share the cores and nothing else: each has
    /// its own stream pool, allocator and events, as two GPUs would, which is
    /// how the multi-device paths are tested without GPUs. Ordinals must be
    /// distinct; settings come from the environment.
    pub fn parse_many(name: &str) -> Result<Vec<Device>> {
        Self::parse_many_with(name, DeviceOptions::from_env()?)
    }

    /// As [`Device::parse_many`], every device with these options.
    pub fn parse_many_with(name: &str, options: DeviceOptions) -> Result<Vec<Device>> {
        let bad = |why: String| Error::InvalidArgument(format!("bad device {name:?}: {why}; expected auto, cpu, cpu:N[,M..], cuda, cuda:N[,M..], cuda:all, wgpu, wgpu:N[,M..] or wgpu:all"));
        let s = name.trim();
        let (kind, list) = match s.split_once(':') {
            Some((k, l)) => (k, Some(l)),
            None => (s, None),
        };
        let ordinals = |count: Option<usize>| -> Result<Vec<usize>> {
            let Some(list) = list else { return Ok(vec![0]) };
            if list.trim() == "all" {
                return Ok((0..count.unwrap_or(1)).collect());
            }
            let mut v = Vec::new();
            for part in list.split(',') {
                let n: usize = part.trim().parse().map_err(|_| bad(format!("{part:?} is not a device ordinal")))?;
                if v.contains(&n) {
                    return Err(bad(format!("ordinal {n} is named twice")));
                }
                v.push(n);
            }
            Ok(v)
        };
        match kind {
            "auto" if list.is_none() => Ok(vec![Self::auto_with(options)?]),
            "cpu" => ordinals(None)?.into_iter().map(|i| Self::with_backend(Arc::new(CpuBackend::with_ordinal(i)), options.clone())).collect(),
            "cuda" => {
                let count = if list.map(str::trim) == Some("all") { Some(Self::cuda_count()?) } else { None };
                let ids = ordinals(count)?;
                if ids.is_empty() {
                    return Err(Error::Unavailable { backend: "cuda", reason: "cuda:all: the driver sees no CUDA device".into() });
                }
                ids.into_iter().map(|i| Self::cuda_with(i, options.clone())).collect()
            }
            "wgpu" => {
                let count = if list.map(str::trim) == Some("all") { Some(Self::wgpu_count()?) } else { None };
                let ids = ordinals(count)?;
                if ids.is_empty() {
                    return Err(Error::Unavailable { backend: "wgpu", reason: "wgpu:all: no adapter found".into() });
                }
                ids.into_iter().map(|i| Self::wgpu_with(i, options.clone())).collect()
            }
            _ => Err(bad("unknown device".into())),
        }
    }

    /// How many CUDA devices there are ([`Error::Unavailable`] without a driver).
    pub fn cuda_count() -> Result<usize> {
        #[cfg(all(feature = "cuda", not(loom)))]
        {
            crate::backend::cuda::device_count()
        }
        #[cfg(not(all(feature = "cuda", not(loom))))]
        Err(Error::Unavailable { backend: "cuda", reason: "braid was built without the `cuda` feature".into() })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }
    pub fn kind(&self) -> BackendKind {
        self.inner.backend.kind()
    }
    pub fn name(&self) -> String {
        self.inner.backend.device_name()
    }
    pub fn label(&self) -> &str {
        &self.inner.label
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }
    pub fn supports(&self, dtype: DType) -> bool {
        self.inner.backend.supports(dtype)
    }
    /// What the device offers beyond the common boundary (graph capture,
    /// host functions, operand types, timing events).
    pub fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }
    pub fn pool(&self) -> &StreamPool {
        &self.inner.pool
    }
    pub fn allocator(&self) -> &CachingAllocator<DeviceMemory> {
        &self.inner.allocator
    }
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }
    pub fn same_as(&self, other: &Device) -> bool {
        self.inner.id == other.inner.id
    }

    fn check_live(&self) -> Result<()> {
        crate::fork::check()?;
        if let Some(cause) = self.inner.fault.get() {
            return Err(Error::DevicePoisoned { device: self.inner.label.clone(), cause: cause.clone() });
        }
        // Acquire pairs with the Release store in `shutdown`.
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::DeviceShutDown(self.inner.label.clone()));
        }
        Ok(())
    }

    /// This thread's current stream on this device (binding a worker slot on first use).
    pub fn current_stream(&self) -> Result<Stream> {
        self.check_live()?;
        self.inner.pool.current()
    }

    /// Stream `index` of the pool (0 = default).
    pub fn stream(&self, index: usize) -> Result<Stream> {
        self.check_live()?;
        self.inner.pool.stream(index)
    }

    /// Memory for use on `stream`, from the caching allocator.
    pub fn alloc(&self, bytes: usize, stream: &Stream) -> Result<DeviceBlock> {
        self.check_live()?;
        if stream.device_id != self.inner.id {
            return Err(Error::DeviceMismatch(format!("stream of device {} used to allocate on device {}", stream.device_id, self.inner.id)));
        }
        self.inner.allocator.alloc(bytes, stream.index)
    }

    pub fn memory_stats(&self) -> AllocStats {
        self.inner.allocator.stats()
    }

    /// Give every cached free block back to the backend.
    pub fn empty_cache(&self) {
        self.inner.allocator.empty_cache()
    }

    /// A new event on this device.
    pub fn new_event(&self, timing: bool) -> Result<Event> {
        self.check_live()?;
        Event::new_on(&self.inner.pool.default_stream()?, timing)
    }

    /// Wait for every stream of the device (prefer an [`Event`] per thread).
    pub fn synchronize(&self) -> Result<()> {
        self.check_live()?;
        self.inner.pool.synchronize()?;
        self.inner.backend.synchronize()
    }

    /// Stop accepting work: later calls get [`Error::DeviceShutDown`]; work
    /// already enqueued completes (this waits for it). Threads holding streams
    /// keep them valid until they drop them.
    pub fn shutdown(&self) -> Result<()> {
        // Release: later `check_live` loads see the flag.
        self.inner.shut_down.store(true, Ordering::Release);
        self.inner.pool.synchronize()
    }

    /// Fault injection, for failover tests and drills: from now on every
    /// call that takes a stream, memory or an event on this device fails
    /// with [`Error::DevicePoisoned`] naming `cause`, as after a sticky CUDA
    /// error. Work already enqueued completes. It cannot be undone (neither
    /// can a real poisoning); the first cause is kept.
    pub fn inject_fault(&self, cause: &str) {
        let _ = self.inner.fault.set(cause.to_string());
    }

    /// The injected fault, if any.
    pub fn fault(&self) -> Option<&str> {
        self.inner.fault.get().map(String::as_str)
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Acquire)
    }
}
