// Torch glue shared by the ops' entry points: what an op's prepare() (csrc/<op>/<op>_torch.h)
// returns, and its translation into the results of the op's private <op>_plan op, through
// which the NVRTC launcher (stream_r1_fast/nvrtc/_launch.py) gets the params struct's bytes
// and the launch plan the nvcc launcher would use.
#pragma once
#include <ATen/ATen.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "common/launch_plan.h"

namespace srf {

template <typename Params>
struct Prepared {
  Params params;                    // every pointer set, the workspace's included
  LaunchPlan plan;
  std::vector<at::Tensor> outputs;  // what the op returns
  std::vector<at::Tensor> buffers;  // memory behind params that the op does not return
};

// Workspace bytes of `plan` on the device of `like`.
inline at::Tensor workspace_for(const LaunchPlan& plan, const at::Tensor& like) {
  return at::empty({plan.workspace_bytes}, like.options().dtype(at::kByte));
}

// Fails (as the nvcc launcher's launch error would) when the device cannot take the plan.
inline void check_plan(const LaunchPlan& plan, const char* op) {
  TORCH_CHECK(plan.error == nullptr, op, ": CUDA launch failed: ", plan.error ? plan.error : "");
}

using PlanResult =
    std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, std::vector<int64_t>>;

// (outputs, buffers, the params struct as uint8 bytes, launches flattened as
// [kernel, grid x y z, block x y z, smem] per launch).
template <typename Params>
PlanResult plan_result(const Prepared<Params>& prep) {
  at::Tensor bytes = at::empty({static_cast<int64_t>(sizeof(Params))}, at::kByte);
  std::memcpy(bytes.data_ptr(), &prep.params, sizeof(Params));
  std::vector<int64_t> launches;
  for (int i = 0; i < prep.plan.count; ++i) {
    const Launch& l = prep.plan.launches[i];
    launches.insert(launches.end(), {l.kernel, l.grid[0], l.grid[1], l.grid[2], l.block[0],
                                     l.block[1], l.block[2], l.smem});
  }
  return {prep.outputs, prep.buffers, bytes, launches};
}

// (kernel name expressions, sizeof(Params)): what NVRTC compiles for an op.
template <typename Params, size_t N>
std::tuple<std::vector<std::string>, int64_t> kernels_result(const char* const (&names)[N]) {
  return {std::vector<std::string>(names, names + N), static_cast<int64_t>(sizeof(Params))};
}

}  // namespace srf
