//! [`Replicas`] over several CPU devices in one process, behind one
//! [`Batcher`]: batches go to whichever device is free (a slow device runs
//! fewer), a device that fails mid-run (fault injection, as a sticky CUDA
//! error would) is taken out of rotation with nothing lost and every answer
//! right, and when every device is out the error says so.

use braid_batch::{Batcher, BatcherConfig, BatchModel, Replicas};
use braid_runtime::{Device, Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Doubles each input on its device (a real round trip through device
/// memory on one of its streams) and says which device ran it.
struct Doubler {
    device: Device,
    index: usize,
    delay: Duration,
    forwards: AtomicUsize,
}

impl BatchModel for Doubler {
    type Input = u32;
    type Output = (u32, usize);
    type Worker = ();
    fn worker(&self, _: usize) -> Result<()> {
        Ok(())
    }
    fn forward(&self, _: &mut (), inputs: Vec<u32>) -> Result<Vec<(u32, usize)>> {
        let s = self.device.current_stream()?;
        let bytes: Vec<u8> = inputs.iter().flat_map(|v| (v * 2).to_le_bytes()).collect();
        let buffer = braid_runtime::Buffer::alloc(&self.device, bytes.len(), &s)?;
        let mut out = vec![0u8; bytes.len()];
        s.write(buffer.view(), &bytes)?;
        s.read(buffer.view(), &mut out)?;
        std::thread::sleep(self.delay);
        // Relaxed: a statistic read after the batcher has been shut down (joined).
        self.forwards.fetch_add(1, Ordering::Relaxed);
        Ok(out.chunks(4).map(|c| (u32::from_le_bytes(c.try_into().unwrap()), self.index)).collect())
    }
}

fn replicas(delays: &[u64]) -> (Vec<Device>, Arc<Replicas<Doubler>>) {
    let devices = Device::parse_many(&format!("cpu:{}", (0..delays.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(","))).unwrap();
    let r = Replicas::new(
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.label().to_string(), Doubler { device: d.clone(), index: i, delay: Duration::from_millis(delays[i]), forwards: AtomicUsize::new(0) }))
            .collect(),
    )
    .unwrap();
    (devices, Arc::new(r))
}

fn config(workers: usize) -> BatcherConfig {
    BatcherConfig { max_batch_size: 4, max_queue_delay: Duration::from_micros(200), workers, capacity: 100_000, ..BatcherConfig::default() }
}

#[test]
fn batches_go_to_the_free_device() {
    // Device 0 takes 20 ms a batch, device 1 takes 1 ms; one worker each.
    let (_d, r) = replicas(&[20, 1]);
    let b = Batcher::new(r.clone(), config(2)).unwrap();
    let hs: Vec<_> = (0..400u32).map(|i| b.submit(i).unwrap()).collect();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap().0, 2 * i as u32);
    }
    b.shutdown();
    let st = r.status();
    assert!(st.iter().all(|s| s.serving));
    eprintln!("batches_go_to_the_free_device: slow device {} batches, fast device {}", st[0].batches, st[1].batches);
    assert!(st[1].batches > 3 * st[0].batches, "{st:?}");
}

#[test]
fn a_failed_device_leaves_rotation_and_nothing_is_lost() {
    let (devices, r) = replicas(&[2, 2, 2]);
    let b = Arc::new(Batcher::new(r.clone(), config(6)).unwrap());
    let n = 3000u32;
    let hs: Vec<_> = (0..n).map(|i| (i, b.submit(i).unwrap())).collect();
    // Mid-run: once device 1 has served some batches, with most still queued.
    let t0 = std::time::Instant::now();
    while r.status()[1].batches < 20 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_micros(200));
    }
    devices[1].inject_fault("test: device 1 lost mid-run");
    let mut by_device = [0usize; 3];
    for (i, h) in hs {
        let (v, d) = h.wait().unwrap_or_else(|e| panic!("request {i} lost: {e}"));
        assert_eq!(v, 2 * i, "request {i}");
        by_device[d] += 1;
    }
    b.shutdown();
    let st = r.status();
    eprintln!("a_failed_device_leaves_rotation_and_nothing_is_lost: answers per device {by_device:?}; status {st:?}");
    assert!(st[0].serving && st[2].serving);
    assert!(!st[1].serving);
    assert!(st[1].reason.as_deref().unwrap().contains("device 1 lost"), "{st:?}");
    assert_eq!(r.serving(), 2);
    assert_eq!(by_device.iter().sum::<usize>(), n as usize);
    assert!(by_device[0] > 0 && by_device[1] >= 20 * 4 && by_device[2] > 0, "{by_device:?}");
    // Most of the work came after the failure.
    assert!(by_device[1] < n as usize / 2, "{by_device:?}");
}

#[test]
fn every_device_out_is_a_clear_error() {
    let (devices, r) = replicas(&[0, 0]);
    let b = Batcher::new(r.clone(), config(2)).unwrap();
    assert_eq!(b.submit(1).unwrap().wait().unwrap().0, 2);
    for d in &devices {
        d.inject_fault("test: gone");
    }
    match b.submit(2).unwrap().wait() {
        Err(Error::DevicePoisoned { cause, .. }) => assert!(cause.contains("no device is in rotation") || cause.contains("gone"), "{cause}"),
        other => panic!("expected DevicePoisoned, got {other:?}"),
    }
    // And stays an error, naming the devices.
    match b.submit(3).unwrap().wait() {
        Err(Error::DevicePoisoned { cause, .. }) => assert!(cause.contains("cpu:0") && cause.contains("cpu:1"), "{cause}"),
        other => panic!("expected DevicePoisoned, got {other:?}"),
    }
    assert_eq!(r.serving(), 0);
    b.shutdown();
}

#[test]
fn request_errors_are_not_device_failures() {
    struct Picky;
    impl BatchModel for Picky {
        type Input = u32;
        type Output = u32;
        type Worker = ();
        fn worker(&self, _: usize) -> Result<()> {
            Ok(())
        }
        fn forward(&self, _: &mut (), inputs: Vec<u32>) -> Result<Vec<u32>> {
            if inputs.contains(&13) {
                return Err(Error::InvalidArgument("13 is not allowed".into()));
            }
            Ok(inputs)
        }
    }
    let r = Arc::new(Replicas::new(vec![("a".into(), Picky), ("b".into(), Picky)]).unwrap());
    let b = Batcher::new(r.clone(), BatcherConfig { max_batch_size: 1, ..config(2) }).unwrap();
    assert!(matches!(b.submit(13).unwrap().wait(), Err(Error::InvalidArgument(_))));
    assert_eq!(b.submit(7).unwrap().wait().unwrap(), 7);
    assert_eq!(r.serving(), 2);
    assert!(r.status().iter().all(|s| s.retried == 0));
    b.shutdown();
}
