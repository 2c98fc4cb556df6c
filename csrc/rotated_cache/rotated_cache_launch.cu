// rotated_cache_advance's nvcc launcher: runs plan() of rotated_cache.h on the kernels of
// rotated_cache_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "rotated_cache/rotated_cache_kernels.cuh"

namespace srf::rotated_cache {
namespace {

// In the order of kKernelNames.
const void* const kKernels[] = {
    reinterpret_cast<const void*>(&advance_kernel<float, 16>),
    reinterpret_cast<const void*>(&advance_kernel<float, 8>),
    reinterpret_cast<const void*>(&advance_kernel<float, 4>),
    reinterpret_cast<const void*>(&advance_kernel<__half, 16>),
    reinterpret_cast<const void*>(&advance_kernel<__half, 8>),
    reinterpret_cast<const void*>(&advance_kernel<__half, 4>),
    reinterpret_cast<const void*>(&advance_kernel<__half, 2>),
    reinterpret_cast<const void*>(&advance_kernel<__nv_bfloat16, 16>),
    reinterpret_cast<const void*>(&advance_kernel<__nv_bfloat16, 8>),
    reinterpret_cast<const void*>(&advance_kernel<__nv_bfloat16, 4>),
    reinterpret_cast<const void*>(&advance_kernel<__nv_bfloat16, 2>),
    reinterpret_cast<const void*>(&advance_kernel<double, 16>),
    reinterpret_cast<const void*>(&advance_kernel<double, 8>),
};
static_assert(sizeof(kKernels) == sizeof(kKernelNames), "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::rotated_cache
