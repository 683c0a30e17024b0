// out[m, n] = act(a[m, k] . w[n, k]^T + bias[n]): 64x64 output tiles per
// 256-invocation workgroup, 4x4 outputs per invocation, k in steps of 16
// through workgroup memory.

struct P { m: u32, n: u32, k: u32, act: u32, oa: u32, ow: u32, ob: u32, oo: u32, has_bias: u32, _p0: u32, _p1: u32, _p2: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

var<workgroup> ta: array<array<f32, 64>, 16>;
var<workgroup> tw: array<array<f32, 64>, 16>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var l = 0u; l < 4u; l++) {
            let idx = lid + l * 256u;
            let r = idx / 16u;
            let kk = idx % 16u;
            let gk = k0 + kk;
            var va = 0.0;
            if row0 + r < p.m && gk < p.k {
                va = a[p.oa + (row0 + r) * p.k + gk];
            }
            ta[kk][r] = va;
            var vw = 0.0;
            if col0 + r < p.n && gk < p.k {
                vw = w[p.ow + (col0 + r) * p.k + gk];
            }
            tw[kk][r] = vw;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = ta[kk][ty + 16u * i];
                bv[i] = tw[kk][tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + tx + 16u * j;
            if r < p.m && c < p.n {
                var v = acc[i][j];
                if p.has_bias != 0u {
                    v += bias[p.ob + c];
                }
                o[p.oo + r * p.n + c] = act(v, p.act);
            }
        }
    }
}
