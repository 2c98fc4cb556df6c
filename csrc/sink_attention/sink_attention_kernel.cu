// sink_attention on the GPU: the host-side launch of the kernels in sink_attention_kernels.cuh
// (stream_r1_fast/nvrtc/sink_attention.py mirrors it for the NVRTC path).
#include <cstdint>

#include "sink_attention/sink_attention_kernels.cuh"

namespace srf {
namespace {

using namespace srf::attn;

template <typename Kernel>
cudaError_t launch(Kernel kernel, size_t smem, int block_q, const SinkAttentionParams& p,
                   const RopeTableLayout& l, cudaStream_t stream) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((p.q_len + block_q - 1) / block_q, p.heads, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p, l);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_for(const SinkAttentionParams& p, const RopeTableLayout& l, cudaStream_t stream) {
  if constexpr (sizeof(T) == 4) {
    return launch(sink_attention_simt_kernel<D>, SimtCfg<D>::smem, SimtCfg<D>::BQ, p, l, stream);
  } else {
    return launch(sink_attention_wmma_kernel<T, D>, WmmaCfg<T, D>::smem, WmmaCfg<T, D>::BQ, p, l,
                  stream);
  }
}

}  // namespace

cudaError_t sink_attention_cuda(const SinkAttentionParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.heads == 0 || p.q_len == 0) return cudaSuccess;
  const RopeTableLayout l = RopeTableLayout::of(p);
  rope_table_kernel<<<static_cast<unsigned>((l.entries + kRopeThreads - 1) / kRopeThreads),
                      kRopeThreads, 0, stream>>>(reinterpret_cast<float2*>(p.rope_table), l,
                                                 p.cache_pos, p.q_pos, p.slots, p.rope_theta);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return SRF_DISPATCH_DTYPE(p.dtype, [&] {
    return p.head_dim == 64 ? launch_for<scalar_t, 64>(p, l, stream)
                            : launch_for<scalar_t, 128>(p, l, stream);
  });
}

}  // namespace srf
