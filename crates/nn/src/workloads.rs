//! The built-in workloads, with weights and inputs made from fixed seeds so
//! the main job needs no download (DESIGN.md):
//! - `mlp`: 512 -> 1024 -> 1024 -> 512 with ReLU, input `[batch, 512]`;
//!   2,099,712 parameters with a bias in every layer as PyTorch's
//!   `nn.Linear` has (DESIGN.md's 2,099,200 omits the last layer's 512);
//! - `encoder`: a post-norm TransformerEncoderLayer, d_model 256, 4 heads,
//!   feed-forward 1024 with ReLU (PyTorch's defaults), input `[batch, 64, 256]`.
//!
//! Weights follow PyTorch's default initialisation (uniform ±1/√fan_in for
//! Linear, Xavier-uniform for the packed attention projection, LayerNorm 1
//! and 0) and PyTorch's parameter names, so [`export_safetensors`] writes a
//! file `nn.Sequential(...)` / `nn.TransformerEncoderLayer(...,
//! batch_first=True)` loads with `load_state_dict`.

use crate::{HostWeights, Mlp, Rng, Tensor, TransformerEncoderLayer};
use braid_runtime::{Activation, DType, Device, Error, Result};
use std::path::Path;

/// Layer sizes of the `mlp` workload.
pub const MLP_DIMS: [usize; 4] = [512, 1024, 1024, 512];
/// The seed of the `mlp` weights.
pub const MLP_SEED: u64 = 0x6d6c70; // "mlp"
/// `encoder`: model width, heads, feed-forward width, sequence length.
pub const ENCODER_DIM: usize = 256;
pub const ENCODER_HEADS: usize = 4;
pub const ENCODER_FF: usize = 1024;
pub const ENCODER_SEQ: usize = 64;
/// PyTorch's LayerNorm epsilon.
pub const ENCODER_EPS: f32 = 1e-5;
/// The seed of the `encoder` weights.
pub const ENCODER_SEED: u64 = 0x656e63; // "enc"

/// `nn.Linear(in, out)`'s default init: weight and bias uniform ±1/√in.
pub fn init_linear(w: &mut HostWeights, rng: &mut Rng, prefix: &str, inp: usize, out: usize) -> Result<()> {
    let bound = 1.0 / (inp as f32).sqrt();
    w.insert(format!("{prefix}.weight"), &[out, inp], rng.uniform_vec(out * inp, -bound, bound))?;
    w.insert(format!("{prefix}.bias"), &[out], rng.uniform_vec(out, -bound, bound))
}

/// Weights of an MLP with `dims`, named `0`, `2`, `4`, ... as `nn.Sequential`.
pub fn mlp_weights_for(dims: &[usize], seed: u64) -> Result<HostWeights> {
    let mut w = HostWeights::new(format!("mlp{dims:?} seed {seed}"));
    let mut rng = Rng::new(seed);
    for (i, d) in dims.windows(2).enumerate() {
        init_linear(&mut w, &mut rng, &(2 * i).to_string(), d[0], d[1])?;
    }
    Ok(w)
}

/// The `mlp` workload's weights.
pub fn mlp_weights() -> Result<HostWeights> {
    mlp_weights_for(&MLP_DIMS, MLP_SEED)
}

/// The `mlp` workload on `device` (f32).
pub fn mlp(device: &Device) -> Result<Mlp> {
    mlp_with(device, DType::F32)
}

/// The `mlp` workload on `device` in `dtype`.
pub fn mlp_with(device: &Device, dtype: DType) -> Result<Mlp> {
    Mlp::load(&mlp_weights()?, "", &MLP_DIMS, Activation::Relu, device, dtype)
}

/// `[batch, 512]` standard-normal input values.
pub fn mlp_input(batch: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed ^ 0x1a2b_3c4d).normal_vec(batch * MLP_DIMS[0], 1.0)
}

