// sink_attention's torch glue, shared by the CPU kernel, the CUDA entry point and the
// sink_attention_plan op: tensors -> Params with the checks that keep a direct torch.ops call
// memory safe (the user-facing checks are check_inputs of stream_r1_fast/ops/sink_attention.py),
// and prepare(): outputs, workspace and the launch plan.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "sink_attention/sink_attention.h"

namespace srf::sink_attention {

// Checks the op's arguments and returns the params with every pointer but out, lse and
// rope_table set (and the RoPE table's layout).
inline Params make_params(const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& cache_pos,
                          const at::Tensor& q_pos, int64_t grid_h, int64_t grid_w, double scale,
                          double rope_theta) {
  TORCH_CHECK(grid_h > 0 && grid_w > 0, "sink_attention: grid_h and grid_w must be positive, got ",
              grid_h, " and ", grid_w);
  TORCH_CHECK(std::isfinite(scale), "sink_attention: scale must be finite, got ", scale);
  TORCH_CHECK(std::isfinite(rope_theta) && rope_theta > 0,
              "sink_attention: rope_theta must be positive, got ", rope_theta);
  check_rank(q, "q", 4, "[B, Lq, H, D]");
  check_rank(k, "k", 4, "[B, Lq, H, D]");
  check_rank(v, "v", 4, "[B, Lq, H, D]");
  check_rank(k_cache, "k_cache", 5, "[B, S, P, H, D]");
  check_rank(v_cache, "v_cache", 5, "[B, S, P, H, D]");

  check_float_dtype(q, "q");
  check_same_dtype(q, "q", {{k, "k"}, {v, "v"}, {k_cache, "k_cache"}, {v_cache, "v_cache"}});
  check_same_device(q, "q", {{k, "k"}, {v, "v"}, {k_cache, "k_cache"}, {v_cache, "v_cache"},
                             {cache_pos, "cache_pos"}, {q_pos, "q_pos"}});

  const int64_t b = q.size(0), lq = q.size(1), h = q.size(2), d = q.size(3);
  TORCH_CHECK(d == 64 || d == 128, "sink_attention: head_dim (last dim of q) must be 64 or 128, got ",
              d);
  TORCH_CHECK(k.sizes() == q.sizes(), "k must have the shape of q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.sizes() == q.sizes(), "v must have the shape of q ", q.sizes(), ", got ", v.sizes());
  // Sizes are products of arguments: computed with overflow checks before any use.
  check_int32_size(grid_h, "sink_attention: grid_h");
  check_int32_size(grid_w, "sink_attention: grid_w");
  const int64_t p = checked_mul(grid_h, grid_w, "sink_attention: grid_h * grid_w");
  check_int32_size(p, "sink_attention: grid_h * grid_w (tokens per frame)");
  TORCH_CHECK(lq % p == 0, "q.shape[1] (Lq = ", lq, ") must be a multiple of grid_h * grid_w = ", p,
              " (whole latent frames)");
  const int64_t s = k_cache.size(1);
  TORCH_CHECK(k_cache.size(0) == b && k_cache.size(2) == p && k_cache.size(3) == h &&
                  k_cache.size(4) == d,
              "k_cache must have shape [B, S, P, H, D] = [", b, ", S, ", p, ", ", h, ", ", d,
              "] to match q and grid_h * grid_w, got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  check_int32_vector(cache_pos, "cache_pos", s);
  check_int32_vector(q_pos, "q_pos", 1);

  check_contiguous({{q, "q"}, {k, "k"}, {v, "v"}, {k_cache, "k_cache"}, {v_cache, "v_cache"}});

  const int64_t keys =
      checked_add(checked_mul(s, p, "sink_attention: k_cache.shape[1] * shape[2] (cached keys)"),
                  lq, "sink_attention: cached keys + q.shape[1] (keys)");
  check_int32_size(keys, "sink_attention: k_cache.shape[1] * shape[2] + q.shape[1] (keys)");
  TORCH_CHECK(b <= 65535, "sink_attention: q.shape[0] (batch) must be at most 65535, got ", b);
  TORCH_CHECK(h <= 65535, "sink_attention: q.shape[2] (heads) must be at most 65535, got ", h);
  checked_mul(checked_mul(checked_mul(b, lq, "q.shape[0] * shape[1]"), h, "q.shape[0] * shape[1] * shape[2]"),
              d, "q.numel()");

  Params prm{};
  prm.q = q.data_ptr();
  prm.k = k.data_ptr();
  prm.v = v.data_ptr();
  prm.k_cache = k_cache.data_ptr();
  prm.v_cache = v_cache.data_ptr();
  prm.cache_pos = cache_pos.data_ptr<int32_t>();
  prm.q_pos = q_pos.data_ptr<int32_t>();
  prm.batch = static_cast<int>(b);
  prm.q_len = static_cast<int>(lq);
  prm.heads = static_cast<int>(h);
  prm.head_dim = static_cast<int>(d);
  prm.slots = static_cast<int>(s);
  prm.grid_h = static_cast<int>(grid_h);
  prm.grid_w = static_cast<int>(grid_w);
  prm.scale = static_cast<float>(scale);
  prm.rope_theta = rope_theta;
  prm.dtype = dtype_code(q.scalar_type());
  prm.rope = rope_table_layout(prm);
  return prm;
}

// The kernels read 16-byte vectors; a tensor that is a view at an odd offset is copied once.
inline at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

// Reached with a CPU q only when some other argument is on CUDA: names that mismatch.
inline void check_cuda(const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda(), "sink_attention: all tensors must be on the device of q (", q.device(),
              "); got CUDA tensors among them");
}

// Everything a CUDA launch needs: outputs (out, lse), the 16-byte aligned inputs and the
// RoPE table's workspace (buffers), params pointing at them, the plan.
inline Prepared<Params> prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_pos, const at::Tensor& q_pos,
                                int64_t grid_h, int64_t grid_w, double scale, double rope_theta) {
  Prepared<Params> prep;
  Params& p = prep.params;
  p = make_params(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  prep.outputs = {out, lse};
  prep.plan = plan(p);
  if (out.numel() == 0) {  // nothing to launch (plan() has no launches either)
    prep.plan.count = 0;
    return prep;
  }
  prep.buffers = {aligned16(q), aligned16(k), aligned16(v), aligned16(k_cache), aligned16(v_cache),
                  workspace_for(prep.plan, q)};
  p.q = prep.buffers[0].data_ptr();
  p.k = prep.buffers[1].data_ptr();
  p.v = prep.buffers[2].data_ptr();
  p.k_cache = prep.buffers[3].data_ptr();
  p.v_cache = prep.buffers[4].data_ptr();
  p.rope_table = static_cast<float*>(prep.buffers[5].data_ptr());
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  return prep;
}

}  // namespace srf::sink_attention
