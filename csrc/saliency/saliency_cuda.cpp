// saliency_weights on CUDA: torch glue (checks, allocation, device guard, current stream).
// The kernels live in saliency_kernel.cu, which never sees ATen.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "saliency/saliency_torch.h"

namespace srf::saliency {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> saliency_weights_cuda(
    const at::Tensor& saliency, const at::Tensor& axis_weights, c10::string_view mode,
    int64_t temporal_factor, int64_t spatial_factor, double tau_floor, double sigma_floor,
    double gamma_t, double gamma_s) {
  // The dispatcher picks CUDA when any argument is on CUDA; a fused map ignores axis_weights,
  // so the device of saliency itself must be checked.
  TORCH_CHECK(saliency.is_cuda(), "saliency must be a CUDA tensor here (axis_weights is on ",
              axis_weights.device(), "), got ", saliency.device());
  const c10::cuda::CUDAGuard guard(saliency.device());
  Prepared prep = prepare(saliency, axis_weights, std::string_view(mode.data(), mode.size()),
                          temporal_factor, spatial_factor, tau_floor, sigma_floor, gamma_t,
                          gamma_s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(saliency.device().index()).stream();
  const int err = launch_saliency_weights_cuda(prep.p, stream);
  TORCH_CHECK(err == cudaSuccess, "saliency_weights: CUDA launch failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return {prep.weights, prep.tau, prep.sigma};
}

}  // namespace
}  // namespace srf::saliency

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("saliency_weights", &srf::saliency::saliency_weights_cuda);
}
