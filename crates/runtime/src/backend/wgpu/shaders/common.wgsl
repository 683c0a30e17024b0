// Shared by every kernel (prepended to each shader): activations, the
// flat invocation index over a 2-D grid, and the "minus infinity" sentinel
// the reductions start from (a finite value, so `m - m` is never NaN).

const NEG_BIG: f32 = -3.0e38;

fn erf_approx(x: f32) -> f32 {
    // Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
    let s = sign(x);
    let ax = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * ax);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-ax * ax);
    return s * y;
}

// 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu: as `act_code` in wgpu/mod.rs.
fn act(x: f32, a: u32) -> f32 {
    switch a {
        case 1u: { return max(x, 0.0); }
        case 2u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752)); }
        case 3u: {
            let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
            return 0.5 * x * (1.0 + tanh(u));
        }
        case 4u: { return x / (1.0 + exp(-x)); }
        default: { return x; }
    }
}

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * size + lid;
}
