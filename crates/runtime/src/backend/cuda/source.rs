//! The CUDA C of every non-GEMM kernel, as NVRTC source, grouped in
//! compilation units. Each kernel exists for f32 and for bf16 storage
//! (`_f32` / `_bf16`); arithmetic is always f32. bf16 is handled as raw
//! `unsigned short` with explicit round-to-nearest-even conversions, so no
//! CUDA header is needed at run time. Semantics follow the CPU backend's
//! `kernels.rs` exactly (masked rows give zeros, etc.).

use super::module::Unit;

/// Shared prelude: bf16 load/store, activations, block reductions.
/// Block reductions need `blockDim.x` to be a multiple of 32 (≤ 1024).
macro_rules! prelude {
    () => {
        r#"
typedef unsigned short bf16;
#define NEG_INF __int_as_float(0xff800000)
__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16* p, long long i) { return __uint_as_float(((unsigned)p[i]) << 16); }
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ unsigned short f2bf(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ void st(bf16* p, long long i, float v) { p[i] = f2bf(v); }
// IEEE half, a distinct type so overloads pick it; converted with the
// hardware's cvt (round to nearest even).
struct __align__(2) f16 { unsigned short u; };
__device__ __forceinline__ float h2f(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short f2h(float v) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h; }
__device__ __forceinline__ float ld(const f16* p, long long i) { return h2f(p[i].u); }
__device__ __forceinline__ void st(f16* p, long long i, float v) { p[i].u = f2h(v); }
// 16-byte vector access: VW<T>::n elements of T (4 f32, 8 bf16/f16) in one
// load or store. The pointer must be 16-byte aligned (the launcher checks).
template <typename T> struct VW { static constexpr int n = 16 / sizeof(T); };
__device__ __forceinline__ void ldv(const float* p, float* f) {
    float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x; f[1] = v.y; f[2] = v.z; f[3] = v.w;
}
__device__ __forceinline__ void stv(float* p, const float* f) { *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]); }
__device__ __forceinline__ void ldv(const bf16* p, float* f) {
    uint4 v = *reinterpret_cast<const uint4*>(p);
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { f[2 * k] = __uint_as_float(w[k] << 16); f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u); }
}
__device__ __forceinline__ void stv(bf16* p, const float* f) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (unsigned)f2bf(f[2 * k]) | ((unsigned)f2bf(f[2 * k + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void ldv(const f16* p, float* f) {
    uint4 v = *reinterpret_cast<const uint4*>(p);
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) { f[2 * k] = h2f((unsigned short)(w[k] & 0xffffu)); f[2 * k + 1] = h2f((unsigned short)(w[k] >> 16)); }
}
__device__ __forceinline__ void stv(f16* p, const float* f) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) w[k] = (unsigned)f2h(f[2 * k]) | ((unsigned)f2h(f[2 * k + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ float act_fn(float x, int a) {
    switch (a) {
    case 1: return fmaxf(x, 0.0f);
    case 2: return 0.5f * x * erfcf(-x * 0.70710678118654752f); /* erfc: no cancellation for x << 0 */
    case 3: return x / (1.0f + expf(-1.5957691216057308f * (x + 0.044715f * x * x * x))); /* = 0.5x(1+tanh u), no cancellation */
    case 4: return x / (1.0f + expf(-x)); /* SiLU */
    default: return x;
    }
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block; every thread gets the result. `sh` holds 32 floats.
__device__ float block_sum(float v, float* sh) {
    v = warp_sum(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = (l < nw) ? sh[l] : 0.0f;
        v = warp_sum(v);
        if (l == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}
__device__ float block_max(float v, float* sh) {
    v = warp_max(v);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = (l < nw) ? sh[l] : NEG_INF;
        v = warp_max(v);
        if (l == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}
#define GRID_STRIDE(i, n) for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
"#
    };
}

/// add, activation, bias+activation epilogue, casts.
pub(crate) const ELEMENTWISE: &str = concat!(
    prelude!(),
    r#"
template <typename T> __device__ void add_t(const T* a, const T* b, T* o, long long n) {
    GRID_STRIDE(i, n) st(o, i, ld(a, i) + ld(b, i));
}
template <typename T> __device__ void act_t(const T* x, T* o, long long n, int a) {
    GRID_STRIDE(i, n) st(o, i, act_fn(ld(x, i), a));
}
// In place on out[m, n]: out = act(out + bias[col]).
template <typename T> __device__ void bias_act_t(T* o, const T* bias, long long total, int n, int a) {
    GRID_STRIDE(i, total) {
        float v = ld(o, i);
        if (bias) v += ld(bias, i % n);
        st(o, i, act_fn(v, a));
    }
}
// Vectorised forms: n counts 16-byte vectors (the launcher picks these when
// every pointer is 16-byte aligned and the element count, or for bias_act
// the row width, is a multiple of VW<T>::n).
template <typename T> __device__ void add_v(const T* a, const T* b, T* o, long long nv) {
    constexpr int V = VW<T>::n;
    GRID_STRIDE(i, nv) {
        float x[V], y[V];
        ldv(a + i * V, x); ldv(b + i * V, y);
#pragma unroll
        for (int k = 0; k < V; k++) x[k] += y[k];
        stv(o + i * V, x);
    }
}
template <typename T> __device__ void act_v(const T* x, T* o, long long nv, int a) {
    constexpr int V = VW<T>::n;
    GRID_STRIDE(i, nv) {
        float v[V];
        ldv(x + i * V, v);
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = act_fn(v[k], a);
        stv(o + i * V, v);
    }
}
// In place on out[rows, n] with nvc = n / V vectors a row. Block = 8 warps:
// lane = vector column in a chunk of 32 (grid.x chunks), warp = row, rows
// strided by 8 * gridDim.y. A thread keeps its bias vector in registers, so
// there is no per-element index arithmetic beyond one multiply-add.
template <typename T> __device__ void bias_act_v(T* o, const T* bias, long long rows, int nvc, int a) {
    constexpr int V = VW<T>::n;
    const int c = blockIdx.x * 32 + (threadIdx.x & 31);
    if (c >= nvc) return;
    float b[V];
#pragma unroll
    for (int k = 0; k < V; k++) b[k] = 0.0f;
    if (bias) ldv(bias + (long long)c * V, b);
    for (long long r = (long long)blockIdx.y * 8 + (threadIdx.x >> 5); r < rows; r += (long long)gridDim.y * 8) {
        T* p = o + (r * nvc + c) * V;
        float v[V];
        ldv(p, v);
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = act_fn(v[k] + b[k], a);
        stv(p, v);
    }
}
// GLU: o[r, c] = act(x[r, c]) * x[r, cols + c].
template <typename T> __device__ void glu_t(const T* x, T* o, long long rows, int cols, int a) {
    GRID_STRIDE(i, rows * cols) {
        long long r = i / cols; int c = (int)(i % cols);
        st(o, i, act_fn(ld(x, r * 2 * cols + c), a) * ld(x, r * 2 * cols + cols + c));
    }
}
// Rotary embedding (rotate-half) on the q and k parts of packed qkv rows; v copied.
template <typename T> __device__ void rope_t(const T* x, T* o, const float* cs, const float* sn, long long rows, int seq, int d, int hd) {
    GRID_STRIDE(i, rows * 3 * d) {
        long long r = i / (3 * d); int c = (int)(i % (3 * d));
        float v = ld(x, i);
        if (c < 2 * d) {
            int e = c % hd, half = hd / 2;
            long long t = (long long)(r % seq) * hd + e;
            float rot = e < half ? -ld(x, i + half) : ld(x, i - half);
            v = v * cs[t] + rot * sn[t];
        }
        st(o, i, v);
    }
}
extern "C" __global__ void glu_f32(const float* x, float* o, long long rows, int cols, int a) { glu_t(x, o, rows, cols, a); }
extern "C" __global__ void glu_bf16(const bf16* x, bf16* o, long long rows, int cols, int a) { glu_t(x, o, rows, cols, a); }
extern "C" __global__ void glu_f16(const f16* x, f16* o, long long rows, int cols, int a) { glu_t(x, o, rows, cols, a); }
extern "C" __global__ void rope_f32(const float* x, float* o, const float* c, const float* s, long long rows, int seq, int d, int hd) { rope_t(x, o, c, s, rows, seq, d, hd); }
extern "C" __global__ void rope_bf16(const bf16* x, bf16* o, const float* c, const float* s, long long rows, int seq, int d, int hd) { rope_t(x, o, c, s, rows, seq, d, hd); }
extern "C" __global__ void rope_f16(const f16* x, f16* o, const float* c, const float* s, long long rows, int seq, int d, int hd) { rope_t(x, o, c, s, rows, seq, d, hd); }
extern "C" __global__ void add_f32(const float* a, const float* b, float* o, long long n) { add_t(a, b, o, n); }
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* o, long long n) { add_t(a, b, o, n); }
extern "C" __global__ void add_f16(const f16* a, const f16* b, f16* o, long long n) { add_t(a, b, o, n); }
extern "C" __global__ void act_f32(const float* x, float* o, long long n, int a) { act_t(x, o, n, a); }
extern "C" __global__ void act_bf16(const bf16* x, bf16* o, long long n, int a) { act_t(x, o, n, a); }
extern "C" __global__ void act_f16(const f16* x, f16* o, long long n, int a) { act_t(x, o, n, a); }
extern "C" __global__ void bias_act_f32(float* o, const float* b, long long t, int n, int a) { bias_act_t(o, b, t, n, a); }
extern "C" __global__ void bias_act_bf16(bf16* o, const bf16* b, long long t, int n, int a) { bias_act_t(o, b, t, n, a); }
extern "C" __global__ void bias_act_f16(f16* o, const f16* b, long long t, int n, int a) { bias_act_t(o, b, t, n, a); }
extern "C" __global__ void add_v_f32(const float* a, const float* b, float* o, long long n) { add_v(a, b, o, n); }
extern "C" __global__ void add_v_bf16(const bf16* a, const bf16* b, bf16* o, long long n) { add_v(a, b, o, n); }
extern "C" __global__ void add_v_f16(const f16* a, const f16* b, f16* o, long long n) { add_v(a, b, o, n); }
extern "C" __global__ void act_v_f32(const float* x, float* o, long long n, int a) { act_v(x, o, n, a); }
extern "C" __global__ void act_v_bf16(const bf16* x, bf16* o, long long n, int a) { act_v(x, o, n, a); }
extern "C" __global__ void act_v_f16(const f16* x, f16* o, long long n, int a) { act_v(x, o, n, a); }
extern "C" __global__ void bias_act_v_f32(float* o, const float* b, long long t, int n, int a) { bias_act_v(o, b, t, n, a); }
extern "C" __global__ void bias_act_v_bf16(bf16* o, const bf16* b, long long t, int n, int a) { bias_act_v(o, b, t, n, a); }
extern "C" __global__ void bias_act_v_f16(f16* o, const f16* b, long long t, int n, int a) { bias_act_v(o, b, t, n, a); }
extern "C" __global__ void cast_f32_bf16(const float* x, bf16* o, long long n) { GRID_STRIDE(i, n) st(o, i, x[i]); }
extern "C" __global__ void cast_bf16_f32(const bf16* x, float* o, long long n) { GRID_STRIDE(i, n) o[i] = ld(x, i); }
extern "C" __global__ void cast_f32_f16(const float* x, f16* o, long long n) { GRID_STRIDE(i, n) st(o, i, x[i]); }
extern "C" __global__ void cast_f16_f32(const f16* x, float* o, long long n) { GRID_STRIDE(i, n) o[i] = ld(x, i); }
"#
);

/// LayerNorm (+residual), softmax, L2 normalize: one block per row.
pub(crate) const NORM: &str = concat!(
    prelude!(),
    r#"
template <typename T>
__device__ void ln_t(const T* x, const T* res, const T* g, const T* b, T* o, int cols, float eps) {
    __shared__ float sh[32];
    long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += ld(x, base + c) + (res ? ld(res, base + c) : 0.0f);
    float mean = block_sum(s, sh) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = ld(x, base + c) + (res ? ld(res, base + c) : 0.0f) - mean;
        q += d * d;
    }
    float inv = rsqrtf(block_sum(q, sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ld(x, base + c) + (res ? ld(res, base + c) : 0.0f);
        st(o, base + c, (v - mean) * inv * ld(g, c) + ld(b, c));
    }
}
// Warp-per-row LayerNorm for rows of at most 1024 elements whose width is a
// multiple of VW<T>::n (16-byte aligned rows): the row (x + residual) stays in
// registers, so x and the residual are read once and out written once; the
// variance is the exact two-pass one. blockDim.x / 32 rows a block.
template <typename T>
__device__ void ln_warp_t(const T* x, const T* res, const T* g, const T* b, T* o, int rows, int cols, float eps) {
    constexpr int V = VW<T>::n;
    constexpr int NV = 1024 / 32 / V; // vectors a lane holds at most
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return; // whole warps leave together: the shuffles below stay full-warp
    int nvec = cols / V;
    long long base = (long long)row * cols;
    float v[NV][V];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int c = j * 32 + lane;
        if (c < nvec) {
            ldv(x + base + (long long)c * V, v[j]);
            if (res) {
                float r[V];
                ldv(res + base + (long long)c * V, r);
#pragma unroll
                for (int k = 0; k < V; k++) v[j][k] += r[k];
            }
#pragma unroll
            for (int k = 0; k < V; k++) s += v[j][k];
        }
    }
    float mean = warp_sum(s) / cols;
    float q = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        if (j * 32 + lane < nvec) {
#pragma unroll
            for (int k = 0; k < V; k++) { float d = v[j][k] - mean; q += d * d; }
        }
    }
    float inv = rsqrtf(warp_sum(q) / cols + eps);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int c = j * 32 + lane;
        if (c < nvec) {
            float gg[V], bb[V];
            ldv(g + c * V, gg); ldv(b + c * V, bb);
#pragma unroll
            for (int k = 0; k < V; k++) v[j][k] = (v[j][k] - mean) * inv * gg[k] + bb[k];
            stv(o + base + (long long)c * V, v[j]);
        }
    }
}
// Warp-per-row L2 normalisation, same conditions as ln_warp_t.
template <typename T> __device__ void l2_warp_t(const T* x, T* o, int rows, int cols) {
    constexpr int V = VW<T>::n;
    constexpr int NV = 1024 / 32 / V;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int nvec = cols / V;
    long long base = (long long)row * cols;
    float v[NV][V];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int c = j * 32 + lane;
        if (c < nvec) {
            ldv(x + base + (long long)c * V, v[j]);
#pragma unroll
            for (int k = 0; k < V; k++) s += v[j][k] * v[j][k];
        }
    }
    float inv = 1.0f / fmaxf(sqrtf(warp_sum(s)), 1e-12f);
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int c = j * 32 + lane;
        if (c < nvec) {
#pragma unroll
            for (int k = 0; k < V; k++) v[j][k] *= inv;
            stv(o + base + (long long)c * V, v[j]);
        }
    }
}
template <typename T> __device__ void softmax_t(const T* x, T* o, int cols) {
    __shared__ float sh[32];
    long long base = (long long)blockIdx.x * cols;
    float m = NEG_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, ld(x, base + c));
    m = block_max(m, sh);
    if (m == NEG_INF) {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) st(o, base + c, 0.0f);
        return;
    }
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(ld(x, base + c) - m);
    float inv = 1.0f / block_sum(s, sh);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) st(o, base + c, expf(ld(x, base + c) - m) * inv);
}
template <typename T> __device__ void l2_t(const T* x, T* o, int cols) {
    __shared__ float sh[32];
    long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) { float v = ld(x, base + c); s += v * v; }
    float inv = 1.0f / fmaxf(sqrtf(block_sum(s, sh)), 1e-12f);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) st(o, base + c, ld(x, base + c) * inv);
}
extern "C" __global__ void layer_norm_f32(const float* x, const float* r, const float* g, const float* b, float* o, int cols, float eps) { ln_t(x, r, g, b, o, cols, eps); }
extern "C" __global__ void layer_norm_bf16(const bf16* x, const bf16* r, const bf16* g, const bf16* b, bf16* o, int cols, float eps) { ln_t(x, r, g, b, o, cols, eps); }
extern "C" __global__ void layer_norm_f16(const f16* x, const f16* r, const f16* g, const f16* b, f16* o, int cols, float eps) { ln_t(x, r, g, b, o, cols, eps); }
extern "C" __global__ void layer_norm_warp_f32(const float* x, const float* r, const float* g, const float* b, float* o, int rows, int cols, float eps) { ln_warp_t(x, r, g, b, o, rows, cols, eps); }
extern "C" __global__ void layer_norm_warp_bf16(const bf16* x, const bf16* r, const bf16* g, const bf16* b, bf16* o, int rows, int cols, float eps) { ln_warp_t(x, r, g, b, o, rows, cols, eps); }
extern "C" __global__ void layer_norm_warp_f16(const f16* x, const f16* r, const f16* g, const f16* b, f16* o, int rows, int cols, float eps) { ln_warp_t(x, r, g, b, o, rows, cols, eps); }
extern "C" __global__ void l2_normalize_warp_f32(const float* x, float* o, int rows, int cols) { l2_warp_t(x, o, rows, cols); }
extern "C" __global__ void l2_normalize_warp_bf16(const bf16* x, bf16* o, int rows, int cols) { l2_warp_t(x, o, rows, cols); }
extern "C" __global__ void l2_normalize_warp_f16(const f16* x, f16* o, int rows, int cols) { l2_warp_t(x, o, rows, cols); }
extern "C" __global__ void softmax_f32(const float* x, float* o, int cols) { softmax_t(x, o, cols); }
extern "C" __global__ void softmax_bf16(const bf16* x, bf16* o, int cols) { softmax_t(x, o, cols); }
extern "C" __global__ void softmax_f16(const f16* x, f16* o, int cols) { softmax_t(x, o, cols); }
extern "C" __global__ void l2_normalize_f32(const float* x, float* o, int cols) { l2_t(x, o, cols); }
extern "C" __global__ void l2_normalize_bf16(const bf16* x, bf16* o, int cols) { l2_t(x, o, cols); }
extern "C" __global__ void l2_normalize_f16(const f16* x, f16* o, int cols) { l2_t(x, o, cols); }
"#
);

