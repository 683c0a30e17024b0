//! The per-device stream pool: `size` streams (stream 0 the default, 1..size
//! worker slots), created lazily; a thread's first use binds it to a free
//! worker slot (lock-free freelist, `freelist.rs`), cached in a thread-local
//! whose destructor gives the slot back when the thread exits. Owns the
//! streams, the binding table of each thread, the exhaustion policies, the
//! round-robin counter and the `StreamGuard` override stack.
//!
//! A stream is in-order, so a slot's next owner simply queues behind the
//! previous owner's work: no drain is needed on release.

use crate::backend::{Backend, BackendStream};
use crate::config::{Assignment, ExhaustionPolicy, PoolConfig, MAX_POOL_SIZE};
use crate::error::{Error, Result};
use crate::freelist::{AcquireError, Freelist};
use crate::stream::{Stream, StreamGuard};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

pub(crate) struct PoolInner {
    pub(crate) device_id: u64,
    backend: Arc<dyn Backend>,
    config: PoolConfig,
    streams: Vec<OnceLock<Arc<dyn BackendStream>>>,
    freelist: Freelist,
    rr: AtomicUsize,
    /// Threads currently bound to a slot (for stats and checks).
    bound: AtomicUsize,
}

/// The stream pool of one device. Cheap to clone.
#[derive(Clone)]
pub struct StreamPool {
    inner: Arc<PoolInner>,
}

/// One thread's binding to a pool.
struct Binding {
    device_id: u64,
    pool: Weak<PoolInner>,
    index: usize,
    /// The freelist slot held (None for round-robin assignment).
    slot: Option<usize>,
}

#[derive(Default)]
struct Local {
    bindings: Vec<Binding>,
    overrides: Vec<Stream>,
}

