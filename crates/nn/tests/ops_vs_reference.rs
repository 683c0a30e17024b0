//! Every op and module on the CPU device against the f64 reference
//! (`braid_nn::check`), and shape/argument errors that must not panic.

use braid_nn::{ops, Tensor};
use braid_runtime::{Activation, DType, Device, Error};

#[test]
fn all_checks_pass() {
    // BRAID_TEST_DEVICE=cuda runs the same checks on a GPU (f32 and bf16).
    all_checks_on(Device::parse(&std::env::var("BRAID_TEST_DEVICE").unwrap_or_else(|_| "cpu".into())).unwrap());
}

/// The same checks on the first wgpu adapter, SKIPPED where there is none.
/// CI runs them through `braid check --device wgpu` (scripts/test.sh, with
/// MiniLM and the model families too), so here they run only with
/// `BRAID_TEST_WGPU=1` (a minute on lavapipe).
#[test]
fn all_checks_pass_wgpu() {
    if std::env::var("BRAID_TEST_WGPU").as_deref() != Ok("1") {
        eprintln!("SKIPPED (all_checks_pass_wgpu: covered by `braid check --device wgpu` in scripts/test.sh; BRAID_TEST_WGPU=1 runs it here)");
        return;
    }
    match Device::parse("wgpu") {
        Ok(d) => all_checks_on(d),
        Err(Error::Unavailable { reason, .. }) => eprintln!("SKIPPED (all_checks_pass_wgpu: no wgpu adapter: {reason})"),
        Err(e) => panic!("{e}"),
    }
}

fn all_checks_on(device: Device) {
    eprintln!("device: {}", device.name());
    let results = braid_nn::check(&device).unwrap();
    assert!(results.len() > 50, "only {} checks", results.len());
    let mut failed = Vec::new();
    for r in &results {
        eprintln!("{:<72} max_rel_err {:.3e} (tol {:.0e}) {}", r.name, r.max_rel_err, r.tol, if r.passed { "ok" } else { "FAILED" });
        if !r.passed {
            failed.push(format!("{}: {:e} {:?}", r.name, r.max_rel_err, r.error));
        }
    }
    assert!(failed.is_empty(), "failed checks: {failed:#?}");
}

