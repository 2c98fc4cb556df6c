// ema_cache_update on the CPU: validation, the data movement (at::parallel_for over the
// elements to move, EMA folds in float32) and the state / cache_pos rewrite.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "ema_cache/ema_cache_torch.h"

namespace srf::ema_cache {
namespace {

// The CPU reads state anyway, so an inconsistent one is an error rather than clamped.
void check_state_values(const int* st, int64_t sink_size, int64_t ring) {
  TORCH_CHECK(st[0] >= 0 && st[0] <= sink_size && st[1] >= 0 && st[1] < ring && st[2] >= 0 &&
                  st[2] <= ring && (st[2] == 0 || st[0] == sink_size),
              "state = (sink_filled=", st[0], ", ring_start=", st[1], ", ring_count=", st[2],
              ") is inconsistent with sink_size = ", sink_size, " and W = ", ring,
              " ring slots; pass the state of an empty cache (zeros) or of the previous update "
              "with the same sink_size");
}

// Folds the evicted frames into the sink (elements [e0, e0 + n) of every frame of one
// (tensor, batch) cache), before the new frames overwrite them. Sink frame i takes the mean
// of its group (ema_fold_group): a float32 sum in group order divided by the group size,
// blended in float32 and rounded once, as the reference does. A group of one frame is used
// as it is, so E == S folds bit for bit as the one-frame EMA always did.
template <typename scalar_t>
void fold_sink(const Params& prm, const StepPlan& plan, scalar_t* cache, int64_t e0,
               int64_t n) {
  const int64_t fe = prm.frame_elems;
  const int sink_size = static_cast<int>(prm.sink_size);
  const int ring = static_cast<int>(prm.slots - prm.sink_size);
  const float a = prm.alpha, one_minus_a = prm.one_minus_alpha;
  for (int i = 0; i < sink_size; ++i) {
    int lo, hi;
    ema_fold_group(i, plan.evict, sink_size, &lo, &hi);
    auto evicted = [&](int j) -> const scalar_t* {
      return cache + (prm.sink_size + ema_evicted_slot(plan, j, ring)) * fe + e0;
    };
    // Sink and evicted frames are distinct slots: no aliasing, so the loops may vectorise.
    scalar_t* __restrict__ sink = cache + i * fe + e0;
    if (hi - lo == 1) {
      const scalar_t* __restrict__ ev = evicted(lo);
      for (int64_t e = 0; e < n; ++e) {
        const float old_part = a * static_cast<float>(sink[e]);
        const float evicted_part = one_minus_a * static_cast<float>(ev[e]);
        sink[e] = static_cast<scalar_t>(old_part + evicted_part);
      }
      continue;
    }
    const float count = static_cast<float>(hi - lo);
    const scalar_t* __restrict__ first = evicted(lo);
    for (int64_t e = 0; e < n; ++e) {
      float sum = static_cast<float>(first[e]);
      for (int j = lo + 1; j < hi; ++j) sum += static_cast<float>(evicted(j)[e]);
      const float mean = sum / count;
      const float old_part = a * static_cast<float>(sink[e]);
      const float evicted_part = one_minus_a * mean;
      sink[e] = static_cast<scalar_t>(old_part + evicted_part);
    }
  }
}

// Work items are element ranges of one (tensor, batch) cache: each folds its range of every
// sink frame, then copies its range of every new frame, so an evicted element is read (by
// the same task) before it is overwritten and no two tasks touch the same element.
template <typename scalar_t>
void move_frames(const Params& prm, const StepPlan& plan) {
  const int64_t fe = prm.frame_elems, s = prm.slots, fn = prm.new_frames;
  const int ring = static_cast<int>(prm.slots - prm.sink_size);
  const int64_t rows = 2 * prm.batch;  // (tensor, batch)
  constexpr int64_t kGrain = 1 << 15;
  at::parallel_for(0, rows * fe, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end;) {
      const int64_t row = idx / fe, e0 = idx % fe;
      const int64_t n = std::min(fe - e0, end - idx);
      idx += n;
      const bool is_v = row >= prm.batch;
      const int64_t b = row % prm.batch;
      auto* cache = static_cast<scalar_t*>(is_v ? prm.v_cache : prm.k_cache) + b * s * fe;
      const auto* src = static_cast<const scalar_t*>(is_v ? prm.v_new : prm.k_new) + b * fn * fe;
      if (plan.fold) fold_sink(prm, plan, cache, e0, n);
      for (int f = 0; f < fn; ++f) {
        const int64_t slot = f < plan.to_sink
                                 ? plan.sink_filled + f
                                 : prm.sink_size + ema_ring_slot(plan, f - plan.to_sink, ring);
        std::memcpy(cache + slot * fe + e0, src + f * fe + e0, n * sizeof(scalar_t));
      }
    }
  });
}

void ema_cache_update_cpu(const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& cache_pos, const at::Tensor& state,
                          const at::Tensor& k_new, const at::Tensor& v_new, int64_t sink_size,
                          double alpha) {
  const Params prm =
      make_params(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha);
  TORCH_CHECK(k_cache.device().is_cpu(), "k_cache must be a CPU tensor for the CPU kernel");
  const int ring = static_cast<int>(prm.slots - prm.sink_size);
  check_state_values(prm.state, prm.sink_size, ring);
  const StepPlan plan =
      step_plan(prm.state, static_cast<int>(prm.sink_size), ring, static_cast<int>(prm.new_frames));
  if (prm.batch * prm.frame_elems > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(),
                                    "ema_cache_update_cpu",
                                    [&] { move_frames<scalar_t>(prm, plan); });
  }
  int next[4];
  ema_next_state(plan, ring, next);
  for (int64_t slot = 0; slot < prm.slots; ++slot) {
    prm.cache_pos[slot] =
        ema_slot_pos(next, static_cast<int>(slot), static_cast<int>(prm.sink_size), ring);
  }
  std::memcpy(prm.state, next, sizeof(next));
}

}  // namespace
}  // namespace srf::ema_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("ema_cache_update", &srf::ema_cache::ema_cache_update_cpu);
}
