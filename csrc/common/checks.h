// Input validation shared by the ops' C++ entry points. Every message names the argument
// and what was expected, so a wrong call reads as a Python RuntimeError, never a crash.
// The user-facing checks of each op live in its Python module (stream_r1_fast/ops/<op>.py);
// these keep direct torch.ops calls memory safe: ranks, shapes, dtypes, devices, and every
// size product computed before use with the overflow-checked helpers below.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

namespace srf {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// a * b, or an error naming `what` (the expression, in the argument names) when it
// overflows int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &r), what, " = ", a, " * ", b,
              " overflows a 64-bit integer");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &r), what, " = ", a, " + ", b,
              " overflows a 64-bit integer");
  return r;
}

// The kernels index some sizes with 32-bit ints.
inline void check_int32_size(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= kInt32Max, what, " must be at most 2^31 - 1, got ", v);
}

inline void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dimensions ", layout, ", got shape ",
              t.sizes());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

inline void check_float_dtype(const at::Tensor& t, const char* name) {
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", st);
}

// The same, float64 included where the op's kernels also compute in double.
inline void check_float_dtype(const at::Tensor& t, const char* name, bool with_float64) {
  if (!with_float64) return check_float_dtype(t, name);
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, name,
              " must be float32, float16, bfloat16 or float64, got ", st);
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                             const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the device of ", ref_name, " (",
              ref.device(), "), got ", t.device());
}

// A tensor argument and its name, for the checks of several arguments against one.
struct Named {
  const at::Tensor& t;
  const char* name;
};

inline void check_same_dtype(const at::Tensor& ref, const char* ref_name,
                             std::initializer_list<Named> tensors) {
  for (const Named& n : tensors) check_same_dtype(n.t, ref, n.name, ref_name);
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name,
                              std::initializer_list<Named> tensors) {
  for (const Named& n : tensors) check_same_device(n.t, ref, n.name, ref_name);
}

inline void check_contiguous(std::initializer_list<Named> tensors) {
  for (const Named& n : tensors) check_contiguous(n.t, n.name);
}

inline void check_int32_vector(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.numel() == numel, name, " must have shape [", numel, "], got ",
              t.sizes());
  check_contiguous(t, name);
}

}  // namespace srf
