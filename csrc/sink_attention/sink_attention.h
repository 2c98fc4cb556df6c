// sink_attention's torch-free core, shared by every backend: the params struct, the tile
// configuration of the CUDA kernels and the launch planner plan(), which the nvcc launcher
// (sink_attention_launch.cu) and the NVRTC launcher (through the sink_attention_plan op of
// sink_attention_plan.cpp) both run. No torch and no CUDA headers: the CPU build, nvcc and
// NVRTC (device parts only) all include it.
#pragma once
#include "common/dtype_code.h"
#include "common/int_types.h"
#if !defined(__CUDACC_RTC__)
#include "common/launch_plan.h"
#endif

namespace srf::sink_attention {

constexpr int kThreads = 128;      // both attention kernels
constexpr int kBlockK = 64;        // keys per tile (both kernels)
constexpr int kRopeThreads = 256;  // rope_table_kernel, one table entry per thread

// Wan 3-D RoPE factorises per axis: a token's rotation for pair j depends on its frame (t
// pairs), its row (h pairs) or its column (w pairs) only. The table holds one (cos, sin) per
// (frame, t-pair), (row, h-pair), (col, w-pair); frames are the S cache slots, then the chunk's
// frames. Sizes in (cos, sin) entries.
struct RopeTableLayout {
  int t_pairs, h_pairs, w_pairs;
  int frames;  // S + Fq
  int64_t h_offset, w_offset, entries;
};

// All tensors contiguous. q, k, v, out: [B, Lq, H, D]; k_cache, v_cache: [B, S, P, H, D];
// cache_pos: int32 [S]; q_pos: int32 [1]; lse: float32 [B, H, Lq]. Element type of q, k, v,
// k_cache, v_cache and out is `dtype`. Every kernel takes this struct by value.
struct Params {
  const void* q;
  const void* k;
  const void* v;
  const void* k_cache;
  const void* v_cache;
  const int32_t* cache_pos;
  const int32_t* q_pos;
  void* out;
  float* lse;
  // (cos, sin) pairs of every rotation the call needs, laid out as `rope` says: the launch's
  // workspace (CUDA) or the CPU kernel's own buffer, never the caller's.
  float* rope_table;

