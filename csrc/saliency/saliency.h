// saliency_weights: the params struct shared by the CPU and CUDA kernels, and the small pieces
// of math both must compute identically (latent-grid geometry, trilinear source indices, the
// min-max / gamma mix / floor). Torch-free: included by the .cu file and by NVRTC as well
// (where floorf / fabsf / fmaxf are builtins and <cmath> does not exist).
#pragma once
#if !defined(__CUDACC_RTC__)
#include <cmath>
#endif

#include "common/dtype_code.h"
#include "common/int_types.h"

#if defined(__CUDACC__)
#define SRF_SAL_HD __host__ __device__ __forceinline__
#else
#define SRF_SAL_HD inline
#endif

namespace srf::saliency {

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

// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b for b near 2^63.
SRF_SAL_HD int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// Frames [first, last) of the input pooled into latent frame f: frame 0 alone, then groups of tf.
SRF_SAL_HD void causal_group(int64_t f, int64_t tf, int64_t T, int64_t* first, int64_t* last) {
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

SRF_SAL_HD Lerp lerp_source(int64_t dst, int64_t in, int64_t out) {
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
SRF_SAL_HD bool is_finite(float x) { return fabsf(x) <= 3.402823466e+38f; }

// Whether a min-max over values in [lo, hi] normalises; otherwise every entry maps to 1.
SRF_SAL_HD bool range_ok(float lo, float hi, bool all_finite) {
  const float rng = hi - lo;
  const float mag = fmaxf(fabsf(lo), fabsf(hi));
  return all_finite && is_finite(rng) && rng > kRangeRtol * mag;
}

// Stream-R1's order: the strength mix first, then the floor:
// max((1 - gamma) + gamma * hat, floor), hat = (x - lo) / (hi - lo) or 1 for a degenerate range.
SRF_SAL_HD float minmax_mix(float x, float lo, float hi, bool ok, float floor, float gamma) {
  const float hat = ok ? (x - lo) / (hi - lo) : 1.f;
  const float mixed = (1.f - gamma) + gamma * hat;
  return mixed > floor ? mixed : floor;
}

#if defined(SRF_WITH_CUDA)
// Launches the whole op on `stream` (a cudaStream_t); returns the first launch error (0 = ok).
int launch_saliency_weights_cuda(const Params& p, void* stream);
#endif

}  // namespace srf::saliency
