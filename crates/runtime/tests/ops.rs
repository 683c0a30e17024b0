//! The safe op layer (`ops.rs`): what it refuses before anything reaches a
//! backend. Each case would be undefined behaviour or a silent wrong answer
//! if it reached the CPU backend's kernels; here it is a clear error.

use braid_runtime::backend::{Activation, Gemm, VarlenAttention};
use braid_runtime::{Buffer, DType, Device, Error};

fn f32s(device: &Device, stream: &braid_runtime::Stream, v: &[f32]) -> Buffer {
    let b = Buffer::alloc(device, v.len() * 4, stream).unwrap();
    stream.write_f32(b.view(), v).unwrap();
    b
}

fn invalid(r: braid_runtime::Result<()>, what: &str) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(what), "error {m:?} should mention {what:?}");
            m
        }
        other => panic!("expected InvalidArgument({what}), got {other:?}"),
    }
}

#[test]
fn in_place_and_overlapping_outputs_are_refused() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    let a = f32s(&device, &s, &[1.0; 8]);
    invalid(s.add(a.view(), a.view(), a.view(), 8, DType::F32), "overlaps");
    // Half overlap inside one buffer: out = bytes 16..48, input = bytes 0..32.
    let r = s.activation(a.view().sub(0, 32).unwrap(), a.view().sub(16, 16).unwrap(), 4, Activation::Relu, DType::F32);
    invalid(r, "overlaps");
    // Disjoint halves of one buffer are fine.
    let src = f32s(&device, &s, &[-1.0, 2.0, -3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    s.activation(src.view().sub(0, 16).unwrap(), src.view().sub(16, 16).unwrap(), 4, Activation::Relu, DType::F32).unwrap();
    let mut back = [0f32; 8];
    s.read_f32(src.view(), &mut back).unwrap();
    assert_eq!(back, [-1.0, 2.0, -3.0, 4.0, 0.0, 2.0, 0.0, 4.0]);
}

#[test]
fn operands_smaller_than_the_descriptor_are_refused() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    let (a, w, out) = (f32s(&device, &s, &[1.0; 6]), f32s(&device, &s, &[1.0; 6]), Buffer::alloc(&device, 4 * 4, &s).unwrap());
    // m=2, k=3, n=3 needs w of 9 floats and out of 6: both too small.
    let g = Gemm { m: 2, n: 3, k: 3, a: a.view(), w: w.view(), bias: None, out: out.view(), act: Activation::None, dtype: DType::F32 };
    invalid(s.gemm(&g), "needs 36 bytes");
    // Overflowing sizes are an error, not a wrap-around.
    let g = Gemm { m: usize::MAX / 2, n: 3, k: 3, ..g };
    invalid(s.gemm(&g), "overflows");
    // A sub-view beyond its buffer cannot be made.
    assert!(matches!(a.view().sub(20, 8), Err(Error::InvalidArgument(_))));
}

#[test]
fn writes_only_from_the_home_stream_and_never_after_settling() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    let other = device.stream(0).unwrap();
    assert_ne!(s.index(), other.index());
    let x = f32s(&device, &s, &[1.0, 2.0]);
    let out = Buffer::alloc(&device, 8, &s).unwrap();
    invalid(other.activation(x.view(), out.view(), 2, Activation::None, DType::F32), "belongs to stream");
    s.synchronize().unwrap();
    out.mark_settled();
    invalid(s.activation(x.view(), out.view(), 2, Activation::None, DType::F32), "settled");
    invalid(s.write(out.view(), &[0u8; 8]), "settled");
}

#[test]
fn gather_ids_are_checked_and_devices_must_match() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    let table = f32s(&device, &s, &[1.0, 2.0, 3.0, 4.0]);
    let out = Buffer::alloc(&device, 16, &s).unwrap();
    invalid(s.gather(&device, table.view(), 2, &[0, 2], out.view(), 2, DType::F32), "id 2 at position 1");
    let other = Device::cpu().unwrap();
    let os = other.current_stream().unwrap();
    match os.activation(table.view(), out.view(), 2, Activation::None, DType::F32) {
        Err(Error::DeviceMismatch(_)) => {}
        r => panic!("expected DeviceMismatch, got {r:?}"),
    }
    s.gather(&device, table.view(), 2, &[1, 0], out.view(), 2, DType::F32).unwrap();
    let mut back = [0f32; 4];
    s.read_f32(out.view(), &mut back).unwrap();
    assert_eq!(back, [3.0, 4.0, 1.0, 2.0]);
}

