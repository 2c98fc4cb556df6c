// saliency_weights on the CPU: one fused pass from the gradients to the latent grid, then the
// per-frame spatial normalisation and the per-sample temporal normalisation. fp32 math (the
// small reductions of phases 2 and 3 accumulate in double).
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "saliency/saliency_torch.h"

namespace srf::saliency {
namespace {

// Fused saliency of one row segment: out[x] (+)= sum_a w_a * ||g[a, b, t, :, y, x]||_2 for x in
// [x0, x1), or the map's own values for a fused input. `scratch` holds x1 - x0 floats.
template <typename T>
void fused_row(const Params& p, const T* g, int64_t b, int64_t t, int64_t y, int64_t x0,
               int64_t x1, float* out, float* scratch) {
  const int64_t n = x1 - x0;
  if (p.fused_input) {
    const T* src = g + ((b * p.T + t) * p.H + y) * p.W + x0;
    for (int64_t x = 0; x < n; ++x) out[x] = static_cast<float>(src[x]);
    return;
  }
  const int64_t plane = p.H * p.W;
  std::fill(out, out + n, 0.f);
  for (int64_t a = 0; a < p.A; ++a) {
    const float wa = p.axis_weights[b * p.axis_weights_b_stride + a];
    std::fill(scratch, scratch + n, 0.f);
    const T* src = g + ((a * p.B + b) * p.T + t) * p.C * plane + y * p.W + x0;
    for (int64_t c = 0; c < p.C; ++c, src += plane) {
      for (int64_t x = 0; x < n; ++x) {
        const float v = static_cast<float>(src[x]);
        scratch[x] += v * v;
      }
    }
    for (int64_t x = 0; x < n; ++x) out[x] += wa * std::sqrt(scratch[x]);
  }
}

// Phase 1, vae: latent row (b, f, i) = means over the causal frame group x sf rows x sf columns.
template <typename T>
void latent_vae(const Params& p) {
  const T* g = static_cast<const T*>(p.saliency);
  at::parallel_for(0, p.B * p.F * p.h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> colsum(p.W), row(p.W), scratch(p.W);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % p.h, f = (r / p.h) % p.F, b = r / (p.h * p.F);
      int64_t t0, t1;
      causal_group(f, p.tf, p.T, &t0, &t1);
      const int64_t y0 = i * p.sf, y1 = std::min(y0 + p.sf, p.H);
      std::fill(colsum.begin(), colsum.end(), 0.f);
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t y = y0; y < y1; ++y) {
          fused_row(p, g, b, t, y, 0, p.W, row.data(), scratch.data());
          for (int64_t x = 0; x < p.W; ++x) colsum[x] += row[x];
        }
      }
      float* lat = p.sigma + r * p.w;
      const int64_t rows = (t1 - t0) * (y1 - y0);
      for (int64_t j = 0; j < p.w; ++j) {
        const int64_t x0 = j * p.sf, x1 = std::min(x0 + p.sf, p.W);
        float s = 0.f;
        for (int64_t x = x0; x < x1; ++x) s += colsum[x];
        lat[j] = s / static_cast<float>(rows * (x1 - x0));
      }
    }
  });
}

// Phase 1, trilinear: each latent cell gathers its 2 x 2 x 2 source pixels, fusing them on the
// fly (downsampling never reads most pixels, so no full-resolution map is materialised).
template <typename T>
void latent_trilinear(const Params& p) {
  const T* g = static_cast<const T*>(p.saliency);
  at::parallel_for(0, p.B * p.F * p.h, 1, [&](int64_t begin, int64_t end) {
    std::vector<Lerp> lx(p.w);
    for (int64_t j = 0; j < p.w; ++j) lx[j] = lerp_source(j, p.W, p.w);
    float v[2], scratch[2];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % p.h, f = (r / p.h) % p.F, b = r / (p.h * p.F);
      const Lerp lt = lerp_source(f, p.T, p.F), ly = lerp_source(i, p.H, p.h);
      const int64_t ts[2] = {lt.i0, lt.i1}, ys[2] = {ly.i0, ly.i1};
      const float wt[2] = {lt.l0, lt.l1}, wy[2] = {ly.l0, ly.l1};
      float* lat = p.sigma + r * p.w;
      for (int64_t j = 0; j < p.w; ++j) {
        float acc_t = 0.f;
        for (int kt = 0; kt < 2; ++kt) {
          float acc_y = 0.f;
          for (int ky = 0; ky < 2; ++ky) {
            // The two columns are read one at a time: i1 may equal i0 (last column).
            fused_row(p, g, b, ts[kt], ys[ky], lx[j].i0, lx[j].i0 + 1, &v[0], &scratch[0]);
            fused_row(p, g, b, ts[kt], ys[ky], lx[j].i1, lx[j].i1 + 1, &v[1], &scratch[1]);
            acc_y += wy[ky] * (lx[j].l0 * v[0] + lx[j].l1 * v[1]);
          }
          acc_t += wt[kt] * acc_y;
        }
        lat[j] = acc_t;
      }
    }
  });
}

