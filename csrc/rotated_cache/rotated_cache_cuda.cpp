// rotated_cache_advance's CUDA entry point: prepare() of rotated_cache_torch.h, then the nvcc
// launcher (rotated_cache_launch.cu) on the current stream. Every decision is a host integer
// of the call: nothing is read from the device, so the call can be captured in a CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "rotated_cache/rotated_cache_torch.h"

namespace srf::rotated_cache {
namespace {

void cuda_op(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new, const at::Tensor& v_new,
             const at::Tensor& cos, const at::Tensor& sin, int64_t occupied, int64_t sink_size, int64_t window,
             double alpha) {
  const Prepared<Params> prep = prepare(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha);
  check_cuda(keys);
  const c10::cuda::CUDAGuard guard(keys.device());
  const cudaError_t err = launch(prep.params, prep.plan, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rotated_cache_advance: CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace
}  // namespace srf::rotated_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("rotated_cache_advance", &srf::rotated_cache::cuda_op);
}
