// ema_cache_update's planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// ema_cache_update_plan runs prepare() of ema_cache_torch.h exactly as the CUDA entry point
// does and returns the params bytes and the plan; ema_cache_update_kernels names the kernels.
// On CPU tensors it plans without launching anything (the tests check plans that way).
#include <torch/library.h>

#include "ema_cache/ema_cache_torch.h"

namespace srf::ema_cache {
namespace {

PlanResult plan_op(const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& cache_pos, const at::Tensor& state, const at::Tensor& k_new,
                   const at::Tensor& v_new, int64_t sink_size, double alpha) {
  return plan_result(prepare(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha));
}

PlanResult plan_op_cuda(const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& cache_pos, const at::Tensor& state,
                        const at::Tensor& k_new, const at::Tensor& v_new, int64_t sink_size,
                        double alpha) {
  PlanResult result = plan_op(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha);
  check_cuda(k_cache);
  return result;
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::ema_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("ema_cache_update_plan", &srf::ema_cache::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("ema_cache_update_plan", &srf::ema_cache::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("ema_cache_update_kernels", &srf::ema_cache::kernels_op);
}
