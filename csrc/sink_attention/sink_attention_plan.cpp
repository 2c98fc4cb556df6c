// sink_attention's planner as private ops, for the NVRTC launcher (stream_r1_fast/nvrtc):
// sink_attention_plan runs prepare() of sink_attention_torch.h exactly as the CUDA entry point
// does and returns the params bytes and the plan; sink_attention_kernels names the kernels.
// On CPU tensors it plans without launching anything (the tests check plans that way).
#include <torch/library.h>

#include "sink_attention/sink_attention_torch.h"

namespace srf::sink_attention {
namespace {

PlanResult plan_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& cache_pos, const at::Tensor& q_pos, int64_t grid_h,
                   int64_t grid_w, double scale, double rope_theta) {
  return plan_result(
      prepare(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta));
}

PlanResult plan_op_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& cache_pos, const at::Tensor& q_pos, int64_t grid_h,
                        int64_t grid_w, double scale, double rope_theta) {
  make_params(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta);
  check_cuda(q);
  return plan_op(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta);
}

std::tuple<std::vector<std::string>, int64_t> kernels_op() {
  return kernels_result<Params>(kKernelNames);
}

}  // namespace
}  // namespace srf::sink_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CPU, m) {
  m.impl("sink_attention_plan", &srf::sink_attention::plan_op);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("sink_attention_plan", &srf::sink_attention::plan_op_cuda);
}
TORCH_LIBRARY_IMPL(stream_r1_fast, CompositeImplicitAutograd, m) {
  m.impl("sink_attention_kernels", &srf::sink_attention::kernels_op);
}