/// Fused scaled-dot-product attention: one block per (query, head, batch).
/// Dynamic shared memory holds the query row (`head_dim` floats) and the
/// scores (`seq` floats); a warp computes one key's dot product at a time.
pub(crate) const ATTENTION: &str = concat!(
    prelude!(),
    r#"
template <typename T>
__device__ void attn_t(const T* q, const T* k, const T* v, const float* mask, T* out,
                       int seq, int heads, int hd, long long rs, float scale, const float* bias = nullptr) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    float* qs = smem;
    float* sc = smem + hd;
    int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    long long tok0 = (long long)b * seq;
    long long qrow = (tok0 + i) * rs + (long long)h * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = ld(q, qrow + d);
    __syncthreads();
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int j = w; j < seq; j += nw) {
        float s;
        if (mask && mask[tok0 + j] == 0.0f) {
            s = NEG_INF;
        } else {
            long long krow = (tok0 + j) * rs + (long long)h * hd;
            float acc = 0.0f;
            for (int d = l; d < hd; d += 32) acc += qs[d] * ld(k, krow + d);
            s = warp_sum(acc) * scale;
            if (bias) s += bias[((long long)h * seq + i) * seq + j];
        }
        if (l == 0) sc[j] = s;
    }
    __syncthreads();
    float m = NEG_INF;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) m = fmaxf(m, sc[j]);
    m = block_max(m, red);
    long long orow = (tok0 + i) * (long long)heads * hd + (long long)h * hd;
    if (m == NEG_INF) {
        for (int d = threadIdx.x; d < hd; d += blockDim.x) st(out, orow + d, 0.0f);
        return;
    }
    float s = 0.0f;
    for (int j = threadIdx.x; j < seq; j += blockDim.x) { float e = expf(sc[j] - m); sc[j] = e; s += e; }
    float inv = 1.0f / block_sum(s, red);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < seq; j++) {
            float p = sc[j];
            if (p != 0.0f) acc += p * ld(v, (tok0 + j) * rs + (long long)h * hd + d);
        }
        st(out, orow + d, acc * inv);
    }
}
// Tiled attention (flash style): one block per (tile of BQ queries, head,
// batch). Each query is owned by TPQ = D/32 adjacent lanes; lane `sub` holds
// the float4 chunks sub, sub+TPQ, ... (32 dims) of the query (pre-scaled by
// scale*log2 e) and of the f32 output accumulator in registers. K and V tiles
// of BK keys are staged in shared memory as f32 (zero-padded to D dims) once
// per block and reused by all BQ queries; the softmax is online (running max
// and sum, rescaled every KC keys), in base 2. Masked keys and keys past `seq`
// score -inf; a query whose keys are all masked gives zeros (l == 0), as the
// CPU kernel. Requires hd <= D.
template <typename T, int D, int BQ, int BK>
__device__ __forceinline__ void flash_t(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        const float* __restrict__ mask, T* __restrict__ out,
                                        int seq, int heads, int hd, long long rs, float scale,
                                        const unsigned* __restrict__ cu = nullptr) {
    constexpr int TPQ = D / 32;
    constexpr int NT = BQ * TPQ;
    constexpr int C = 8;   // float4 chunks per lane (32 dims)
    constexpr int KC = 16; // keys per online-softmax step
    __shared__ __align__(16) float Ks[BK * D];
    __shared__ __align__(16) float Vs[BK * D];
    __shared__ float Ms[BK];
    const int tid = threadIdx.x, qi = tid / TPQ, sub = tid % TPQ;
    const int h = blockIdx.y, b = blockIdx.z;
    // Packed (varlen) layout: this sequence is tokens cu[b] .. cu[b+1] of
    // the stream; a block past its end has nothing to do (uniform per block).
    const long long tok0 = cu ? (long long)cu[b] : (long long)b * seq;
    if (cu) {
        seq = (int)(cu[b + 1] - cu[b]);
        if ((int)blockIdx.x * BQ >= seq) return;
    }
    const int i = blockIdx.x * BQ + qi;
    const long long hoff = (long long)h * hd;
    const float sl2 = scale * 1.4426950408889634f;
    float qa[C][4], o[C][4];
#pragma unroll
    for (int c = 0; c < C; c++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int d = 4 * (sub + TPQ * c) + e;
            qa[c][e] = (i < seq && d < hd) ? ld(q, (tok0 + i) * rs + hoff + d) * sl2 : 0.0f;
            o[c][e] = 0.0f;
        }
    }
    float m = NEG_INF, l = 0.0f;
    for (int j0 = 0; j0 < seq; j0 += BK) {
        __syncthreads(); // the previous tile is no longer read
        for (int idx = tid; idx < BK * D; idx += NT) {
            int j = idx / D, d = idx % D;
            bool ok = j0 + j < seq && d < hd;
            long long a = (tok0 + j0 + j) * rs + hoff + d;
            Ks[idx] = ok ? ld(k, a) : 0.0f;
            Vs[idx] = ok ? ld(v, a) : 0.0f;
        }
        for (int j = tid; j < BK; j += NT)
            Ms[j] = (j0 + j < seq && (!mask || mask[tok0 + j0 + j] != 0.0f)) ? 1.0f : 0.0f;
        __syncthreads();
        const int kend = min(BK, seq - j0);
        for (int jc = 0; jc < kend; jc += KC) {
            float s[KC];
            float tmax = NEG_INF;
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                const int j = jc + jj;
                float acc = 0.0f;
#pragma unroll
                for (int c = 0; c < C; c++) {
                    float4 kk = *reinterpret_cast<const float4*>(&Ks[j * D + 4 * (sub + TPQ * c)]);
                    acc += qa[c][0] * kk.x + qa[c][1] * kk.y + qa[c][2] * kk.z + qa[c][3] * kk.w;
                }
#pragma unroll
                for (int x = TPQ / 2; x > 0; x >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, x);
                s[jj] = Ms[j] != 0.0f ? acc : NEG_INF;
                tmax = fmaxf(tmax, s[jj]);
            }
            const float mn = fmaxf(m, tmax);
            if (mn == NEG_INF) continue; // every key so far masked: nothing to add
            const float corr = exp2f(m - mn); // 0 when m == -inf
            l *= corr;
#pragma unroll
            for (int c = 0; c < C; c++) {
#pragma unroll
                for (int e = 0; e < 4; e++) o[c][e] *= corr;
            }
            m = mn;
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                const int j = jc + jj;
                const float p = exp2f(s[jj] - mn); // 0 for masked keys
                l += p;
#pragma unroll
                for (int c = 0; c < C; c++) {
                    float4 vv = *reinterpret_cast<const float4*>(&Vs[j * D + 4 * (sub + TPQ * c)]);
                    o[c][0] += p * vv.x; o[c][1] += p * vv.y; o[c][2] += p * vv.z; o[c][3] += p * vv.w;
                }
            }
        }
    }
    if (i >= seq) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const long long orow = (tok0 + i) * (long long)heads * hd + hoff;