#[test]
fn nan_never_passes() {
    assert!(braid_nn::reference::rel_err(&[f32::NAN, 1.0], &[0.0, 1.0]).is_nan());
    assert!(braid_nn::reference::rel_err(&[1.0], &[1.0, 2.0]).is_nan());
    assert_eq!(braid_nn::reference::rel_err(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
}

fn t(d: &Device, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_slice(d, &vec![0.5; n], shape).unwrap()
}

fn shape_error(r: braid_runtime::Result<Tensor>, op: &str, shapes: &[&str]) {
    match r {
        Err(Error::Shape { op: o, detail }) => {
            assert_eq!(o, op);
            for s in shapes {
                assert!(detail.contains(s), "{detail:?} does not name {s}");
            }
        }
        other => panic!("expected a shape error from {op}, got {other:?}"),
    }
}

#[test]
fn shape_mismatches_are_errors_naming_both_shapes() {
    let d = Device::cpu().unwrap();
    shape_error(ops::linear(&t(&d, &[2, 3]), &t(&d, &[4, 5]), None, Activation::None), "linear", &["[2, 3]", "[4, 5]"]);
    shape_error(ops::linear(&t(&d, &[2, 3]), &t(&d, &[4, 3]), Some(&t(&d, &[5])), Activation::None), "linear", &["[5]", "[4, 3]"]);
    shape_error(ops::add(&t(&d, &[2, 3]), &t(&d, &[3, 2])), "add", &["[2, 3]", "[3, 2]"]);
    shape_error(ops::layer_norm(&t(&d, &[2, 3]), None, &t(&d, &[4]), &t(&d, &[3]), 1e-5), "layer_norm", &["[2, 3]", "[4]"]);
    shape_error(ops::layer_norm(&t(&d, &[2, 3]), Some(&t(&d, &[3, 2])), &t(&d, &[3]), &t(&d, &[3]), 1e-5), "layer_norm", &["[3, 2]", "[2, 3]"]);
    shape_error(ops::attention(&t(&d, &[1, 2, 8]), &t(&d, &[1, 3, 8]), &t(&d, &[1, 2, 8]), None, 2), "attention", &["[1, 2, 8]", "[1, 3, 8]"]);
    shape_error(ops::attention(&t(&d, &[1, 2, 8]), &t(&d, &[1, 2, 8]), &t(&d, &[1, 2, 8]), None, 3), "attention", &["[1, 2, 8]"]);
    shape_error(ops::attention(&t(&d, &[1, 2, 8]), &t(&d, &[1, 2, 8]), &t(&d, &[1, 2, 8]), Some(&t(&d, &[1, 3])), 2), "attention", &["[1, 3]", "[1, 2, 8]"]);
    shape_error(ops::mean_pool(&t(&d, &[2, 3, 4]), Some(&t(&d, &[3, 2]))), "mean_pool", &["[3, 2]", "[2, 3, 4]"]);
    shape_error(ops::mean_pool(&t(&d, &[2, 3]), None), "mean_pool", &["[2, 3]"]);
    shape_error(ops::embedding(&t(&d, &[4]), &[0]), "embedding", &["[4]"]);
    shape_error(t(&d, &[2, 3]).reshape(&[4, 2]), "reshape", &["[2, 3]", "[4, 2]"]);
    assert!(matches!(Tensor::from_slice(&d, &[1.0; 5], &[2, 3]), Err(Error::Shape { .. })));
}

#[test]
fn gather_ids_out_of_range_are_a_clear_error() {
    let d = Device::cpu().unwrap();
    match ops::embedding(&t(&d, &[10, 4]), &[1, 2, 10, 3]) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("id 10") && m.contains("10 rows"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn segment_pool_offsets_that_do_not_cover_the_stream_are_a_clear_error() {
    let d = Device::cpu().unwrap();
    let x = t(&d, &[6, 4]);
    for cu in [&[0u32, 2, 5][..], &[0, 4, 2, 6], &[1, 6], &[0]] {
        match ops::segment_mean_pool(&x, cu) {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("segment_mean_pool") && m.contains("6 tokens"), "{m}"),
            other => panic!("{cu:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    // Empty segments pool to zeros; the others to their mean.
    let x = Tensor::from_slice(&d, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
    let out = ops::segment_mean_pool(&x, &[0, 2, 2, 3]).unwrap().to_vec().unwrap();
    assert_eq!(out, vec![2.0, 3.0, 0.0, 0.0, 5.0, 6.0]);
}

#[test]
fn bf16_is_unsupported_on_cpu_not_a_panic() {
    let d = Device::cpu().unwrap();
    assert!(!d.supports(DType::BF16));
    assert!(matches!(t(&d, &[2]).to_dtype(DType::BF16), Err(Error::Unsupported { .. })));
}

#[test]
fn tensors_from_different_devices_are_rejected() {
    let (a, b) = (Device::cpu().unwrap(), Device::cpu().unwrap());
    assert!(matches!(ops::add(&t(&a, &[2]), &t(&b, &[2])), Err(Error::DeviceMismatch(_))));
}

#[test]
fn empty_tensors_work() {
    let d = Device::cpu().unwrap();
    let x = Tensor::from_slice(&d, &[], &[0, 4]).unwrap();
    let w = t(&d, &[3, 4]);
    let y = ops::linear(&x, &w, None, Activation::Relu).unwrap();
    assert_eq!(y.shape(), &[0, 3]);
    assert!(y.to_vec().unwrap().is_empty());
    assert_eq!(ops::embedding(&w, &[]).unwrap().shape(), &[0, 4]);
}

#[test]
fn tensor_made_on_one_thread_is_read_on_another() {
    // Not settled: the reader's stream waits for an event on the maker's stream.
    let d = Device::cpu().unwrap();
    let data: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
    let x = std::thread::scope(|s| s.spawn(|| ops::relu(&Tensor::from_slice(&d, &data, &[100_000]).unwrap()).unwrap()).join().unwrap());
    let y = std::thread::scope(|s| s.spawn(|| ops::add(&x, &x).unwrap().to_vec().unwrap()).join().unwrap());
    assert!(y.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));
    drop(x); // freed with a fence on the reader's stream
}
