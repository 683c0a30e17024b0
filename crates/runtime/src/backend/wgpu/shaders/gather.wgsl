// Gather and pooling: embedding rows by u32 id, rotary embedding of packed
// qkv rows, masked mean over the sequence.

struct P {
    n: u32, dim: u32, ot: u32, oi: u32,
    oo: u32, rows: u32, seq: u32, heads: u32,
    hd: u32, ox: u32, om: u32, has_mask: u32,
    batch: u32, oc: u32, os: u32, _p0: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;

// out[i, d] = table[ids[i], d]; n = ids * dim. An id out of range (the safe
// op layer rules it out) writes zeros instead of reading out of bounds.
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_index(wid, nwg, lid, 256u);
    if e >= p.n {
        return;
    }
    let i = e / p.dim;
    let d = e % p.dim;
    let id = ids[p.oi + i];
    var val = 0.0;
    if id < p.rows {
        val = t[p.ot + id * p.dim + d];
    }
    o[p.oo + e] = val;
}
