// Element-type codes passed across the torch / kernel boundary: the .cu files never see ATen,
// and the torch glue never sees CUDA types. Plain header, includable from both sides.
#pragma once

namespace srf {
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };
}  // namespace srf
