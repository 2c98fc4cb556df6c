// CPU kernel of sink_attention: the keys of every (batch, head) are rotated once into float32
// buffers (empty slots left out), then blocks of queries run a two-pass softmax against them,
// with ATen's GEMM and vectorised exp doing the arithmetic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "sink_attention/sink_attention_torch.h"

namespace srf::sink_attention {
namespace {

constexpr int kQueryBlock = 64;  // queries per task: [64, keys] float32 scores at a time

// (cos, sin) of every rotation, in float64 then rounded, as the reference computes them.
void fill_rope_table(const Params& p, const RopeTableLayout& l, float* table) {
  const double theta = p.rope_theta;
  auto fill = [&](int64_t offset, int n_pos, int pairs, auto pos_of) {
    for (int i = 0; i < n_pos; ++i) {
      const double pos = static_cast<double>(pos_of(i));
      for (int j = 0; j < pairs; ++j) {
        const double a = pos * std::pow(theta, -(2.0 * j) / (2.0 * pairs));
        float* e = table + 2 * (offset + static_cast<int64_t>(i) * pairs + j);
        e[0] = static_cast<float>(std::cos(a));
        e[1] = static_cast<float>(std::sin(a));
      }
    }
  };
  const int64_t q0 = p.q_pos[0];
  fill(0, l.frames, l.t_pairs, [&](int f) -> int64_t {
    return f < p.slots ? std::max<int64_t>(p.cache_pos[f], 0) : q0 + (f - p.slots);
  });
  fill(l.h_offset, p.grid_h, l.h_pairs, [](int r) -> int64_t { return r; });
  fill(l.w_offset, p.grid_w, l.w_pairs, [](int c) -> int64_t { return c; });
}

// Rotates one token's head vector (adjacent pairs) into float32.
template <typename T>
void rotate_token(const T* src, float* dst, const float* table, const RopeTableLayout& l, int frame,
                  int row, int col) {
  int j = 0;
  auto rotate = [&](const float* cs, int pairs) {
    for (int i = 0; i < pairs; ++i, ++j) {
      const float x0 = static_cast<float>(src[2 * j]), x1 = static_cast<float>(src[2 * j + 1]);
      const float c = cs[2 * i], s = cs[2 * i + 1];
      dst[2 * j] = x0 * c - x1 * s;
      dst[2 * j + 1] = x0 * s + x1 * c;
    }
  };
  rotate(table + 2 * static_cast<int64_t>(frame) * l.t_pairs, l.t_pairs);
  rotate(table + 2 * (l.h_offset + static_cast<int64_t>(row) * l.h_pairs), l.h_pairs);
  rotate(table + 2 * (l.w_offset + static_cast<int64_t>(col) * l.w_pairs), l.w_pairs);
}

template <typename T>
void sink_attention_cpu_kernel(const Params& p) {
  const int B = p.batch, H = p.heads, D = p.head_dim, S = p.slots, P = p.grid_h * p.grid_w;
  const int Lq = p.q_len, gw = p.grid_w;
  const RopeTableLayout& l = p.rope;
  std::vector<float> table(2 * l.entries);
  fill_rope_table(p, l, table.data());

  // Key tokens that take part: occupied cache slots, then the whole chunk.
  struct KeySrc {
    int frame;  // row of the t table
    int token;  // index within its frame
    bool cached;
    int slot_or_frame;
  };
  std::vector<KeySrc> keys;
  keys.reserve(static_cast<size_t>(S) * P + Lq);
  for (int s = 0; s < S; ++s) {
    if (p.cache_pos[s] < 0) continue;
    for (int t = 0; t < P; ++t) keys.push_back({s, t, true, s});
  }
  for (int f = 0; f < p.q_len / P; ++f)
    for (int t = 0; t < P; ++t) keys.push_back({S + f, t, false, f});
  const int64_t nk = static_cast<int64_t>(keys.size());

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  T* out = static_cast<T*>(p.out);
  const int64_t HD = static_cast<int64_t>(H) * D;

  // Rotated keys and values as float32, [B * H, nk, D].
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor keys_f = at::empty({static_cast<int64_t>(B) * H, nk, D}, f32);
  at::Tensor values_f = at::empty_like(keys_f);
  float* kf = keys_f.data_ptr<float>();
  float* vf = values_f.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(B) * H * nk, 256, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t bh = e / nk, n = e % nk, b = bh / H, h = bh % H;
      const KeySrc& ks = keys[n];
      const int64_t off =
          ks.cached ? ((b * S + ks.slot_or_frame) * P + ks.token) * HD + h * D
                    : ((b * Lq) + static_cast<int64_t>(ks.slot_or_frame) * P + ks.token) * HD + h * D;
      rotate_token((ks.cached ? kc : k) + off, kf + e * D, table.data(), l, ks.frame, ks.token / gw,
                   ks.token % gw);
      const T* vs = (ks.cached ? vc : v) + off;
      for (int d = 0; d < D; ++d) vf[e * D + d] = static_cast<float>(vs[d]);
    }
  });

  // Blocks of queries: scores by GEMM, a two-pass softmax in float32, P V by GEMM. Nested
  // ATen calls run single-threaded inside the parallel region.
  const int64_t q_blocks = (Lq + kQueryBlock - 1) / kQueryBlock;
  at::parallel_for(0, static_cast<int64_t>(B) * H * q_blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor qr = at::empty({kQueryBlock, D}, f32);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, b = bh / H, h = bh % H;
      const int i0 = static_cast<int>(task % q_blocks) * kQueryBlock;
      const int rows = std::min(kQueryBlock, Lq - i0);
      float* qp = qr.data_ptr<float>();
      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r, t = i % P;
        rotate_token(q + (b * Lq + i) * HD + h * D, qp + r * D, table.data(), l, S + i / P, t / gw,
                     t % gw);
      }
      at::Tensor scores = at::mm(qr.narrow(0, 0, rows), keys_f[bh].t()).mul_(p.scale);  // [rows, nk]
      at::Tensor m = scores.amax(1, /*keepdim=*/true);
      scores.sub_(m).exp_();
      at::Tensor sum = scores.sum(1, /*keepdim=*/true);
      at::Tensor o = at::mm(scores, values_f[bh]).div_(sum).contiguous();
      at::Tensor lse = m.add_(sum.log_()).contiguous();
      const float* op = o.data_ptr<float>();
      const float* lp = lse.data_ptr<float>();
      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r;
        T* dst = out + (b * Lq + i) * HD + h * D;
        for (int d = 0; d < D; ++d) dst[d] = static_cast<T>(op[r * D + d]);
        p.lse[bh * Lq + i] = lp[r];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> sink_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v, const at::Tensor& k_cache,
                                                      const at::Tensor& v_cache,
                                                      const at::Tensor& cache_pos,
                                                      const at::Tensor& q_pos, int64_t grid_h,
                                                      int64_t grid_w, double scale,
                                                      double rope_theta) {
  Params p = make_params(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h,
                                                grid_w, scale, rope_theta);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sink_attention_cpu",
                                  [&] { sink_attention_cpu_kernel<scalar_t>(p); });
  return {out, lse};
}

}  // namespace
}  // namespace srf::sink_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) { m.impl("sink_attention", &srf::sink_attention::sink_attention_cpu); }
