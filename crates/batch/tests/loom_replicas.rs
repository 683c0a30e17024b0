//! loom model of [`Replicas`] on the shipping code (`--cfg loom`): two
//! workers, homed on two devices, run one batch each while device 1 fails
//! concurrently. Every batch is answered exactly once, by a device that was
//! in rotation when it ran, a failure is retried once on the other device,
//! and afterwards device 1 is out and device 0 serves
//! (FailoverLosesNothing). Run:
//! `RUSTFLAGS="--cfg loom" cargo test -p braid-batch --release --test loom_replicas -- --nocapture`
#![cfg(loom)]

use braid_batch::{BatchModel, Replicas};
use braid_runtime::{Error, Result};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// A device that fails (as a poisoned context does) once `broken` is set.
struct Dev {
    index: usize,
    broken: Arc<AtomicBool>,
    ran: Arc<AtomicUsize>,
}

impl BatchModel for Dev {
    type Input = u32;
    type Output = (u32, usize);
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn forward(&self, _: &mut (), inputs: Vec<u32>) -> Result<Vec<(u32, usize)>> {
        // SeqCst: the model's failure switch; what is asserted is the
        // Replicas bookkeeping, not this flag's ordering.
        if self.broken.load(Ordering::SeqCst) {
            return Err(Error::DevicePoisoned { device: format!("dev{}", self.index), cause: "injected".into() });
        }
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(inputs.into_iter().map(|v| (v, self.index)).collect())
    }
}

#[test]
fn failover_loses_nothing() {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
    let bound = *b.preemption_bound.get_or_insert(3);
    b.check(move || {
        r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let broken1 = Arc::new(AtomicBool::new(false));
        let ran = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let reps = Arc::new(
            Replicas::new(vec![
                ("dev0".into(), Dev { index: 0, broken: Arc::new(AtomicBool::new(false)), ran: ran[0].clone() }),
                ("dev1".into(), Dev { index: 1, broken: broken1.clone(), ran: ran[1].clone() }),
            ])
            .unwrap(),
        );
        let workers: Vec<_> = (0..2)
            .map(|i| {
                let reps = reps.clone();
                thread::spawn(move || {
                    let mut w = reps.worker(i).unwrap();
                    reps.forward(&mut w, vec![10 + i as u32]).unwrap()
                })
            })
            .collect();
        broken1.store(true, Ordering::SeqCst);
        let outs: Vec<_> = workers.into_iter().map(|h| h.join().unwrap()).collect();
        // Each batch answered once, with its own input.
        assert_eq!(outs[0].len(), 1);
        assert_eq!(outs[1].len(), 1);
        assert_eq!(outs[0][0].0, 10);
        assert_eq!(outs[1][0].0, 11);
        // Total forwards that succeeded = batches answered.
        assert_eq!(ran[0].load(Ordering::SeqCst) + ran[1].load(Ordering::SeqCst), 2);
        // A later batch never goes to device 1 once it has failed (whether
        // or not a batch saw the failure, the next one that does takes it out).
        let mut w = reps.worker(1).unwrap();
        let again = reps.forward(&mut w, vec![12]).unwrap();
        assert_eq!(again[0], (12, 0));
        assert_eq!(reps.serving(), 1);
        assert!(!reps.status()[1].serving);
    });
    eprintln!("loom model FailoverLosesNothing: {} interleavings explored (preemption bound {bound})", runs.load(std::sync::atomic::Ordering::Relaxed));
}
