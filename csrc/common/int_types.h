// Fixed-width integer types for headers shared by the host compilers, nvcc and NVRTC. NVRTC
// has no standard library headers, so there they are defined here (64-bit long long on every
// platform NVRTC targets).
#pragma once
#if defined(__CUDACC_RTC__)
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <cstdint>
#endif
