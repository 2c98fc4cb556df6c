// rotated_cache_advance's torch glue, shared by the CPU kernel, the CUDA entry point and the
// rotated_cache_advance_plan op: tensors -> Params with the checks that keep a direct torch.ops
// call memory safe (the user-facing checks are check_inputs of
// stream_r1_fast/ops/rotated_cache.py), and prepare(): params and the launch plan.
#pragma once
#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "rotated_cache/rotated_cache.h"

namespace srf::rotated_cache {

inline Params make_params(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new,
                          const at::Tensor& v_new, const at::Tensor& cos, const at::Tensor& sin,
                          int64_t occupied, int64_t sink_size, int64_t window, double alpha) {
  check_rank(keys, "keys", 5, "[B, N, P, H, D]");
  TORCH_CHECK(values.sizes() == keys.sizes(), "values must have the shape of keys (", keys.sizes(),
              "), got ", values.sizes());
  check_rank(k_new, "k_new", 4, "[B, F * P, H, D]");
  TORCH_CHECK(v_new.sizes() == k_new.sizes(), "v_new must have the shape of k_new (", k_new.sizes(),
              "), got ", v_new.sizes());
  const int64_t b = keys.size(0), n = keys.size(1), p = keys.size(2);
  const int64_t h = keys.size(3), d = keys.size(4);
  TORCH_CHECK(p >= 1, "keys must hold at least one token per frame (P >= 1), got shape ", keys.sizes());
  TORCH_CHECK(d >= 2 && d % 2 == 0, "keys.shape[4] (head_dim D) must be even and >= 2 (RoPE pairs), got ", d);
  TORCH_CHECK(sink_size >= 0 && window >= 1 && sink_size <= n && window <= n - sink_size,
              "sink_size and window must satisfy sink_size >= 0, window >= 1 and sink_size + window <= N = ",
              n, " buffer frames, got sink_size = ", sink_size, ", window = ", window);
  TORCH_CHECK(occupied >= 0 && occupied <= sink_size + window, "occupied must be in [0, sink_size + window] = [0, ",
              sink_size + window, "], got ", occupied);
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK(k_new.size(0) == b && k_new.size(2) == h && k_new.size(3) == d,
              "k_new must have shape [B, F * P, H, D] = [", b, ", F * ", p, ", ", h, ", ", d,
              "] to match keys, got ", k_new.sizes());
  TORCH_CHECK(k_new.size(1) % p == 0, "k_new.shape[1] (", k_new.size(1), ") must be a multiple of the ", p,
              " tokens per frame of keys");
  const int64_t fn = k_new.size(1) / p;
  TORCH_CHECK(fn >= 1 && fn <= window, "k_new must hold between 1 and window = ", window, " frames, got ", fn,
              " (", k_new.size(1), " tokens of ", p, ")");
  // Sizes the kernels compute with (slots as int, offsets as int64), checked before use: a
  // tensor with an empty dimension may have others whose product overflows.
  check_int32_size(n, "keys.shape[1] (N, buffer frames)");
  const int64_t frame_elems = checked_mul(checked_mul(p, h, "keys.shape[2] * shape[3]"), d,
                                          "keys.shape[2] * shape[3] * shape[4] (frame size)");
  checked_mul(checked_mul(checked_mul(2, b, "2 * keys.shape[0]"), n, "2 * keys.shape[0] * shape[1]"),
              frame_elems, "2 * keys.numel()");
  const int64_t table_rows = checked_mul(n, p, "keys.shape[1] * shape[2] (RoPE table rows)");
  for (const Named& t : {Named{cos, "cos"}, Named{sin, "sin"}}) {
    TORCH_CHECK(t.t.dim() == 2 && t.t.size(0) == table_rows && t.t.size(1) == d / 2, t.name,
                " must have shape [N * P, D / 2] = [", table_rows, ", ", d / 2, "], got ", t.t.sizes());
  }

  check_float_dtype(keys, "keys", /*with_float64=*/true);
  check_same_dtype(keys, "keys", {{values, "values"}, {k_new, "k_new"}, {v_new, "v_new"}});
  const bool wide = keys.scalar_type() == at::kDouble;  // the tables hold the compute type
  for (const Named& t : {Named{cos, "cos"}, Named{sin, "sin"}}) {
    TORCH_CHECK(t.t.scalar_type() == (wide ? at::kDouble : at::kFloat), t.name, " must be ",
                wide ? "float64" : "float32", " (the compute dtype of ", keys.scalar_type(), " keys), got ",
                t.t.scalar_type());
  }
  check_same_device(keys, "keys", {{values, "values"}, {k_new, "k_new"}, {v_new, "v_new"}, {cos, "cos"},
                                   {sin, "sin"}});
  check_contiguous({{keys, "keys"}, {values, "values"}, {k_new, "k_new"}, {v_new, "v_new"}, {cos, "cos"},
                    {sin, "sin"}});

  Params params{};
  params.keys = keys.data_ptr();
  params.values = values.data_ptr();
  params.k_new = k_new.data_ptr();
  params.v_new = v_new.data_ptr();
  params.cos = cos.data_ptr();
  params.sin = sin.data_ptr();
  params.batch = b;
  params.capacity = n;
  params.tokens = p;
  params.heads = h;
  params.head_dim = d;
  params.frame_elems = frame_elems;
  params.occupied = occupied;
  params.sink_size = sink_size;
  params.window = window;
  params.new_frames = fn;
  params.alpha = alpha;
  params.one_minus_alpha = 1.0 - alpha;
  params.dtype = dtype_code(keys.scalar_type());
  return params;
}

inline void check_cuda(const at::Tensor& keys) {
  TORCH_CHECK(keys.is_cuda(), "keys must be a CUDA tensor for the CUDA kernel");
}

// Everything a CUDA launch needs: params (in place: no outputs, no buffers) and the plan.
inline Prepared<Params> prepare(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new,
                                const at::Tensor& v_new, const at::Tensor& cos, const at::Tensor& sin,
                                int64_t occupied, int64_t sink_size, int64_t window, double alpha) {
  Prepared<Params> prep;
  prep.params = make_params(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha);
  prep.plan = plan(prep.params);
  return prep;
}

}  // namespace srf::rotated_cache
