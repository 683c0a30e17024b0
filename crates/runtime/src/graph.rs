//! The graph path: a forward for a fixed shape captured once on a stream and
//! replayed on later calls. Owns the cache of captured graphs, keyed by
//! (module id, shape, stream), and the buffers a captured graph reads and
//! writes (kept alive as long as the graph, since their addresses are baked
//! into it).
//!
//! Replays run on the stream they were captured on, so the intermediates a
//! capture freed back to that stream's pool are only ever reused in stream
//! order, before or after a replay, never during one.

use crate::backend::BackendGraph;
use crate::error::Result;
use crate::stream::Stream;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What identifies a captured forward.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// Caller-chosen id of the module (e.g. its address or a counter).
    pub module: u64,
    pub shape: Vec<usize>,
    pub device: u64,
    pub stream: usize,
}

/// A captured forward and the buffers it uses.
pub struct CapturedGraph {
    graph: Arc<dyn BackendGraph>,
    /// The graph's static input/output (and anything else it must outlive).
    state: Box<dyn Any + Send + Sync>,
    stream: Stream,
}

impl CapturedGraph {
    /// Replay on the stream it was captured on.
    pub fn launch(&self) -> Result<()> {
        self.graph.launch(self.stream.raw())
    }
    /// The buffers returned by the capture closure.
    pub fn state<T: 'static>(&self) -> Option<&T> {
        self.state.downcast_ref::<T>()
    }
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

/// Capture `forward` on `stream`: the work it enqueues is recorded, not run.
/// `forward` returns the buffers the graph uses (its static input and output).
pub fn capture<T: Any + Send + Sync>(stream: &Stream, forward: impl FnOnce() -> Result<T>) -> Result<CapturedGraph> {
    // Work already queued must not be swept into the capture's dependencies.
    stream.synchronize()?;
    let cap = stream.raw().capture().ok_or_else(|| crate::Error::Unsupported { backend: stream.backend().kind().name(), what: "graph capture".into() })?;
    cap.begin_capture()?;
    let state = forward();
    // End the capture whatever happened, so the stream is usable again.
    let graph = cap.end_capture();
    let state = state?;
    Ok(CapturedGraph { graph: graph?, state: Box::new(state), stream: stream.clone() })
}

/// Captured graphs by (module, shape, stream). Thread-safe; two threads with
/// different streams never share an entry.
///
/// Library API: braid's own product captures through [`capture`] (the
/// benchmark's graph mode); a server that replays per-shape graphs would
/// keep them here. Needs a device whose `capabilities().graph_capture` is
/// true (CUDA); elsewhere `get_or_capture` is an `Unsupported` error.
///
/// ```no_run
/// # use braid_runtime::{graph::GraphCache, Buffer, Device};
/// let device = Device::cuda(0)?;
/// let stream = device.current_stream()?;
/// let cache = GraphCache::new();
/// let x = Buffer::alloc(&device, 64, &stream)?;
/// let g = cache.get_or_capture(1, &[16], &stream, || {
///     let out = Buffer::alloc(&device, 64, &stream)?;
///     stream.activation(x.view(), out.view(), 16, braid_runtime::Activation::Relu, braid_runtime::DType::F32)?;
///     Ok(out)
/// })?;
/// g.launch()?; // replays the captured kernel
/// # Ok::<(), braid_runtime::Error>(())
/// ```
#[derive(Default)]
pub struct GraphCache {
    map: Mutex<HashMap<GraphKey, Arc<CapturedGraph>>>,
}

impl GraphCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The graph for `module` at `shape` on `stream`, capturing it with
    /// `forward` on first use.
    pub fn get_or_capture<T: Any + Send + Sync>(&self, module: u64, shape: &[usize], stream: &Stream, forward: impl FnOnce() -> Result<T>) -> Result<Arc<CapturedGraph>> {
        let key = GraphKey { module, shape: shape.to_vec(), device: stream.device_id(), stream: stream.index() };
        if let Some(g) = crate::sync_std_lock(&self.map).get(&key) {
            return Ok(g.clone());
        }
        // Capture outside the lock: only this thread's stream is involved, and
        // a concurrent capture of the same key on the same stream would be a
        // caller bug that at worst captures twice (the first insert wins).
        let g = Arc::new(capture(stream, forward)?);
        Ok(crate::sync_std_lock(&self.map).entry(key).or_insert(g).clone())
    }

    pub fn len(&self) -> usize {
        crate::sync_std_lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every captured graph (their buffers go back to the allocator).
    pub fn clear(&self) {
        crate::sync_std_lock(&self.map).clear();
    }
}

impl std::fmt::Debug for GraphCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphCache({} graphs)", self.len())
    }
}