#pragma unroll
    for (int c = 0; c < C; c++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int d = 4 * (sub + TPQ * c) + e;
            if (d < hd) st(out, orow + d, o[c][e] * inv);
        }
    }
}
#define FLASH(TN, T, D, BQ, BK) \
extern "C" __global__ void __launch_bounds__(BQ * (D / 32)) flash_##TN##_d##D##_q##BQ(const T* q, const T* k, const T* v, \
    const float* mask, T* o, int seq, int heads, int hd, long long rs, float scale) { \
    flash_t<T, D, BQ, BK>(q, k, v, mask, o, seq, heads, hd, rs, scale); } \
extern "C" __global__ void __launch_bounds__(BQ * (D / 32)) flash_varlen_##TN##_d##D##_q##BQ(const T* q, const T* k, const T* v, \
    const unsigned* cu, T* o, int heads, int hd, long long rs, float scale) { \
    flash_t<T, D, BQ, BK>(q, k, v, nullptr, o, 0, heads, hd, rs, scale, cu); }
// ---- Tensor-core flash attention for the packed (varlen) layout, f16/bf16.
// One block = 4 warps = 64 queries of one (sequence, head); each warp owns 16
// query rows. Per tile of 64 keys: K (row-major) and V (transposed) are
// staged in shared memory as raw 16-bit values; S = Q·Kᵀ and O += P·V run on
// mma.sync.m16n8k16 with f32 accumulation; the softmax is online, in f32,
// base 2. The S accumulator's layout is reused as P's A-operand layout (the
// FlashAttention-2 register trick), so P never touches shared memory.
// Keys past the sequence score -inf; query rows past it are computed on zero
// queries and not stored. Requires head_dim <= D, D a multiple of 16.
__device__ __forceinline__ unsigned short raw16(const bf16* p, long long i) { return p[i]; }
__device__ __forceinline__ unsigned short raw16(const f16* p, long long i) { return p[i].u; }
// mma.sync with bf16 and cvt.bf16x2 need sm_80: older devices never launch
// these kernels (the host picks the CUDA-core kernel there) and trap if they did.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define MMA_OK 0
#else
#define MMA_OK 1
#endif
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, const unsigned* b, const bf16*) {
#if MMA_OK
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, const unsigned* b, const f16*) {
#if MMA_OK
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
// Two floats as one register of two 16-bit values (lo in the low half).
__device__ __forceinline__ unsigned pack2(float lo, float hi, const bf16*) {
#if MMA_OK
    unsigned r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
#else
    __trap(); return 0;
#endif
}
__device__ __forceinline__ unsigned pack2(float lo, float hi, const f16*) {
    unsigned r; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo)); return r;
}
template <typename T, int D>
__device__ __forceinline__ void flash_mma_t(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                            const unsigned* __restrict__ cu, T* __restrict__ out,
                                            int heads, int hd, long long rs, float scale) {
    constexpr int BQ = 64, BK = 64, KP = D + 8, VP = BK + 8;
    constexpr int KS = D / 16;  // k-steps of Q·Kᵀ
    constexpr int NB = BK / 8;  // 8-key blocks of S
    constexpr int DB = D / 8;   // 8-dim blocks of O
    __shared__ __align__(16) unsigned short Ks[BK * KP];
    __shared__ __align__(16) unsigned short Vt[D * VP];
    const int h = blockIdx.y, b = blockIdx.z;
    const long long tok0 = cu[b];
    const int seq = (int)(cu[b + 1] - cu[b]);
    const int q0 = blockIdx.x * BQ;
    if (q0 >= seq) return;  // uniform per block
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const long long hoff = (long long)h * hd;
    const float sl2 = scale * 1.4426950408889634f;
    // Q fragments: rows r0 = q0 + warp*16 + g and r0 + 8.
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int row = (x & 1) ? r1 : r0;
            const int col = ks * 16 + t4 * 2 + ((x & 2) ? 8 : 0);
            unsigned lo = 0, hi = 0;
            if (row < seq) {
                const long long base = (tok0 + row) * rs + hoff;
                if (col < hd) lo = raw16(q, base + col);
                if (col + 1 < hd) hi = raw16(q, base + col + 1);
            }
            qa[ks][x] = lo | (hi << 16);
        }
    }
    float o[DB][4];
