// Row kernels, one 256-invocation workgroup per row: layer_norm (with an
// optional residual), softmax, l2_normalize. Reductions go through
// workgroup memory (sums in f32, tree order).

struct P { rows: u32, cols: u32, ox: u32, or: u32, og: u32, ob: u32, oo: u32, has_res: u32, eps: f32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> res: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn xin(row: u32, c: u32) -> f32 {
    var v = x[p.ox + row * p.cols + c];
    if p.has_res != 0u {
        v += res[p.or + row * p.cols + c];
    }
    return v;
}

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows {
        return;
    }
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        s += xin(row, c);
    }
    let mean = reduce_sum(lid, s) / f32(p.cols);
    var q = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let d = xin(row, c) - mean;
        q += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(lid, q) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += 256u) {
        o[p.oo + row * p.cols + c] = (xin(row, c) - mean) * rstd * gamma[p.og + c] + beta[p.ob + c];
    }
}

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows {
        return;
    }
    var m = NEG_BIG;
    for (var c = lid; c < p.cols; c += 256u) {
        m = max(m, x[p.ox + row * p.cols + c]);
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        s += exp(x[p.ox + row * p.cols + c] - m);
    }
    s = reduce_sum(lid, s);
    // A row of -inf only (every entry masked): zeros, as on the CPU.
    var inv = 0.0;
    if s > 0.0 {
        inv = 1.0 / s;
    }
    for (var c = lid; c < p.cols; c += 256u) {
        o[p.oo + row * p.cols + c] = exp(x[p.ox + row * p.cols + c] - m) * inv;
    }
}

@compute @workgroup_size(256)
fn l2_normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows {
        return;
    }
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let v = x[p.ox + row * p.cols + c];
        s += v * v;
    }
    let inv = 1.0 / max(sqrt(reduce_sum(lid, s)), 1e-12);
    for (var c = lid; c < p.cols; c += 256u) {
        o[p.oo + row * p.cols + c] = x[p.ox + row * p.cols + c] * inv;
    }
}
