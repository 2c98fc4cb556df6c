// dense_attention's device code, shared by the nvcc build (dense_attention_launch.cu) and the
// run-time NVRTC build (stream_r1_fast/nvrtc); both run plan() of dense_attention.h. Torch-free
// and free of host code, so NVRTC compiles it as it is.
//
// A FlashAttention-2-class forward, written for this project from the design in
// docs/method.md ("The dense attention kernel"):
//   * one CTA = kBlockQ = 128 query rows of one (batch, head): 8 warps of 16 rows, each warp
//     one m16 row tile of mma.sync.m16n8k16 (fp16 / bf16 in, fp32 accumulation);
//   * Q is copied to shared memory once (cp.async) and read into registers once (ldmatrix):
//     D / 16 A fragments per thread, kept for the whole key loop;
//   * K / V tiles of N = block_keys(D) keys stream through two shared-memory stages with
//     cp.async (tile j + 1 is in flight while tile j is used); rows are 16-byte chunks stored
//     at chunk ^ (row & 7), so the 8 row addresses of every ldmatrix phase hit 8 different
//     bank groups (bank-conflict free for both ldmatrix and ldmatrix.trans);
//   * S = Q K^T (K fragments by ldmatrix), online softmax on the S accumulators in registers
//     (row max and sum over the 4 threads of a quad by shuffles, exp2 with log2(e) folded
//     into the scale), P rounded to the input type in registers and used directly as the A
//     operand of O += P V (the m16n8 accumulator layout of two adjacent n8 tiles is the
//     m16k16 A layout), V fragments by ldmatrix.trans; S, P and O never touch shared memory;
//   * tails: rows past Lq and keys past Lk are zero-filled by cp.async (src-size 0), missing
//     keys' scores are -inf; out is normalised and stored in the input type, lse (natural log)
//     in float32.
#pragma once
#include "common/cuda_utils.h"
#include "dense_attention/dense_attention.h"
#include "dense_attention/dense_attention_ptx.cuh"

