// sink_attention device code, shared by the nvcc build (sink_attention_launch.cu) and the
// run-time NVRTC build (stream_r1_fast/nvrtc). Torch-free and free of host code, so NVRTC
// compiles it as it is; both launchers run plan() of sink_attention.h, which sizes grids and
// shared memory from its WmmaCfg / SimtCfg. Every kernel takes the op's Params by value.
//
// Flash-attention-style tiles with an online softmax, RoPE applied as Q and each K tile are
// staged in shared memory, from a (cos, sin) table built on the device from cache_pos / q_pos
// (no host synchronisation anywhere).
//
// Two kernels share the staging code:
//  * bf16 / fp16: tensor cores through WMMA (16x16x16, fp32 accumulate). 4 warps, 64 queries
//    per block, warp w owns query rows [16w, 16w + 16). Q fragments stay in registers; scores,
//    probabilities and the output accumulator go through shared memory, which keeps the online
//    softmax independent of the (opaque) fragment layouts.
//  * float32: a SIMT kernel (no TF32): 32 queries per block, 4 threads per query row.
// Keys are the S cache slots (one frame of P tokens each) followed by the chunk's Lq tokens;
// tiles made only of empty slots are skipped, keys of empty slots inside a tile are masked.
//
// <mma.h> is not one of NVRTC's built-in headers: NVRTC finds it, and the crt/mma.h it includes
// (a CUDA toolkit's, or the nvidia-cuda-crt wheel's), on its include path.
#pragma once
#include <mma.h>

#include "sink_attention/sink_attention_staging.cuh"

namespace srf::sink_attention {

// ---- RoPE table ----------------------------------------------------------------------------

__global__ void rope_table_kernel(const Params p) {
  float2* table = reinterpret_cast<float2*>(p.rope_table);
  const RopeTableLayout& l = p.rope;
  const int32_t* cache_pos = p.cache_pos;
  const int32_t* q_pos = p.q_pos;
  const int slots = p.slots;
  const double theta = p.rope_theta;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= l.entries) return;
  int64_t pos;
  int j, pairs;
  if (e < l.h_offset) {
    const int f = static_cast<int>(e / l.t_pairs);
    j = static_cast<int>(e % l.t_pairs);
    pairs = l.t_pairs;
    pos = f < slots ? max(cache_pos[f], 0) : static_cast<int64_t>(q_pos[0]) + (f - slots);
  } else if (e < l.w_offset) {
    pos = (e - l.h_offset) / l.h_pairs;
    j = static_cast<int>((e - l.h_offset) % l.h_pairs);
    pairs = l.h_pairs;
  } else {
    pos = (e - l.w_offset) / l.w_pairs;
    j = static_cast<int>((e - l.w_offset) % l.w_pairs);
    pairs = l.w_pairs;
  }
  // Same float64 math as the reference (rope.py), rounded once.
  const double a = static_cast<double>(pos) * pow(theta, -(2.0 * j) / (2.0 * pairs));
  double s, c;
  sincos(a, &s, &c);
  table[e] = make_float2(static_cast<float>(c), static_cast<float>(s));
}

