// qk_norm_rope's CUDA entry point: prepare() of qk_norm_rope_torch.h (the outputs allocated on
// the device), then the nvcc launcher (qk_norm_rope_launch.cu) on the current stream. Every
// decision is a host integer of the call: nothing is read from the device, so the call can be
// captured in a CUDA graph.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "qk_norm_rope/qk_norm_rope_torch.h"

namespace srf::qk_norm_rope {
namespace {

std::tuple<at::Tensor, at::Tensor> cuda_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& weight_q,
                                           const at::Tensor& weight_k, const at::Tensor& cos, const at::Tensor& sin,
                                           int64_t frame_offset, double eps) {
  const Prepared<Params> prep = prepare(q, k, weight_q, weight_k, cos, sin, frame_offset, eps);
  check_cuda(q);
  const c10::cuda::CUDAGuard guard(q.device());
  const cudaError_t err = launch(prep.params, prep.plan, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "qk_norm_rope: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {prep.outputs[0], prep.outputs[1]};
}

}  // namespace
}  // namespace srf::qk_norm_rope

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("qk_norm_rope", &srf::qk_norm_rope::cuda_op);
}
