// Torch-free helpers for the kernel files: conversions and dtype dispatch. Compiles under nvcc
// and NVRTC (which has no <cuda_runtime.h>: its device builtins are always declared there).
#pragma once
#include "common/dtype_code.h"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>
#endif

namespace srf {

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

}  // namespace srf

// Dispatch a DType code to a C++ type alias `scalar_t` inside the body.
#define SRF_DISPATCH_DTYPE(code, ...)                                  \
  [&] {                                                                \
    switch (code) {                                                    \
      case ::srf::DType::kFloat32: {                                   \
        using scalar_t = float;                                        \
        return __VA_ARGS__();                                          \
      }                                                                \
      case ::srf::DType::kFloat16: {                                   \
        using scalar_t = __half;                                       \
        return __VA_ARGS__();                                          \
      }                                                                \
      default: {                                                       \
        using scalar_t = __nv_bfloat16;                                \
        return __VA_ARGS__();                                          \
      }                                                                \
    }                                                                  \
  }()
