// The one host-and-device function marker of the op headers (inline on the host compilers,
// __host__ __device__ under nvcc and NVRTC), and the integer helper every op's plan uses.
#pragma once
#if defined(__CUDACC__)
#define SRF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SRF_HOST_DEVICE inline
#endif

#include "common/int_types.h"

namespace srf {
// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b for b near 2^63.
SRF_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }
}  // namespace srf
