//! `BRAID_MAX_INFLIGHT` on the path models take: the batcher glue
//! (`TokenEmbedder`) holds a permit of the device's throttle around each
//! forward, so with a cap of 1 no two forwards overlap, and the throttle saw
//! every forward (a glue that skipped it would leave the peak at 0).

use braid_batch::BatchModel;
use braid_nn::{SentenceEmbedder, TokenEmbedder};
use braid_runtime::{Device, DeviceOptions};
use std::sync::Arc;

#[test]
fn max_inflight_caps_model_forwards() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bert_mean");
    let device = Device::cpu_with(DeviceOptions { max_inflight: Some(1), ..Default::default() }).unwrap();
    let model = Arc::new(TokenEmbedder(Arc::new(SentenceEmbedder::load(dir, &device).unwrap())));
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let model = model.clone();
            s.spawn(move || {
                for i in 0..3u32 {
                    let rows = vec![vec![1, 5 + t, 7 + i, 2], vec![1, 9, 2]];
                    let out = model.forward(&mut (), rows).unwrap();
                    assert_eq!(out.len(), 2);
                }
            });
        }
    });
    let th = device.throttle();
    assert_eq!(th.peak(), 1, "with BRAID_MAX_INFLIGHT=1 exactly one forward at a time (peak {})", th.peak());
    assert_eq!(th.in_flight(), 0);
}
