// qk_norm_rope's planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// qk_norm_rope_plan runs prepare() of qk_norm_rope_torch.h exactly as the CUDA entry point does
// (the outputs allocated on the tensors' device) and returns them with the params bytes and the
// plan; qk_norm_rope_kernels names the kernels. On CPU tensors it plans without launching
// anything (the tests check plans, and run the CUDA kernels emulated, that way).
#include <torch/library.h>

#include "qk_norm_rope/qk_norm_rope_torch.h"

namespace srf::qk_norm_rope {
namespace {

PlanResult plan_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weight_q, const at::Tensor& weight_k,
                   const at::Tensor& cos, const at::Tensor& sin, int64_t frame_offset, double eps) {
  return plan_result(prepare(q, k, weight_q, weight_k, cos, sin, frame_offset, eps));
}

PlanResult plan_op_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weight_q,
                        const at::Tensor& weight_k, const at::Tensor& cos, const at::Tensor& sin,
                        int64_t frame_offset, double eps) {
  PlanResult result = plan_op(q, k, weight_q, weight_k, cos, sin, frame_offset, eps);
  check_cuda(q);
  return result;
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::qk_norm_rope

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("qk_norm_rope_plan", &srf::qk_norm_rope::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("qk_norm_rope_plan", &srf::qk_norm_rope::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("qk_norm_rope_kernels", &srf::qk_norm_rope::kernels_op);
}