// Phase 2, per (b, f): p_f = mean of the latent frame; sigma = min-max / gamma mix / floor of
// it, divided by its mean (in place over the latent map); sigma_sum for the final W mean.
void spatial(const Params& p) {
  const int64_t hw = p.h * p.w;
  at::parallel_for(0, p.B * p.F, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bf = begin; bf < end; ++bf) {
      float* s = p.sigma + bf * hw;
      float lo = s[0], hi = s[0];
      bool finite = true;
      double sum = 0.0;
      for (int64_t k = 0; k < hw; ++k) {
        lo = std::min(lo, s[k]);
        hi = std::max(hi, s[k]);
        finite = finite && is_finite(s[k]);
        sum += s[k];
      }
      p.frame_mean[bf] = static_cast<float>(sum / static_cast<double>(hw));
      const bool ok = range_ok(lo, hi, finite);
      double mixed_sum = 0.0;
      for (int64_t k = 0; k < hw; ++k) {
        s[k] = minmax_mix(s[k], lo, hi, ok, p.sigma_floor, p.gamma_s);
        mixed_sum += s[k];
      }
      const float mean = static_cast<float>(mixed_sum / static_cast<double>(hw));
      double sigma_sum = 0.0;
      for (int64_t k = 0; k < hw; ++k) {
        s[k] /= mean;
        sigma_sum += s[k];
      }
      p.sigma_sum[bf] = static_cast<float>(sigma_sum);
    }
  });
}

// Phase 3, per b: tau from the frame means, then W = tau * sigma / mean(tau * sigma).
void temporal(const Params& p) {
  const int64_t hw = p.h * p.w;
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float* pm = p.frame_mean + b * p.F;
      float* tau = p.tau + b * p.F;
      float lo = pm[0], hi = pm[0];
      bool finite = true;
      for (int64_t f = 0; f < p.F; ++f) {
        lo = std::min(lo, pm[f]);
        hi = std::max(hi, pm[f]);
        finite = finite && is_finite(pm[f]);
      }
      const bool ok = range_ok(lo, hi, finite);
      double mixed_sum = 0.0;
      for (int64_t f = 0; f < p.F; ++f) {
        tau[f] = minmax_mix(pm[f], lo, hi, ok, p.tau_floor, p.gamma_t);
        mixed_sum += tau[f];
      }
      const float mean = static_cast<float>(mixed_sum / static_cast<double>(p.F));
      double w_sum = 0.0;
      for (int64_t f = 0; f < p.F; ++f) {
        tau[f] /= mean;
        w_sum += static_cast<double>(tau[f]) * p.sigma_sum[b * p.F + f];
      }
      const float w_mean = static_cast<float>(w_sum / static_cast<double>(p.F * hw));
      for (int64_t f = 0; f < p.F; ++f) {
        const float* s = p.sigma + (b * p.F + f) * hw;
        float* out = p.weights + (b * p.F + f) * hw;
        for (int64_t k = 0; k < hw; ++k) out[k] = tau[f] * s[k] / w_mean;
      }
    }
  });
}

template <typename T>
void run(const Params& p) {
  if (p.mode == Mode::kVae) {
    latent_vae<T>(p);
  } else {
    latent_trilinear<T>(p);
  }
  spatial(p);
  temporal(p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> saliency_weights_cpu(
    const at::Tensor& saliency, const at::Tensor& axis_weights, c10::string_view mode,
    int64_t temporal_factor, int64_t spatial_factor, double tau_floor, double sigma_floor,
    double gamma_t, double gamma_s) {
  TORCH_CHECK(saliency.device().is_cpu(), "saliency must be a CPU tensor here, got ",
              saliency.device());
  const Prepared<Params> prep = prepare(saliency, axis_weights, std::string_view(mode.data(), mode.size()),
                          temporal_factor, spatial_factor, tau_floor, sigma_floor, gamma_t,
                          gamma_s);
  switch (prep.params.dtype) {
    case DType::kFloat32: run<float>(prep.params); break;
    case DType::kFloat16: run<c10::Half>(prep.params); break;
    case DType::kBFloat16: run<c10::BFloat16>(prep.params); break;
    case DType::kFloat64: break;  // refused by saliency_torch.h's checks
  }
  return {prep.outputs[0], prep.outputs[1], prep.outputs[2]};
}

}  // namespace
}  // namespace srf::saliency

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("saliency_weights", &srf::saliency::saliency_weights_cpu);
}
