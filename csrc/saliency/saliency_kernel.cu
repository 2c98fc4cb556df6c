// saliency_weights on CUDA: the host-side launch of the kernels in saliency_kernels.cuh
// (stream_r1_fast/nvrtc/saliency.py mirrors it for the NVRTC path).
#include <cuda_runtime.h>

#include <cstdint>

#include "saliency/saliency_kernels.cuh"

namespace srf::saliency {
namespace {

template <typename T, int kC>
cudaError_t launch_latent(const Params& p, cudaStream_t stream) {
  if (p.mode == Mode::kVae) {
    const int64_t seg = p.sf < kTX ? p.sf : kTX;
    const int64_t blocks = p.B * p.F * p.h * ceil_div(p.w, kTX / seg);
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
    latent_vae_kernel<T, kC><<<static_cast<unsigned>(blocks), dim3(kTX, kTY), 0, stream>>>(p);
  } else {
    const int64_t n = p.B * p.F * p.h * p.w;
    const int64_t blocks = ceil_div(n, kThreads) < 65535 * 16 ? ceil_div(n, kThreads) : 65535 * 16;
    latent_trilinear_kernel<T, kC><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_latent_dispatch_channels(const Params& p, cudaStream_t stream) {
  // Colour gradients (C = 3) and single-channel inputs get unrolled channel loops.
  if (p.fused_input || p.C == 1) return launch_latent<T, 1>(p, stream);
  if (p.C == 3) return launch_latent<T, 3>(p, stream);
  return launch_latent<T, 0>(p, stream);
}

}  // namespace

int launch_saliency_weights_cuda(const Params& p, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = SRF_DISPATCH_DTYPE(
      p.dtype, [&] { return launch_latent_dispatch_channels<scalar_t>(p, stream); });
  if (err != cudaSuccess) return static_cast<int>(err);
  const unsigned frames = static_cast<unsigned>(p.B * p.F);
  spatial_kernel<<<frames, kThreads, 0, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  weights_kernel<<<frames, kThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace srf::saliency
