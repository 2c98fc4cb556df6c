// qk_norm_rope device code, shared by the nvcc build (qk_norm_rope_launch.cu) and the run-time
// NVRTC build (stream_r1_fast/nvrtc); both run plan() of qk_norm_rope.h. Torch-free and free of
// host code, so NVRTC compiles it as it is.
//
// One launch, a block per token row (grid x) of q (grid y = 0) or k (grid y = 1). The row's
// H * D elements are split into columns (an aligned access of up to 16 bytes, whole RoPE
// pairs of one head); thread t handles columns t, t + blockDim, ... It (1) loads its columns,
// keeping the first kCached in registers, and sums their squares in the compute type C
// (float; double for double tensors); (2) the block adds the threads' sums (warp shuffles,
// then the warps' partials in shared memory, added in warp order by every thread, so all
// threads hold the same total); (3) each thread scales its columns by 1 / sqrt(mean + eps)
// and by the weight, turns each pair by its token's angles from the tables, and writes the
// result rounded once to T. Columns beyond kCached per thread (rows over kCached * 256
// columns) are read again in step 3. The reference: stream_r1_fast/ops/qk_norm_rope_ref.py.
#pragma once
#include "common/cuda_utils.h"
#include "qk_norm_rope/qk_norm_rope.h"

namespace srf::qk_norm_rope {

template <typename T>
struct ComputeOf {
  using type = float;
};
template <>
struct ComputeOf<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename ComputeOf<T>::type widen(T x) { return to_float(x); }
template <>
__device__ __forceinline__ double widen<double>(double x) { return x; }

template <typename T>
__device__ __forceinline__ T narrow(typename ComputeOf<T>::type x) { return from_float<T>(x); }
template <>
__device__ __forceinline__ double narrow<double>(double x) { return x; }

__device__ __forceinline__ float inverse_rms(float mean_square, float eps) {
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean_square, eps)));
}
__device__ __forceinline__ double inverse_rms(double mean_square, double eps) {
  return __ddiv_rn(1.0, __dsqrt_rn(__dadd_rn(mean_square, eps)));
}

// VB bytes of T moved as one aligned access (VB in {2, 4, 8, 16}, VB >= sizeof(T)).
template <typename T, int VB>
struct alignas(VB) Vec {
  static constexpr int kElems = VB / static_cast<int>(sizeof(T));
  T elems[kElems];
};

// One column of a row: whole pairs, as kAccesses accesses of VB bytes.
template <typename T, int VB>
struct Column {
  using V = Vec<T, VB>;
  static constexpr int kElems = V::kElems < 2 ? 2 : V::kElems;
  static constexpr int kAccesses = kElems / V::kElems;
  static constexpr int kPairs = kElems / 2;
  V v[kAccesses];

  __device__ __forceinline__ T& operator[](int i) { return v[i / V::kElems].elems[i % V::kElems]; }
  __device__ __forceinline__ const T& operator[](int i) const { return v[i / V::kElems].elems[i % V::kElems]; }

  __device__ __forceinline__ void load(const T* row, int column) {
    const V* src = reinterpret_cast<const V*>(row) + static_cast<int64_t>(column) * kAccesses;
#pragma unroll
    for (int a = 0; a < kAccesses; ++a) v[a] = src[a];
  }
  __device__ __forceinline__ void store(T* row, int column) const {
    V* dst = reinterpret_cast<V*>(row) + static_cast<int64_t>(column) * kAccesses;
#pragma unroll
    for (int a = 0; a < kAccesses; ++a) dst[a] = v[a];
  }
};

template <typename T, int VB>
__device__ __forceinline__ typename ComputeOf<T>::type square_sum(const Column<T, VB>& x) {
  using C = typename ComputeOf<T>::type;
  C s = 0;
#pragma unroll
  for (int i = 0; i < Column<T, VB>::kElems; ++i) {
    const C v = widen(x[i]);
    s += v * v;
  }
  return s;
}

