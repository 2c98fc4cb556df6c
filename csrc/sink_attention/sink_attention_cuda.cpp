// sink_attention's CUDA entry point: prepare() of sink_attention_torch.h, then the nvcc
// launcher (sink_attention_launch.cu) on the current stream.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sink_attention/sink_attention_torch.h"

namespace srf::sink_attention {
namespace {

std::tuple<at::Tensor, at::Tensor> cuda_op(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& k_cache,
                                           const at::Tensor& v_cache, const at::Tensor& cache_pos,
                                           const at::Tensor& q_pos, int64_t grid_h, int64_t grid_w,
                                           double scale, double rope_theta) {
  make_params(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta);
  check_cuda(q);
  const c10::cuda::CUDAGuard guard(q.device());
  const Prepared<Params> prep =
      prepare(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta);
  const cudaError_t err =
      launch(prep.params, prep.plan, c10::cuda::getCurrentCUDAStream(q.device().index()));
  TORCH_CHECK(err == cudaSuccess, "sink_attention: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
  return {prep.outputs[0], prep.outputs[1]};
}

}  // namespace
}  // namespace srf::sink_attention

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("sink_attention", &srf::sink_attention::cuda_op);
}
