// qk_norm_rope's torch glue, shared by the CPU kernel, the CUDA entry point and the
// qk_norm_rope_plan op: tensors -> Params with the checks that keep a direct torch.ops call
// memory safe (the user-facing checks are check_inputs of stream_r1_fast/ops/qk_norm_rope.py),
// and prepare(): the outputs, params and the launch plan.
#pragma once
#include <ATen/ATen.h>

#include <cmath>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "qk_norm_rope/qk_norm_rope.h"

namespace srf::qk_norm_rope {

// The outputs' pointers are left null: prepare() allocates the outputs once the sizes are
// known to be sound, and sets them.
inline Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weight_q,
                          const at::Tensor& weight_k, const at::Tensor& cos, const at::Tensor& sin,
                          int64_t frame_offset, double eps) {
  check_rank(q, "q", 5, "[B, F, P, H, D]");
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have the shape of q (", q.sizes(), "), got ", k.sizes());
  const int64_t b = q.size(0), f = q.size(1), p = q.size(2), h = q.size(3), d = q.size(4);
  TORCH_CHECK(p >= 1, "q.shape[2] (tokens per frame P) must be >= 1, got shape ", q.sizes());
  TORCH_CHECK(h >= 1, "q.shape[3] (heads H) must be >= 1, got shape ", q.sizes());
  TORCH_CHECK(d >= 2 && d % 2 == 0, "q.shape[4] (head_dim D) must be even and >= 2 (RoPE pairs), got ", d);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be a finite number >= 0, got ", eps);
  TORCH_CHECK(frame_offset >= 0, "frame_offset must be >= 0, got ", frame_offset);
  // Sizes the kernels compute with (a row's columns as int, offsets as int64), checked before
  // use: a tensor with an empty dimension may have others whose product overflows.
  const int64_t row_elems = checked_mul(h, d, "q.shape[3] * shape[4] (row size H * D)");
  check_int32_size(row_elems, "q.shape[3] * shape[4] (row size H * D)");
  const int64_t tokens = checked_mul(f, p, "q.shape[1] * shape[2] (tokens F * P)");
  const int64_t rows = checked_mul(b, tokens, "q.shape[0] * shape[1] * shape[2] (token rows)");
  checked_mul(rows, row_elems, "q.numel()");
  const int64_t last_frame = checked_add(frame_offset, f, "frame_offset + q.shape[1]");
  const int64_t need_rows = checked_mul(last_frame, p, "(frame_offset + F) * P (RoPE table rows)");
  for (const Named& w : {Named{weight_q, "weight_q"}, Named{weight_k, "weight_k"}}) {
    TORCH_CHECK(w.t.dim() == 1 && w.t.size(0) == row_elems, w.name, " must have shape [H * D] = [", row_elems,
                "], got ", w.t.sizes());
  }
  TORCH_CHECK(cos.dim() == 2 && cos.size(1) == d / 2, "cos must have shape [N * P, D / 2] = [N * ", p, ", ", d / 2,
              "], got ", cos.sizes());
  TORCH_CHECK(sin.sizes() == cos.sizes(), "sin must have the shape of cos (", cos.sizes(), "), got ", sin.sizes());
  TORCH_CHECK(cos.size(0) >= need_rows, "cos and sin have ", cos.size(0), " rows, too few for frames frame_offset = ",
              frame_offset, " .. ", last_frame - 1, " of ", p, " tokens (", need_rows, " rows needed)");

  check_float_dtype(q, "q", /*with_float64=*/true);
  check_same_dtype(k, q, "k", "q");
  const bool wide = q.scalar_type() == at::kDouble;  // the tables hold the compute type
  const at::ScalarType compute = wide ? at::kDouble : at::kFloat;
  TORCH_CHECK(weight_q.scalar_type() == q.scalar_type() || weight_q.scalar_type() == compute,
              "weight_q must have the dtype of q (", q.scalar_type(), ") or ", wide ? "float64" : "float32",
              " (the compute dtype), got ", weight_q.scalar_type());
  check_same_dtype(weight_k, weight_q, "weight_k", "weight_q");
  for (const Named& t : {Named{cos, "cos"}, Named{sin, "sin"}}) {
    TORCH_CHECK(t.t.scalar_type() == compute, t.name, " must be ", wide ? "float64" : "float32",
                " (the compute dtype of ", q.scalar_type(), " q), got ", t.t.scalar_type());
  }
  check_same_device(q, "q", {{k, "k"}, {weight_q, "weight_q"}, {weight_k, "weight_k"}, {cos, "cos"}, {sin, "sin"}});
  check_contiguous({{q, "q"}, {k, "k"}, {weight_q, "weight_q"}, {weight_k, "weight_k"}, {cos, "cos"}, {sin, "sin"}});

  Params params{};
  params.q = q.data_ptr();
  params.k = k.data_ptr();
  params.weight_q = weight_q.data_ptr();
  params.weight_k = weight_k.data_ptr();
  params.cos = cos.data_ptr();
  params.sin = sin.data_ptr();
  params.rows = rows;
  params.tokens = tokens;
  params.row_elems = row_elems;
  params.head_dim = d;
  params.first_row = checked_mul(frame_offset, p, "frame_offset * P");
  params.eps = eps;
  params.dtype = dtype_code(q.scalar_type());
  params.weight_wide = weight_q.scalar_type() == q.scalar_type() ? 0 : 1;
  return params;
}

inline void check_cuda(const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor for the CUDA kernel");
}

// Everything a CUDA launch needs: the outputs (q's shape, contiguous), params and the plan.
inline Prepared<Params> prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weight_q,
                                const at::Tensor& weight_k, const at::Tensor& cos, const at::Tensor& sin,
                                int64_t frame_offset, double eps) {
  Prepared<Params> prep;
  prep.params = make_params(q, k, weight_q, weight_k, cos, sin, frame_offset, eps);
  at::Tensor q_out = at::empty(q.sizes(), q.options());
  at::Tensor k_out = at::empty(k.sizes(), k.options());
  prep.params.q_out = q_out.data_ptr();
  prep.params.k_out = k_out.data_ptr();
  prep.plan = plan(prep.params);  // after the output pointers: their alignment counts
  prep.outputs = {q_out, k_out};
  return prep;
}

}  // namespace srf::qk_norm_rope
