// saliency_weights' torch glue, shared by the CPU kernel, the CUDA entry point and the
// saliency_weights_plan op: prepare() checks the arguments (what keeps a direct torch.ops call
// memory safe; the user-facing checks are check_inputs of stream_r1_fast/ops/saliency.py),
// allocates the outputs and the workspace, fills Params and plans the CUDA launches.
#pragma once
#include <ATen/ATen.h>

#include <string_view>
#include <tuple>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "saliency/saliency.h"

namespace srf::saliency {

inline void check_unit_interval(double v, const char* name) {
  TORCH_CHECK(v >= 0.0 && v <= 1.0, name, " must be in [0, 1], got ", v);
}

// outputs = (weights, tau, sigma); buffers = (workspace[, float32 copy of axis_weights]).
inline Prepared<Params> prepare(const at::Tensor& saliency, const at::Tensor& axis_weights,
                        std::string_view mode, int64_t temporal_factor, int64_t spatial_factor,
                        double tau_floor, double sigma_floor, double gamma_t, double gamma_s) {
  TORCH_CHECK(saliency.dim() == 6 || saliency.dim() == 4,
              "saliency must be per-axis gradients [A, B, T, C, H, W] or a fused map "
              "[B, T, H, W], got shape ",
              saliency.sizes());
  check_float_dtype(saliency, "saliency");
  check_contiguous(saliency, "saliency");
  for (int64_t d = 0; d < saliency.dim(); ++d) {
    TORCH_CHECK(saliency.size(d) > 0, "saliency must have no empty dimension, got shape ",
                saliency.sizes());
  }
  TORCH_CHECK(mode == "vae" || mode == "trilinear", "mode must be 'vae' or 'trilinear', got '",
              std::string(mode), "'");
  TORCH_CHECK(temporal_factor >= 1, "temporal_factor must be >= 1, got ", temporal_factor);
  TORCH_CHECK(spatial_factor >= 1, "spatial_factor must be >= 1, got ", spatial_factor);
  check_unit_interval(tau_floor, "tau_floor");
  check_unit_interval(sigma_floor, "sigma_floor");
  check_unit_interval(gamma_t, "gamma_t");
  check_unit_interval(gamma_s, "gamma_s");

  Prepared<Params> out;
  Params& p = out.params;
  at::Tensor weights_f32;
  p.fused_input = saliency.dim() == 4;
  const int64_t off = p.fused_input ? -1 : 0;  // index shift: [A, B, T, C, H, W] vs [B, T, H, W]
  p.A = p.fused_input ? 1 : saliency.size(0);
  p.B = saliency.size(off + 1);
  p.T = saliency.size(off + 2);
  p.C = p.fused_input ? 1 : saliency.size(3);
  p.H = saliency.size(saliency.dim() - 2);
  p.W = saliency.size(saliency.dim() - 1);

  // Every tensor argument on one device, the ignored axis_weights of a fused map included.
  if (axis_weights.defined()) check_same_device(axis_weights, saliency, "axis_weights", "saliency");
  if (p.fused_input) {
    p.axis_weights = nullptr;
    p.axis_weights_b_stride = 0;
  } else {
    TORCH_CHECK(at::isFloatingType(axis_weights.scalar_type()),
                "axis_weights must be a floating-point tensor, got ", axis_weights.scalar_type());
    const bool per_axis = axis_weights.dim() == 1 && axis_weights.size(0) == p.A;
    const bool per_sample = axis_weights.dim() == 2 && axis_weights.size(0) == p.B &&
                            axis_weights.size(1) == p.A;
    TORCH_CHECK(per_axis || per_sample, "axis_weights must have shape [A] = [", p.A,
                "] or [B, A] = [", p.B, ", ", p.A, "] for saliency of shape ", saliency.sizes(),
                ", got ", axis_weights.sizes());
    weights_f32 = axis_weights.to(at::kFloat).contiguous();
    p.axis_weights = weights_f32.data_ptr<float>();
    p.axis_weights_b_stride = per_sample ? p.A : 0;
  }

  p.tf = temporal_factor;
  p.sf = spatial_factor;
  // The latent grid for any factor up to 2^63 - 1 (ceil_div cannot overflow), and the products
  // the kernels index with, checked (the input's numel bounds them, the checks keep it so).
  p.F = 1 + ceil_div(p.T - 1, p.tf);
  p.h = ceil_div(p.H, p.sf);
  p.w = ceil_div(p.W, p.sf);
  const int64_t frames = checked_mul(p.B, p.F, "saliency batch * latent frames");
  checked_mul(checked_mul(frames, p.h, "saliency batch * latent frames * latent rows"), p.w,
              "saliency latent grid size");
  checked_mul(checked_mul(p.A, checked_mul(p.C, p.T, "saliency.shape[C] * shape[T]"),
                          "saliency.shape[A] * shape[C] * shape[T]"),
              checked_mul(p.B, checked_mul(p.H, p.W, "saliency.shape[H] * shape[W]"),
                          "saliency.shape[B] * shape[H] * shape[W]"),
              "saliency.numel()");
  p.mode = mode == "vae" ? Mode::kVae : Mode::kTrilinear;
  p.tau_floor = static_cast<float>(tau_floor);
  p.sigma_floor = static_cast<float>(sigma_floor);
  p.gamma_t = static_cast<float>(gamma_t);
  p.gamma_s = static_cast<float>(gamma_s);
  p.saliency = saliency.data_ptr();
  p.dtype = dtype_code(saliency.scalar_type());

  const auto opts = saliency.options().dtype(at::kFloat);
  at::Tensor weights = at::empty({p.B, p.F, p.h, p.w}, opts);
  at::Tensor tau = at::empty({p.B, p.F}, opts);
  at::Tensor sigma = at::empty({p.B, p.F, p.h, p.w}, opts);
  out.outputs = {weights, tau, sigma};
  out.plan = plan(p);
  at::Tensor workspace = workspace_for(out.plan, saliency);
  out.buffers = {workspace};
  if (weights_f32.defined()) out.buffers.push_back(weights_f32);
  p.weights = weights.data_ptr<float>();
  p.tau = tau.data_ptr<float>();
  p.sigma = sigma.data_ptr<float>();
  p.frame_mean = static_cast<float*>(workspace.data_ptr());
  p.sigma_sum = p.frame_mean + p.B * p.F;
  return out;
}

// The dispatcher picks CUDA when any argument is on CUDA; a fused map ignores axis_weights,
// so the device of saliency itself must be checked.
inline void check_cuda(const at::Tensor& saliency, const at::Tensor& axis_weights) {
  TORCH_CHECK(saliency.is_cuda(), "saliency must be a CUDA tensor here (axis_weights is on ",
              axis_weights.device(), "), got ", saliency.device());
}

}  // namespace srf::saliency
