// saliency_weights' torch-free core, shared by every backend: the params struct, the small
// pieces of math the CPU and CUDA kernels must compute identically (latent-grid geometry,
// trilinear source indices, the min-max / gamma mix / floor), and the launch planner plan(),
// which the nvcc launcher (saliency_launch.cu) and the NVRTC launcher (through the
// saliency_weights_plan op of saliency_plan.cpp) both run. No torch and no CUDA headers: the
// CPU build, nvcc and NVRTC (device parts only; floorf / fabsf / fmaxf are builtins there and
// <cmath> does not exist) all include it.
#pragma once
#if !defined(__CUDACC_RTC__)
#include <cmath>

#include "common/launch_plan.h"
#endif

#include "common/dtype_code.h"
#include "common/host_device.h"
#include "common/int_types.h"

namespace srf::saliency {

constexpr int kTX = 64;  // pixel columns per block row (two warps of coalesced loads)
constexpr int kTY = 4;   // (frame, row) pairs processed side by side
constexpr int kThreads = 256;

enum class Mode : int { kVae = 0, kTrilinear = 1 };

// A min-max range at most this fraction of the largest magnitude counts as "constant": the
// latent pooling of a constant map differs between cells by float rounding only, and that
// noise must not be stretched to [0, 1]. Same constant as saliency_ref.RANGE_RTOL.
constexpr float kRangeRtol = 1e-4f;

struct Params {
  const void* saliency;       // [A, B, T, C, H, W] gradients, or [B, T, H, W] fused map
  DType dtype;
  bool fused_input;           // true: a [B, T, H, W] map (A = C = 1, values used as they are)
  const float* axis_weights;  // [A] or [B, A] float32 (unused for a fused map)
  int64_t axis_weights_b_stride;  // 0 for [A], A for [B, A]
  int64_t A, B, T, C, H, W;
  int64_t F, h, w;            // latent grid
  int64_t tf, sf;             // temporal_factor, spatial_factor
  Mode mode;
  float tau_floor, sigma_floor, gamma_t, gamma_s;
  float* weights;     // [B, F, h, w]
  float* tau;         // [B, F]
  float* sigma;       // [B, F, h, w]; holds the latent map until it is normalised in place
  float* frame_mean;  // workspace [B, F]: p_f = mean over (h, w) of the latent map
  float* sigma_sum;   // workspace [B, F]: sum over (h, w) of the normalised sigma
};

// Frames [first, last) of the input pooled into latent frame f: frame 0 alone, then groups of tf.
SRF_HOST_DEVICE void causal_group(int64_t f, int64_t tf, int64_t T, int64_t* first, int64_t* last) {
  // f < F = 1 + ceil((T - 1) / tf), so first < T; last = min(first + tf, T) without the
  // overflow of first + tf for tf near 2^63.
  *first = f == 0 ? 0 : 1 + (f - 1) * tf;
  *last = f == 0 ? 1 : (tf < T - *first ? *first + tf : T);
}

// F.interpolate(mode="trilinear", align_corners=False) along one axis, as ATen computes it:
// src = max((dst + 0.5) * in / out - 0.5, 0), i1 = min(i0 + 1, in - 1); same size = identity.
struct Lerp {
  int64_t i0, i1;
  float l0, l1;
};

SRF_HOST_DEVICE Lerp lerp_source(int64_t dst, int64_t in, int64_t out) {
  Lerp r;
  if (in == out) {
    r.i0 = r.i1 = dst;
    r.l0 = 1.f;
    r.l1 = 0.f;
    return r;
  }
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  src = src < 0.f ? 0.f : src;
  int64_t i0 = static_cast<int64_t>(floorf(src));
  i0 = i0 < in - 1 ? i0 : in - 1;
  float l1 = src - static_cast<float>(i0);
  l1 = l1 < 0.f ? 0.f : (l1 > 1.f ? 1.f : l1);
  r.i0 = i0;
  r.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  r.l1 = l1;
  r.l0 = 1.f - l1;
  return r;
}

// |x| <= FLT_MAX is false for inf and NaN (no reliance on std::isfinite in device code).
SRF_HOST_DEVICE bool is_finite(float x) { return fabsf(x) <= 3.402823466e+38f; }

// Whether a min-max over values in [lo, hi] normalises; otherwise every entry maps to 1.
SRF_HOST_DEVICE bool range_ok(float lo, float hi, bool all_finite) {
  const float rng = hi - lo;
  const float mag = fmaxf(fabsf(lo), fabsf(hi));
  return all_finite && is_finite(rng) && rng > kRangeRtol * mag;
}

// Stream-R1's order: the strength mix first, then the floor:
// max((1 - gamma) + gamma * hat, floor), hat = (x - lo) / (hi - lo) or 1 for a degenerate range.
SRF_HOST_DEVICE float minmax_mix(float x, float lo, float hi, bool ok, float floor, float gamma) {
  const float hat = ok ? (x - lo) / (hi - lo) : 1.f;
  const float mixed = (1.f - gamma) + gamma * hat;
  return mixed > floor ? mixed : floor;
}

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of saliency_kernels.cuh, as NVRTC name expressions: latent_<mode>_kernel<T, kC>
// for mode (vae, trilinear) x T (float, __half, __nv_bfloat16) x kC (1, 3, 0 = any channel
// count), then spatial_kernel and weights_kernel. plan() picks them by index and
// saliency_launch.cu lists their addresses in the same order.
inline constexpr const char* kKernelNames[] = {
    "srf::saliency::latent_vae_kernel<float, 1>",
    "srf::saliency::latent_vae_kernel<float, 3>",
    "srf::saliency::latent_vae_kernel<float, 0>",
    "srf::saliency::latent_vae_kernel<__half, 1>",
    "srf::saliency::latent_vae_kernel<__half, 3>",
    "srf::saliency::latent_vae_kernel<__half, 0>",
    "srf::saliency::latent_vae_kernel<__nv_bfloat16, 1>",
    "srf::saliency::latent_vae_kernel<__nv_bfloat16, 3>",
    "srf::saliency::latent_vae_kernel<__nv_bfloat16, 0>",
    "srf::saliency::latent_trilinear_kernel<float, 1>",
    "srf::saliency::latent_trilinear_kernel<float, 3>",
    "srf::saliency::latent_trilinear_kernel<float, 0>",
    "srf::saliency::latent_trilinear_kernel<__half, 1>",
    "srf::saliency::latent_trilinear_kernel<__half, 3>",
    "srf::saliency::latent_trilinear_kernel<__half, 0>",
    "srf::saliency::latent_trilinear_kernel<__nv_bfloat16, 1>",
    "srf::saliency::latent_trilinear_kernel<__nv_bfloat16, 3>",
    "srf::saliency::latent_trilinear_kernel<__nv_bfloat16, 0>",
    "srf::saliency::spatial_kernel",
    "srf::saliency::weights_kernel",
};
constexpr int kSpatialKernel = 18, kWeightsKernel = 19;

// The CUDA launches of one call: the latent map (colour gradients, C = 3, and single-channel
// inputs get unrolled channel loops), then spatial and weights, one block per (b, f). The
// workspace holds frame_mean and sigma_sum, B * F floats each.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  lp.workspace_bytes = 2 * p.B * p.F * static_cast<int64_t>(sizeof(float));
  const int channels = p.fused_input || p.C == 1 ? 0 : (p.C == 3 ? 1 : 2);
  const int latent = 9 * static_cast<int>(p.mode) + 3 * static_cast<int>(p.dtype) + channels;
  if (p.mode == Mode::kVae) {
    const int64_t seg = p.sf < kTX ? p.sf : kTX;
    const int64_t blocks = p.B * p.F * p.h * ceil_div(p.w, kTX / seg);
    if (blocks > 2147483647) lp.error = "invalid configuration argument (too many blocks)";
    lp.add(latent, blocks, 1, 1, kTX, kTY, 0);
  } else {
    const int64_t blocks = ceil_div(p.B * p.F * p.h * p.w, kThreads);
    lp.add(latent, blocks < 65535 * 16 ? blocks : 65535 * 16, 1, 1, kThreads, 1, 0);
  }
  lp.add(kSpatialKernel, p.B * p.F, 1, 1, kThreads, 1, 0);
  lp.add(kWeightsKernel, p.B * p.F, 1, 1, kThreads, 1, 0);
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::saliency

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::saliency {
// Runs `plan` (of plan(p), workspace bound into p) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::saliency
#endif
