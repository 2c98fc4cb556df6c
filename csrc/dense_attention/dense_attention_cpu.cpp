// CPU kernel of dense_attention: plain and blocked, for correctness rather than speed. Each
// task is a block of query rows of one (batch, head): its scores against every key in the
// accumulation type (float32, float64 for float64 inputs), then per row the max, exp, sum and
// the weighted sum of the values, as the reference (logsumexp / softmax) computes them,
// non-finite scores included.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "dense_attention/dense_attention_torch.h"

namespace srf::dense_attention {
namespace {

constexpr int64_t kQueryBlock = 32;

template <typename scalar_t>
void attend(const Params& p, scalar_t* out, float* lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t lq = p.q_len, lk = p.k_len, hn = p.heads, d = p.head_dim;
  const int64_t blocks = (lq + kQueryBlock - 1) / kQueryBlock;
  const auto* q = static_cast<const scalar_t*>(p.q);
  const auto* k = static_cast<const scalar_t*>(p.k);
  const auto* v = static_cast<const scalar_t*>(p.v);
  const acc_t scale = static_cast<acc_t>(p.scale);
  at::parallel_for(0, static_cast<int64_t>(p.batch) * hn * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qb(kQueryBlock * d), row(d), s(kQueryBlock * lk), o(kQueryBlock * d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (hn * blocks), h = task / blocks % hn, i0 = task % blocks * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, lq - i0);
      const scalar_t* qh = q + b * p.q_batch_stride + h * p.q_head_stride;
      const scalar_t* kh = k + b * p.k_batch_stride + h * p.k_head_stride;
      const scalar_t* vh = v + b * p.v_batch_stride + h * p.v_head_stride;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < d; ++c) qb[r * d + c] = static_cast<acc_t>(qh[(i0 + r) * p.q_row_stride + c]);
      for (int64_t j = 0; j < lk; ++j) {
        for (int64_t c = 0; c < d; ++c) row[c] = static_cast<acc_t>(kh[j * p.k_row_stride + c]);
        for (int64_t r = 0; r < rows; ++r) {
          acc_t dot = 0;
          for (int64_t c = 0; c < d; ++c) dot += qb[r * d + c] * row[c];
          s[r * lk + j] = dot * scale;
        }
      }
      std::vector<acc_t> sum(rows);
      for (int64_t r = 0; r < rows; ++r) {
        acc_t mx = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = 0; j < lk; ++j) {
          const acc_t x = s[r * lk + j];
          if (x > mx || std::isnan(x)) mx = x;
          if (std::isnan(x)) break;
        }
        // logsumexp's convention: an infinite max is not subtracted.
        const acc_t m = std::isinf(mx) ? acc_t(0) : mx;
        acc_t l = 0;
        for (int64_t j = 0; j < lk; ++j) {
          const acc_t e = std::exp(s[r * lk + j] - m);
          s[r * lk + j] = e;
          l += e;
        }
        sum[r] = l;
        lse[(b * hn + h) * lq + i0 + r] = static_cast<float>(m + std::log(l));
      }
      std::fill(o.begin(), o.end(), acc_t(0));
      for (int64_t j = 0; j < lk; ++j) {
        for (int64_t c = 0; c < d; ++c) row[c] = static_cast<acc_t>(vh[j * p.v_row_stride + c]);
        for (int64_t r = 0; r < rows; ++r) {
          const acc_t e = s[r * lk + j];
          for (int64_t c = 0; c < d; ++c) o[r * d + c] += e * row[c];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* dst = out + ((b * lq + i0 + r) * hn + h) * d;
        for (int64_t c = 0; c < d; ++c)  // no keys: zeros, as the reference's empty sum
          dst[c] = static_cast<scalar_t>(lk == 0 ? acc_t(0) : o[r * d + c] / sum[r]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> dense_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, double scale) {
  Params prm = make_params(q, k, v, scale);
  TORCH_CHECK(q.device().is_cpu(), "dense_attention: q must be a CPU tensor for the CPU kernel");
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dense_attention_cpu", [&] {
      attend<scalar_t>(prm, out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    });
  } else if (lse.numel() > 0) {  // D == 0: every score is 0
    lse.fill_(k.size(1) == 0 ? -std::numeric_limits<float>::infinity() : std::log(static_cast<double>(k.size(1))));
  }
  return {out, lse};
}

}  // namespace
}  // namespace srf::dense_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("dense_attention", &srf::dense_attention::dense_attention_cpu);
}
