// qk_norm_rope on the CPU: at::parallel_for over the token rows of q and k; per row the sum of
// squares in the compute type (float; double for double tensors; eight partial sums, so the
// loop vectorises), then every pair normalised, scaled by the weight, turned by its token's
// angles and rounded once to the dtype, as the CUDA kernel (qk_norm_rope_kernels.cuh) does.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "qk_norm_rope/qk_norm_rope_torch.h"

namespace srf::qk_norm_rope {
namespace {

template <typename T, typename C, typename W>
void norm_rope_row(const Params& prm, const T* x, T* y, const W* weight, int64_t t_row) {
  const int64_t n = prm.row_elems, d = prm.head_dim;
  constexpr int kLanes = 8;
  C acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const C v = static_cast<C>(x[i + l]);
      acc[l] += v * v;
    }
  for (; i < n; ++i) {
    const C v = static_cast<C>(x[i]);
    acc[0] += v * v;
  }
  C total = 0;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  const C inv = C(1) / std::sqrt(total / static_cast<C>(n) + static_cast<C>(prm.eps));
  const C* cos = static_cast<const C*>(prm.cos) + t_row;
  const C* sin = static_cast<const C*>(prm.sin) + t_row;
  for (int64_t head = 0; head < n; head += d)
    for (int64_t j = 0; j < d; j += 2) {
      const int64_t e = head + j;
      const C y0 = static_cast<C>(x[e]) * inv * static_cast<C>(weight[e]);
      const C y1 = static_cast<C>(x[e + 1]) * inv * static_cast<C>(weight[e + 1]);
      const C c = cos[j / 2], s = sin[j / 2];
      y[e] = static_cast<T>(y0 * c - y1 * s);
      y[e + 1] = static_cast<T>(y0 * s + y1 * c);
    }
}

template <typename T>
void norm_rope(const Params& prm) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t half = prm.head_dim / 2;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / prm.row_elems);
  at::parallel_for(0, 2 * prm.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const bool is_k = r >= prm.rows;
      const int64_t row = is_k ? r - prm.rows : r;
      const T* x = static_cast<const T*>(is_k ? prm.k : prm.q) + row * prm.row_elems;
      T* y = static_cast<T*>(is_k ? prm.k_out : prm.q_out) + row * prm.row_elems;
      const void* weight = is_k ? prm.weight_k : prm.weight_q;
      const int64_t t_row = (prm.first_row + row % prm.tokens) * half;
      if (prm.weight_wide)
        norm_rope_row<T, C>(prm, x, y, static_cast<const C*>(weight), t_row);
      else
        norm_rope_row<T, C>(prm, x, y, static_cast<const T*>(weight), t_row);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> qk_norm_rope_cpu(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& weight_q, const at::Tensor& weight_k,
                                                     const at::Tensor& cos, const at::Tensor& sin,
                                                     int64_t frame_offset, double eps) {
  const Prepared<Params> prep = prepare(q, k, weight_q, weight_k, cos, sin, frame_offset, eps);
  TORCH_CHECK(q.device().is_cpu(), "q must be a CPU tensor for the CPU kernel");
  const Params& prm = prep.params;
  if (prm.rows * prm.row_elems > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "qk_norm_rope_cpu",
                                    [&] { norm_rope<scalar_t>(prm); });
  }
  return {prep.outputs[0], prep.outputs[1]};
}

}  // namespace
}  // namespace srf::qk_norm_rope

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("qk_norm_rope", &srf::qk_norm_rope::qk_norm_rope_cpu);
}
