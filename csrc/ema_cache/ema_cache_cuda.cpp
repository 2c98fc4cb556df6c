// ema_cache_update's CUDA entry point: prepare() of ema_cache_torch.h, then the nvcc launcher
// (ema_cache_launch.cu) on the current stream. Nothing here reads `state` on the host, so the
// call can be captured in a CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ema_cache/ema_cache_torch.h"

namespace srf::ema_cache {
namespace {

void cuda_op(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_pos,
             const at::Tensor& state, const at::Tensor& k_new, const at::Tensor& v_new,
             int64_t sink_size, double alpha) {
  const Prepared<Params> prep =
      prepare(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha);
  check_cuda(k_cache);
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const cudaError_t err = launch(prep.params, prep.plan, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "ema_cache_update: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

}  // namespace
}  // namespace srf::ema_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("ema_cache_update", &srf::ema_cache::cuda_op);
}
