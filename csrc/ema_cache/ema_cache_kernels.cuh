// ema_cache_update device code, shared by the nvcc build (ema_cache_launch.cu) and the
// run-time NVRTC build (stream_r1_fast/nvrtc); both run plan() of ema_cache.h. Torch-free and
// free of host code, so NVRTC compiles it as it is.
//
// Two launches on one stream, both reading `state` from device memory so the step needs no
// host sync and can be captured in a CUDA graph:
//   1. move_kernel: every thread derives the update plan from `state` and owns a
//      few vector columns of one (tensor, batch) cache: when folding, it first folds the
//      evicted frames of its columns into every sink frame (the mean of the sink frame's group,
//      ema_fold_group, in float32), then writes its columns of every new frame (sink fill or
//      ring slot, the evicted slots included);
//   2. state_kernel: one warp rewrites cache_pos and state. It is a separate launch
//      so that no block of (1) can read a state that was already advanced.
// Within (1) every element is read and written by the thread that owns its column only, and
// that thread reads every evicted element before it overwrites it: no inter-thread hazards.
#pragma once
#include "common/cuda_utils.h"
#include "ema_cache/ema_cache.h"

namespace srf::ema_cache {

// VB bytes of T moved as one aligned load / store (VB in {2, 4, 8, 16}, VB >= sizeof(T)).
template <typename T, int VB>
struct alignas(VB) Vec {
  static constexpr int kElems = VB / static_cast<int>(sizeof(T));
  T elems[kElems];
};

template <typename T, int VB>
__global__ void __launch_bounds__(kThreads)
    move_kernel(const Params prm) {
  using V = Vec<T, VB>;
  constexpr int kE = V::kElems;
  const int sink_size = static_cast<int>(prm.sink_size);
  const int ring = static_cast<int>(prm.slots - prm.sink_size);
  const int fn = static_cast<int>(prm.new_frames);
  const StepPlan plan = step_plan(prm.state, sink_size, ring, fn);
  const int64_t nvec = prm.frame_elems / kE;  // the frame size is a multiple of VB
  const int64_t rows = 2 * prm.batch;          // (tensor, batch)

  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const bool is_v = row >= prm.batch;
    const int64_t b = row % prm.batch;
    V* cache = reinterpret_cast<V*>(static_cast<T*>(is_v ? prm.v_cache : prm.k_cache) +
                                    b * prm.slots * prm.frame_elems);
    const V* src = reinterpret_cast<const V*>(
        static_cast<const T*>(is_v ? prm.v_new : prm.k_new) + b * fn * prm.frame_elems);
    for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kTile; tile < nvec;
         tile += static_cast<int64_t>(gridDim.x) * kTile) {
      if (plan.fold) {
        for (int i = 0; i < sink_size; ++i) {
          int lo, hi;
          ema_fold_group(i, plan.evict, sink_size, &lo, &hi);
          V* sink = cache + i * nvec;
          V old[kUnroll];
          float sum[kUnroll][kE];
          // Loads of a group issued kUnroll at a time; sums in group order, as the reference.
          for (int j = lo; j < hi; ++j) {
            const V* ev = cache + (sink_size + ema_evicted_slot(plan, j, ring)) * nvec;
            V e[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
              const int64_t v = tile + u * kThreads + threadIdx.x;
              if (v < nvec) {
                e[u] = ev[v];
                if (j == lo) old[u] = sink[v];
              }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
              for (int k = 0; k < kE; ++k) {
                const float x = to_float(e[u].elems[k]);
                sum[u][k] = j == lo ? x : __fadd_rn(sum[u][k], x);
              }
            }
          }
          const float count = static_cast<float>(hi - lo);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int64_t v = tile + u * kThreads + threadIdx.x;
            if (v < nvec) {
#pragma unroll
              for (int k = 0; k < kE; ++k) {
                // A group of one is its frame exactly; explicit rounding (no FMA contraction)
                // reproduces the reference bit for bit.
                const float mean = hi - lo == 1 ? sum[u][k] : __fdiv_rn(sum[u][k], count);
                const float folded = __fadd_rn(__fmul_rn(prm.alpha, to_float(old[u].elems[k])),
                                               __fmul_rn(prm.one_minus_alpha, mean));
                old[u].elems[k] = from_float<T>(folded);
              }
              sink[v] = old[u];
            }
          }
        }
      }
      // The new frames, evicted slots included (read above by this same thread).
      for (int f = 0; f < fn; ++f) {
        const int slot =
            f < plan.to_sink ? plan.sink_filled + f : sink_size + ema_ring_slot(plan, f - plan.to_sink, ring);
        V* dst = cache + slot * nvec;
        const V* fresh_src = src + f * nvec;
        V fresh[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = tile + u * kThreads + threadIdx.x;
          if (v < nvec) fresh[u] = fresh_src[v];
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = tile + u * kThreads + threadIdx.x;
          if (v < nvec) dst[v] = fresh[u];
        }
      }
    }
  }
}

__global__ void state_kernel(const Params prm) {
  int* state = prm.state;
  int* cache_pos = prm.cache_pos;
  const int slots = static_cast<int>(prm.slots), sink_size = static_cast<int>(prm.sink_size);
  const int new_frames = static_cast<int>(prm.new_frames);
  const int ring = slots - sink_size;
  const StepPlan plan = step_plan(state, sink_size, ring, new_frames);
  int next[4];
  ema_next_state(plan, ring, next);
  for (int slot = threadIdx.x; slot < slots; slot += blockDim.x) {
    cache_pos[slot] = ema_slot_pos(next, slot, sink_size, ring);
  }
  __syncthreads();  // every thread has read the old state
  if (threadIdx.x == 0) {
    for (int k = 0; k < 4; ++k) state[k] = next[k];
  }
}

}  // namespace srf::ema_cache
