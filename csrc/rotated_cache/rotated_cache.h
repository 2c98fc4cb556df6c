// rotated_cache_advance's torch-free core, shared by every backend: the params struct, the
// advance decisions both the CPU kernel and the CUDA kernels make (host-and-device), and the
// launch planner plan(), which the nvcc launcher (rotated_cache_launch.cu) and the NVRTC
// launcher (through the rotated_cache_advance_plan op of rotated_cache_plan.cpp) both run. No
// torch and no CUDA headers: the CPU build, nvcc and NVRTC (device parts only) all include it.
#pragma once
#include "common/dtype_code.h"
#include "common/host_device.h"
#include "common/int_types.h"
#include "ema_cache/ema_cache.h"  // ema_fold_group: the one fold rule
#if !defined(__CUDACC_RTC__)
#include "common/launch_plan.h"
#endif

namespace srf::rotated_cache {

constexpr int kThreads = 256;
constexpr int kMaxBlocksX = 4096;  // grid-stride beyond that
constexpr int kMaxBlocksY = 65535;

// One call of rotated_cache_advance on raw pointers. Buffers are [B, N, P, H, D] contiguous
// (N = capacity frames of P tokens, age ordered, keys stored rotated at their slot), the
// chunk [B, F * P, H, D] contiguous and pre-RoPE, the RoPE tables [N * P, D / 2] contiguous
// in the compute type (double for double buffers, else float). Both kernels take it by value.
struct Params {
  void* keys;
  void* values;
  const void* k_new;
  const void* v_new;
  const void* cos;  // row s * P + p: the full 3-D angles of token p of the frame at slot s
  const void* sin;
  int64_t batch;
  int64_t capacity;     // N
  int64_t tokens;       // P
  int64_t heads;        // H
  int64_t head_dim;     // D, even
  int64_t frame_elems;  // P * H * D
  int64_t occupied;     // m, frames held before the chunk, 0 <= m <= S + W
  int64_t sink_size;    // S
  int64_t window;       // W, S + W <= N
  int64_t new_frames;   // F, 1 <= F <= W
  double alpha;            // weight of the old sink
  double one_minus_alpha;  // the double 1 - alpha, rounded to the compute type as the reference does
  DType dtype;
};

// What one advance does, from host integers only (docs/method.md, section 2, "How the cache
// is stored"): E frames evicted (the oldest window frames, slots [S, S + E)), folded into the
// sink when there is one and alpha != 1; the survivors [S + E, m) move to [S, m - E) with
// their temporal pairs turned by -E; the chunk is written at [m - E, m - E + F).
struct Step {
  int evict;  // E = max(0, m + F - S - W)
  int first;  // m - E: the chunk's first slot
  bool fold;
};

SRF_HOST_DEVICE Step advance_step(const Params& p) {
  Step s;
  const int64_t over = p.occupied + p.new_frames - p.sink_size - p.window;
  s.evict = over > 0 ? static_cast<int>(over) : 0;
  s.first = static_cast<int>(p.occupied) - s.evict;
  s.fold = s.evict > 0 && p.sink_size > 0 && p.alpha != 1.0;
  return s;
}

// Pairs of the temporal axis of Wan's 3-D RoPE (the first D - 4 * (D / 6) elements; 22 of 64
// pairs at D = 128), rope_axis_dims of stream_r1_fast/ops/rope.py.
SRF_HOST_DEVICE int temporal_pairs(int64_t head_dim) {
  return static_cast<int>((head_dim - 4 * (head_dim / 6)) / 2);
}

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of rotated_cache_kernels.cuh, as NVRTC name expressions: advance_kernel<T, VB>
// for every access width VB (VB == sizeof(T): one element per access, two per thread). plan()
// picks them by index and rotated_cache_launch.cu lists their addresses in the same order.
inline constexpr const char* kKernelNames[] = {
    "srf::rotated_cache::advance_kernel<float, 16>",
    "srf::rotated_cache::advance_kernel<float, 8>",
    "srf::rotated_cache::advance_kernel<float, 4>",
    "srf::rotated_cache::advance_kernel<__half, 16>",
    "srf::rotated_cache::advance_kernel<__half, 8>",
    "srf::rotated_cache::advance_kernel<__half, 4>",
    "srf::rotated_cache::advance_kernel<__half, 2>",
    "srf::rotated_cache::advance_kernel<__nv_bfloat16, 16>",
    "srf::rotated_cache::advance_kernel<__nv_bfloat16, 8>",
    "srf::rotated_cache::advance_kernel<__nv_bfloat16, 4>",
    "srf::rotated_cache::advance_kernel<__nv_bfloat16, 2>",
    "srf::rotated_cache::advance_kernel<double, 16>",
    "srf::rotated_cache::advance_kernel<double, 8>",
};

inline int element_bytes(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : dtype == DType::kFloat32 ? 4 : 2;
}

// Widest access (<= 16 bytes) that divides the head size and every base address: a thread's
// elements then lie in one head of one token and start aligned.
inline int vector_bytes(const Params& p) {
  const int elem = element_bytes(p.dtype);
  const uint64_t bits = static_cast<uint64_t>(p.head_dim) * elem |
                        reinterpret_cast<uint64_t>(p.keys) | reinterpret_cast<uint64_t>(p.values) |
                        reinterpret_cast<uint64_t>(p.k_new) | reinterpret_cast<uint64_t>(p.v_new);
  for (int vb = 16; vb > elem; vb /= 2)
    if (bits % vb == 0) return vb;
  return elem;
}

// Elements one thread owns in each frame: an access, or two elements (one pair) at the
// one-element width.
inline int thread_elems(const Params& p) {
  const int per_access = vector_bytes(p) / element_bytes(p.dtype);
  return per_access < 2 ? 2 : per_access;
}

// The CUDA launch of one call: one kernel of p's dtype and access width over (tensor, batch)
// rows and the frame's columns (none for empty buffers). No workspace.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  if (p.batch * p.frame_elems > 0) {
    const int vb = vector_bytes(p);
    const int width = vb == 16 ? 0 : vb == 8 ? 1 : vb == 4 ? 2 : 3;
    const int first = p.dtype == DType::kFloat32   ? 0
                      : p.dtype == DType::kFloat16 ? 3
                      : p.dtype == DType::kBFloat16 ? 7
                                                    : 11;
    const int64_t columns = p.frame_elems / thread_elems(p);
    const int64_t rows = 2 * p.batch;  // (tensor, batch): each thread walks every frame
    const int64_t bx = ceil_div(columns, kThreads);
    lp.add(first + width, bx < kMaxBlocksX ? bx : kMaxBlocksX, rows < kMaxBlocksY ? rows : kMaxBlocksY,
           1, kThreads, 1, 0);
  }
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::rotated_cache

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::rotated_cache {
// Runs `plan` (of plan(p)) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::rotated_cache
#endif
