// saliency_weights' nvcc launcher: runs plan() of saliency.h on the kernels of
// saliency_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "saliency/saliency_kernels.cuh"

namespace srf::saliency {
namespace {

#define SRF_LATENT(mode, T) \
  reinterpret_cast<const void*>(&latent_##mode##_kernel<T, 1>), \
  reinterpret_cast<const void*>(&latent_##mode##_kernel<T, 3>), \
  reinterpret_cast<const void*>(&latent_##mode##_kernel<T, 0>)

// In the order of kKernelNames.
const void* const kKernels[] = {
    SRF_LATENT(vae, float),       SRF_LATENT(vae, __half),       SRF_LATENT(vae, __nv_bfloat16),
    SRF_LATENT(trilinear, float), SRF_LATENT(trilinear, __half), SRF_LATENT(trilinear, __nv_bfloat16),
    reinterpret_cast<const void*>(&spatial_kernel),
    reinterpret_cast<const void*>(&weights_kernel),
};
#undef SRF_LATENT
static_assert(sizeof(kKernels) == sizeof(kKernelNames), "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::saliency