#pragma unroll
    for (int db = 0; db < DB; db++) { o[db][0] = o[db][1] = o[db][2] = o[db][3] = 0.0f; }
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    // 16-byte tile loads when every key/value row slice is 16-byte aligned
    // (head_dim == D, the row stride a multiple of 8 elements, aligned
    // bases); uniform over the grid. Else one 16-bit value at a time.
    const bool vec = hd == D && (rs & 7) == 0 && (((unsigned long long)k | (unsigned long long)v) & 15) == 0;
    for (int j0 = 0; j0 < seq; j0 += BK) {
        __syncthreads();  // the previous tile is no longer read
        if (vec) {
            for (int idx = tid; idx < BK * D / 8; idx += BQ * 2) {
                const int j = idx / (D / 8), d = (idx % (D / 8)) * 8;
                uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
                if (j0 + j < seq) {
                    const long long a = (tok0 + j0 + j) * rs + hoff + d;
                    kv = *reinterpret_cast<const uint4*>(k + a);
                    vv = *reinterpret_cast<const uint4*>(v + a);
                }
                *reinterpret_cast<uint4*>(&Ks[j * KP + d]) = kv; // KP * 2 bytes is a multiple of 16
                const unsigned w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    Vt[(d + 2 * e) * VP + j] = (unsigned short)(w[e] & 0xffffu);
                    Vt[(d + 2 * e + 1) * VP + j] = (unsigned short)(w[e] >> 16);
                }
            }
        } else {
            for (int idx = tid; idx < BK * D; idx += BQ * 2) {
                const int j = idx / D, d = idx % D;
                const bool ok = j0 + j < seq && d < hd;
                const long long a = (tok0 + j0 + j) * rs + hoff + d;
                Ks[j * KP + d] = ok ? raw16(k, a) : (unsigned short)0;
                Vt[d * VP + j] = ok ? raw16(v, a) : (unsigned short)0;
            }
        }
        __syncthreads();
        // S = Q·Kᵀ for this warp's 16 rows and the tile's 64 keys.
        float sc[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            sc[nb][0] = sc[nb][1] = sc[nb][2] = sc[nb][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                unsigned bb[2];
                const unsigned short* kp = &Ks[(nb * 8 + g) * KP + ks * 16 + t4 * 2];
                bb[0] = *reinterpret_cast<const unsigned*>(kp);
                bb[1] = *reinterpret_cast<const unsigned*>(kp + 8);
                mma16816(sc[nb], qa[ks], bb, q);
            }
        }
        // Online softmax (rows g and g+8 of the warp; a row's 64 scores are
        // spread over the 4 lanes of a quad).
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = j0 + nb * 8 + t4 * 2 + (e & 1);
                float sv = key < seq ? sc[nb][e] * sl2 : NEG_INF;
                sc[nb][e] = sv;
                if (e < 2) mx0 = fmaxf(mx0, sv); else mx1 = fmaxf(mx1, sv);
            }
        }
