// Scaled-dot-product attention with a key padding mask and an optional
// additive per-head bias: one invocation per (query, head, batch), an
// online softmax over the keys (running max and sum, as the CPU kernel),
// q and the accumulator in private memory (head_dim <= 128).

struct P {
    seq: u32, heads: u32, hd: u32, stride: u32,
    oq: u32, ok: u32, ov: u32, om: u32,
    oo: u32, obias: u32, has_mask: u32, has_bias: u32,
    scale: f32, batch: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let h = gid.y;
    let b = gid.z;
    if i >= p.seq || h >= p.heads || b >= p.batch {
        return;
    }
    var qv: array<f32, 128>;
    var acc: array<f32, 128>;
    let qb = p.oq + (b * p.seq + i) * p.stride + h * p.hd;
    for (var d = 0u; d < p.hd; d++) {
        qv[d] = q[qb + d] * p.scale;
        acc[d] = 0.0;
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j < p.seq; j++) {
        if p.has_mask != 0u && mask[p.om + b * p.seq + j] == 0.0 {
            continue;
        }
        let kb = p.ok + (b * p.seq + j) * p.stride + h * p.hd;
        var s = 0.0;
        for (var d = 0u; d < p.hd; d++) {
            s = fma(qv[d], k[kb + d], s);
        }
        if p.has_bias != 0u {
            s += bias[p.obias + (h * p.seq + i) * p.seq + j];
        }
        let m_new = max(m, s);
        let c = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * c + e;
        let vb = p.ov + (b * p.seq + j) * p.stride + h * p.hd;
        for (var d = 0u; d < p.hd; d++) {
            acc[d] = fma(e, v[vb + d], acc[d] * c);
        }
        m = m_new;
    }
    // Every key masked (or hidden by the bias): zeros, as on the CPU.
    var inv = 0.0;
    if l > 0.0 {
        inv = 1.0 / l;
    }
    let ob = p.oo + (b * p.seq + i) * p.heads * p.hd + h * p.hd;
    for (var d = 0u; d < p.hd; d++) {
        o[ob + d] = acc[d] * inv;
    }
}
