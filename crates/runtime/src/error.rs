//! The one error type of braid: every fallible call in every crate returns
//! [`Result<T>`](Result). Owns the wording users see, so each variant says what
//! went wrong and, where there is one, what to do about it.

use std::time::Duration;

/// Every failure braid reports. No public entry point panics on bad input:
/// it returns one of these.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A setting (environment variable or builder value) is out of range.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Config {
        name: &'static str,
        value: String,
        reason: String,
    },

    /// Every worker slot of the stream pool is bound and the policy is `Fail`
    /// (or a bounded wait ran out).
    #[error(
        "stream pool exhausted: all {workers} worker streams of the {size}-stream pool are bound to live threads{waited}; \
         raise BRAID_STREAM_POOL_SIZE (max {max}) or set BRAID_STREAM_POOL_WAIT_TIMEOUT_MS (N ms, or -1 to wait forever), \
         or use Assignment::RoundRobin"
    )]
    PoolExhausted {
        size: usize,
        workers: usize,
        max: usize,
        waited: String,
    },

    /// The backend could not provide memory even after the cache was emptied.
    #[error(
        "out of memory on {device}: requested {requested} bytes with {reserved} bytes reserved and {allocated} allocated by braid{detail}"
    )]
    OutOfMemory {
        device: String,
        requested: usize,
        reserved: usize,
        allocated: usize,
        detail: String,
    },

    /// A wait with a timeout expired before the thing waited on was ready.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// A tensor or argument has a shape the operation cannot take.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A value or argument is wrong in a way that is not a shape.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Objects from two different devices were used together.
    #[error("device mismatch: {0}")]
    DeviceMismatch(String),

    /// The backend does not implement this operation (for example bf16 on the CPU).
    #[error("{backend} backend does not support {what}")]
    Unsupported { backend: &'static str, what: String },

    /// The backend is not usable on this machine.
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },

    /// An error reported by the backend's driver or library, with its code.
    #[error("{backend} error {code} ({name}) in {call}: {message}")]
    Backend {
        backend: &'static str,
        call: String,
        code: i64,
        name: String,
        message: String,
    },

    /// A sticky error: the device's context is unusable and every later call
    /// on it fails with this error instead of being retried.
    #[error("device {device} is poisoned by an earlier fatal error: {cause}")]
    DevicePoisoned { device: String, cause: String },

    /// A kernel failed to compile.
    #[error("kernel {kernel} failed to compile: {log}")]
    Compile { kernel: String, log: String },

    /// The device (or runtime) was shut down while this call was in flight or after.
    #[error("device {0} has been shut down")]
    DeviceShutDown(String),

    /// The process was `fork()`ed after braid started; the child must not touch it.
    #[error("braid was used in a fork()ed child process; device state does not survive fork: start workers with spawn (a fresh process) instead")]
    ForkedChild,

    /// A bounded queue is full and the caller asked not to block.
    #[error("overloaded: queue is full ({capacity} entries)")]
    Overloaded { capacity: usize },

    /// A queue or worker was shut down before it accepted this request.
    #[error("shut down: {0}")]
    ShutDown(String),

    /// A job panicked; the worker survived and reports the panic here.
    #[error("job panicked: {0}")]
    JobPanicked(String),

    /// Reading or parsing a file (weights, config, tokenizer) failed.
    #[error("{path}: {message}")]
    Io { path: String, message: String },

    /// A model file is inconsistent (missing tensor, wrong shape or dtype).
    #[error("model {0}")]
    Model(String),
}

/// `Result` with braid's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