  int batch;
  int q_len;     // Lq = frames * P
  int heads;
  int head_dim;  // 64 or 128
  int slots;     // S, may be 0
  int grid_h;
  int grid_w;
  float scale;
  double rope_theta;
  DType dtype;
  RopeTableLayout rope;
};

// Shared-memory layout of the bf16 / fp16 WMMA kernel for elements of ElemBytes bytes.
template <int ElemBytes, int D>
struct WmmaCfg {
  static constexpr int BQ = 64, BK = kBlockK;
  static constexpr int LDH = D + 8;   // Q, K, V rows (elements); +8 staggers the banks
  static constexpr int LDS = BK + 4;  // scores (floats)
  static constexpr int LDP = BK + 8;  // probabilities (elements)
  static constexpr int LDO = D + 4;   // output accumulator (floats)
  static constexpr int q_bytes = BQ * LDH * ElemBytes;
  static constexpr int s_bytes = BQ * LDS * 4;
  // Q is only read once, into registers: the scores reuse its space.
  static constexpr int qs_bytes = q_bytes > s_bytes ? q_bytes : s_bytes;
  static constexpr int kv_bytes = BK * LDH * ElemBytes;
  static constexpr int p_bytes = BQ * LDP * ElemBytes;
  static constexpr int o_bytes = BQ * LDO * 4;
  static constexpr int k_off = qs_bytes, v_off = k_off + kv_bytes, p_off = v_off + kv_bytes,
                       o_off = p_off + p_bytes, mask_off = o_off + o_bytes;
  static constexpr int smem = mask_off + BK * 4;
  // WMMA pointers must be 32-byte aligned: every region starts on a 128-byte boundary.
  static_assert(q_bytes % 128 == 0 && s_bytes % 128 == 0 && kv_bytes % 128 == 0 &&
                    p_bytes % 128 == 0 && o_bytes % 128 == 0,
                "shared-memory regions must stay 128-byte aligned");
  static_assert(BQ == 16 * (kThreads / 32), "one 16-row slab of queries per warp");
};

// Shared-memory layout of the float32 SIMT kernel.
template <int D>
struct SimtCfg {
  static constexpr int BQ = kThreads / 4, BK = kBlockK;
  static constexpr int LDF = D + 4;   // Q, K, V rows: float4-aligned, banks staggered
  static constexpr int LDP = BK + 4;  // probabilities
  static constexpr int q_off = 0, k_off = BQ * LDF * 4, v_off = k_off + BK * LDF * 4,
                       p_off = v_off + BK * LDF * 4, mask_off = p_off + BQ * LDP * 4;
  static constexpr int smem = mask_off + BK * 4;
};

#if !defined(__CUDACC_RTC__)  // host code; NVRTC compiles device code only

// The kernels of sink_attention_kernels.cuh, as NVRTC name expressions; plan() picks them by
// index and sink_attention_launch.cu lists their addresses in the same order.
enum Kernel : int {
  kRopeTable, kSimt64, kSimt128, kWmmaHalf64, kWmmaHalf128, kWmmaBf16_64, kWmmaBf16_128,
  kKernelCount
};
inline constexpr const char* kKernelNames[kKernelCount] = {
    "srf::sink_attention::rope_table_kernel",
    "srf::sink_attention::simt_kernel<64>",
    "srf::sink_attention::simt_kernel<128>",
    "srf::sink_attention::wmma_kernel<__half, 64>",
    "srf::sink_attention::wmma_kernel<__half, 128>",
    "srf::sink_attention::wmma_kernel<__nv_bfloat16, 64>",
    "srf::sink_attention::wmma_kernel<__nv_bfloat16, 128>",
};

inline RopeTableLayout rope_table_layout(const Params& p) {
  RopeTableLayout l;
  const int d6 = p.head_dim / 6;
  l.t_pairs = (p.head_dim - 4 * d6) / 2;
  l.h_pairs = d6;
  l.w_pairs = d6;
  l.frames = p.slots + p.q_len / (p.grid_h * p.grid_w);
  l.h_offset = static_cast<int64_t>(l.frames) * l.t_pairs;
  l.w_offset = l.h_offset + static_cast<int64_t>(p.grid_h) * l.h_pairs;
  l.entries = l.w_offset + static_cast<int64_t>(p.grid_w) * l.w_pairs;
  return l;
}

// The CUDA launches of one call (p.rope set): the RoPE table from the device-side positions
// into the workspace, then the attention kernel of p's dtype and head size. Nothing to launch
// for an empty output.
inline LaunchPlan plan(const Params& p) {
  LaunchPlan lp;
  lp.workspace_bytes = 2 * p.rope.entries * static_cast<int64_t>(sizeof(float));
  if (p.batch == 0 || p.heads == 0 || p.q_len == 0) return lp;
  lp.add(kRopeTable, ceil_div(p.rope.entries, kRopeThreads), 1, 1, kRopeThreads, 1, 0);
  const bool d64 = p.head_dim == 64;
  int kernel, bq, smem;
  if (p.dtype == DType::kFloat32) {
    kernel = d64 ? kSimt64 : kSimt128;
    bq = SimtCfg<64>::BQ;
    smem = d64 ? SimtCfg<64>::smem : SimtCfg<128>::smem;
  } else {
    const bool half = p.dtype == DType::kFloat16;
    kernel = half ? (d64 ? kWmmaHalf64 : kWmmaHalf128) : (d64 ? kWmmaBf16_64 : kWmmaBf16_128);
    bq = WmmaCfg<2, 64>::BQ;
    smem = d64 ? WmmaCfg<2, 64>::smem : WmmaCfg<2, 128>::smem;
  }
  lp.add(kernel, ceil_div(p.q_len, bq), p.heads, p.batch, kThreads, 1, smem);
  return lp;
}

#endif  // !__CUDACC_RTC__

}  // namespace srf::sink_attention

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf::sink_attention {
// Runs `plan` (of plan(p), workspace bound into p) on `stream`; returns the first launch error.
cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream);
}  // namespace srf::sink_attention
#endif
