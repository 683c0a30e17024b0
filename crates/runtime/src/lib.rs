//! braid-runtime: devices and their backends, the per-device stream pool,
//! events, the stream-ordered caching allocator, the command typestate, the
//! `Serialized` table and the `Throttle`, and braid's one [`Error`] type.
//!
//! Any number of threads may use a [`Device`]: each thread's first operation
//! binds it to a worker stream of the device's pool, kept in a thread-local and
//! returned when the thread exits.
//!
//! ```
//! use braid_runtime::Device;
//! let device = Device::cpu().unwrap();
//! std::thread::scope(|s| {
//!     for _ in 0..4 {
//!         s.spawn(|| {
//!             let stream = device.current_stream().unwrap(); // this thread's own stream
//!             let buffer = braid_runtime::Buffer::alloc(&device, 1024, &stream).unwrap();
//!             stream.write(buffer.view(), &[7u8; 1024]).unwrap();
//!             let mut back = [0u8; 1024];
//!             stream.read(buffer.view(), &mut back).unwrap();
//!             assert_eq!(back, [7u8; 1024]);
//!         });
//!     }
//! });
//! ```

pub mod alloc;
pub mod backend;
pub mod buffer;
pub mod command;
pub mod config;
pub mod device;
pub mod error;
pub mod event;
pub mod event_state;
pub mod fork;
pub mod mapped;
pub mod graph;
pub mod ops;
pub mod freelist;
pub mod pool;
pub mod serialized;
pub mod stream;
pub mod sync;
pub mod throttle;

pub use alloc::{AllocStats, CachingAllocator};
pub use backend::{Activation, BackendKind, BufSlice, BufferId, Capabilities, DType};
pub use buffer::{Buffer, View};
pub use config::{Assignment, ExhaustionPolicy, PoolConfig};
pub use device::{Device, DeviceBlock, DeviceOptions};
pub use error::{Error, Result};
pub use event::Event;
pub use mapped::MappedFile;
pub use pool::StreamPool;
pub use serialized::{serialized, serialized_stats};
pub use stream::{Stream, StreamGuard};
pub use throttle::{Permit, Throttle};

/// Lock a `std` mutex, ignoring poisoning (see [`sync::lock`]).
pub(crate) fn sync_std_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The message of a caught panic payload.
pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
