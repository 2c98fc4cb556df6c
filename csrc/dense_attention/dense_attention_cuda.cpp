// dense_attention's CUDA entry point: prepare() of dense_attention_torch.h, then the nvcc
// launcher (dense_attention_launch.cu) on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dense_attention/dense_attention_torch.h"

namespace srf::dense_attention {
namespace {

std::tuple<at::Tensor, at::Tensor> cuda_op(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, double scale) {
  make_params(q, k, v, scale);
  check_cuda(q);
  const c10::cuda::CUDAGuard guard(q.device());
  const Prepared<Params> prep = prepare(q, k, v, scale);
  check_plan(prep.plan, "dense_attention");
  const cudaError_t err =
      launch(prep.params, prep.plan, c10::cuda::getCurrentCUDAStream(q.device().index()));
  TORCH_CHECK(err == cudaSuccess, "dense_attention: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
  return {prep.outputs[0], prep.outputs[1]};
}

}  // namespace
}  // namespace srf::dense_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("dense_attention", &srf::dense_attention::cuda_op);
}
