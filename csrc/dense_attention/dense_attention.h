// dense_attention's torch-free core, shared by every backend: the params struct, the CUDA
// kernels' tile constants and the launch planner plan(), which the nvcc launcher
// (dense_attention_launch.cu) and the NVRTC launcher (through the dense_attention_plan op of
// dense_attention_plan.cpp) both run. No torch and no CUDA headers: the CPU build, nvcc and
// NVRTC (device parts only) all include it.
//
// out = softmax(q k^T * scale) v, lse = log of the softmax denominator (natural log), no mask.
// q [B, Lq, H, D], k / v [B, Lk, H, D], each with its own batch, row and head strides (in
// elements; the last dimension contiguous), out [B, Lq, H, D] contiguous, lse [B, H, Lq].
#pragma once
#include "common/dtype_code.h"
#include "common/host_device.h"
#include "common/int_types.h"
#if !defined(__CUDACC_RTC__)
#include "common/launch_plan.h"
#endif

namespace srf::dense_attention {

// One CTA: kWarps warps of 16 query rows each (kBlockQ rows), one 16-row m16n8k16 tile per
// warp, so each thread keeps its O accumulator (D / 2 floats), its Q fragments (D / 4
// registers) and one tile of scores in registers without spilling at D = 128.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockQ = kWarps * 16;
constexpr int kMaxGridYZ = 65535;

// Keys per K / V tile: 64 at D = 128, 128 at D = 64 (a tile is 16 KiB of K either way).
SRF_HOST_DEVICE constexpr int block_keys(int head_dim) { return head_dim == 64 ? 128 : 64; }

// Dynamic shared memory: Q [kBlockQ, D] once, then two stages of K [N, D] and V [N, D].
SRF_HOST_DEVICE constexpr int smem_bytes(int head_dim) {
  return (kBlockQ * head_dim + 2 * 2 * block_keys(head_dim) * head_dim) * 2;
}

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  int64_t q_batch_stride, q_row_stride, q_head_stride;  // elements
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int batch;
  int q_len;
  int k_len;
  int heads;
  int head_dim;
  float scale;       // softmax scale of q . k
  float scale_log2;  // scale * log2(e): the kernels' exponentials are exp2
  DType dtype;
};

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of dense_attention_kernels.cuh as NVRTC name expressions; plan() picks them by
// index and dense_attention_launch.cu lists their addresses in the same order.
inline constexpr const char* kKernelNames[] = {
    "srf::dense_attention::fwd_kernel<__half, 64>",
    "srf::dense_attention::fwd_kernel<__half, 128>",
    "srf::dense_attention::fwd_kernel<__nv_bfloat16, 64>",
    "srf::dense_attention::fwd_kernel<__nv_bfloat16, 128>",
};

// Whether the CUDA kernels take these params: fp16 / bf16, D in {64, 128}, every base address
// and stride a multiple of 16 bytes (8 elements), so that each row of a tile moves as 16-byte
// cp.async chunks. nullptr when they do, else why not.
inline const char* unsupported(const Params& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return "the CUDA kernels take float16 or bfloat16";
  if (p.head_dim != 64 && p.head_dim != 128) return "the CUDA kernels take head_dim 64 or 128";
  const int64_t strides[] = {p.q_batch_stride, p.q_row_stride, p.q_head_stride,
                             p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                             p.v_batch_stride, p.v_row_stride, p.v_head_stride};
  for (int64_t s : strides)
    if (s % 8 != 0) return "the CUDA kernels need strides that are multiples of 8 elements";
  const void* ptrs[] = {p.q, p.k, p.v, p.out};
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uint64_t>(ptr) % 16 != 0)
      return "the CUDA kernels need 16-byte aligned tensors";
  if (p.batch > kMaxGridYZ || p.heads > kMaxGridYZ)
    return "the CUDA kernels take at most 65535 batch elements and heads";
  return nullptr;
}

// One launch: grid (query blocks, heads, batch) of kThreads threads, nothing for an empty
// output. plan.error (nothing runs) when the kernels cannot take the params.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  if (static_cast<int64_t>(p.batch) * p.q_len * p.heads == 0) return lp;
  if (const char* why = unsupported(p)) {
    lp.error = why;
    return lp;
  }
  const int kernel = (p.dtype == DType::kFloat16 ? 0 : 2) + (p.head_dim == 128 ? 1 : 0);
  lp.add(kernel, ceil_div(p.q_len, kBlockQ), p.heads, p.batch, kThreads, 1,
         smem_bytes(p.head_dim));
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::dense_attention

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::dense_attention {
// Runs `plan` (of plan(p)) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::dense_attention
#endif
