// ema_cache_update device code, shared by the nvcc build (ema_cache_kernel.cu launches it)
// and the run-time NVRTC build (stream_r1_fast/nvrtc/ema_cache.py launches it). Torch-free and
// free of host code, so NVRTC compiles it as it is.
//
// Two launches on one stream, both reading `state` from device memory so the step needs no
// host sync and can be captured in a CUDA graph:
//   1. ema_cache_move_kernel: every thread derives the update plan from `state` and moves its
//      vector of one new frame: sink fill, ring append, or (when folding) read the evicted
//      element, fold it into the sink in float32, then overwrite it with the new element;
//   2. ema_cache_state_kernel: one warp rewrites cache_pos and state. It is a separate launch
//      so that no block of (1) can read a state that was already advanced.
// Within (1) every element written is written by exactly one thread, and the only element
// a thread reads from the cache besides its sink partner is the one it later overwrites, so
// there are no inter-thread hazards.
#pragma once
#include "common/cuda_utils.h"
#include "ema_cache/ema_cache.h"

namespace srf::ema {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;                    // vectors in flight per thread
constexpr int kTile = kThreads * kUnroll;     // vectors per block per step
constexpr int kMaxBlocksX = 4096;             // grid-stride beyond that
constexpr int kMaxBlocksY = 65535;

// VB bytes of T moved as one aligned load / store (VB in {2, 4, 8, 16}, VB >= sizeof(T)).
template <typename T, int VB>
struct alignas(VB) Vec {
  static constexpr int kElems = VB / static_cast<int>(sizeof(T));
  T elems[kElems];
};

template <typename T, int VB>
__global__ void __launch_bounds__(kThreads)
    ema_cache_move_kernel(EmaCacheParams prm) {
  using V = Vec<T, VB>;
  const int sink_size = static_cast<int>(prm.sink_size);
  const int ring = static_cast<int>(prm.slots - prm.sink_size);
  const int fn = static_cast<int>(prm.new_frames);
  const EmaCachePlan plan = ema_cache_plan(prm.state, sink_size, ring, fn);
  const int64_t nvec = prm.frame_elems / V::kElems;  // the frame size is a multiple of VB
  const int64_t rows = 2 * prm.batch * fn;           // (tensor, batch, new frame)

  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const bool is_v = row >= prm.batch * fn;
    const int64_t b = (row % (prm.batch * fn)) / fn;
    const int f = static_cast<int>(row % fn);
    V* cache = reinterpret_cast<V*>(static_cast<T*>(is_v ? prm.v_cache : prm.k_cache) +
                                    b * prm.slots * prm.frame_elems);
    const V* src = reinterpret_cast<const V*>(
        static_cast<const T*>(is_v ? prm.v_new : prm.k_new) + (b * fn + f) * prm.frame_elems);
    int slot;
    int fold_into = -1;  // sink slot that absorbs the frame this one overwrites
    if (f < plan.to_sink) {
      slot = plan.sink_filled + f;
    } else {
      const int i = f - plan.to_sink;
      slot = sink_size + ema_ring_slot(plan, i, ring);
      if (plan.fold && i >= plan.free_slots) fold_into = i - plan.free_slots;
    }
    V* dst = cache + slot * nvec;
    V* sink = cache + (fold_into < 0 ? 0 : fold_into) * nvec;
    // Each thread moves kUnroll vectors per tile with all loads issued before any store: as
    // far as the compiler knows src may alias the cache, so it would not hoist them itself.
    for (int64_t tile = static_cast<int64_t>(blockIdx.x) * kTile; tile < nvec;
         tile += static_cast<int64_t>(gridDim.x) * kTile) {
      V fresh[kUnroll], evicted[kUnroll], old[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = tile + u * kThreads + threadIdx.x;
        if (v < nvec) {
          fresh[u] = src[v];
          if (fold_into >= 0) {
            evicted[u] = dst[v];  // read before the overwrite below
            old[u] = sink[v];
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = tile + u * kThreads + threadIdx.x;
        if (v < nvec) {
          if (fold_into >= 0) {
#pragma unroll
            for (int k = 0; k < V::kElems; ++k) {
              // Explicit rounding (no FMA contraction) reproduces the reference bit for bit.
              const float folded =
                  __fadd_rn(__fmul_rn(prm.alpha, to_float(old[u].elems[k])),
                            __fmul_rn(prm.one_minus_alpha, to_float(evicted[u].elems[k])));
              old[u].elems[k] = from_float<T>(folded);
            }
            sink[v] = old[u];
          }
          dst[v] = fresh[u];
        }
      }
    }
  }
}

__global__ void ema_cache_state_kernel(int* state, int* cache_pos, int slots, int sink_size,
                                       int new_frames) {
  const int ring = slots - sink_size;
  const EmaCachePlan plan = ema_cache_plan(state, sink_size, ring, new_frames);
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

}  // namespace srf::ema
