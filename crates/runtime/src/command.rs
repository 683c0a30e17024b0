//! The command typestate: a [`CommandBuffer`] records work for one stream;
//! [`CommandBuffer::submit`] consumes it and returns a [`Submission`], so a
//! buffer cannot be committed twice (it does not compile), completion
//! handlers can only be added while recording, and every object the work
//! needs is kept alive by the submission until the work has completed.
//! Owns that lifecycle and the throttle permit held while work is in flight.
//!
//! ```compile_fail
//! # use braid_runtime::{Device, command::CommandBuffer};
//! # let device = Device::cpu().unwrap();
//! let cb = CommandBuffer::new(&device).unwrap();
//! let first = cb.submit().unwrap();
//! let second = cb.submit(); // error[E0382]: use of moved value: `cb`
//! ```
//!
//! ```compile_fail
//! # use braid_runtime::{Device, command::CommandBuffer};
//! # let device = Device::cpu().unwrap();
//! let cb = CommandBuffer::new(&device).unwrap();
//! let sub = cb.submit().unwrap();
//! sub.on_complete(|_| {}); // no completion handler after submission
//! ```
//!
//! Library API: braid's models enqueue through the safe op layer on the
//! calling thread's stream and do not use command buffers; the throttle
//! (`BRAID_MAX_INFLIGHT`) they honour is held by the batcher glue instead.
//! A caller that wants completion handlers and kept-alive objects writes:
//!
//! ```
//! # use braid_runtime::{Device, command::CommandBuffer};
//! let device = Device::cpu().unwrap();
//! let mut cb = CommandBuffer::new(&device).unwrap();
//! let (tx, rx) = std::sync::mpsc::channel();
//! cb.encode(|s| s.synchronize()).on_complete(move |r| tx.send(r.is_ok()).unwrap());
//! cb.submit().unwrap().wait().unwrap();
//! assert!(rx.recv().unwrap());
//! ```
//!
//! Nothing borrowed from a buffer survives its submission, so the buffer
//! being recorded and the one already submitted never alias:
//!
//! ```compile_fail
//! # use braid_runtime::{Device, command::CommandBuffer};
//! # let device = Device::cpu().unwrap();
//! let mut cb = CommandBuffer::new(&device).unwrap();
//! let stream = cb.stream();
//! let sub = cb.submit().unwrap(); // error[E0505]: cannot move out of `cb` because it is borrowed
//! stream.synchronize().unwrap();
//! ```

use crate::backend::BackendStream;
use crate::device::Device;
use crate::error::Result;
use crate::event::Event;
use crate::stream::Stream;
use crate::throttle::Permit;
use std::any::Any;
use std::sync::Arc;

type Op = Box<dyn FnOnce(&dyn BackendStream) -> Result<()> + Send>;
type Handler = Box<dyn FnOnce(&Result<()>) + Send>;

/// Work being recorded for one stream (nothing has been enqueued yet).
#[must_use = "a command buffer does nothing until submitted"]
pub struct CommandBuffer {
    device: Device,
    stream: Stream,
    ops: Vec<Op>,
    keep: Vec<Arc<dyn Any + Send + Sync>>,
    handlers: Vec<Handler>,
}

/// Submitted work. Dropping it waits for the work to complete (so the objects
/// it keeps alive outlive their use), then runs the completion handlers.
#[must_use = "dropping a submission blocks until it completes; call wait() to see its result"]
pub struct Submission {
    event: Event,
    result: Option<Result<()>>,
    keep: Vec<Arc<dyn Any + Send + Sync>>,
    handlers: Vec<Handler>,
    _permit: Permit,
}

impl CommandBuffer {
    /// A buffer for the calling thread's current stream of `device`.
    pub fn new(device: &Device) -> Result<CommandBuffer> {
        Ok(Self::on(device, device.current_stream()?))
    }

    /// A buffer for a given stream.
    pub fn on(device: &Device, stream: Stream) -> CommandBuffer {
        CommandBuffer { device: device.clone(), stream, ops: Vec::new(), keep: Vec::new(), handlers: Vec::new() }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Record one piece of work (it is enqueued at submit, in order).
    pub fn encode(&mut self, op: impl FnOnce(&dyn BackendStream) -> Result<()> + Send + 'static) -> &mut Self {
        self.ops.push(Box::new(op));
        self
    }

    /// Keep `obj` alive until the submitted work has completed.
    pub fn keep_alive(&mut self, obj: Arc<dyn Any + Send + Sync>) -> &mut Self {
        self.keep.push(obj);
        self
    }

    /// Run `f` with the work's result once it has completed.
    pub fn on_complete(&mut self, f: impl FnOnce(&Result<()>) + Send + 'static) -> &mut Self {
        self.handlers.push(Box::new(f));
        self
    }

    /// Enqueue the recorded work (waiting for a throttle place first).
    /// Consumes the buffer: it cannot be submitted twice.
    pub fn submit(self) -> Result<Submission> {
        let permit = self.device.throttle().acquire();
        let event = Event::new_on(&self.stream, false)?;
        let mut result = Ok(());
        for op in self.ops {
            if let Err(e) = op(self.stream.raw()) {
                result = Err(e);
                break;
            }
        }
        event.record(&self.stream)?;
        Ok(Submission { event, result: Some(result), keep: self.keep, handlers: self.handlers, _permit: permit })
    }
}

impl Submission {
    /// Has the work completed?
    pub fn query(&self) -> Result<bool> {
        self.event.query()
    }

    /// Wait for the work, run the completion handlers, release what it kept.
    pub fn wait(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(enqueue_result) = self.result.take() else { return Ok(()) };
        let sync = self.event.synchronize();
        let r = enqueue_result.and(sync);
        for h in self.handlers.drain(..) {
            h(&r);
        }
        self.keep.clear();
        r
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
