// sink_attention's device-side building blocks, for the kernels of sink_attention_kernels.cuh:
// token addressing over [cache slots | chunk], the RoPE lookup, and the staging of rotated
// queries / keys and values into shared memory. Torch-free device code (NVRTC compiles it).
#pragma once
#include "common/cuda_utils.h"
#include "common/int_types.h"
#include "sink_attention/sink_attention.h"

namespace srf::sink_attention {

#if defined(__CUDACC_RTC__)  // NVRTC has no __builtin_huge_valf
constexpr float kNegInf = __builtin_bit_cast(float, 0xff800000u);
#else
constexpr float kNegInf = -__builtin_huge_valf();
#endif

// ---- Token addressing and staging ----------------------------------------------------------

struct Token {
  const void* k_src;  // head vector of this token in k / k_cache (nullptr: masked key)
  const void* v_src;
  int frame, row, col;  // frame = row of the t table
};

struct Geometry {
  int P, S, Lq, Lk, grid_w;
  int64_t HD;

  __device__ explicit Geometry(const Params& p, int head_dim) {
    P = p.grid_h * p.grid_w;
    S = p.slots;
    Lq = p.q_len;
    Lk = S * P + Lq;
    grid_w = p.grid_w;
    HD = static_cast<int64_t>(p.heads) * head_dim;
  }
};

template <typename T, int D>
__device__ __forceinline__ Token key_token(const Params& p, const Geometry& g, int n,
                                           int b, int h) {
  Token tk{nullptr, nullptr, 0, 0, 0};
  int t;
  int64_t off;
  if (n < g.S * g.P) {
    const int slot = n / g.P;
    if (p.cache_pos[slot] < 0) return tk;
    t = n - slot * g.P;
    off = ((static_cast<int64_t>(b) * g.S + slot) * g.P + t) * g.HD + static_cast<int64_t>(h) * D;
    tk.k_src = static_cast<const T*>(p.k_cache) + off;
    tk.v_src = static_cast<const T*>(p.v_cache) + off;
    tk.frame = slot;
  } else if (n < g.Lk) {
    const int i = n - g.S * g.P, f = i / g.P;
    t = i - f * g.P;
    off = (static_cast<int64_t>(b) * g.Lq + i) * g.HD + static_cast<int64_t>(h) * D;
    tk.k_src = static_cast<const T*>(p.k) + off;
    tk.v_src = static_cast<const T*>(p.v) + off;
    tk.frame = g.S + f;
  } else {
    return tk;
  }
  tk.row = t / g.grid_w;
  tk.col = t - tk.row * g.grid_w;
  return tk;
}

// Whether the key tile starting at n0 holds any unmasked key (uniform across the block).
__device__ __forceinline__ bool tile_has_keys(const Params& p, const Geometry& g,
                                              int n0) {
  const int cached = g.S * g.P;
  if (n0 + kBlockK > cached) return true;  // reaches the chunk, whose keys are all valid
  const int last = (n0 + kBlockK - 1) / g.P;
  for (int slot = n0 / g.P; slot <= last; ++slot)
    if (p.cache_pos[slot] >= 0) return true;
  return false;
}

__device__ __forceinline__ float2 rope_cs(const float2* __restrict__ table,
                                          const RopeTableLayout& l, int pair, int frame, int row,
                                          int col) {
  if (pair < l.t_pairs) return __ldg(table + frame * l.t_pairs + pair);
  pair -= l.t_pairs;
  if (pair < l.h_pairs) return __ldg(table + l.h_offset + row * l.h_pairs + pair);
  return __ldg(table + l.w_offset + col * l.w_pairs + (pair - l.h_pairs));
}

// 16 bytes of one head vector: elements [c * kVec, (c + 1) * kVec).
template <typename T>
struct Vec {
  static constexpr int kN = 16 / sizeof(T);
  union {
    uint4 raw;
    T x[kN];
  };
};

// Copies vector c of a head vector into shared memory, rotated when `table` is given.
template <typename T>
__device__ __forceinline__ void stage_vec(const T* src, T* dst, int c, const float2* table,
                                          const RopeTableLayout& l, int frame, int row, int col) {
  constexpr int N = Vec<T>::kN;
  Vec<T> in, out;
  in.raw = __ldg(reinterpret_cast<const uint4*>(src + c * N));
  if (table == nullptr) {
    *reinterpret_cast<uint4*>(dst) = in.raw;
    return;
  }
#pragma unroll
  for (int u = 0; u < N / 2; ++u) {
    const float2 cs = rope_cs(table, l, c * (N / 2) + u, frame, row, col);
    const float x0 = to_float(in.x[2 * u]), x1 = to_float(in.x[2 * u + 1]);
    out.x[2 * u] = from_float<T>(x0 * cs.x - x1 * cs.y);
    out.x[2 * u + 1] = from_float<T>(x0 * cs.y + x1 * cs.x);
  }
  *reinterpret_cast<uint4*>(dst) = out.raw;
}

template <typename T>
__device__ __forceinline__ void zero_vec(T* dst) {
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
}

// Stages the rotated queries [q0, q0 + rows) into Qs (row stride ld); rows past Lq are zeros.
template <typename T, int D>
__device__ void stage_queries(const Params& p, const Geometry& g,
                              const float2* table, const RopeTableLayout& l, T* Qs, int ld,
                              int rows, int q0, int b, int h) {
  constexpr int N = Vec<T>::kN, VPR = D / N;
  const T* q = static_cast<const T*>(p.q);
  for (int e = threadIdx.x; e < rows * VPR; e += kThreads) {
    const int r = e / VPR, c = e - r * VPR, i = q0 + r;
    T* dst = Qs + r * ld + c * N;
    if (i < g.Lq) {
      const int f = i / g.P, t = i - f * g.P, row = t / g.grid_w;
      stage_vec(q + (static_cast<int64_t>(b) * g.Lq + i) * g.HD + static_cast<int64_t>(h) * D, dst,
                c, table, l, g.S + f, row, t - row * g.grid_w);
    } else {
      zero_vec(dst);
    }
  }
}

// Stages the key tile [n0, n0 + kBlockK): rotated keys into Ks, values into Vs (row stride ld),
// masked keys as zeros (so that garbage in empty slots cannot reach the output as 0 * NaN), and
// kmask[j] = whether key n0 + j takes part.
template <typename T, int D>
__device__ void stage_keys(const Params& p, const Geometry& g, const float2* table,
                           const RopeTableLayout& l, T* Ks, T* Vs, int* kmask, int ld, int n0,
                           int b, int h) {
  constexpr int N = Vec<T>::kN, VPR = D / N;
  for (int e = threadIdx.x; e < kBlockK * VPR; e += kThreads) {
    const int j = e / VPR, c = e - j * VPR;
    const Token tk = key_token<T, D>(p, g, n0 + j, b, h);
    T* kd = Ks + j * ld + c * N;
    T* vd = Vs + j * ld + c * N;
    if (tk.k_src != nullptr) {
      stage_vec(static_cast<const T*>(tk.k_src), kd, c, table, l, tk.frame, tk.row, tk.col);
      stage_vec<T>(static_cast<const T*>(tk.v_src), vd, c, nullptr, l, 0, 0, 0);
    } else {
      zero_vec(kd);
      zero_vec(vd);
    }
    if (c == 0) kmask[j] = tk.k_src != nullptr;
  }
}

}  // namespace srf::sink_attention
