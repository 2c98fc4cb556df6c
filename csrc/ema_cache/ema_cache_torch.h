// ema_cache_update's torch glue, shared by the CPU kernel, the CUDA entry point and the
// ema_cache_update_plan op: tensors -> Params with the checks that keep a direct torch.ops call
// memory safe (the user-facing checks are check_inputs of stream_r1_fast/ops/ema_cache.py),
// and prepare(): params and the launch plan.
#pragma once
#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "ema_cache/ema_cache.h"

namespace srf::ema_cache {

inline Params make_params(const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& cache_pos, const at::Tensor& state,
                          const at::Tensor& k_new, const at::Tensor& v_new, int64_t sink_size,
                          double alpha) {
  check_rank(k_cache, "k_cache", 5, "[B, S, P, H, D]");
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache (",
              k_cache.sizes(), "), got ", v_cache.sizes());
  check_rank(k_new, "k_new", 4, "[B, Fn * P, H, D]");
  TORCH_CHECK(v_new.sizes() == k_new.sizes(), "v_new must have the shape of k_new (",
              k_new.sizes(), "), got ", v_new.sizes());
  const int64_t b = k_cache.size(0), s = k_cache.size(1), p = k_cache.size(2);
  const int64_t h = k_cache.size(3), d = k_cache.size(4);
  TORCH_CHECK(p >= 1, "k_cache must hold at least one token per frame (P >= 1), got shape ",
              k_cache.sizes());
  TORCH_CHECK(sink_size >= 0 && sink_size < s, "sink_size must be in [0, S) with S = ", s,
              " cache slots (at least one ring slot), got ", sink_size);
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha must be in [0, 1], got ", alpha);
  TORCH_CHECK(k_new.size(0) == b && k_new.size(2) == h && k_new.size(3) == d,
              "k_new must have shape [B, Fn * P, H, D] = [", b, ", Fn * ", p, ", ", h, ", ", d,
              "] to match k_cache, got ", k_new.sizes());
  TORCH_CHECK(k_new.size(1) % p == 0, "k_new.shape[1] (", k_new.size(1),
              ") must be a multiple of the ", p, " tokens per frame of k_cache");
  const int64_t ring = s - sink_size;
  const int64_t fn = k_new.size(1) / p;
  // Sizes the kernels compute with (slots as int, element offsets as int64), checked before
  // use: a tensor with an empty dimension may have others whose product overflows.
  check_int32_size(s, "k_cache.shape[1] (S, cache slots)");
  const int64_t frame_elems = checked_mul(checked_mul(p, h, "k_cache.shape[2] * shape[3]"), d,
                                          "k_cache.shape[2] * shape[3] * shape[4] (frame size)");
  checked_mul(checked_mul(checked_mul(2, b, "2 * k_cache.shape[0]"), s,
                          "2 * k_cache.shape[0] * shape[1]"),
              frame_elems, "2 * k_cache.numel()");
  TORCH_CHECK(fn >= 1 && fn <= ring, "k_new must hold between 1 and W = S - sink_size = ", ring,
              " frames, got ", fn, " (", k_new.size(1), " tokens of ", p, ")");

  check_float_dtype(k_cache, "k_cache");
  check_same_dtype(k_cache, "k_cache", {{v_cache, "v_cache"}, {k_new, "k_new"}, {v_new, "v_new"}});
  check_same_device(k_cache, "k_cache", {{v_cache, "v_cache"}, {cache_pos, "cache_pos"},
                                         {state, "state"}, {k_new, "k_new"}, {v_new, "v_new"}});
  check_int32_vector(cache_pos, "cache_pos", s);
  check_int32_vector(state, "state", 4);
  check_contiguous({{k_cache, "k_cache"}, {v_cache, "v_cache"}, {k_new, "k_new"}, {v_new, "v_new"}});

  Params params{};
  params.k_cache = k_cache.data_ptr();
  params.v_cache = v_cache.data_ptr();
  params.cache_pos = cache_pos.data_ptr<int>();
  params.state = state.data_ptr<int>();
  params.k_new = k_new.data_ptr();
  params.v_new = v_new.data_ptr();
  params.batch = b;
  params.slots = s;
  params.sink_size = sink_size;
  params.new_frames = fn;
  params.frame_elems = frame_elems;
  params.alpha = static_cast<float>(alpha);
  params.one_minus_alpha = static_cast<float>(1.0 - alpha);
  params.dtype = dtype_code(k_cache.scalar_type());
  return params;
}

inline void check_cuda(const at::Tensor& k_cache) {
  TORCH_CHECK(k_cache.is_cuda(), "k_cache must be a CUDA tensor for the CUDA kernel");
}

// Everything a CUDA launch needs: params (in place: no outputs, no buffers) and the plan.
inline Prepared<Params> prepare(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_pos, const at::Tensor& state,
                                const at::Tensor& k_new, const at::Tensor& v_new,
                                int64_t sink_size, double alpha) {
  Prepared<Params> prep;
  prep.params = make_params(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha);
  prep.plan = plan(prep.params);
  return prep;
}

}  // namespace srf::ema_cache
