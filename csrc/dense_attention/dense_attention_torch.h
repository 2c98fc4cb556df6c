// dense_attention's torch glue, shared by the CPU kernel, the CUDA entry point and the
// dense_attention_plan op: tensors -> Params with the checks that keep a direct torch.ops call
// memory safe (the user-facing checks are check_inputs of stream_r1_fast/ops/dense_attention_op.py),
// and prepare(): outputs, aligned copies where needed, the launch plan.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/checks.h"
#include "common/dtype.h"
#include "common/plan_op.h"
#include "dense_attention/dense_attention.h"

namespace srf::dense_attention {

// float32 / float16 / bfloat16 (every backend) or float64 (the CPU kernel and the reference).
inline void check_dtype(const at::Tensor& q) {
  const auto st = q.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              "dense_attention: q must be float64, float32, float16 or bfloat16, got ", st);
}

// Checks the op's arguments and returns the params with every pointer but out and lse set.
// Any strides: the last dimension must be contiguous (stride 1) unless it has one element.
inline Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          double scale) {
  TORCH_CHECK(std::isfinite(scale), "dense_attention: scale must be finite, got ", scale);
  check_rank(q, "q", 4, "[B, Lq, H, D]");
  check_rank(k, "k", 4, "[B, Lk, H, D]");
  check_rank(v, "v", 4, "[B, Lk, H, D]");
  check_dtype(q);
  check_same_dtype(q, "q", {{k, "k"}, {v, "v"}});
  check_same_device(q, "q", {{k, "k"}, {v, "v"}});
  const int64_t b = q.size(0), lq = q.size(1), h = q.size(2), d = q.size(3), lk = k.size(1);
  TORCH_CHECK(k.size(0) == b && k.size(2) == h && k.size(3) == d,
              "k must have shape [B, Lk, H, D] = [", b, ", Lk, ", h, ", ", d, "] to match q, got ",
              k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  for (const Named& n : {Named{q, "q"}, Named{k, "k"}, Named{v, "v"}}) {
    TORCH_CHECK(n.t.size(3) <= 1 || n.t.stride(3) == 1, "dense_attention: ", n.name,
                " must be contiguous in its last dimension (stride 1), got strides ", n.t.strides());
    for (int i = 0; i < 4; ++i)
      TORCH_CHECK(n.t.stride(i) >= 0, "dense_attention: ", n.name, " has a negative stride");
  }
  // The kernels index rows, heads and batch elements with 32-bit ints, elements with int64.
  check_int32_size(b, "dense_attention: q.shape[0] (batch)");
  check_int32_size(lq, "dense_attention: q.shape[1] (Lq)");
  check_int32_size(lk, "dense_attention: k.shape[1] (Lk)");
  check_int32_size(h, "dense_attention: q.shape[2] (heads)");
  check_int32_size(d, "dense_attention: q.shape[3] (head_dim)");
  checked_mul(checked_mul(checked_mul(b, lq, "q.shape[0] * shape[1]"), h,
                          "q.shape[0] * shape[1] * shape[2]"),
              d, "q.numel()");
  checked_mul(checked_mul(b, h, "q.shape[0] * shape[2]"), lq, "lse.numel()");
  checked_mul(checked_mul(checked_mul(b, lk, "k.shape[0] * shape[1]"), h,
                          "k.shape[0] * shape[1] * shape[2]"),
              d, "k.numel()");

  Params prm{};
  prm.q = q.data_ptr();
  prm.k = k.data_ptr();
  prm.v = v.data_ptr();
  // The stride of a dimension of size <= 1 is never used: 0, so that it cannot misalign.
  auto stride = [](const at::Tensor& t, int i) -> int64_t { return t.size(i) <= 1 ? 0 : t.stride(i); };
  prm.q_batch_stride = stride(q, 0);
  prm.q_row_stride = stride(q, 1);
  prm.q_head_stride = stride(q, 2);
  prm.k_batch_stride = stride(k, 0);
  prm.k_row_stride = stride(k, 1);
  prm.k_head_stride = stride(k, 2);
  prm.v_batch_stride = stride(v, 0);
  prm.v_row_stride = stride(v, 1);
  prm.v_head_stride = stride(v, 2);
  prm.batch = static_cast<int>(b);
  prm.q_len = static_cast<int>(lq);
  prm.k_len = static_cast<int>(lk);
  prm.heads = static_cast<int>(h);
  prm.head_dim = static_cast<int>(d);
  prm.scale = static_cast<float>(scale);
  prm.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  prm.dtype = q.scalar_type() == at::kDouble ? DType::kFloat32 : dtype_code(q.scalar_type());
  return prm;
}

// Reached with a CPU q only when some other argument is on CUDA: names that mismatch.
inline void check_cuda(const at::Tensor& q) {
  TORCH_CHECK(q.is_cuda(), "dense_attention: all tensors must be on the device of q (", q.device(),
              "); got CUDA tensors among them");
}

// The kernels move 16-byte chunks: a tensor whose base or strides are not 16-byte multiples
// is copied once, contiguous (the copy is what the params point at).
inline at::Tensor chunk_aligned(const at::Tensor& t) {
  bool ok = reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int i = 0; i < 3; ++i) ok = ok && (t.size(i) <= 1 || (t.stride(i) * t.element_size()) % 16 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// Everything a CUDA launch needs: outputs (out [B, Lq, H, D] contiguous, lse [B, H, Lq]
// float32), the chunk-aligned inputs (buffers), params pointing at them, the plan.
inline Prepared<Params> prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                double scale) {
  Prepared<Params> prep;
  Params& p = prep.params;
  p = make_params(q, k, v, scale);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  prep.outputs = {out, lse};
  // Nothing to launch without queries, keys or head dims; the reference's values then: no
  // keys gives out 0 and lse -inf, head_dim 0 gives scores 0 and lse log(Lk).
  const int64_t lk = k.size(1);
  if (out.numel() == 0 || lk == 0) {
    if (lk == 0) out.zero_();
    if (lse.numel() > 0)
      lse.fill_(lk == 0 ? -std::numeric_limits<double>::infinity() : std::log(static_cast<double>(lk)));
    return prep;
  }
  prep.buffers = {chunk_aligned(q), chunk_aligned(k), chunk_aligned(v)};
  const at::Tensor* in[] = {&prep.buffers[0], &prep.buffers[1], &prep.buffers[2]};
  p = make_params(*in[0], *in[1], *in[2], scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  prep.plan = plan(p);
  return prep;
}

}  // namespace srf::dense_attention
