// rotated_cache_advance's planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// rotated_cache_advance_plan runs prepare() of rotated_cache_torch.h exactly as the CUDA entry
// point does and returns the params bytes and the plan; rotated_cache_advance_kernels names the
// kernels. On CPU tensors it plans without launching anything (the tests check plans that way).
#include <torch/library.h>

#include "rotated_cache/rotated_cache_torch.h"

namespace srf::rotated_cache {
namespace {

PlanResult plan_op(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new,
                   const at::Tensor& v_new, const at::Tensor& cos, const at::Tensor& sin, int64_t occupied,
                   int64_t sink_size, int64_t window, double alpha) {
  return plan_result(prepare(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha));
}

PlanResult plan_op_cuda(const at::Tensor& keys, const at::Tensor& values, const at::Tensor& k_new,
                        const at::Tensor& v_new, const at::Tensor& cos, const at::Tensor& sin, int64_t occupied,
                        int64_t sink_size, int64_t window, double alpha) {
  PlanResult result = plan_op(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha);
  check_cuda(keys);
  return result;
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::rotated_cache

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("rotated_cache_advance_plan", &srf::rotated_cache::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("rotated_cache_advance_plan", &srf::rotated_cache::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("rotated_cache_advance_kernels", &srf::rotated_cache::kernels_op);
}
