// Maps ATen scalar types to the kernel-side dtype codes, for the *_cuda.cpp glue files.
#pragma once
#include <ATen/ATen.h>

#include "common/dtype_code.h"

namespace srf {

inline DType dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;  // ops whose entry points accept it (rotated_cache)
    default: TORCH_CHECK(false, "unsupported dtype ", st);
  }
}

}  // namespace srf
