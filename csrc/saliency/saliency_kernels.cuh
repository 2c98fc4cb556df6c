// saliency_weights device code, shared by the nvcc build (saliency_launch.cu) and the run-time
// NVRTC build (stream_r1_fast/nvrtc); both run plan() of saliency.h. Torch-free and free of
// host code, so NVRTC compiles it as it is.
//
// Three launches:
//   1. latent map: vae — one block per (b, f, latent row i, column tile), threads laid out
//      [kTY][kTX]: tx walks pixel columns (coalesced along W), ty splits the (frame, row) pairs
//      of the causal group; partial sums meet in shared memory, one thread per latent cell
//      adds them up. trilinear — one thread per latent cell gathers its 2x2x2 source pixels
//      and fuses them on the fly (downsampling never reads most pixels).
//   2. spatial: one block per (b, f): min / max / mean of the latent frame, sigma in place.
//   3. weights: one block per (b, f): tau of sample b (recomputed by each of its F blocks —
//      F is small), then W for frame f.
// fp32 accumulation everywhere; block reductions are warp shuffles + one shared-memory step,
// in a fixed order (deterministic results).
#pragma once
#include "common/cuda_utils.h"
#include "saliency/saliency.h"

namespace srf::saliency {

// The latent kernels are bound by memory latency: 4 resident blocks (<= 64 registers) keep
// more loads in flight than fewer, wider-unrolled ones.
constexpr int kLatentMinBlocks = 4;

// Fused saliency of pixel (b, t, y, x): sum_a w_a * ||g[a, b, t, :, y, x]||_2, or the map
// value itself for a fused input. kC > 0 fixes the channel count at compile time.
template <typename T, int kC>
__device__ __forceinline__ float fused_pixel(const Params& p, const T* __restrict__ g, int64_t b,
                                             int64_t t, int64_t y, int64_t x) {
  if (p.fused_input) return to_float(g[((b * p.T + t) * p.H + y) * p.W + x]);
  const int64_t plane = p.H * p.W;
  const int64_t C = kC > 0 ? kC : p.C;
  const int64_t a_stride = p.B * p.T * C * plane;
  const T* src = g + (b * p.T + t) * C * plane + y * p.W + x;
  const float* wa = p.axis_weights + b * p.axis_weights_b_stride;
  float out = 0.f;
  for (int64_t a = 0; a < p.A; ++a, src += a_stride) {
    float sq = 0.f;
    if constexpr (kC > 0) {
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        const float v = to_float(src[c * plane]);
        sq += v * v;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const float v = to_float(src[c * plane]);
        sq += v * v;
      }
    }
    out += wa[a] * sqrtf(sq);
  }
  return out;
}

