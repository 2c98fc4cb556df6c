// CUDA entry point of sink_attention: validation, allocation, stream; the kernel lives in
// sink_attention_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "sink_attention/sink_attention.h"
#include "sink_attention/sink_attention_checks.h"

namespace srf {
namespace {

// The kernels read 16-byte vectors; a tensor that is a view at an odd offset is copied once.
at::Tensor aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

std::tuple<at::Tensor, at::Tensor> sink_attention_cuda_op(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& cache_pos, const at::Tensor& q_pos, int64_t grid_h,
    int64_t grid_w, double scale, double rope_theta) {
  SinkAttentionParams p = sink_attention_params(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h,
                                                grid_w, scale, rope_theta);
  // Reached with a CPU q only when some other argument is on CUDA: name that mismatch.
  TORCH_CHECK(q.is_cuda(), "sink_attention: all tensors must be on the device of q (", q.device(),
              "); got CUDA tensors among them");
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  const at::Tensor qa = aligned16(q), ka = aligned16(k), va = aligned16(v);
  const at::Tensor kca = aligned16(k_cache), vca = aligned16(v_cache);
  p.q = qa.data_ptr();
  p.k = ka.data_ptr();
  p.v = va.data_ptr();
  p.k_cache = kca.data_ptr();
  p.v_cache = vca.data_ptr();
  at::Tensor table =
      at::empty({2 * RopeTableLayout::of(p).entries}, q.options().dtype(at::kFloat));
  p.rope_table = table.data_ptr<float>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();

  const cudaError_t err = sink_attention_cuda(p, c10::cuda::getCurrentCUDAStream(q.device().index()));
  TORCH_CHECK(err == cudaSuccess, "sink_attention: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace
}  // namespace srf

TORCH_LIBRARY_IMPL(stream_r1_fast, CUDA, m) {
  m.impl("sink_attention", &srf::sink_attention_cuda_op);
}
