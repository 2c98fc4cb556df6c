// The nvcc side of a LaunchPlan (common/launch_plan.h): every <op>_launch.cu hands its plan,
// its kernels (in the order of the op's kKernelNames) and its Params to run_plan.
#pragma once
#include <cuda_runtime.h>

#include "common/launch_plan.h"

namespace srf {

template <typename Params>
cudaError_t run_plan(const LaunchPlan& plan, const void* const* kernels, const Params& params,
                     cudaStream_t stream) {
  if (plan.error != nullptr) return cudaErrorInvalidConfiguration;
  for (int i = 0; i < plan.count; ++i) {
    const Launch& l = plan.launches[i];
    const void* fn = kernels[l.kernel];
    cudaError_t err = cudaSuccess;
    // Above 48 KiB a kernel must opt in to its dynamic shared memory.
    if (l.smem > 0) err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, l.smem);
    if (err != cudaSuccess) return err;
    for (int64_t g : l.grid)
      if (g > 2147483647) return cudaErrorInvalidConfiguration;
    void* args[] = {const_cast<Params*>(&params)};
    err = cudaLaunchKernel(fn,
                           dim3(static_cast<unsigned>(l.grid[0]), static_cast<unsigned>(l.grid[1]),
                                static_cast<unsigned>(l.grid[2])),
                           dim3(l.block[0], l.block[1], l.block[2]), args,
                           static_cast<size_t>(l.smem), stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace srf
