//! [`Replicas`]: one model replica per device behind one [`Batcher`]
//! (`braid serve --device cuda:all`). Owns which device runs a batch, taking
//! a failed device out of rotation, and retrying a failed batch once on
//! another device.
//!
//! Why it is a [`BatchModel`] and not a second queue: the batcher already
//! has one admission queue and forms a batch only when a worker is free to
//! run it. Giving each device its own workers (worker `i` belongs to device
//! `i % n`) therefore forms each batch for a device that has just become
//! free — least outstanding work, not round-robin — with no extra
//! scheduler and no extra lock on the hot path.
//!
//! Failure: an error that condemns the device (`DevicePoisoned`,
//! `DeviceShutDown`) takes it out of rotation for good and the same batch
//! is run once more on the live device with the least outstanding work; any
//! other error (bad input) belongs to the request and is returned as is.
//! The workers of a device that is out keep taking batches from the queue
//! and run them on the live devices, so nothing waits on a dead device.
//! When every device is out, batches fail with `DevicePoisoned` naming each.

use crate::sync::{lock, AtomicUsize, Mutex, Ordering};
use crate::BatchModel;
use braid_runtime::{Error, Result};

/// What one replica says about itself (for `/health` and `/metrics`).
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaStatus {
    pub name: String,
    /// In rotation.
    pub serving: bool,
    /// Why it was taken out.
    pub reason: Option<String>,
    /// Batches running on it now.
    pub outstanding: usize,
    /// Batches it completed.
    pub batches: usize,
    /// Batches that failed on it and were run again on another device.
    pub retried: usize,
}

struct Replica<M> {
    model: M,
    name: String,
    /// `Some(reason)` once out of rotation. A mutex, not an atomic flag:
    /// it is read once per batch (uncontended, next to a whole forward) and
    /// carries the reason with it.
    out: Mutex<Option<String>>,
    /// Batches running now. Relaxed everywhere: it only steers the choice
    /// of a device; a stale value sends one batch to a busier device,
    /// never to a device that is out (that is decided under `out`).
    outstanding: AtomicUsize,
    /// Relaxed: statistics.
    batches: AtomicUsize,
    /// Relaxed: statistics.
    retried: AtomicUsize,
}

/// Several replicas of one model, one per device; see the module docs.
pub struct Replicas<M: BatchModel> {
    replicas: Vec<Replica<M>>,
}

/// A batcher worker of [`Replicas`]: its home device and, made lazily on
/// first use, its state for each device it has had to run on.
pub struct ReplicaWorker<W> {
    home: usize,
    index: usize,
    workers: Vec<Option<W>>,
}

/// Is this error the device's fault (take it out), not the request's?
pub fn condemns_device(e: &Error) -> bool {
    matches!(e, Error::DevicePoisoned { .. } | Error::DeviceShutDown(_))
}

