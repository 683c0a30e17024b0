//! braid-runtime: devices and their backends, the per-device stream pool,
//! events, the stream-ordered caching allocator, the command typestate, the
//! `Serialized` table and the `Throttle`, and braid's one [`Error`] type.
//!
//! Any number of threads may use a [`Device`]: each thread's first operation
//! binds it to a worker stream of the device's pool, kept in a thread-local and
//! returned when the thread exits.

pub mod backend;
pub mod error;
pub mod event_state;
pub mod sync;

pub use backend::{Activation, BackendKind, DType, DevicePtr};
pub use error::{Error, Result};

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