/// [`mlp_input`] as a tensor on `device`.
pub fn mlp_input_tensor(device: &Device, batch: usize, seed: u64) -> Result<Tensor> {
    Tensor::from_slice(device, &mlp_input(batch, seed), &[batch, MLP_DIMS[0]])
}

/// Weights of a TransformerEncoderLayer (`self_attn.*`, `linear1`,
/// `linear2`, `norm1`, `norm2`) initialised as PyTorch does. With
/// `random_norms` LayerNorm gets random weights and biases (for checks).
pub fn encoder_weights_for(dim: usize, ff: usize, seed: u64, random_norms: bool) -> Result<HostWeights> {
    let mut w = HostWeights::new(format!("encoder d{dim} ff{ff} seed {seed}"));
    let mut rng = Rng::new(seed);
    let xavier = (6.0 / (dim + 3 * dim) as f32).sqrt();
    w.insert("self_attn.in_proj_weight", &[3 * dim, dim], rng.uniform_vec(3 * dim * dim, -xavier, xavier))?;
    let b = if random_norms { rng.uniform_vec(3 * dim, -0.1, 0.1) } else { vec![0.0; 3 * dim] };
    w.insert("self_attn.in_proj_bias", &[3 * dim], b)?;
    init_linear(&mut w, &mut rng, "self_attn.out_proj", dim, dim)?;
    if !random_norms {
        // PyTorch zeroes the out_proj bias of MultiheadAttention.
        w.insert("self_attn.out_proj.bias", &[dim], vec![0.0; dim])?;
    }
    init_linear(&mut w, &mut rng, "linear1", dim, ff)?;
    init_linear(&mut w, &mut rng, "linear2", ff, dim)?;
    for n in ["norm1", "norm2"] {
        let (g, b) = if random_norms { (rng.uniform_vec(dim, 0.5, 1.5), rng.uniform_vec(dim, -0.5, 0.5)) } else { (vec![1.0; dim], vec![0.0; dim]) };
        w.insert(format!("{n}.weight"), &[dim], g)?;
        w.insert(format!("{n}.bias"), &[dim], b)?;
    }
    Ok(w)
}

/// The `encoder` workload's weights.
pub fn encoder_weights() -> Result<HostWeights> {
    encoder_weights_for(ENCODER_DIM, ENCODER_FF, ENCODER_SEED, false)
}

/// The `encoder` workload on `device` (f32).
pub fn encoder(device: &Device) -> Result<TransformerEncoderLayer> {
    encoder_with(device, DType::F32)
}

/// The `encoder` workload on `device` in `dtype`.
pub fn encoder_with(device: &Device, dtype: DType) -> Result<TransformerEncoderLayer> {
    TransformerEncoderLayer::load(&encoder_weights()?, "", ENCODER_DIM, ENCODER_HEADS, ENCODER_FF, Activation::Relu, ENCODER_EPS, device, dtype)
}

/// `[batch, 64, 256]` standard-normal input values.
pub fn encoder_input(batch: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed ^ 0x5e9_0000).normal_vec(batch * ENCODER_SEQ * ENCODER_DIM, 1.0)
}

/// [`encoder_input`] as a tensor on `device`.
pub fn encoder_input_tensor(device: &Device, batch: usize, seed: u64) -> Result<Tensor> {
    Tensor::from_slice(device, &encoder_input(batch, seed), &[batch, ENCODER_SEQ, ENCODER_DIM])
}

/// Write a workload's weights (`mlp` or `encoder`) as safetensors for the
/// PyTorch peer (`model.load_state_dict(safetensors.torch.load_file(path))`).
pub fn export_safetensors(workload: &str, path: impl AsRef<Path>) -> Result<()> {
    match workload {
        "mlp" => mlp_weights()?.save_safetensors(path),
        "encoder" => encoder_weights()?.save_safetensors(path),
        other => Err(Error::InvalidArgument(format!("unknown workload {other:?}: expected mlp or encoder"))),
    }
}
