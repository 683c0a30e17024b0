// Masked mean over the sequence (one invocation per (batch, feature)) and
// the rotary position embedding of packed qkv rows (one per element).

struct P {
    n: u32, dim: u32, ox: u32, om: u32,
    oo: u32, seq: u32, batch: u32, has_mask: u32,
    heads: u32, hd: u32, oc: u32, os: u32,
    _p0: u32, _p1: u32, _p2: u32, _p3: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> m: array<f32>;
@group(0) @binding(3) var<storage, read> sn: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(256)
fn mean_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid, 256u);
    if e >= p.batch * p.dim {
        return;
    }
    let b = e / p.dim;
    let d = e % p.dim;
    var s = 0.0;
    var count = 0.0;
    for (var j = 0u; j < p.seq; j++) {
        var w = 1.0;
        if p.has_mask != 0u {
            w = m[p.om + b * p.seq + j];
        }
        if w != 0.0 {
            count += w;
            s = fma(w, x[p.ox + (b * p.seq + j) * p.dim + d], s);
        }
    }
    o[p.oo + e] = s * (1.0 / max(count, 1e-9));
}

// x, out: [rows, 3 * heads * hd]; cos (binding m) and sin (binding sn):
// [seq, hd]; row r is at position r % seq; the v third is copied.
@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid, 256u);
    if e >= p.n {
        return;
    }
    let d = p.heads * p.hd;
    let r = e / (3u * d);
    let c = e % (3u * d);
    let xb = p.ox + r * 3u * d;
    if c >= 2u * d {
        o[p.oo + e] = x[xb + c];
        return;
    }
    let hh = p.hd / 2u;
    let within = c % p.hd;
    let base = c - within;
    let pos = r % p.seq;
    var rot = 0.0;
    if within < hh {
        rot = -x[xb + base + within + hh];
    } else {
        rot = x[xb + base + within - hh];
    }
    o[p.oo + e] = x[xb + c] * m[p.oc + pos * p.hd + within] + rot * sn[p.os + pos * p.hd + within];
}
