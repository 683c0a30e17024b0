// Shared by every kernel (prepended to each shader): activations, the
// flat invocation index over a 2-D grid, and the "minus infinity" sentinel
// the reductions start from (a finite value, so `m - m` is never NaN).

const NEG_BIG: f32 = -3.0e38;

// erfc with a fractional error below 1.2e-7 everywhere (Numerical Recipes'
// Chebyshev fit), so GELU keeps its relative accuracy for negative inputs,
// where 1 + erf(x) would cancel.
fn erfc_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    if x >= 0.0 {
        return r;
    }
    return 2.0 - r;
}

// 0 none, 1 relu, 2 gelu (erf), 3 gelu (tanh), 4 silu: as `act_code` in wgpu/mod.rs.
fn act(x: f32, a: u32) -> f32 {
    switch a {
        case 1u: { return max(x, 0.0); }
        // 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)
        case 2u: { return 0.5 * x * erfc_approx(-x * 0.70710678118654752); }
        // 0.5 x (1 + tanh u) = x / (1 + exp(-2u)): no cancellation for x < 0
        case 3u: {
            let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
            return x / (1.0 + exp(-2.0 * u));
        }
        case 4u: { return x / (1.0 + exp(-x)); }
        default: { return x; }
    }
}

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * size + lid;
}
