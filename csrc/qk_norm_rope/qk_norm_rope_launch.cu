// qk_norm_rope's nvcc launcher: runs plan() of qk_norm_rope.h on the kernels of
// qk_norm_rope_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "qk_norm_rope/qk_norm_rope_kernels.cuh"

namespace srf::qk_norm_rope {
namespace {

// In the order of kKernelNames.
const void* const kKernels[] = {
    reinterpret_cast<const void*>(&norm_rope_kernel<float, 16>),
    reinterpret_cast<const void*>(&norm_rope_kernel<float, 8>),
    reinterpret_cast<const void*>(&norm_rope_kernel<float, 4>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__half, 16>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__half, 8>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__half, 4>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__half, 2>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__nv_bfloat16, 16>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__nv_bfloat16, 8>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__nv_bfloat16, 4>),
    reinterpret_cast<const void*>(&norm_rope_kernel<__nv_bfloat16, 2>),
    reinterpret_cast<const void*>(&norm_rope_kernel<double, 16>),
    reinterpret_cast<const void*>(&norm_rope_kernel<double, 8>),
};
static_assert(sizeof(kKernels) == sizeof(kKernelNames), "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::qk_norm_rope