namespace srf::dense_attention {

// Element offset of 16-byte chunk `chunk` of row `row` in a [rows, D] tile: the chunk index
// XOR the row's low 3 bits.
template <int D>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Issues the cp.async copies of rows [row0, row0 + ROWS) of one (batch, head) matrix into a
// swizzled [ROWS, D] tile; rows at or past `rows` are zero-filled.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t row_stride, int row0,
                                          int rows) {
  constexpr int kChunks = D / 8;
  static_assert(ROWS * kChunks % kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / kThreads; ++it) {
    const int idx = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < rows;
    const T* from = valid ? src + static_cast<int64_t>(row0 + r) * row_stride + c * 8 : src;
    cp_async16(smem_address(tile + swizzle<D>(r, c)), from, valid);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) fwd_kernel(const Params p) {
  constexpr int N = block_keys(D);  // keys per tile
  constexpr int KD = D / 16;        // k-steps of Q K^T
  constexpr int NT = N / 8;         // n8 tiles of S
  constexpr int DT = D / 8;         // n8 tiles of O

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);
  T* sk = sq + kBlockQ * D;  // two stages of [N, D]
  T* sv = sk + 2 * N * D;

  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;  // the mma fragments' row group and column pair
  const int q0 = static_cast<int>(blockIdx.x) * kBlockQ;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const T* qg = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
  const int n_tiles = (p.k_len + N - 1) / N;

  // Prologue: Q (group 0), then K / V tile 0 (group 1).
  load_tile<T, D, kBlockQ>(sq, qg, p.q_row_stride, q0, p.q_len);
  cp_async_commit();
  if (n_tiles > 0) {
    load_tile<T, D, N>(sk, kg, p.k_row_stride, 0, p.k_len);
    load_tile<T, D, N>(sv, vg, p.v_row_stride, 0, p.k_len);
  }
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();

  // This warp's Q rows as A fragments: matrix mi of ldmatrix.x4 is (rows + 8 * (mi & 1),
  // columns + 8 * (mi >> 1)), i.e. a0..a3 of m16n8k16.
  uint32_t qf[KD][4];
  {
    const int mi = lane >> 3;
    const int row = warp * 16 + (lane & 7) + (mi & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) ldmatrix_x4(smem_address(sq + swizzle<D>(row, 2 * kk + (mi >> 1))), qf[kk]);
  }

  float o[DT][4];
#pragma unroll
  for (int i = 0; i < DT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  // Rows g and g + 8 of the warp's tile: running max (log2 domain, scale included) and the
  // thread's part of the running sum (the quad's parts are added once, at the end).
  float row_max[2] = {neg_inf(), neg_inf()};
  float row_sum[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {  // the next tile into the other stage, read last in iteration j - 1
      load_tile<T, D, N>(sk + (stage ^ 1) * N * D, kg, p.k_row_stride, (j + 1) * N, p.k_len);
      load_tile<T, D, N>(sv + (stage ^ 1) * N * D, vg, p.v_row_stride, (j + 1) * N, p.k_len);
    }
    cp_async_commit();   // (possibly empty) so that one wait count serves every iteration
    cp_async_wait<1>();  // tile j has landed (this thread's copies) ...
    __syncthreads();     // ... and everybody's
    const T* ks = sk + stage * N * D;
    const T* vs = sv + stage * N * D;

    // S = Q K^T: B fragments of two n8 tiles per ldmatrix.x4 (matrix mi: keys + 8 * (mi >> 1),
    // columns + 8 * (mi & 1)), i.e. b0, b1 of tile 2jn and b0, b1 of tile 2jn + 1.
    float s[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    {
      const int mi = lane >> 3;
      const int key = (lane & 7) + (mi >> 1) * 8;
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
        for (int jn = 0; jn < NT / 2; ++jn) {
          uint32_t kb[4];
          ldmatrix_x4(smem_address(ks + swizzle<D>(jn * 16 + key, 2 * kk + (mi & 1))), kb);
          mma<T>(s[2 * jn], qf[kk], kb[0], kb[1]);
          mma<T>(s[2 * jn + 1], qf[kk], kb[2], kb[3]);
        }
      }
    }

    // Online softmax in the log2 domain; keys past Lk are -inf (after the scale, whose sign
    // is free).
    const int key0 = j * N;
    float mx[2] = {row_max[0], row_max[1]};
#pragma unroll
    for (int i = 0; i < NT; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[i][e] * p.scale_log2;
        if (key0 + N > p.k_len && key0 + i * 8 + 2 * t + (e & 1) >= p.k_len) x = neg_inf();
        s[i][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float base[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      base[r] = mx[r] == neg_inf() ? 0.f : mx[r];  // a row with no finite score yet: no NaN
      alpha[r] = fast_exp2(row_max[r] - base[r]);
      row_max[r] = mx[r];
    }
    // P = exp2(S - max), packed as A fragments of P V: n8 tiles 2kk and 2kk + 1 of S are
    // (a0, a1) and (a2, a3) of k-step kk.
    uint32_t pf[NT / 2][4];
    float part[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const float p0 = fast_exp2(s[i][0] - base[0]), p1 = fast_exp2(s[i][1] - base[0]);
      const float p2 = fast_exp2(s[i][2] - base[1]), p3 = fast_exp2(s[i][3] - base[1]);
      part[0] += p0 + p1;
      part[1] += p2 + p3;
      pf[i / 2][(i & 1) * 2] = pack<T>(p0, p1);
      pf[i / 2][(i & 1) * 2 + 1] = pack<T>(p2, p3);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) row_sum[r] = row_sum[r] * alpha[r] + part[r];
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }

    // O += P V: B fragments of two n8 tiles of D per ldmatrix.x4.trans (matrix mi: keys
    // + 8 * (mi & 1), columns + 8 * (mi >> 1)), i.e. b0, b1 of tile 2dn and of 2dn + 1.
    {
      const int mi = lane >> 3;
      const int key = (lane & 7) + (mi & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < N / 16; ++kk) {
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t vb[4];
          ldmatrix_x4_trans(smem_address(vs + swizzle<D>(kk * 16 + key, 2 * dn + (mi >> 1))), vb);
          mma<T>(o[2 * dn], pf[kk], vb[0], vb[1]);
          mma<T>(o[2 * dn + 1], pf[kk], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // Epilogue: the quad's sums, out = O / sum in the input type, lse = (max + log2 sum) ln 2.
  const int rows[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    if (rows[r] >= p.q_len) continue;
    const float inv = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;
    T* dst = out + ((static_cast<int64_t>(b) * p.q_len + rows[r]) * p.heads + h) * D + 2 * t;
#pragma unroll
    for (int i = 0; i < DT; ++i)
      *reinterpret_cast<uint32_t*>(dst + i * 8) = pack<T>(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
    if (t == 0) {
      p.lse[(static_cast<int64_t>(b) * p.heads + h) * p.q_len + rows[r]] =
          row_sum[r] > 0.f ? (row_max[r] + log2f(row_sum[r])) * 0.6931471805599453f : neg_inf();
    }
  }
}

}  // namespace srf::dense_attention