#pragma unroll
        for (int x = 1; x < 4; x <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: key j0 < seq exists
        const float c0 = exp2f(m0 - mn0), c1 = exp2f(m1 - mn1);  // 0 on the first tile
        m0 = mn0; m1 = mn1;
        float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            sc[nb][0] = exp2f(sc[nb][0] - mn0); sc[nb][1] = exp2f(sc[nb][1] - mn0);
            sc[nb][2] = exp2f(sc[nb][2] - mn1); sc[nb][3] = exp2f(sc[nb][3] - mn1);
            s0 += sc[nb][0] + sc[nb][1];
            s1 += sc[nb][2] + sc[nb][3];
        }
        l0 = l0 * c0 + s0;  // per-lane partial sums; reduced across the quad at the end
        l1 = l1 * c1 + s1;
#pragma unroll
        for (int db = 0; db < DB; db++) { o[db][0] *= c0; o[db][1] *= c0; o[db][2] *= c1; o[db][3] *= c1; }
        // O += P·V: P's A fragments come straight from the S accumulators.
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            unsigned pa[4];
            pa[0] = pack2(sc[2 * kk][0], sc[2 * kk][1], q);
            pa[1] = pack2(sc[2 * kk][2], sc[2 * kk][3], q);
            pa[2] = pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1], q);
            pa[3] = pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3], q);