// ---- bf16 / fp16: WMMA kernel --------------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    wmma_kernel(const Params p) {
  namespace wmma = nvcuda::wmma;
  using C = WmmaCfg<sizeof(T), D>;
  constexpr int BQ = C::BQ, BK = C::BK, LDH = C::LDH, LDS = C::LDS, LDP = C::LDP, LDO = C::LDO;
  extern __shared__ __align__(128) unsigned char smem[];
  T* Qs = reinterpret_cast<T*>(smem);
  float* Ss = reinterpret_cast<float*>(smem);
  T* Ks = reinterpret_cast<T*>(smem + C::k_off);
  T* Vs = reinterpret_cast<T*>(smem + C::v_off);
  T* Ps = reinterpret_cast<T*>(smem + C::p_off);
  float* Os = reinterpret_cast<float*>(smem + C::o_off);
  int* kmask = reinterpret_cast<int*>(smem + C::mask_off);

  const Geometry g(p, D);
  const float2* table = reinterpret_cast<const float2*>(p.rope_table);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;

  stage_queries<T, D>(p, g, table, p.rope, Qs, LDH, BQ, q0, b, h);
  for (int e = threadIdx.x; e < BQ * LDO; e += kThreads) Os[e] = 0.f;
  __syncthreads();

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) wmma::load_matrix_sync(qf[kd], Qs + warp * 16 * LDH + kd * 16, LDH);

  // Softmax bookkeeping: lanes 2r and 2r + 1 share query row r of the warp's slab and take the
  // even / odd columns.
  const int my_row = lane >> 1, parity = lane & 1;
  float* s_row = Ss + (warp * 16 + my_row) * LDS;
  T* p_row = Ps + (warp * 16 + my_row) * LDP;
  float* o_row = Os + (warp * 16 + my_row) * LDO;
  float m_run = kNegInf, l_run = 0.f;

  const int tiles = (g.Lk + BK - 1) / BK;
  for (int tile = 0; tile < tiles; ++tile) {
    const int n0 = tile * BK;
    if (!tile_has_keys(p, g, n0)) continue;
    __syncthreads();  // previous tile's K / V / P consumers are done (and qf is loaded)
    stage_keys<T, D>(p, g, table, p.rope, Ks, Vs, kmask, LDH, n0, b, h);
    __syncthreads();

    // Scores of the warp's 16 queries against the 64 keys.
#pragma unroll
    for (int nt = 0; nt < BK / 16; ++nt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
      wmma::fill_fragment(sf, 0.f);
#pragma unroll
      for (int kd = 0; kd < D / 16; ++kd) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, Ks + nt * 16 * LDH + kd * 16, LDH);
        wmma::mma_sync(sf, qf[kd], kf, sf);
      }
      wmma::store_matrix_sync(Ss + warp * 16 * LDS + nt * 16, sf, LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this tile, in the scaled-score domain.
    float s[BK / 2];
    float mx = kNegInf;
#pragma unroll
    for (int cc = 0; cc < BK / 2; ++cc) {
      const int c = parity + 2 * cc;
      s[cc] = kmask[c] ? s_row[c] * p.scale : kNegInf;
      mx = fmaxf(mx, s[cc]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m_run, mx);
    const float m_use = m_new == kNegInf ? 0.f : m_new;  // no key yet: keep exp() finite
    const float alpha = __expf(m_run - m_use);            // exp(-inf) = 0 on the first tile
    float sum = 0.f;
#pragma unroll
    for (int cc = 0; cc < BK / 2; ++cc) {
      const float e = __expf(s[cc] - m_use);
      sum += e;
      p_row[parity + 2 * cc] = from_float<T>(e);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l_run = l_run * alpha + sum;
    m_run = m_new;
#pragma unroll 8
    for (int cc = 0; cc < D / 2; ++cc) o_row[parity + 2 * cc] *= alpha;
    __syncwarp();

    // O += P V for the warp's 16 rows.
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
      wmma::load_matrix_sync(of, Os + warp * 16 * LDO + dt * 16, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, Ps + warp * 16 * LDP + kk * 16, LDP);
        wmma::load_matrix_sync(vf, Vs + kk * 16 * LDH + dt * 16, LDH);
        wmma::mma_sync(of, pf, vf, of);
      }
      wmma::store_matrix_sync(Os + warp * 16 * LDO + dt * 16, of, LDO, wmma::mem_row_major);
    }
  }
  __syncwarp();

  // Normalise and write out. Every row saw at least the chunk's keys, so l_run > 0.
  if (parity == 0) {
    s_row[0] = 1.f / l_run;
    const int i = q0 + warp * 16 + my_row;
    if (i < g.Lq) p.lse[(static_cast<int64_t>(b) * p.heads + h) * g.Lq + i] = m_run + logf(l_run);
  }
  __syncwarp();
  constexpr int N = Vec<T>::kN, VPR = D / N;
  T* out = static_cast<T*>(p.out);
  for (int e = lane; e < 16 * VPR; e += 32) {
    const int r = e / VPR, c = e - r * VPR, i = q0 + warp * 16 + r;
    if (i >= g.Lq) continue;
    const float inv = Ss[(warp * 16 + r) * LDS];
    const float* o = Os + (warp * 16 + r) * LDO + c * N;
    Vec<T> v;
#pragma unroll
    for (int u = 0; u < N; ++u) v.x[u] = from_float<T>(o[u] * inv);
    *reinterpret_cast<uint4*>(out + (static_cast<int64_t>(b) * g.Lq + i) * g.HD +
                              static_cast<int64_t>(h) * D + c * N) = v.raw;
  }
}

// ---- float32: SIMT kernel ------------------------------------------------------------------

