// dense_attention's nvcc launcher: runs plan() of dense_attention.h on the kernels of
// dense_attention_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "dense_attention/dense_attention_kernels.cuh"

namespace srf::dense_attention {
namespace {

// In the order of kKernelNames.
const void* const kKernels[] = {
    reinterpret_cast<const void*>(&fwd_kernel<__half, 64>),
    reinterpret_cast<const void*>(&fwd_kernel<__half, 128>),
    reinterpret_cast<const void*>(&fwd_kernel<__nv_bfloat16, 64>),
    reinterpret_cast<const void*>(&fwd_kernel<__nv_bfloat16, 128>),
};
static_assert(sizeof(kKernels) == sizeof(kKernelNames), "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::dense_attention