#pragma unroll
            for (int db = 0; db < DB; db++) {
                unsigned bb[2];
                const unsigned short* vp = &Vt[(db * 8 + g) * VP + kk * 16 + t4 * 2];
                bb[0] = *reinterpret_cast<const unsigned*>(vp);
                bb[1] = *reinterpret_cast<const unsigned*>(vp + 8);
                mma16816(o[db], pa, bb, q);
            }
        }
    }
#pragma unroll
    for (int x = 1; x < 4; x <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, x);
        l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int db = 0; db < DB; db++) {
        const int col = db * 8 + t4 * 2;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            if (col + e >= hd) continue;
            if (r0 < seq) st(out, (tok0 + r0) * (long long)heads * hd + hoff + col + e, o[db][e] * i0);
            if (r1 < seq) st(out, (tok0 + r1) * (long long)heads * hd + hoff + col + e, o[db][2 + e] * i1);
        }
    }
}
#define FLASH_MMA(TN, T, D) \
extern "C" __global__ void __launch_bounds__(128) flash_mma_##TN##_d##D(const T* q, const T* k, const T* v, \
    const unsigned* cu, T* o, int heads, int hd, long long rs, float scale) { \
    flash_mma_t<T, D>(q, k, v, cu, o, heads, hd, rs, scale); }
