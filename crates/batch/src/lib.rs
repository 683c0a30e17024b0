//! braid-batch: the [`BatchQueue`] (jobs from any thread, worker pool,
//! backpressure, draining shutdown), the dynamic [`Batcher`] (single
//! requests gathered into batches, bucketed by length, with deadlines) and
//! the [`Pipeline`] (a window of in-flight submissions synced by events),
//! and [`Replicas`] (one model replica per device behind one batcher).
//! The runtime's `Throttle` caps submissions underneath (BRAID_MAX_INFLIGHT);
//! a batcher can also hold a throttle of its own around each forward
//! (`BatcherConfig::throttle`). Concurrency primitives come from [`sync`]
//! (std, or loom's under `--cfg loom`; see `tests/loom.rs`). No `unsafe`.

pub mod batcher;
pub mod handle;
pub mod pipeline;
pub mod queue;
pub mod replicas;
pub mod sync;

pub use batcher::{Adaptive, BatchModel, BatchPolicy, Batcher, BatcherConfig, BatcherStats};
pub use handle::Handle;
pub use pipeline::{Completion, Pipeline};
pub use queue::{BatchQueue, QueueConfig, QueueStats, WhenFull};
pub use replicas::{condemns_device, ReplicaStatus, ReplicaWorker, Replicas};
