// ema_cache_update on CUDA: validation and launch on the current stream. Nothing here reads
// `state` on the host, so the call can be captured in a CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "ema_cache/ema_cache_checks.h"

namespace srf {
namespace {

void ema_cache_update_cuda(const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& cache_pos, const at::Tensor& state,
                           const at::Tensor& k_new, const at::Tensor& v_new, int64_t sink_size,
                           double alpha) {
  const EmaCacheParams prm =
      check_ema_cache_inputs(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha);
  TORCH_CHECK(k_cache.is_cuda(), "k_cache must be a CUDA tensor for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(k_cache.device());
  launch_ema_cache_update(prm, c10::cuda::getCurrentCUDAStream().stream());
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "ema_cache_update: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

}  // namespace
}  // namespace srf

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("ema_cache_update", &srf::ema_cache_update_cuda);
}
