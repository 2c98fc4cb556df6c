// saliency_weights' CUDA entry point: prepare() of saliency_torch.h, then the nvcc launcher
// (saliency_launch.cu) on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "saliency/saliency_torch.h"

namespace srf::saliency {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_op(
    const at::Tensor& saliency, const at::Tensor& axis_weights, c10::string_view mode,
    int64_t temporal_factor, int64_t spatial_factor, double tau_floor, double sigma_floor,
    double gamma_t, double gamma_s) {
  check_cuda(saliency, axis_weights);
  const c10::cuda::CUDAGuard guard(saliency.device());
  const Prepared<Params> prep =
      prepare(saliency, axis_weights, std::string_view(mode.data(), mode.size()), temporal_factor,
              spatial_factor, tau_floor, sigma_floor, gamma_t, gamma_s);
  const cudaError_t err = launch(prep.params, prep.plan,
                                 c10::cuda::getCurrentCUDAStream(saliency.device().index()));
  TORCH_CHECK(err == cudaSuccess, "saliency_weights: CUDA launch failed: ", cudaGetErrorString(err));
  return {prep.outputs[0], prep.outputs[1], prep.outputs[2]};
}

}  // namespace
}  // namespace srf::saliency

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("saliency_weights", &srf::saliency::cuda_op);
}