template <int D>
__global__ void __launch_bounds__(kThreads)
    simt_kernel(const Params p) {
  using C = SimtCfg<D>;
  constexpr int BQ = C::BQ, BK = C::BK, LDF = C::LDF, LDP = C::LDP;
  extern __shared__ __align__(128) unsigned char smem[];
  float* Qs = reinterpret_cast<float*>(smem + C::q_off);
  float* Ks = reinterpret_cast<float*>(smem + C::k_off);
  float* Vs = reinterpret_cast<float*>(smem + C::v_off);
  float* Ps = reinterpret_cast<float*>(smem + C::p_off);
  int* kmask = reinterpret_cast<int*>(smem + C::mask_off);

  const Geometry g(p, D);
  const float2* table = reinterpret_cast<const float2*>(p.rope_table);
  const int q0 = blockIdx.x * BQ, h = blockIdx.y, b = blockIdx.z;
  // Four consecutive lanes share query row r; lane c4 of them owns keys c4 + 4j and output
  // columns 4 * (c4 + 4i) .. + 3.
  const int r = threadIdx.x >> 2, c4 = threadIdx.x & 3;

  stage_queries<float, D>(p, g, table, p.rope, Qs, LDF, BQ, q0, b, h);

  float4 o[D / 16];
#pragma unroll
  for (int i = 0; i < D / 16; ++i) o[i] = make_float4(0.f, 0.f, 0.f, 0.f);
  float m_run = kNegInf, l_run = 0.f;
  const float4* q_row = reinterpret_cast<const float4*>(Qs + r * LDF);
  float* p_row = Ps + r * LDP;

  const int tiles = (g.Lk + BK - 1) / BK;
  for (int tile = 0; tile < tiles; ++tile) {
    const int n0 = tile * BK;
    if (!tile_has_keys(p, g, n0)) continue;
    __syncthreads();  // previous tile consumed (and, on the first tile, Q staged)
    stage_keys<float, D>(p, g, table, p.rope, Ks, Vs, kmask, LDF, n0, b, h);
    __syncthreads();

    float s[BK / 4];
#pragma unroll
    for (int j = 0; j < BK / 4; ++j) s[j] = 0.f;
#pragma unroll 4
    for (int d4 = 0; d4 < D / 4; ++d4) {
      const float4 qv = q_row[d4];
#pragma unroll
      for (int j = 0; j < BK / 4; ++j) {
        const float4 kv = reinterpret_cast<const float4*>(Ks + (c4 + 4 * j) * LDF)[d4];
        s[j] = fmaf(qv.x, kv.x, s[j]);
        s[j] = fmaf(qv.y, kv.y, s[j]);
        s[j] = fmaf(qv.z, kv.z, s[j]);
        s[j] = fmaf(qv.w, kv.w, s[j]);
      }
    }

    float mx = kNegInf;
#pragma unroll
    for (int j = 0; j < BK / 4; ++j) {
      s[j] = kmask[c4 + 4 * j] ? s[j] * p.scale : kNegInf;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m_run, mx);
    const float m_use = m_new == kNegInf ? 0.f : m_new;
    const float alpha = expf(m_run - m_use);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < BK / 4; ++j) {
      const float e = expf(s[j] - m_use);
      sum += e;
      p_row[c4 + 4 * j] = e;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l_run = l_run * alpha + sum;
    m_run = m_new;
#pragma unroll
    for (int i = 0; i < D / 16; ++i) {
      o[i].x *= alpha;
      o[i].y *= alpha;
      o[i].z *= alpha;
      o[i].w *= alpha;
    }
    __syncwarp();  // the row's probabilities come from all four lanes

#pragma unroll 4
    for (int n = 0; n < BK; ++n) {
      const float pn = p_row[n];
      const float4* v_row = reinterpret_cast<const float4*>(Vs + n * LDF);
#pragma unroll
      for (int i = 0; i < D / 16; ++i) {
        const float4 vv = v_row[c4 + 4 * i];
        o[i].x = fmaf(pn, vv.x, o[i].x);
        o[i].y = fmaf(pn, vv.y, o[i].y);
        o[i].z = fmaf(pn, vv.z, o[i].z);
        o[i].w = fmaf(pn, vv.w, o[i].w);
      }
    }
  }

  const int i = q0 + r;
  if (i >= g.Lq) return;
  const float inv = 1.f / l_run;
  float4* out = reinterpret_cast<float4*>(static_cast<float*>(p.out) +
                                          (static_cast<int64_t>(b) * g.Lq + i) * g.HD +
                                          static_cast<int64_t>(h) * D);
#pragma unroll
  for (int k = 0; k < D / 16; ++k)
    out[c4 + 4 * k] = make_float4(o[k].x * inv, o[k].y * inv, o[k].z * inv, o[k].w * inv);
  if (c4 == 0) p.lse[(static_cast<int64_t>(b) * p.heads + h) * g.Lq + i] = m_run + logf(l_run);
}

}  // namespace srf::sink_attention