// Every thread of the block (blockDim.x a multiple of 32, all threads calling) gets the sum of
// `v` over the block, added in the same order by all. `partial` holds one value per warp; the
// leading barrier lets the next row reuse it.
template <typename C>
__device__ __forceinline__ C block_sum(C v, C* partial) {
#pragma unroll
  for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  C total = partial[0];
  const int warps = static_cast<int>(blockDim.x >> 5);
  for (int w = 1; w < warps; ++w) total += partial[w];
  return total;
}

// Column `column` of a row (table offset `t_row` = the token's first table entry), in place:
// x <- rotate(x * inv * weight), rounded once to T.
template <typename T, int VB>
__device__ __forceinline__ void normalise_and_rotate(Column<T, VB>& x, int column, typename ComputeOf<T>::type inv,
                                                     const Params& prm, const void* weight, int64_t t_row) {
  using C = typename ComputeOf<T>::type;
  using Col = Column<T, VB>;
  const C* cos = static_cast<const C*>(prm.cos);
  const C* sin = static_cast<const C*>(prm.sin);
  const int e0 = column * Col::kElems;                              // the column's first element in the row
  const int64_t pair0 = t_row + (e0 % prm.head_dim) / 2;  // its first pair's table entry
#pragma unroll
  for (int q = 0; q < Col::kPairs; ++q) {
    const int e = e0 + 2 * q;
    const C w0 = prm.weight_wide ? static_cast<const C*>(weight)[e] : widen(static_cast<const T*>(weight)[e]);
    const C w1 = prm.weight_wide ? static_cast<const C*>(weight)[e + 1] : widen(static_cast<const T*>(weight)[e + 1]);
    const C y0 = widen(x[2 * q]) * inv * w0;
    const C y1 = widen(x[2 * q + 1]) * inv * w1;
    const C c = cos[pair0 + q], s = sin[pair0 + q];
    x[2 * q] = narrow<T>(y0 * c - y1 * s);
    x[2 * q + 1] = narrow<T>(y0 * s + y1 * c);
  }
}

template <typename T, int VB>
__global__ void __launch_bounds__(kMaxThreads)
    norm_rope_kernel(const Params prm) {
  using C = typename ComputeOf<T>::type;
  using Col = Column<T, VB>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  C* partial = reinterpret_cast<C*>(smem_raw);
  const bool is_k = blockIdx.y != 0;
  const T* src = static_cast<const T*>(is_k ? prm.k : prm.q);
  T* dst = static_cast<T*>(is_k ? prm.k_out : prm.q_out);
  const void* weight = is_k ? prm.weight_k : prm.weight_q;
  const int columns = static_cast<int>(prm.row_elems / Col::kElems);
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
  const C n = static_cast<C>(prm.row_elems), eps = static_cast<C>(prm.eps);
  const int64_t half = prm.head_dim / 2;

  for (int64_t row = blockIdx.x; row < prm.rows; row += gridDim.x) {
    const T* x = src + row * prm.row_elems;
    T* y = dst + row * prm.row_elems;
    // (1) The row's sum of squares; the first kCached columns stay in registers.
    Col kept[kCached];
    C ss = 0;
#pragma unroll
    for (int a = 0; a < kCached; ++a) {
      const int c = tid + a * threads;
      if (c < columns) {
        kept[a].load(x, c);
        ss += square_sum(kept[a]);
      }
    }
    for (int c = tid + kCached * threads; c < columns; c += threads) {
      Col more;
      more.load(x, c);
      ss += square_sum(more);
    }
    // (2) The block's total, (3) normalise, scale, rotate, write.
    const C inv = inverse_rms(block_sum(ss, partial) / n, eps);
    const int64_t t_row = (prm.first_row + row % prm.tokens) * half;
#pragma unroll
    for (int a = 0; a < kCached; ++a) {
      const int c = tid + a * threads;
      if (c < columns) {
        normalise_and_rotate(kept[a], c, inv, prm, weight, t_row);
        kept[a].store(y, c);
      }
    }
    for (int c = tid + kCached * threads; c < columns; c += threads) {
      Col more;
      more.load(x, c);
      normalise_and_rotate(more, c, inv, prm, weight, t_row);
      more.store(y, c);
    }
  }
}

}  // namespace srf::qk_norm_rope
