// Host stand-ins for the CUDA built-ins of the kernel headers, so that a kernel's device code
// compiles with the host compiler and runs thread by thread on the CPU (tests/test_cuda_emulation.py).
// Shadows csrc/common/cuda_utils.h by coming first on the include path. Arithmetic in float and
// double only; the 16-bit types are storage (bits), converted by the ops' own stand-ins.
// Warp-wide and block-wide built-ins (__shfl_xor_sync, __syncthreads) are declared here and
// defined by the emulations that run a block's threads together (dense_attention's,
// qk_norm_rope's).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim {
  unsigned x = 0, y = 0, z = 0;
};
inline EmuDim threadIdx, blockIdx, gridDim, blockDim;

// Rounded IEEE operations (the harness is compiled with -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
float __shfl_xor_sync(unsigned mask, float value, int lane_mask);
double __shfl_xor_sync(unsigned mask, double value, int lane_mask);
void __syncthreads();

namespace srf {
template <typename T>
inline float to_float(T x);
template <>
inline float to_float<float>(float x) { return x; }
template <typename T>
inline T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
}  // namespace srf
