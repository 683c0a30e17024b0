// Scaled-dot-product attention with a key padding mask and an optional
// additive per-head bias, flash style: a 64-invocation workgroup per (64
// queries, head, batch), one query per invocation. The workgroup walks the
// keys in tiles of TK: it loads the tile's K and V rows (zero-padded to HD)
// and mask into workgroup memory together, coalesced, then each invocation
// scores its query against the tile, rescales its running sum and
// accumulator once per tile (online softmax, as the CPU kernel) and adds the
// tile's values. q and the accumulator are vec4 arrays of compile-time
// length, so the driver can keep them in registers.
//
// HD4 (head_dim capacity / 4), TK (keys per tile) and TILE4 (TK * HD4) are
// prepended by the backend for each head_dim class (16, 32, 64, 128).

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

var<workgroup> ks: array<vec4<f32>, TILE4>;
var<workgroup> vs: array<vec4<f32>, TILE4>;
var<workgroup> keep: array<u32, TK>;

// Four consecutive elements of K (or V) row `base` from dimension 4 * c,
// zero past hd.
fn load_k4(base: u32, c: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if 4u * c + e < p.hd {
            r[e] = k[base + 4u * c + e];
        }
    }
    return r;
}

fn load_v4(base: u32, c: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        if 4u * c + e < p.hd {
            r[e] = v[base + 4u * c + e];
        }
    }
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = wid.x * 64u + lid;
    let h = wid.y;
    let b = wid.z;
    let live = i < p.seq;
    var qv: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    let qb = p.oq + (b * p.seq + i) * p.stride + h * p.hd;
    for (var c = 0u; c < HD4; c++) {
        var r = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let d = 4u * c + e;
            if live && d < p.hd {
                r[e] = q[qb + d] * p.scale;
            }
        }
        qv[c] = r;
        acc[c] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    var sc: array<f32, TK>;
    for (var j0 = 0u; j0 < p.seq; j0 += TK) {
        // The tile, loaded by the whole workgroup.
        for (var t = lid; t < TILE4; t += 64u) {
            let jj = t / HD4;
            let c = t % HD4;
            let j = j0 + jj;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if j < p.seq {
                kv = load_k4(p.ok + (b * p.seq + j) * p.stride + h * p.hd, c);
                vv = load_v4(p.ov + (b * p.seq + j) * p.stride + h * p.hd, c);
            }
            ks[t] = kv;
            vs[t] = vv;
        }
        for (var jj = lid; jj < TK; jj += 64u) {
            let j = j0 + jj;
            var kp = 0u;
            if j < p.seq && (p.has_mask == 0u || mask[p.om + b * p.seq + j] != 0.0) {
                kp = 1u;
            }
            keep[jj] = kp;
        }
        workgroupBarrier();
        if live {
            // Scores of the tile and their max over the kept keys.
            var tm = NEG_BIG;
            var seen = false;
            for (var jj = 0u; jj < TK; jj++) {
                var s = 0.0;
                for (var c = 0u; c < HD4; c++) {
                    s += dot(qv[c], ks[jj * HD4 + c]);
                }
                if p.has_bias != 0u && keep[jj] != 0u {
                    s += bias[p.obias + (h * p.seq + i) * p.seq + j0 + jj];
                }
                sc[jj] = s;
                if keep[jj] != 0u {
                    tm = max(tm, s);
                    seen = true;
                }
            }
            if seen {
                let m_new = max(m, tm);
                let corr = exp(m - m_new);
                l *= corr;
                for (var c = 0u; c < HD4; c++) {
                    acc[c] *= corr;
                }
                for (var jj = 0u; jj < TK; jj++) {
                    if keep[jj] != 0u {
                        let e = exp(sc[jj] - m_new);
                        l += e;
                        for (var c = 0u; c < HD4; c++) {
                            acc[c] = fma(vec4<f32>(e), vs[jj * HD4 + c], acc[c]);
                        }
                    }
                }
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if !live {
        return;
    }
    // Every key masked (or hidden by the bias): zeros, as on the CPU.
    var inv = 0.0;
    if l > 0.0 {
        inv = 1.0 / l;
    }
    let ob = p.oo + (b * p.seq + i) * p.heads * p.hd + h * p.hd;
    for (var c = 0u; c < HD4; c++) {
        let r = acc[c] * inv;
        for (var e = 0u; e < 4u; e++) {
            let d = 4u * c + e;
            if d < p.hd {
                o[ob + d] = r[e];
            }
        }
    }
}