template <typename T, int kC>
__global__ void __launch_bounds__(kThreads, kLatentMinBlocks) latent_vae_kernel(Params p) {
  __shared__ float part[kTY][kTX];
  const T* g = static_cast<const T*>(p.saliency);
  // Column tiles hold whole latent cells: kTX / sf cells when sf <= kTX, else one cell whose
  // sf columns each thread walks kTX at a time. `seg` = partial sums per cell per ty.
  const int64_t seg = p.sf < kTX ? p.sf : kTX;
  const int64_t cells = kTX / seg;
  const int64_t tiles = ceil_div(p.w, cells);
  int64_t r = blockIdx.x;
  const int64_t tile = r % tiles;
  r /= tiles;
  const int64_t i = r % p.h;
  r /= p.h;
  const int64_t f = r % p.F;
  const int64_t b = r / p.F;

  int64_t t0, t1;
  causal_group(f, p.tf, p.T, &t0, &t1);
  const int64_t y0 = i * p.sf;
  const int64_t ny = (y0 + p.sf < p.H ? y0 + p.sf : p.H) - y0;
  const int64_t pairs = (t1 - t0) * ny;
  const int64_t j0 = tile * cells;
  const int64_t x_begin = j0 * p.sf;
  const int64_t x_tile_end = x_begin + cells * p.sf;
  const int64_t x_end = x_tile_end < p.W ? x_tile_end : p.W;

  float acc = 0.f;
  for (int64_t x = x_begin + threadIdx.x; x < x_end; x += kTX) {
    // Pair q = (t - t0) * ny + (y - y0), stepped by kTY without dividing in the loop.
    int64_t t = t0 + threadIdx.y / ny, y = threadIdx.y % ny;
    for (int64_t q = threadIdx.y; q < pairs; q += kTY) {
      acc += fused_pixel<T, kC>(p, g, b, t, y0 + y, x);
      for (y += kTY; y >= ny; y -= ny) ++t;
    }
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();

  const int tid = threadIdx.y * kTX + threadIdx.x;
  const int64_t j = j0 + tid;
  if (tid < cells && j < p.w) {
    float s = 0.f;
    for (int ty = 0; ty < kTY; ++ty) {
      for (int64_t k = tid * seg; k < (tid + 1) * seg; ++k) s += part[ty][k];
    }
    const int64_t cx0 = j * p.sf;
    const int64_t nx = (cx0 + p.sf < p.W ? cx0 + p.sf : p.W) - cx0;
    p.sigma[((b * p.F + f) * p.h + i) * p.w + j] = s / static_cast<float>(pairs * nx);
  }
}

template <typename T, int kC>
__global__ void __launch_bounds__(kThreads, kLatentMinBlocks) latent_trilinear_kernel(Params p) {
  const T* g = static_cast<const T*>(p.saliency);
  const int64_t n = p.B * p.F * p.h * p.w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = idx;
    const int64_t j = r % p.w;
    r /= p.w;
    const int64_t i = r % p.h;
    r /= p.h;
    const int64_t f = r % p.F;
    const int64_t b = r / p.F;
    const Lerp lt = lerp_source(f, p.T, p.F);
    const Lerp ly = lerp_source(i, p.H, p.h);
    const Lerp lx = lerp_source(j, p.W, p.w);
    auto plane_value = [&](int64_t t) {
      const float v00 = fused_pixel<T, kC>(p, g, b, t, ly.i0, lx.i0);
      const float v01 = fused_pixel<T, kC>(p, g, b, t, ly.i0, lx.i1);
      const float v10 = fused_pixel<T, kC>(p, g, b, t, ly.i1, lx.i0);
      const float v11 = fused_pixel<T, kC>(p, g, b, t, ly.i1, lx.i1);
      return ly.l0 * (lx.l0 * v00 + lx.l1 * v01) + ly.l1 * (lx.l0 * v10 + lx.l1 * v11);
    };
    p.sigma[idx] = lt.l0 * plane_value(lt.i0) + lt.l1 * plane_value(lt.i1);
  }
}

// ---- block reductions -----------------------------------------------------------------------

struct Stats {
  float lo, hi, sum;
  int finite;
};

__device__ __forceinline__ Stats combine(Stats a, const Stats& b) {
  a.lo = fminf(a.lo, b.lo);
  a.hi = fmaxf(a.hi, b.hi);
  a.sum += b.sum;
  a.finite &= b.finite;
  return a;
}
__device__ __forceinline__ float combine(float a, float b) { return a + b; }

__device__ __forceinline__ Stats shfl_down(const Stats& s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.lo, offset), __shfl_down_sync(0xffffffffu, s.hi, offset),
          __shfl_down_sync(0xffffffffu, s.sum, offset),
          __shfl_down_sync(0xffffffffu, s.finite, offset)};
}
__device__ __forceinline__ float shfl_down(float v, int offset) {
  return __shfl_down_sync(0xffffffffu, v, offset);
}