impl<M: BatchModel> Replicas<M> {
    /// `replicas`: (name, model) per device, in device order. Give the
    /// [`Batcher`](crate::Batcher) `workers_per_device * replicas.len()` workers.
    pub fn new(replicas: Vec<(String, M)>) -> Result<Replicas<M>> {
        if replicas.is_empty() {
            return Err(Error::InvalidArgument("Replicas needs at least one replica".into()));
        }
        Ok(Replicas {
            replicas: replicas
                .into_iter()
                .map(|(name, model)| Replica { model, name, out: Mutex::new(None), outstanding: AtomicUsize::new(0), batches: AtomicUsize::new(0), retried: AtomicUsize::new(0) })
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// The replica models, in device order.
    pub fn models(&self) -> impl Iterator<Item = &M> {
        self.replicas.iter().map(|r| &r.model)
    }

    /// Each replica's state.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|r| {
                let reason = lock(&r.out).clone();
                ReplicaStatus {
                    name: r.name.clone(),
                    serving: reason.is_none(),
                    reason,
                    outstanding: r.outstanding.load(Ordering::Relaxed),
                    batches: r.batches.load(Ordering::Relaxed),
                    retried: r.retried.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Replicas in rotation.
    pub fn serving(&self) -> usize {
        self.replicas.iter().filter(|r| lock(&r.out).is_none()).count()
    }

    /// Take replica `i` out of rotation (the first reason is kept).
    pub fn take_out(&self, i: usize, reason: String) {
        let mut out = lock(&self.replicas[i].out);
        if out.is_none() {
            *out = Some(reason);
        }
    }

    fn is_live(&self, i: usize) -> bool {
        lock(&self.replicas[i].out).is_none()
    }

    /// `preferred` if it is live, else the live replica with the least
    /// outstanding work (ties: the lowest index), skipping `except`.
    fn choose(&self, preferred: usize, except: Option<usize>) -> Option<usize> {
        if Some(preferred) != except && self.is_live(preferred) {
            return Some(preferred);
        }
        (0..self.replicas.len())
            .filter(|&i| Some(i) != except && self.is_live(i))
            .min_by_key(|&i| self.replicas[i].outstanding.load(Ordering::Relaxed))
    }

    fn all_out(&self) -> Error {
        let why: Vec<String> = self.status().into_iter().map(|s| format!("{}: {}", s.name, s.reason.unwrap_or_default())).collect();
        Error::DevicePoisoned { device: "every device".into(), cause: format!("no device is in rotation ({})", why.join("; ")) }
    }

    fn run_on(&self, i: usize, w: &mut ReplicaWorker<M::Worker>, inputs: Vec<M::Input>) -> Result<Vec<M::Output>> {
        let r = &self.replicas[i];
        if w.workers[i].is_none() {
            // A worker of another device's that has to run here: it gets
            // state for this device, made on its own thread as `worker` would.
            w.workers[i] = Some(r.model.worker(w.index)?);
        }
        let state = w.workers[i].as_mut().expect("made above");
        r.outstanding.fetch_add(1, Ordering::Relaxed);
        let out = r.model.forward(state, inputs);
        r.outstanding.fetch_sub(1, Ordering::Relaxed);
        if out.is_ok() {
            r.batches.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

impl<M: BatchModel> BatchModel for Replicas<M>
where
    M::Input: Clone,
{
    type Input = M::Input;
    type Output = M::Output;
    type Worker = ReplicaWorker<M::Worker>;

    fn worker(&self, index: usize) -> Result<Self::Worker> {
        let n = self.replicas.len();
        let home = index % n;
        let mut workers: Vec<Option<M::Worker>> = (0..n).map(|_| None).collect();
        match self.replicas[home].model.worker(index / n) {
            Ok(w) => workers[home] = Some(w),
            // A device that cannot even start a worker is out; the worker
            // still serves, on the others.
            Err(e) if condemns_device(&e) => self.take_out(home, e.to_string()),
            Err(e) => return Err(e),
        }
        Ok(ReplicaWorker { home, index: index / n, workers })
    }

    fn len(&self, input: &Self::Input) -> usize {
        self.replicas[0].model.len(input)
    }

    fn forward(&self, w: &mut Self::Worker, inputs: Vec<Self::Input>) -> Result<Vec<Self::Output>> {
        let Some(first) = self.choose(w.home, None) else { return Err(self.all_out()) };
        // Kept for the one retry (token ids, small next to a forward); with
        // one replica there is nowhere to retry, and nothing is copied.
        let again = (self.replicas.len() > 1).then(|| inputs.clone());
        match self.run_on(first, w, inputs) {
            Err(e) if condemns_device(&e) => {
                self.take_out(first, e.to_string());
                self.replicas[first].retried.fetch_add(1, Ordering::Relaxed);
                let (Some(second), Some(again)) = (self.choose(first, Some(first)), again) else { return Err(self.all_out()) };
                // Once only: a second failure is returned (after taking
                // that device out too), so one bad batch cannot walk the
                // whole machine.
                let out = self.run_on(second, w, again);
                if let Err(e) = &out {
                    if condemns_device(e) {
                        self.take_out(second, e.to_string());
                    }
                }
                out
            }
            other => other,
        }
    }
}
