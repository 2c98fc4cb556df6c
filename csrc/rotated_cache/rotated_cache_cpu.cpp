// rotated_cache_advance on the CPU: at::parallel_for over pair ranges of the (tensor, batch)
// buffers; each task folds, moves and writes its pairs of every frame in the order of
// rotated_cache_kernels.cuh (a slot is read before any write lands on it), with the
// reference's arithmetic in float (double for double buffers), rounded where it rounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "rotated_cache/rotated_cache_torch.h"

namespace srf::rotated_cache {
namespace {

template <typename C>
inline void rotate(C& x0, C& x1, C c, C s) {
  const C r0 = x0 * c - x1 * s;
  const C r1 = x0 * s + x1 * c;
  x0 = r0;
  x1 = r1;
}

// Pairs [k0, k0 + n) of one frame's layout, all in one head of one token, of one (tensor,
// batch) buffer `buf` [N, P, H, D] and its chunk [F, P, H, D]: fold, move, write.
template <typename T>
void advance_pairs(const Params& prm, const Step& step, bool is_key, T* buf, const T* chunk,
                   int64_t k0, int64_t n) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t fe = prm.frame_elems, half = prm.head_dim / 2, p = prm.tokens;
  const int64_t token = k0 / (prm.heads * half), j0 = k0 % half;
  const int64_t turn = is_key ? std::clamp<int64_t>(temporal_pairs(prm.head_dim) - j0, 0, n) : 0;
  const C* cos = static_cast<const C*>(prm.cos);
  const C* sin = static_cast<const C*>(prm.sin);
  const int sink = static_cast<int>(prm.sink_size);
  const C alpha = static_cast<C>(prm.alpha), one_minus_alpha = static_cast<C>(prm.one_minus_alpha);
  auto at = [&](int64_t slot) { return buf + slot * fe + 2 * k0; };

  if (step.fold) {  // sink frame i takes the mean of its group, keys turned by i - S - j
    for (int i = 0; i < sink; ++i) {
      int lo, hi;
      ema_cache::ema_fold_group(i, step.evict, sink, &lo, &hi);
      const C count = static_cast<C>(hi - lo);
      T* dst = at(i);
      for (int64_t q = 0; q < n; ++q) {
        C m0 = 0, m1 = 0;
        for (int j = lo; j < hi; ++j) {
          const T* ev = at(sink + j);
          C x0 = static_cast<C>(ev[2 * q]), x1 = static_cast<C>(ev[2 * q + 1]);
          if (q < turn) {
            const int64_t r = (sink + j - i) * p * half + j0 + q;
            rotate(x0, x1, cos[r], -sin[r]);
          }
          m0 = j == lo ? x0 : m0 + x0;
          m1 = j == lo ? x1 : m1 + x1;
        }
        if (hi - lo > 1) {
          m0 = m0 / count;
          m1 = m1 / count;
        }
        dst[2 * q] = static_cast<T>(alpha * static_cast<C>(dst[2 * q]) + one_minus_alpha * m0);
        dst[2 * q + 1] = static_cast<T>(alpha * static_cast<C>(dst[2 * q + 1]) + one_minus_alpha * m1);
      }
    }
  }
  if (step.evict > 0) {  // the survivors, ascending, E slots down; temporal pairs turned by -E
    const int64_t r0 = step.evict * p * half + j0;
    for (int64_t s = sink + step.evict; s < prm.occupied; ++s) {
      const T* src = at(s);
      T* dst = at(s - step.evict);
      for (int64_t q = 0; q < turn; ++q) {
        C x0 = static_cast<C>(src[2 * q]), x1 = static_cast<C>(src[2 * q + 1]);
        rotate(x0, x1, cos[r0 + q], -sin[r0 + q]);
        dst[2 * q] = static_cast<T>(x0);
        dst[2 * q + 1] = static_cast<T>(x1);
      }
      std::memcpy(dst + 2 * turn, src + 2 * turn, 2 * (n - turn) * sizeof(T));
    }
  }
  for (int64_t f = 0; f < prm.new_frames; ++f) {  // the chunk, keys rotated at their slot
    const int64_t slot = step.first + f;
    const T* src = chunk + f * fe + 2 * k0;
    T* dst = at(slot);
    if (!is_key) {
      std::memcpy(dst, src, 2 * n * sizeof(T));
      continue;
    }
    const int64_t r = (slot * p + token) * half + j0;
    for (int64_t q = 0; q < n; ++q) {
      C x0 = static_cast<C>(src[2 * q]), x1 = static_cast<C>(src[2 * q + 1]);
      rotate(x0, x1, cos[r + q], sin[r + q]);
      dst[2 * q] = static_cast<T>(x0);
      dst[2 * q + 1] = static_cast<T>(x1);
    }
  }
}

// Work items are pair ranges of one (tensor, batch) buffer, split at head boundaries: no two
// tasks touch the same element, and each reads its elements of a slot before writing them.
template <typename T>
void advance(const Params& prm) {
  const Step step = advance_step(prm);
  const int64_t pairs = prm.frame_elems / 2, half = prm.head_dim / 2;
  const int64_t rows = 2 * prm.batch;  // (tensor, batch)
  constexpr int64_t kGrain = 1 << 14;
  at::parallel_for(0, rows * pairs, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end;) {
      const int64_t row = idx / pairs, k0 = idx % pairs;
      const int64_t n = std::min(half - k0 % half, end - idx);
      idx += n;
      const bool is_v = row >= prm.batch;
      const int64_t b = row % prm.batch;
      T* buf = static_cast<T*>(is_v ? prm.values : prm.keys) + b * prm.capacity * prm.frame_elems;
      const T* chunk =
          static_cast<const T*>(is_v ? prm.v_new : prm.k_new) + b * prm.new_frames * prm.frame_elems;
      advance_pairs(prm, step, !is_v, buf, chunk, k0, n);
    }
  });
}

void rotated_cache_advance_cpu(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new,
                               const at::Tensor& v_new, const at::Tensor& cos, const at::Tensor& sin,
                               int64_t occupied, int64_t sink_size, int64_t window, double alpha) {
  const Params prm = make_params(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha);
  TORCH_CHECK(keys.device().is_cpu(), "keys must be a CPU tensor for the CPU kernel");
  if (prm.batch * prm.frame_elems == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "rotated_cache_advance_cpu",
                                  [&] { advance<scalar_t>(prm); });
}

}  // namespace
}  // namespace srf::rotated_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("rotated_cache_advance", &srf::rotated_cache::rotated_cache_advance_cpu);
}