FLASH_MMA(bf16, bf16, 32)
FLASH_MMA(bf16, bf16, 64)
FLASH_MMA(bf16, bf16, 128)
FLASH_MMA(f16, f16, 32)
FLASH_MMA(f16, f16, 64)
FLASH_MMA(f16, f16, 128)
FLASH(f32, float, 32, 32, 64)
FLASH(f32, float, 32, 64, 64)
FLASH(f32, float, 64, 32, 64)
FLASH(f32, float, 64, 64, 64)
FLASH(f32, float, 128, 32, 32)
FLASH(f32, float, 128, 64, 32)
FLASH(bf16, bf16, 32, 32, 64)
FLASH(f16, f16, 32, 32, 64)
FLASH(bf16, bf16, 32, 64, 64)
FLASH(f16, f16, 32, 64, 64)
FLASH(bf16, bf16, 64, 32, 64)
FLASH(f16, f16, 64, 32, 64)
FLASH(bf16, bf16, 64, 64, 64)
FLASH(f16, f16, 64, 64, 64)
FLASH(bf16, bf16, 128, 32, 32)
FLASH(f16, f16, 128, 32, 32)
FLASH(bf16, bf16, 128, 64, 32)
FLASH(f16, f16, 128, 64, 32)
extern "C" __global__ void attention_f32(const float* q, const float* k, const float* v, const float* mask, float* o,
    int seq, int heads, int hd, long long rs, float scale) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale); }
extern "C" __global__ void attention_bf16(const bf16* q, const bf16* k, const bf16* v, const float* mask, bf16* o,
    int seq, int heads, int hd, long long rs, float scale) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale); }
extern "C" __global__ void attention_f16(const f16* q, const f16* k, const f16* v, const float* mask, f16* o,
    int seq, int heads, int hd, long long rs, float scale) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale); }
extern "C" __global__ void attention_bias_f32(const float* q, const float* k, const float* v, const float* mask, float* o,
    int seq, int heads, int hd, long long rs, float scale, const float* bias) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale, bias); }
extern "C" __global__ void attention_bias_bf16(const bf16* q, const bf16* k, const bf16* v, const float* mask, bf16* o,
    int seq, int heads, int hd, long long rs, float scale, const float* bias) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale, bias); }
extern "C" __global__ void attention_bias_f16(const f16* q, const f16* k, const f16* v, const float* mask, f16* o,
    int seq, int heads, int hd, long long rs, float scale, const float* bias) { attn_t(q, k, v, mask, o, seq, heads, hd, rs, scale, bias); }
"#
);

/// Embedding gather and masked mean pooling.
pub(crate) const GATHER: &str = concat!(
    prelude!(),
    r#"
template <typename T> __device__ void gather_t(const T* table, const unsigned* ids, T* o, long long n, int dim) {
    GRID_STRIDE(i, n * dim) {
        long long r = i / dim;
        o[i] = table[(long long)ids[r] * dim + (i - r * dim)];
    }
}
// A row copy of 16-byte vectors (any dtype): dimv = dim / VW<T>::n, table
// and out 16-byte aligned (the launcher checks).
extern "C" __global__ void gather_v(const uint4* table, const unsigned* ids, uint4* o, long long n, int dimv) {
    GRID_STRIDE(i, n * dimv) {
        long long r = i / dimv;
        o[i] = table[(long long)ids[r] * dimv + (i - r * dimv)];
    }
}
// Large batches: grid (ceil(dim / blockDim), batch), one thread per output
// element looping over the tokens (enough blocks to fill the GPU).
template <typename T> __device__ void mean_pool_t(const T* x, const float* mask, T* o, int seq, int dim) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    int b = blockIdx.y;
    if (d >= dim) return;
    float acc = 0.0f, cnt = 0.0f;
    for (int s = 0; s < seq; s++) {
        float w = mask ? mask[(long long)b * seq + s] : 1.0f;
        if (w != 0.0f) { cnt += w; acc += w * ld(x, ((long long)b * seq + s) * dim + d); }
    }
    st(o, (long long)b * dim + d, acc * (1.0f / fmaxf(cnt, 1e-9f)));
}
// Small batches: grid (ceil(dim / 32), batch), block 32 x POOL_WARPS
// (flattened): lane = column, warp w = tokens w, w + POOL_WARPS, ...; the
// warps' partial sums meet in shared memory. Parallel over tokens as well as
// columns, so one sequence is not a serial loop over its tokens.
#define POOL_WARPS 8
template <typename T> __device__ void mean_pool_tok_t(const T* x, const float* mask, T* o, int seq, int dim) {
    __shared__ float part[POOL_WARPS][32];
    __shared__ float cnts[POOL_WARPS];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int d = blockIdx.x * 32 + lane;
    int b = blockIdx.y;
    float acc = 0.0f, cnt = 0.0f;
    for (int s = w; s < seq; s += POOL_WARPS) {
        float m = mask ? mask[(long long)b * seq + s] : 1.0f;
        if (m != 0.0f) { cnt += m; if (d < dim) acc += m * ld(x, ((long long)b * seq + s) * dim + d); }
    }
    part[w][lane] = acc;
    if (lane == 0) cnts[w] = cnt;
    __syncthreads();
    if (w == 0 && d < dim) {
        float a = 0.0f, c = 0.0f;
#pragma unroll
        for (int k = 0; k < POOL_WARPS; k++) { a += part[k][lane]; c += cnts[k]; }
        st(o, (long long)b * dim + d, a * (1.0f / fmaxf(c, 1e-9f)));
    }
}
extern "C" __global__ void gather_f32(const float* t, const unsigned* ids, float* o, long long n, int dim) { gather_t(t, ids, o, n, dim); }
extern "C" __global__ void gather_bf16(const bf16* t, const unsigned* ids, bf16* o, long long n, int dim) { gather_t(t, ids, o, n, dim); }
extern "C" __global__ void gather_f16(const f16* t, const unsigned* ids, f16* o, long long n, int dim) { gather_t(t, ids, o, n, dim); }
extern "C" __global__ void mean_pool_f32(const float* x, const float* m, float* o, int seq, int dim) { mean_pool_t(x, m, o, seq, dim); }
extern "C" __global__ void mean_pool_bf16(const bf16* x, const float* m, bf16* o, int seq, int dim) { mean_pool_t(x, m, o, seq, dim); }
extern "C" __global__ void mean_pool_f16(const f16* x, const float* m, f16* o, int seq, int dim) { mean_pool_t(x, m, o, seq, dim); }
extern "C" __global__ void mean_pool_tok_f32(const float* x, const float* m, float* o, int seq, int dim) { mean_pool_tok_t(x, m, o, seq, dim); }
extern "C" __global__ void mean_pool_tok_bf16(const bf16* x, const float* m, bf16* o, int seq, int dim) { mean_pool_tok_t(x, m, o, seq, dim); }
extern "C" __global__ void mean_pool_tok_f16(const f16* x, const float* m, f16* o, int seq, int dim) { mean_pool_tok_t(x, m, o, seq, dim); }
// 256 threads a block: lane x (threadIdx.x & 31) owns a column of a
// 32-column slice, warp y (threadIdx.x >> 5) sums every 8th row of the
// segment, then warp 0 adds the 8 partial sums; grid (ceil(dim / 32),
// segments). The mean of rows cu[i] .. cu[i+1] of the packed stream (zeros
// when empty), parallel over tokens as well as columns (batch 1 has one
// segment).
template <typename T> __device__ void segment_mean_pool_t(const T* x, const unsigned* cu, T* o, int dim) {
    __shared__ float part[8][33];
    int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    int d = blockIdx.x * 32 + tx;
    int i = blockIdx.y;
    long long a = cu[i], b = cu[i + 1];
    float acc = 0.0f;
    if (d < dim) for (long long r = a + ty; r < b; r += 8) acc += ld(x, r * dim + d);
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && d < dim) {
        float s = 0.0f;
        for (int k = 0; k < 8; k++) s += part[k][tx];
        st(o, (long long)i * dim + d, b > a ? s / (float)(b - a) : 0.0f);
    }
}
extern "C" __global__ void segment_mean_pool_f32(const float* x, const unsigned* cu, float* o, int dim) { segment_mean_pool_t(x, cu, o, dim); }
extern "C" __global__ void segment_mean_pool_bf16(const bf16* x, const unsigned* cu, bf16* o, int dim) { segment_mean_pool_t(x, cu, o, dim); }
extern "C" __global__ void segment_mean_pool_f16(const f16* x, const unsigned* cu, f16* o, int dim) { segment_mean_pool_t(x, cu, o, dim); }
"#
);

