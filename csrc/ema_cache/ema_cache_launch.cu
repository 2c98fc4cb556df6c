// ema_cache_update's nvcc launcher: runs plan() of ema_cache.h on the kernels of
// ema_cache_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "ema_cache/ema_cache_kernels.cuh"

namespace srf::ema_cache {
namespace {

// In the order of kKernelNames.
const void* const kKernels[] = {
    reinterpret_cast<const void*>(&move_kernel<float, 16>),
    reinterpret_cast<const void*>(&move_kernel<float, 8>),
    reinterpret_cast<const void*>(&move_kernel<float, 4>),
    reinterpret_cast<const void*>(&move_kernel<__half, 16>),
    reinterpret_cast<const void*>(&move_kernel<__half, 8>),
    reinterpret_cast<const void*>(&move_kernel<__half, 4>),
    reinterpret_cast<const void*>(&move_kernel<__half, 2>),
    reinterpret_cast<const void*>(&move_kernel<__nv_bfloat16, 16>),
    reinterpret_cast<const void*>(&move_kernel<__nv_bfloat16, 8>),
    reinterpret_cast<const void*>(&move_kernel<__nv_bfloat16, 4>),
    reinterpret_cast<const void*>(&move_kernel<__nv_bfloat16, 2>),
    reinterpret_cast<const void*>(&state_kernel),
};
static_assert(sizeof(kKernels) == sizeof(kKernelNames), "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::ema_cache
