// dense_attention's planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// dense_attention_plan runs prepare() of dense_attention_torch.h exactly as the CUDA entry
// point does and returns the outputs, the aligned copies, the params bytes and the plan;
// dense_attention_kernels names the kernels. On CPU tensors it plans without launching
// anything (the tests check plans that way).
#include <torch/library.h>

#include "dense_attention/dense_attention_torch.h"

namespace srf::dense_attention {
namespace {

PlanResult plan_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  const Prepared<Params> prep = prepare(q, k, v, scale);
  check_plan(prep.plan, "dense_attention");
  return plan_result(prep);
}

PlanResult plan_op_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        double scale) {
  make_params(q, k, v, scale);
  check_cuda(q);
  return plan_op(q, k, v, scale);
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::dense_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("dense_attention_plan", &srf::dense_attention::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("dense_attention_plan", &srf::dense_attention::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("dense_attention_kernels", &srf::dense_attention::kernels_op);
}
