// What a launch planner (plan() of every csrc/<op>/<op>.h) returns: the kernels to launch, in
// order, each with its grid, block and dynamic shared memory, and the workspace the launches
// need. Torch-free and CUDA-free: the nvcc launchers (<op>_launch.cu, through run_plan of
// common/launch_cuda.cuh) and the NVRTC launcher (stream_r1_fast/nvrtc, through the
// <op>_plan op of <op>_plan.cpp) run the same plan. Every kernel takes one argument, the op's
// Params, by value.
#pragma once
#include "common/host_device.h"
#include "common/int_types.h"

namespace srf {

struct Launch {
  int kernel;  // index into the op's kKernelNames
  int64_t grid[3];
  int block[3];
  int smem;  // dynamic shared memory, bytes
};

struct LaunchPlan {
  static constexpr int kMaxLaunches = 4;
  Launch launches[kMaxLaunches];
  int count = 0;
  int64_t workspace_bytes = 0;  // device memory the launcher allocates (and binds into Params)
  const char* error = nullptr;  // set when the device cannot take the launch (nothing runs)

  void add(int kernel, int64_t gx, int64_t gy, int64_t gz, int bx, int by, int smem_bytes) {
    launches[count++] = Launch{kernel, {gx, gy, gz}, {bx, by, 1}, smem_bytes};
  }
};

}  // namespace srf