impl Drop for Local {
    fn drop(&mut self) {
        // Thread exit (DeadThreadCleanup): give every held slot back. A pool
        // already dropped needs nothing back.
        for b in self.bindings.drain(..) {
            if let (Some(slot), Some(pool)) = (b.slot, b.pool.upgrade()) {
                pool.release_slot(slot);
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

pub(crate) fn push_override(stream: Stream) -> StreamGuard {
    let depth = LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.overrides.push(stream);
        l.overrides.len()
    });
    StreamGuard { depth, _not_send: std::marker::PhantomData }
}

pub(crate) fn pop_override(depth: usize) {
    let _ = LOCAL.try_with(|l| {
        // Guards drop in reverse order; truncating also repairs an out-of-order drop.
        l.borrow_mut().overrides.truncate(depth - 1);
    });
}

impl PoolInner {
    fn release_slot(&self, slot: usize) {
        // Decrement before the slot is free again, so `bound` never exceeds
        // the slots taken. Relaxed: a statistic, not used to synchronise.
        self.bound.fetch_sub(1, Ordering::Relaxed);
        self.freelist.release(slot);
    }
}

impl StreamPool {
    pub fn new(backend: Arc<dyn Backend>, config: PoolConfig, device_id: u64) -> Result<Self> {
        config.validate()?;
        Ok(StreamPool {
            inner: Arc::new(PoolInner {
                device_id,
                backend,
                config,
                streams: (0..config.size).map(|_| OnceLock::new()).collect(),
                freelist: Freelist::new(config.workers())?,
                rr: AtomicUsize::new(0),
                bound: AtomicUsize::new(0),
            }),
        })
    }

    pub fn config(&self) -> PoolConfig {
        self.inner.config
    }

    pub fn size(&self) -> usize {
        self.inner.config.size
    }

    /// The stream at `index` (0 = default), created on first use.
    pub fn stream(&self, index: usize) -> Result<Stream> {
        let inner = &self.inner;
        let cell = inner.streams.get(index).ok_or_else(|| Error::InvalidArgument(format!("stream index {index} out of range (pool of {})", inner.config.size)))?;
        let raw = match cell.get() {
            Some(s) => s.clone(),
            None => {
                // Two threads may race to create it; `OnceLock` keeps one.
                let s = inner.backend.new_stream()?;
                cell.get_or_init(|| s).clone()
            }
        };
        Ok(Stream { raw, index, device_id: inner.device_id, backend: inner.backend.clone() })
    }

    /// The default stream (index 0).
    pub fn default_stream(&self) -> Result<Stream> {
        self.stream(0)
    }

    /// This thread's current stream: a [`StreamGuard`]'s if one is active for
    /// this device, else the thread's bound worker stream (binding it now if
    /// this is its first use).
    pub fn current(&self) -> Result<Stream> {
        crate::fork::check()?;
        let id = self.inner.device_id;
        let found = LOCAL.try_with(|l| {
            let l = l.borrow();
            if let Some(s) = l.overrides.iter().rev().find(|s| s.device_id == id) {
                return Some(Ok(s.clone()));
            }
            l.bindings.iter().find(|b| b.device_id == id).map(|b| self.stream(b.index))
        });
        match found {
            Ok(Some(s)) => s,
            Ok(None) => self.bind(),
            Err(_) => Err(Error::InvalidArgument("stream pool used during thread exit".into())),
        }
    }

    fn bind(&self) -> Result<Stream> {
        let inner = &self.inner;
        let (index, slot) = match inner.config.assignment {
            Assignment::RoundRobin => {
                // Relaxed: only the counter's value matters, not ordering.
                let n = inner.rr.fetch_add(1, Ordering::Relaxed);
                (1 + n % inner.config.workers(), None)
            }
            Assignment::Exclusive => {
                let got = match inner.config.policy {
                    ExhaustionPolicy::Fail => inner.freelist.try_acquire().ok_or(AcquireError::Exhausted { waited: None }),
                    ExhaustionPolicy::Wait(d) => inner.freelist.acquire_wait(Some(d)),
                    ExhaustionPolicy::WaitForever => inner.freelist.acquire_wait(None),
                };
                match got {
                    Ok(slot) => (slot + 1, Some(slot)),
                    Err(AcquireError::Exhausted { waited }) => {
                        return Err(Error::PoolExhausted {
                            size: inner.config.size,
                            workers: inner.config.workers(),
                            max: MAX_POOL_SIZE,
                            waited: waited.map(|d| format!(" (waited {d:?})")).unwrap_or_default(),
                        })
                    }
                }
            }
        };
        if slot.is_some() {
            // Relaxed: a statistic.
            inner.bound.fetch_add(1, Ordering::Relaxed);
        }
        let binding = Binding { device_id: inner.device_id, pool: Arc::downgrade(inner), index, slot };
        let stream = match self.stream(index) {
            Ok(s) => s,
            Err(e) => {
                if let Some(slot) = slot {
                    inner.release_slot(slot);
                }
                return Err(e);
            }
        };
        match LOCAL.try_with(|l| l.borrow_mut().bindings.push(binding)) {
            Ok(()) => Ok(stream),
            Err(_) => {
                if let Some(slot) = slot {
                    inner.release_slot(slot);
                }
                Err(Error::InvalidArgument("stream pool used during thread exit".into()))
            }
        }
    }

    /// Give this thread's slot back now (it would otherwise go at thread exit).
    /// Returns whether the thread held one.
    pub fn release_current(&self) -> bool {
        let id = self.inner.device_id;
        let b = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            let pos = l.bindings.iter().position(|b| b.device_id == id)?;
            Some(l.bindings.swap_remove(pos))
        });
        match b {
            Ok(Some(b)) => {
                if let Some(slot) = b.slot {
                    self.inner.release_slot(slot);
                }
                true
            }
            _ => false,
        }
    }

    /// Free worker slots right now.
    pub fn free_slots(&self) -> usize {
        self.inner.freelist.free_count()
    }

    /// Threads bound to a worker slot right now.
    pub fn bound_threads(&self) -> usize {
        self.inner.bound.load(Ordering::Relaxed)
    }

    /// Streams created so far.
    pub fn created_streams(&self) -> usize {
        self.inner.streams.iter().filter(|s| s.get().is_some()).count()
    }

    /// Wait for every created stream.
    pub fn synchronize(&self) -> Result<()> {
        let mut first = Ok(());
        for s in self.inner.streams.iter().filter_map(|s| s.get()) {
            let r = s.synchronize();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