#[test]
fn varlen_offsets_and_sizes_are_checked() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    // Packed qkv of 3 tokens, 1 head of dim 2: rows [q0 q1 k0 k1 v0 v1].
    let qkv: Vec<f32> = (0..18).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let x = f32s(&device, &s, &qkv);
    let out = Buffer::alloc(&device, 3 * 2 * 4, &s).unwrap();
    let base = x.view();
    let cu: &[u32] = &[0, 1, 3];
    let p = VarlenAttention { q: base, k: base.from(8).unwrap(), v: base.from(16).unwrap(), row_stride: 6, cu_seqlens: cu, out: out.view(), batch: 2, max_seq: 2, heads: 1, head_dim: 2, scale: 0.5, dtype: DType::F32 };
    invalid(s.attention_varlen(&device, &VarlenAttention { cu_seqlens: &[1, 3], batch: 1, ..p }), "rising from 0");
    invalid(s.attention_varlen(&device, &VarlenAttention { cu_seqlens: &[0, 3, 1], ..p }), "rising from 0");
    invalid(s.attention_varlen(&device, &VarlenAttention { batch: 3, ..p }), "batch+1");
    invalid(s.attention_varlen(&device, &VarlenAttention { max_seq: 1, ..p }), "max_seq");
    // Offsets past the rows of q/k/v, and an output too small for them.
    invalid(s.attention_varlen(&device, &VarlenAttention { cu_seqlens: &[0, 1, 4], max_seq: 3, ..p }), "needs");
    let small = Buffer::alloc(&device, 4 * 4, &s).unwrap();
    invalid(s.attention_varlen(&device, &VarlenAttention { out: small.view(), ..p }), "needs 24 bytes");
    invalid(s.attention_varlen(&device, &VarlenAttention { out: base.sub(48, 24).unwrap(), ..p }), "overlaps");
    // Well formed: each segment attends only to itself (f64 reference).
    s.attention_varlen(&device, &p).unwrap();
    let mut back = [0f32; 6];
    s.read_f32(out.view(), &mut back).unwrap();
    let row = |t: usize, part: usize| -> [f64; 2] { [qkv[t * 6 + part * 2] as f64, qkv[t * 6 + part * 2 + 1] as f64] };
    let mut want = Vec::new();
    for (a, b) in [(0usize, 1usize), (1, 3)] {
        for t in a..b {
            let q = row(t, 0);
            let w: Vec<f64> = (a..b).map(|j| ((q[0] * row(j, 1)[0] + q[1] * row(j, 1)[1]) * 0.5).exp()).collect();
            let z: f64 = w.iter().sum();
            for c in 0..2 {
                want.push((a..b).zip(&w).map(|(j, w)| w * row(j, 2)[c]).sum::<f64>() / z);
            }
        }
    }
    for (g, w) in back.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5, "varlen attention {back:?} vs reference {want:?}");
    }
}

#[test]
fn a_gemm_weight_is_read_only_afterwards_and_checked_like_gemm() {
    let device = Device::cpu().unwrap();
    let s = device.current_stream().unwrap();
    // m=8 rows (the CPU packs the weight from 8 rows on), n=3, k=2.
    let (m, n, k) = (8usize, 3usize, 2usize);
    let av: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
    let wv = [1.0f32, -2.0, 0.5, 3.0, -1.5, 0.25];
    let (a, w) = (f32s(&device, &s, &av), f32s(&device, &s, &wv));
    let (out, plain) = (Buffer::alloc(&device, m * n * 4, &s).unwrap(), Buffer::alloc(&device, m * n * 4, &s).unwrap());
    let g = Gemm { m, n, k, a: a.view(), w: w.view(), bias: None, out: out.view(), act: Activation::None, dtype: DType::F32 };
    // The same size checks as gemm, before anything is enqueued.
    invalid(s.gemm_weight(&Gemm { n: 4, ..g }), "needs 32 bytes");
    invalid(s.gemm_weight(&Gemm { a: out.view(), ..g }), "overlaps");
    s.gemm_weight(&g).unwrap();
    s.gemm(&Gemm { out: plain.view(), ..g }).unwrap();
    let (mut got, mut want) = (vec![0f32; m * n], vec![0f32; m * n]);
    s.read_f32(out.view(), &mut got).unwrap();
    s.read_f32(plain.view(), &mut want).unwrap();
    for i in 0..m {
        for j in 0..n {
            let r: f32 = (0..k).map(|kk| av[i * k + kk] * wv[j * k + kk]).sum();
            for (what, v) in [("gemm", want[i * n + j]), ("gemm_weight", got[i * n + j])] {
                assert!((v - r).abs() <= 1e-5 * r.abs().max(1.0), "{what} [{i},{j}]: {v} vs {r}");
            }
        }
    }
    assert!(w.gemm_pack().get().is_some(), "an {m}-row GEMM should have packed the weight");
    // The pack would go stale if the weight changed: every write is refused.
    invalid(s.write(w.view(), &[0u8; 8]), "GEMM weight");
    invalid(s.activation(a.view(), w.view(), 4, Activation::None, DType::F32), "GEMM weight");
}
