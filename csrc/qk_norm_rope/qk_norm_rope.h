// qk_norm_rope's torch-free core, shared by every backend: the params struct and the launch
// planner plan(), which the nvcc launcher (qk_norm_rope_launch.cu) and the NVRTC launcher
// (through the qk_norm_rope_plan op of qk_norm_rope_plan.cpp) both run. No torch and no CUDA
// headers: the CPU build, nvcc and NVRTC (device parts only) all include it.
#pragma once
#include "common/dtype_code.h"
#include "common/host_device.h"
#include "common/int_types.h"
#if !defined(__CUDACC_RTC__)
#include "common/launch_plan.h"
#endif

namespace srf::qk_norm_rope {

constexpr int kMaxThreads = 256;    // threads of a block (one token row), a multiple of 32
constexpr int kCached = 4;          // columns a thread keeps in registers between the two steps
constexpr int kMaxBlocksX = 65536;  // token rows per tensor in flight; grid-stride beyond that

// One call of qk_norm_rope on raw pointers. q, k and the outputs are [B, F, P, H, D] contiguous:
// `rows` = B * F * P token rows of `row_elems` = H * D elements each, normalised over the row
// (Wan's RMSNorm across all heads) and rotated pair by pair (adjacent elements 2i, 2i + 1).
// The RoPE tables are [N * P, D / 2] contiguous in the compute type (double for double
// tensors, else float); token l of a sample (l = f * P + p) uses row first_row + l. Every
// kernel takes it by value.
struct Params {
  const void* q;
  const void* k;
  const void* weight_q;  // [H * D], in the tensors' dtype or in the compute type (weight_wide)
  const void* weight_k;
  const void* cos;
  const void* sin;
  void* q_out;
  void* k_out;
  int64_t rows;       // B * F * P
  int64_t tokens;     // F * P, the token rows of one sample
  int64_t row_elems;  // H * D, at most 2^31 - 1
  int64_t head_dim;   // D, even
  int64_t first_row;  // frame_offset * P: the table row of a sample's first token
  double eps;
  DType dtype;
  int weight_wide;  // 1: the weights hold the compute type; 0: the tensors' dtype
};

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of qk_norm_rope_kernels.cuh, as NVRTC name expressions: norm_rope_kernel<T, VB>
// for every access width VB (VB == sizeof(T): one element per access, two per column). plan()
// picks them by index and qk_norm_rope_launch.cu lists their addresses in the same order.
inline constexpr const char* kKernelNames[] = {
    "srf::qk_norm_rope::norm_rope_kernel<float, 16>",
    "srf::qk_norm_rope::norm_rope_kernel<float, 8>",
    "srf::qk_norm_rope::norm_rope_kernel<float, 4>",
    "srf::qk_norm_rope::norm_rope_kernel<__half, 16>",
    "srf::qk_norm_rope::norm_rope_kernel<__half, 8>",
    "srf::qk_norm_rope::norm_rope_kernel<__half, 4>",
    "srf::qk_norm_rope::norm_rope_kernel<__half, 2>",
    "srf::qk_norm_rope::norm_rope_kernel<__nv_bfloat16, 16>",
    "srf::qk_norm_rope::norm_rope_kernel<__nv_bfloat16, 8>",
    "srf::qk_norm_rope::norm_rope_kernel<__nv_bfloat16, 4>",
    "srf::qk_norm_rope::norm_rope_kernel<__nv_bfloat16, 2>",
    "srf::qk_norm_rope::norm_rope_kernel<double, 16>",
    "srf::qk_norm_rope::norm_rope_kernel<double, 8>",
};

inline int element_bytes(DType dtype) {
  return dtype == DType::kFloat64 ? 8 : dtype == DType::kFloat32 ? 4 : 2;
}

// Widest access (<= 16 bytes) that divides the head size and every base address of q, k and
// the outputs: a column's elements then lie in one head of one token and start aligned.
inline int vector_bytes(const Params& p) {
  const int elem = element_bytes(p.dtype);
  const uint64_t bits = static_cast<uint64_t>(p.head_dim) * elem | reinterpret_cast<uint64_t>(p.q) |
                        reinterpret_cast<uint64_t>(p.k) | reinterpret_cast<uint64_t>(p.q_out) |
                        reinterpret_cast<uint64_t>(p.k_out);
  for (int vb = 16; vb > elem; vb /= 2)
    if (bits % vb == 0) return vb;
  return elem;
}

// Elements of one column (what a thread handles at a time): an access, or two elements (one
// pair) at the one-element width.
inline int column_elems(const Params& p) {
  const int per_access = vector_bytes(p) / element_bytes(p.dtype);
  return per_access < 2 ? 2 : per_access;
}

// Threads of a block: one per column of the row, rounded up to whole warps, at most
// kMaxThreads (a thread then handles several columns).
inline int block_threads(const Params& p) {
  const int64_t columns = p.row_elems / column_elems(p);
  const int64_t warps = ceil_div(columns, 32);
  return warps * 32 < kMaxThreads ? static_cast<int>(warps * 32) : kMaxThreads;
}

// The CUDA launch of one call: one kernel of p's dtype and access width, a block per token row
// (grid x, grid-stride beyond kMaxBlocksX) of q (grid y = 0) and of k (grid y = 1), one
// compute-type value of shared memory per warp (the row's partial sums). None for empty
// tensors. No workspace.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  if (p.rows * p.row_elems > 0) {
    const int vb = vector_bytes(p);
    const int width = vb == 16 ? 0 : vb == 8 ? 1 : vb == 4 ? 2 : 3;
    const int first = p.dtype == DType::kFloat32   ? 0
                      : p.dtype == DType::kFloat16 ? 3
                      : p.dtype == DType::kBFloat16 ? 7
                                                    : 11;
    const int threads = block_threads(p);
    const int compute_bytes = p.dtype == DType::kFloat64 ? 8 : 4;
    lp.add(first + width, p.rows < kMaxBlocksX ? p.rows : kMaxBlocksX, 2, 1, threads, 1,
           threads / 32 * compute_bytes);
  }
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::qk_norm_rope

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::qk_norm_rope {
// Runs `plan` (of plan(p)) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::qk_norm_rope
#endif
