// The bridge between the torch glue (sink_attention_{cpu,cuda}.cpp) and the kernels: a plain
// params struct of raw pointers and sizes, and the CUDA launcher. No torch here, so the .cu
// file compiles against the CUDA headers alone, and NVRTC compiles it too.
#pragma once
#include "common/dtype_code.h"
#include "common/int_types.h"

namespace srf {

// All tensors contiguous. q, k, v, out: [B, Lq, H, D]; k_cache, v_cache: [B, S, P, H, D];
// cache_pos: int32 [S]; q_pos: int32 [1]; lse: float32 [B, H, Lq]. Element type of q, k, v,
// k_cache, v_cache and out is `dtype`.
struct SinkAttentionParams {
  const void* q;
  const void* k;
  const void* v;
  const void* k_cache;
  const void* v_cache;
  const int32_t* cache_pos;
  const int32_t* q_pos;
  void* out;
  float* lse;
  // (cos, sin) pairs of every rotation the call needs, laid out as described by
  // RopeTableLayout; filled by the launcher (CUDA) or the CPU kernel, never by the caller.
  float* rope_table;

  int batch;
  int q_len;      // Lq = frames * P
  int heads;
  int head_dim;   // 64 or 128
  int slots;      // S, may be 0
  int grid_h;
  int grid_w;
  float scale;
  double rope_theta;
  DType dtype;

#if !defined(__CUDACC_RTC__)  // host helpers; NVRTC compiles device code only
  int tokens_per_frame() const { return grid_h * grid_w; }
  int q_frames() const { return q_len / tokens_per_frame(); }
  int key_len() const { return slots * tokens_per_frame() + q_len; }  // cache tokens, then chunk
#endif
};

// Wan 3-D RoPE factorises per axis: a token's rotation for pair j depends on its frame (t
// pairs), its row (h pairs) or its column (w pairs) only. The table holds one (cos, sin) per
// (frame, t-pair), (row, h-pair), (col, w-pair); frames are the S cache slots, then the chunk's
// frames. Sizes in (cos, sin) entries.
struct RopeTableLayout {
  int t_pairs, h_pairs, w_pairs;
  int frames;       // S + Fq
  int64_t h_offset, w_offset, entries;

#if !defined(__CUDACC_RTC__)
  static RopeTableLayout of(const SinkAttentionParams& p) {
    RopeTableLayout l;
    const int d6 = p.head_dim / 6;
    l.t_pairs = (p.head_dim - 4 * d6) / 2;
    l.h_pairs = d6;
    l.w_pairs = d6;
    l.frames = p.slots + p.q_frames();
    l.h_offset = static_cast<int64_t>(l.frames) * l.t_pairs;
    l.w_offset = l.h_offset + static_cast<int64_t>(p.grid_h) * l.h_pairs;
    l.entries = l.w_offset + static_cast<int64_t>(p.grid_w) * l.w_pairs;
    return l;
  }
#endif
};

}  // namespace srf

#if defined(SRF_WITH_CUDA) && !defined(__CUDACC_RTC__)
#include <cuda_runtime_api.h>

namespace srf {
// Fills p.rope_table (2 * RopeTableLayout::of(p).entries floats of device memory) from the
// device-side positions, then runs the attention. Asynchronous on `stream`; returns the launch
// error, if any.
cudaError_t sink_attention_cuda(const SinkAttentionParams& p, cudaStream_t stream);
}  // namespace srf
#endif
