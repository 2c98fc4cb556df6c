// saliency_weights' planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// saliency_weights_plan runs prepare() of saliency_torch.h exactly as the CUDA entry point
// does and returns the params bytes and the plan; saliency_weights_kernels names the kernels.
// On CPU tensors it plans without launching anything (the tests check plans that way).
#include <torch/library.h>

#include "saliency/saliency_torch.h"

namespace srf::saliency {
namespace {

PlanResult plan_op(const at::Tensor& saliency, const at::Tensor& axis_weights,
                   c10::string_view mode, int64_t temporal_factor, int64_t spatial_factor,
                   double tau_floor, double sigma_floor, double gamma_t, double gamma_s) {
  const Prepared<Params> prep =
      prepare(saliency, axis_weights, std::string_view(mode.data(), mode.size()), temporal_factor,
              spatial_factor, tau_floor, sigma_floor, gamma_t, gamma_s);
  check_plan(prep.plan, "saliency_weights");
  return plan_result(prep);
}

PlanResult plan_op_cuda(const at::Tensor& saliency, const at::Tensor& axis_weights,
                        c10::string_view mode, int64_t temporal_factor, int64_t spatial_factor,
                        double tau_floor, double sigma_floor, double gamma_t, double gamma_s) {
  check_cuda(saliency, axis_weights);
  return plan_op(saliency, axis_weights, mode, temporal_factor, spatial_factor, tau_floor,
                 sigma_floor, gamma_t, gamma_s);
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::saliency

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("saliency_weights_plan", &srf::saliency::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("saliency_weights_plan", &srf::saliency::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("saliency_weights_kernels", &srf::saliency::kernels_op);
}