/// The kernels each unit defines (looked up once after loading).
pub(crate) fn kernel_names(unit: Unit) -> &'static [&'static str] {
    match unit {
        Unit::Elementwise => &["add_f32", "add_bf16", "add_f16", "act_f32", "act_bf16", "act_f16", "bias_act_f32", "bias_act_bf16", "bias_act_f16", "add_v_f32", "add_v_bf16", "add_v_f16", "act_v_f32", "act_v_bf16", "act_v_f16", "bias_act_v_f32", "bias_act_v_bf16", "bias_act_v_f16", "cast_f32_bf16", "cast_bf16_f32", "cast_f32_f16", "cast_f16_f32", "glu_f32", "glu_bf16", "glu_f16", "rope_f32", "rope_bf16", "rope_f16"],
        Unit::Norm => &["layer_norm_f32", "layer_norm_bf16", "layer_norm_f16", "layer_norm_warp_f32", "layer_norm_warp_bf16", "layer_norm_warp_f16", "l2_normalize_warp_f32", "l2_normalize_warp_bf16", "l2_normalize_warp_f16", "softmax_f32", "softmax_bf16", "softmax_f16", "l2_normalize_f32", "l2_normalize_bf16", "l2_normalize_f16"],
        Unit::Attention => &["attention_f32", "attention_bf16", "attention_f16", "attention_bias_f32", "attention_bias_bf16", "attention_bias_f16", "flash_f32_d32_q32", "flash_f32_d32_q64", "flash_f32_d64_q32", "flash_f32_d64_q64", "flash_f32_d128_q32", "flash_f32_d128_q64", "flash_bf16_d32_q32", "flash_f16_d32_q32", "flash_bf16_d32_q64", "flash_f16_d32_q64", "flash_bf16_d64_q32", "flash_f16_d64_q32", "flash_bf16_d64_q64", "flash_f16_d64_q64", "flash_bf16_d128_q32", "flash_f16_d128_q32", "flash_bf16_d128_q64", "flash_f16_d128_q64", "flash_varlen_f32_d32_q32", "flash_varlen_f32_d32_q64", "flash_varlen_f32_d64_q32", "flash_varlen_f32_d64_q64", "flash_varlen_f32_d128_q32", "flash_varlen_f32_d128_q64", "flash_varlen_bf16_d32_q32", "flash_varlen_bf16_d32_q64", "flash_varlen_bf16_d64_q32", "flash_varlen_bf16_d64_q64", "flash_varlen_bf16_d128_q32", "flash_varlen_bf16_d128_q64", "flash_varlen_f16_d32_q32", "flash_varlen_f16_d32_q64", "flash_varlen_f16_d64_q32", "flash_varlen_f16_d64_q64", "flash_varlen_f16_d128_q32", "flash_varlen_f16_d128_q64", "flash_mma_bf16_d32", "flash_mma_bf16_d64", "flash_mma_bf16_d128", "flash_mma_f16_d32", "flash_mma_f16_d64", "flash_mma_f16_d128"],
        Unit::Gather => &["gather_f32", "gather_bf16", "gather_f16", "gather_v", "mean_pool_f32", "mean_pool_bf16", "mean_pool_f16", "mean_pool_tok_f32", "mean_pool_tok_bf16", "mean_pool_tok_f16", "segment_mean_pool_f32", "segment_mean_pool_bf16", "segment_mean_pool_f16"],
    }
}
