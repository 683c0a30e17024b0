//! The user-facing [`Stream`] handle and [`StreamGuard`]. Owns nothing but a
//! reference to a pool's backend stream and its index; the pool owns the
//! streams themselves (see `pool.rs`).

use crate::backend::{Backend, BackendStream};
use crate::error::Result;
use crate::event::Event;
use std::sync::Arc;

/// One in-order queue of work on a device. Cheap to clone.
#[derive(Clone)]
pub struct Stream {
    pub(crate) raw: Arc<dyn BackendStream>,
    pub(crate) index: usize,
    pub(crate) device_id: u64,
    pub(crate) backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream(device {}, #{})", self.device_id, self.index)
    }
}

impl Stream {
    /// The backend stream, for enqueuing copies and kernels.
    pub fn raw(&self) -> &dyn BackendStream {
        &*self.raw
    }
    /// Index in the pool: 0 is the default stream, 1.. are worker slots.
    pub fn index(&self) -> usize {
        self.index
    }
    /// Id of the device the stream belongs to.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }
    /// Wait for everything enqueued on this stream.
    pub fn synchronize(&self) -> Result<()> {
        self.raw.synchronize()
    }
    /// As [`Stream::synchronize`], failing with [`Error::Timeout`] if the work
    /// enqueued so far has not completed within `timeout` (it goes on).
    pub fn synchronize_timeout(&self, timeout: std::time::Duration) -> Result<()> {
        self.record_event()?.synchronize_timeout(timeout)
    }
    /// Has everything enqueued so far completed?
    pub fn query(&self) -> Result<bool> {
        self.raw.query()
    }
    /// Make later work on this stream wait for `event` (the host does not block).
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        event.check_device(self.device_id)?;
        self.raw.wait_event(event.raw())
    }
    /// Record a new event at the current end of this stream.
    pub fn record_event(&self) -> Result<Event> {
        let e = Event::new_on(self, false)?;
        e.record(self)?;
        Ok(e)
    }
    /// The backend the stream belongs to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub fn same_as(&self, other: &Stream) -> bool {
        Arc::ptr_eq(&self.raw, &other.raw)
    }
}

/// Makes a stream the current stream of this thread for its device until the
/// guard is dropped; guards nest and restore the previous current stream.
/// Not `Send`: it must be dropped on the thread that made it.
pub struct StreamGuard {
    pub(crate) depth: usize,
    pub(crate) _not_send: std::marker::PhantomData<*const ()>,
}

impl StreamGuard {
    pub fn new(stream: &Stream) -> StreamGuard {
        crate::pool::push_override(stream.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        crate::pool::pop_override(self.depth);
    }
}
