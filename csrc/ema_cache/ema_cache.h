// ema_cache_update's torch-free core, shared by every backend: the params struct, the update
// decisions both the CPU kernel and the CUDA kernels make (host-and-device), and the launch
// planner plan(), which the nvcc launcher (ema_cache_launch.cu) and the NVRTC launcher
// (through the ema_cache_update_plan op of ema_cache_plan.cpp) both run. No torch and no CUDA
// headers: the CPU build, nvcc and NVRTC (device parts only) all include it.
#pragma once
#include "common/dtype_code.h"
#include "common/host_device.h"
#include "common/int_types.h"
#if !defined(__CUDACC_RTC__)
#include "common/launch_plan.h"
#endif

namespace srf::ema_cache {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;                 // vectors in flight per thread
constexpr int kTile = kThreads * kUnroll;  // vectors per block per step
constexpr int kMaxBlocksX = 4096;          // grid-stride beyond that
constexpr int kMaxBlocksY = 65535;

// One call of ema_cache_update on raw pointers. Caches are [B, S, P, H, D] contiguous, new
// frames [B, Fn, P, H, D] contiguous; a "frame" is the P*H*D elements of one slot. Both
// kernels take it by value.
struct Params {
  void* k_cache;
  void* v_cache;
  int* cache_pos;    // [S]
  int* state;        // [4] = (sink_filled, ring_start, ring_count, next_pos)
  const void* k_new;
  const void* v_new;
  int64_t batch;
  int64_t slots;        // S = sink_size + W
  int64_t sink_size;
  int64_t new_frames;   // Fn, 1 <= Fn <= W
  int64_t frame_elems;  // P * H * D
  float alpha;          // weight of the old sink
  float one_minus_alpha;  // rounded from the double 1 - alpha, as the reference does
  DType dtype;
};

// What one update does, derived from the state before it. Shared by the CPU kernel and the
// CUDA kernels (host-and-device inline), so both backends make the same decisions.
struct StepPlan {
  int sink_filled;  // state before the update, clamped into range
  int ring_start;
  int ring_count;
  int to_sink;      // new frames 0..to_sink-1 fill the sink at sink_filled + f
  int to_ring;      // the rest go to ring slots
  int free_slots;   // W - ring_count: the first free_slots ring frames need no eviction
  int evict;        // oldest ring frames overwritten this call
  bool fold;        // the evicted frames are folded into the sink (evict >= 1, a full sink)
};

SRF_HOST_DEVICE int ema_clamp(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// `state` values outside their ranges are clamped so that a corrupted state can never move
// data out of bounds on the device (the CPU entry point rejects such a state outright).
SRF_HOST_DEVICE StepPlan step_plan(const int* state, int sink_size, int ring,
                                            int new_frames) {
  StepPlan p;
  p.sink_filled = ema_clamp(state[0], 0, sink_size);
  p.ring_start = ema_clamp(state[1], 0, ring - 1);
  p.ring_count = ema_clamp(state[2], 0, ring);
  p.to_sink = sink_size - p.sink_filled < new_frames ? sink_size - p.sink_filled : new_frames;
  p.to_ring = new_frames - p.to_sink;
  p.free_slots = ring - p.ring_count;
  p.evict = p.to_ring > p.free_slots ? p.to_ring - p.free_slots : 0;
  // A valid state only evicts once the sink is full (to_sink == 0); the guard keeps a
  // corrupted one from filling and folding the same sink slot in one call.
  p.fold = p.evict > 0 && sink_size > 0 && p.to_sink == 0;
  return p;
}

// The fold rule (docs/method.md, section 2), for every evicted and sink length: sink
// frame i (0 <= i < sink_size) folds in the mean of the evicted frames [lo, hi), oldest first,
//   lo = floor(i * evict / sink_size),  hi = max(floor((i + 1) * evict / sink_size), lo + 1).
// evict == sink_size gives {i}; more evicted frames are averaged in consecutive groups, fewer
// are shared by consecutive sink frames. The one definition for the CPU kernel, the nvcc and
// the NVRTC builds (stream_r1_fast.ops.ema_cache_ref.fold_group is its Python mirror).
SRF_HOST_DEVICE void ema_fold_group(int i, int evict, int sink_size, int* lo, int* hi) {
  const int64_t l = static_cast<int64_t>(i) * evict / sink_size;
  const int64_t h = static_cast<int64_t>(i + 1) * evict / sink_size;
  *lo = static_cast<int>(l);
  *hi = static_cast<int>(h > l ? h : l + 1);
}

// Ring slot (0-based inside the ring) of evicted frame j (0 = oldest) of this call.
SRF_HOST_DEVICE int ema_evicted_slot(const StepPlan& p, int j, int ring) {
  return (p.ring_start + j) % ring;
}

// Ring slot (0-based inside the ring) of the i-th frame that goes to the ring this call.
SRF_HOST_DEVICE int ema_ring_slot(const StepPlan& p, int i, int ring) {
  return (p.ring_start + p.ring_count + i) % ring;
}

// The new state and cache_pos entry of `slot` after the update.
SRF_HOST_DEVICE void ema_next_state(const StepPlan& p, int ring, int* out_state) {
  const int sink_filled = p.sink_filled + p.to_sink;
  const int ring_count = p.ring_count + p.to_ring < ring ? p.ring_count + p.to_ring : ring;
  out_state[0] = sink_filled;
  out_state[1] = (p.ring_start + p.evict) % ring;
  out_state[2] = ring_count;
  out_state[3] = sink_filled + ring_count;
}

SRF_HOST_DEVICE int ema_slot_pos(const int* next_state, int slot, int sink_size, int ring) {
  if (slot < sink_size) return slot < next_state[0] ? slot : -1;
  const int age = (slot - sink_size - next_state[1] + ring) % ring;
  return age < next_state[2] ? next_state[0] + age : -1;
}

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of ema_cache_kernels.cuh, as NVRTC name expressions: move_kernel<T, VB> for
// every vector width VB >= sizeof(T), then state_kernel. plan() picks them by index and
// ema_cache_launch.cu lists their addresses in the same order.
inline constexpr const char* kKernelNames[] = {
    "srf::ema_cache::move_kernel<float, 16>",
    "srf::ema_cache::move_kernel<float, 8>",
    "srf::ema_cache::move_kernel<float, 4>",
    "srf::ema_cache::move_kernel<__half, 16>",
    "srf::ema_cache::move_kernel<__half, 8>",
    "srf::ema_cache::move_kernel<__half, 4>",
    "srf::ema_cache::move_kernel<__half, 2>",
    "srf::ema_cache::move_kernel<__nv_bfloat16, 16>",
    "srf::ema_cache::move_kernel<__nv_bfloat16, 8>",
    "srf::ema_cache::move_kernel<__nv_bfloat16, 4>",
    "srf::ema_cache::move_kernel<__nv_bfloat16, 2>",
    "srf::ema_cache::state_kernel",
};
constexpr int kStateKernel = 11;

inline int element_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Widest access (<= 16 bytes) that divides the frame size and every base address, so each
// frame of each tensor starts aligned and needs no scalar tail.
inline int vector_bytes(const Params& p) {
  const int elem = element_bytes(p.dtype);
  const uint64_t bits = static_cast<uint64_t>(p.frame_elems) * elem |
                        reinterpret_cast<uint64_t>(p.k_cache) | reinterpret_cast<uint64_t>(p.v_cache) |
                        reinterpret_cast<uint64_t>(p.k_new) | reinterpret_cast<uint64_t>(p.v_new);
  for (int vb = 16; vb > elem; vb /= 2)
    if (bits % vb == 0) return vb;
  return elem;
}

// The CUDA launches of one call: the data kernel of p's dtype and vector width (none for empty
// caches), then the state / cache_pos rewrite. No workspace.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  if (p.batch * p.frame_elems > 0) {
    const int vb = vector_bytes(p);
    const int width = vb == 16 ? 0 : vb == 8 ? 1 : vb == 4 ? 2 : 3;
    const int first = p.dtype == DType::kFloat32 ? 0 : (p.dtype == DType::kFloat16 ? 3 : 7);
    const int64_t nvec = p.frame_elems * element_bytes(p.dtype) / vb;
    const int64_t rows = 2 * p.batch;  // (tensor, batch): each thread walks every frame
    const int64_t bx = ceil_div(nvec, kTile);
    lp.add(first + width, bx < kMaxBlocksX ? bx : kMaxBlocksX, rows < kMaxBlocksY ? rows : kMaxBlocksY,
           1, kThreads, 1, 0);
  }
  lp.add(kStateKernel, 1, 1, 1, 32, 1, 0);
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::ema_cache

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::ema_cache {
// Runs `plan` (of plan(p)) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::ema_cache
#endif
