//! Tensors of several devices in one process: an op that mixes two devices'
//! tensors is `Error::DeviceMismatch` (no implicit copy), while each device
//! computes on its own from several threads at once, equal to the result on a
//! single device. CPU devices (`cpu:0,1`), as CI runs it.

use braid_nn::{ops, Tensor};
use braid_runtime::{Activation, Device, Error};

#[test]
fn ops_refuse_tensors_of_two_devices() {
    let devs = Device::parse_many("cpu:0,1").unwrap();
    let x0 = Tensor::from_slice(&devs[0], &[1.0, -2.0], &[1, 2]).unwrap();
    let w1 = Tensor::from_slice(&devs[1], &[1.0, 0.0, 0.0, 1.0], &[2, 2]).unwrap();
    match ops::linear(&x0, &w1, None, Activation::None) {
        Err(Error::DeviceMismatch(m)) => assert!(m.contains("cpu:1") && m.contains("cpu:0"), "{m}"),
        other => panic!("expected DeviceMismatch, got {other:?}"),
    }
}

#[test]
fn each_device_computes_alone_and_agrees() {
    let devs = Device::parse_many("cpu:0,1").unwrap();
    let (m, k, n) = (8, 32, 16);
    let mut rng = braid_nn::Rng::new(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let d = devs[t % 2].clone();
                let (a, w) = (a.clone(), w.clone());
                s.spawn(move || {
                    let x = Tensor::from_slice(&d, &a, &[m, k]).unwrap();
                    let wt = Tensor::from_slice(&d, &w, &[n, k]).unwrap();
                    ops::linear(&x, &wt, None, Activation::Relu).unwrap().to_vec().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    assert!(results[0].iter().any(|v| *v > 0.0));
}