// Every thread of the block (blockDim.x a multiple of 32, all threads calling) gets the
// reduction of `v`. `smem` holds one entry per warp; the leading sync lets calls follow each
// other on the same buffer.
template <typename V>
__device__ V block_reduce(V v, V* smem) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, shfl_down(v, offset));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  V out = smem[0];
  const int warps = blockDim.x >> 5;
  for (int k = 1; k < warps; ++k) out = combine(out, smem[k]);
  return out;
}

__global__ void __launch_bounds__(kThreads) spatial_kernel(Params p) {
  __shared__ Stats stats_smem[kThreads / 32];
  __shared__ float sum_smem[kThreads / 32];
  const int64_t bf = blockIdx.x;
  const int64_t hw = p.h * p.w;
  float* s = p.sigma + bf * hw;

  Stats st{s[0], s[0], 0.f, 1};
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
    const float v = s[k];
    st.lo = fminf(st.lo, v);
    st.hi = fmaxf(st.hi, v);
    st.sum += v;
    st.finite &= is_finite(v) ? 1 : 0;
  }
  st = block_reduce(st, stats_smem);
  const bool ok = range_ok(st.lo, st.hi, st.finite != 0);

  float mixed_sum = 0.f;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
    const float m = minmax_mix(s[k], st.lo, st.hi, ok, p.sigma_floor, p.gamma_s);
    s[k] = m;
    mixed_sum += m;
  }
  const float mean = block_reduce(mixed_sum, sum_smem) / static_cast<float>(hw);

  float sigma_sum = 0.f;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
    const float v = s[k] / mean;
    s[k] = v;
    sigma_sum += v;
  }
  sigma_sum = block_reduce(sigma_sum, sum_smem);
  if (threadIdx.x == 0) {
    p.frame_mean[bf] = st.sum / static_cast<float>(hw);
    p.sigma_sum[bf] = sigma_sum;
  }
}

__global__ void __launch_bounds__(kThreads) weights_kernel(Params p) {
  __shared__ Stats stats_smem[kThreads / 32];
  __shared__ float sum_smem[kThreads / 32];
  const int64_t bf = blockIdx.x;
  const int64_t b = bf / p.F;
  const int64_t hw = p.h * p.w;
  const float* pm = p.frame_mean + b * p.F;
  const float* ss = p.sigma_sum + b * p.F;

  Stats st{pm[0], pm[0], 0.f, 1};
  for (int64_t f = threadIdx.x; f < p.F; f += blockDim.x) {
    st.lo = fminf(st.lo, pm[f]);
    st.hi = fmaxf(st.hi, pm[f]);
    st.finite &= is_finite(pm[f]) ? 1 : 0;
  }
  st = block_reduce(st, stats_smem);
  const bool ok = range_ok(st.lo, st.hi, st.finite != 0);

  float mixed_sum = 0.f;
  for (int64_t f = threadIdx.x; f < p.F; f += blockDim.x) {
    mixed_sum += minmax_mix(pm[f], st.lo, st.hi, ok, p.tau_floor, p.gamma_t);
  }
  const float mean = block_reduce(mixed_sum, sum_smem) / static_cast<float>(p.F);

  // mean over (F, h, w) of tau * sigma = sum_f tau_f * sigma_sum_f / (F * h * w)
  float w_sum = 0.f;
  for (int64_t f = threadIdx.x; f < p.F; f += blockDim.x) {
    w_sum += minmax_mix(pm[f], st.lo, st.hi, ok, p.tau_floor, p.gamma_t) / mean * ss[f];
  }
  const float w_mean = block_reduce(w_sum, sum_smem) / static_cast<float>(p.F * hw);

  const int64_t f = bf % p.F;
  const float tau = minmax_mix(pm[f], st.lo, st.hi, ok, p.tau_floor, p.gamma_t) / mean;
  if (threadIdx.x == 0) p.tau[bf] = tau;
  const float* s = p.sigma + bf * hw;
  float* out = p.weights + bf * hw;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) out[k] = tau * s[k] / w_mean;
}

}  // namespace srf::saliency
