//! [`Event`]: a marker in a stream's order, for a thread to wait for its own
//! work (instead of a device-wide sync) and for cross-stream dependencies.
//! Owns only the handle; the backend owns the event itself.
//!
//! Events have no ids: a handle is an `Arc` of the backend event, so there is
//! no id space to reuse or to collide, the recorded state lives as long as
//! any handle or pending completion needs it, and a released handle cannot
//! be used again:
//!
//! ```compile_fail
//! # use braid_runtime::{Device, Event};
//! # let device = Device::cpu().unwrap();
//! # let stream = device.current_stream().unwrap();
//! let event = stream.record_event().unwrap();
//! drop(event);
//! event.synchronize(); // error[E0382]: use of moved value: `event`
//! ```

use crate::backend::BackendEvent;
use crate::error::{Error, Result};
use crate::stream::Stream;
use std::sync::Arc;
use std::time::Duration;

/// An event of one device. Cheap to clone (clones share the event).
#[derive(Clone)]
pub struct Event {
    raw: Arc<dyn BackendEvent>,
    device_id: u64,
    timing: bool,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Event(device {}, timing {})", self.device_id, self.timing)
    }
}

impl Event {
    /// A new, unrecorded event on the stream's device.
    pub fn new_on(stream: &Stream, timing: bool) -> Result<Event> {
        Ok(Event { raw: stream.backend.new_event(timing)?, device_id: stream.device_id, timing })
    }

    pub(crate) fn check_device(&self, device_id: u64) -> Result<()> {
        if self.device_id != device_id {
            return Err(Error::DeviceMismatch(format!("event of device {} used with a stream of device {device_id}", self.device_id)));
        }
        Ok(())
    }

    pub fn raw(&self) -> &dyn BackendEvent {
        &*self.raw
    }

    /// Record at the current end of `stream`.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.check_device(stream.device_id)?;
        stream.raw.record(&*self.raw)
    }

    /// Has the work before the last record completed?
    pub fn query(&self) -> Result<bool> {
        self.raw.query()
    }

    /// Block until the work before the last record has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.raw.synchronize(None)
    }

    /// As [`Event::synchronize`], failing with [`Error::Timeout`] after `timeout`.
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<()> {
        self.raw.synchronize(Some(timeout))
    }

    /// Milliseconds from `earlier` to this event; both must have been created
    /// with timing and have completed.
    pub fn elapsed_ms(&self, earlier: &Event) -> Result<f32> {
        if !self.timing || !earlier.timing {
            return Err(Error::InvalidArgument("elapsed time needs events created with timing".into()));
        }
        self.raw.elapsed_ms(&*earlier.raw)
    }
}
