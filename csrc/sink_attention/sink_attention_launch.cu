// sink_attention's nvcc launcher: runs plan() of sink_attention.h on the kernels of
// sink_attention_kernels.cuh (the NVRTC launcher runs the same plan on the same kernels).
#include "common/launch_cuda.cuh"
#include "sink_attention/sink_attention_kernels.cuh"

namespace srf::sink_attention {
namespace {

// In the order of kKernelNames.
const void* const kKernels[] = {
    reinterpret_cast<const void*>(&rope_table_kernel),
    reinterpret_cast<const void*>(&simt_kernel<64>),
    reinterpret_cast<const void*>(&simt_kernel<128>),
    reinterpret_cast<const void*>(&wmma_kernel<__half, 64>),
    reinterpret_cast<const void*>(&wmma_kernel<__half, 128>),
    reinterpret_cast<const void*>(&wmma_kernel<__nv_bfloat16, 64>),
    reinterpret_cast<const void*>(&wmma_kernel<__nv_bfloat16, 128>),
};
static_assert(sizeof(kKernels) / sizeof(kKernels[0]) == kKernelCount, "one address per name");

}  // namespace

cudaError_t launch(const Params& p, const LaunchPlan& plan, cudaStream_t stream) {
  return run_plan(plan, kKernels, p, stream);
}

}  // namespace srf::sink_attention
