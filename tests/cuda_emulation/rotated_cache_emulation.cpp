// rotated_cache_advance's CUDA kernels run on the CPU: every thread of one planned launch in
// turn (in launch order or reversed), on the params bytes the extension's planner returns.
#include <algorithm>
#include <numeric>
#include <vector>

#include "rotated_cache/rotated_cache_kernels.cuh"

namespace {
using srf::rotated_cache::advance_kernel;
using srf::rotated_cache::Params;
using Kernel = void (*)(Params);

// In the order of kKernelNames; the 16-bit types are not emulated.
const Kernel kKernels[] = {
    &advance_kernel<float, 16>, &advance_kernel<float, 8>, &advance_kernel<float, 4>,
    nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
    &advance_kernel<double, 16>, &advance_kernel<double, 8>,
};
static_assert(sizeof(kKernels) / sizeof(kKernels[0]) == sizeof(srf::rotated_cache::kKernelNames) / sizeof(char*));
}  // namespace

// 0 when launched, -1 for a kernel that is not emulated.
extern "C" int emulate_launch(const void* params, int kernel, int64_t grid_x, int64_t grid_y, int block_x,
                              int reversed) {
  if (kKernels[kernel] == nullptr) return -1;
  const Params p = *static_cast<const Params*>(params);
  gridDim = {static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y), 1};
  blockDim = {static_cast<unsigned>(block_x), 1, 1};
  std::vector<int64_t> order(grid_x * grid_y * block_x);
  std::iota(order.begin(), order.end(), 0);
  if (reversed) std::reverse(order.begin(), order.end());
  for (const int64_t t : order) {
    threadIdx = {static_cast<unsigned>(t % block_x), 0, 0};
    blockIdx = {static_cast<unsigned>(t / block_x % grid_x), static_cast<unsigned>(t / block_x / grid_x), 0};
    kKernels[kernel](p);
  }
  return 0;
}
