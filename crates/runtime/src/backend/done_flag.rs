//! [`DoneFlag`]: the completion flag of one wgpu queue submission. wgpu's
//! `on_submitted_work_done` callback sets it (on whichever thread polls the
//! device); a stream's `query`/`synchronize` and the events recorded after
//! the submission read it. Owns only that handshake, written against
//! `crate::sync` so the loom model (`tests/loom.rs`,
//! `wgpu_done_flag_publishes_the_work`) checks the shipping code.

use crate::sync::{Arc, AtomicBool, Ordering};

/// Set once, when the submission (and everything before it on the queue)
/// has completed; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct DoneFlag(Arc<AtomicBool>);

impl DoneFlag {
    pub fn new() -> Self {
        Self::default()
    }
    /// Called by the completion callback, after the work's effects (a
    /// read-back's bytes) are in place.
    pub fn set(&self) {
        // Release: a reader whose Acquire load sees `true` also sees every
        // write made before the callback ran.
        self.0.store(true, Ordering::Release);
    }
    pub fn is_set(&self) -> bool {
        // Acquire: pairs with the Release in `set`.
        self.0.load(Ordering::Acquire)
    }
}
