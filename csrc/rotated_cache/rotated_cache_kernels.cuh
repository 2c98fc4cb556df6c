// rotated_cache_advance device code, shared by the nvcc build (rotated_cache_launch.cu) and the
// run-time NVRTC build (stream_r1_fast/nvrtc); both run plan() of rotated_cache.h. Torch-free
// and free of host code, so NVRTC compiles it as it is.
//
// One launch. A thread owns a column of one (tensor, batch) buffer: the same few elements
// (whole RoPE pairs of one head of one token) of every frame. It walks the frames in this
// order: (1) the fold, reading the evicted slots [S, S + E) and writing the sink [0, S);
// (2) the move, slots S + E .. m - 1 ascending, each read before it is written E slots lower;
// (3) the chunk, written at [m - E, m - E + F). Within a column every slot is read before any
// write lands on it, and no other thread touches the column: in place, without hazards.
// Every decision comes from host integers in Params (advance_step); nothing is read back.
//
// Arithmetic in the compute type C (float; double for double buffers) with explicit rounding
// (no FMA contraction), in the reference's order: a rotation is (x0 c - x1 s, x0 s + x1 c), a
// group mean a sum in group order divided by its size, the blend alpha x + (1 - alpha) mean.
#pragma once
#include "common/cuda_utils.h"
#include "rotated_cache/rotated_cache.h"

namespace srf::rotated_cache {

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

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// VB bytes of T moved as one aligned access (VB in {2, 4, 8, 16}, VB >= sizeof(T)).
template <typename T, int VB>
struct alignas(VB) Vec {
  static constexpr int kElems = VB / static_cast<int>(sizeof(T));
  T elems[kElems];
};

// The elements a thread owns in one frame: whole pairs, as kAccesses accesses of VB bytes.
template <typename T, int VB>
struct Column {
  using V = Vec<T, VB>;
  static constexpr int kElems = V::kElems < 2 ? 2 : V::kElems;
  static constexpr int kAccesses = kElems / V::kElems;
  static constexpr int kPairs = kElems / 2;
  V v[kAccesses];

  __device__ __forceinline__ T& operator[](int k) { return v[k / V::kElems].elems[k % V::kElems]; }

  __device__ __forceinline__ void load(const T* frame, int64_t column) {
    const V* src = reinterpret_cast<const V*>(frame) + column * kAccesses;
#pragma unroll
    for (int a = 0; a < kAccesses; ++a) v[a] = src[a];
  }
  __device__ __forceinline__ void store(T* frame, int64_t column) const {
    V* dst = reinterpret_cast<V*>(frame) + column * kAccesses;
#pragma unroll
    for (int a = 0; a < kAccesses; ++a) dst[a] = v[a];
  }
};

// Pair (x0, x1) turned by the angle of (c, s), in place.
template <typename C>
__device__ __forceinline__ void rotate(C& x0, C& x1, C c, C s) {
  const C r0 = sub_rn(mul_rn(x0, c), mul_rn(x1, s));
  const C r1 = add_rn(mul_rn(x0, s), mul_rn(x1, c));
  x0 = r0;
  x1 = r1;
}

template <typename T, int VB>
__global__ void __launch_bounds__(kThreads)
    advance_kernel(const Params prm) {
  using C = typename ComputeOf<T>::type;
  using Col = Column<T, VB>;
  constexpr int kE = Col::kElems;
  constexpr int kP = Col::kPairs;
  const Step step = advance_step(prm);
  const int sink = static_cast<int>(prm.sink_size);
  const int m = static_cast<int>(prm.occupied);
  const int fn = static_cast<int>(prm.new_frames);
  const int64_t fe = prm.frame_elems, columns = fe / kE;
  const int64_t half = prm.head_dim / 2, head_pairs = prm.heads * half;
  const int t_pairs = temporal_pairs(prm.head_dim);
  const C* cos = static_cast<const C*>(prm.cos);
  const C* sin = static_cast<const C*>(prm.sin);
  const C alpha = static_cast<C>(prm.alpha), one_minus_alpha = static_cast<C>(prm.one_minus_alpha);
  const int64_t rows = 2 * prm.batch;  // (tensor, batch)

  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const bool is_v = row >= prm.batch;
    const int64_t b = row % prm.batch;
    T* buf = static_cast<T*>(is_v ? prm.values : prm.keys) + b * prm.capacity * fe;
    const T* chunk = static_cast<const T*>(is_v ? prm.v_new : prm.k_new) + b * fn * fe;
    for (int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; col < columns;
         col += static_cast<int64_t>(gridDim.x) * kThreads) {
      const int64_t pair0 = col * kP;           // the column's first pair in the frame
      const int64_t token = pair0 / head_pairs;  // a column lies in one head of one token
      const int j0 = static_cast<int>(pair0 % half);
      // Temporal pairs of this column: keys only (values are never rotated).
      const int turn = is_v ? 0 : (t_pairs - j0 < 0 ? 0 : (t_pairs - j0 > kP ? kP : t_pairs - j0));
      Col x;

      // (1) The fold: sink frame i <- alpha * sink_i + (1 - alpha) * the mean of its group,
      // evicted key S + j first turned by i - S - j frames (row (S + j - i) * P, sine negated).
      if (step.fold) {
        for (int i = 0; i < sink; ++i) {
          int lo, hi;
          ema_cache::ema_fold_group(i, step.evict, sink, &lo, &hi);
          C sum[kE];
          for (int j = lo; j < hi; ++j) {
            x.load(buf + (sink + j) * fe, col);
            const int64_t t_row = static_cast<int64_t>(sink + j - i) * prm.tokens * half + j0;
#pragma unroll
            for (int q = 0; q < kP; ++q) {
              C x0 = widen(x[2 * q]), x1 = widen(x[2 * q + 1]);
              if (q < turn) rotate(x0, x1, cos[t_row + q], -sin[t_row + q]);
              sum[2 * q] = j == lo ? x0 : add_rn(sum[2 * q], x0);
              sum[2 * q + 1] = j == lo ? x1 : add_rn(sum[2 * q + 1], x1);
            }
          }
          const C count = static_cast<C>(hi - lo);
          x.load(buf + i * fe, col);
#pragma unroll
          for (int k = 0; k < kE; ++k) {
            const C mean = hi - lo == 1 ? sum[k] : div_rn(sum[k], count);
            x[k] = narrow<T>(add_rn(mul_rn(alpha, widen(x[k])), mul_rn(one_minus_alpha, mean)));
          }
          x.store(buf + i * fe, col);
        }
      }

      // (2) The move: survivors down E slots, temporal pairs of keys turned by -E.
      if (step.evict > 0) {
        const int64_t t_row = static_cast<int64_t>(step.evict) * prm.tokens * half + j0;
        for (int s = sink + step.evict; s < m; ++s) {
          x.load(buf + s * fe, col);
#pragma unroll
          for (int q = 0; q < kP; ++q) {
            if (q < turn) {
              C x0 = widen(x[2 * q]), x1 = widen(x[2 * q + 1]);
              rotate(x0, x1, cos[t_row + q], -sin[t_row + q]);
              x[2 * q] = narrow<T>(x0);
              x[2 * q + 1] = narrow<T>(x1);
            }
          }
          x.store(buf + (s - step.evict) * fe, col);
        }
      }

      // (3) The chunk at [m - E, m - E + F): keys rotated by the full 3-D RoPE of their slot.
      for (int f = 0; f < fn; ++f) {
        const int slot = step.first + f;
        x.load(chunk + f * fe, col);
        if (!is_v) {
          const int64_t r = (static_cast<int64_t>(slot) * prm.tokens + token) * half + j0;
#pragma unroll
          for (int q = 0; q < kP; ++q) {
            C x0 = widen(x[2 * q]), x1 = widen(x[2 * q + 1]);
            rotate(x0, x1, cos[r + q], sin[r + q]);
            x[2 * q] = narrow<T>(x0);
            x[2 * q + 1] = narrow<T>(x1);
          }
        }
        x.store(buf + slot * fe, col);
      }
    }
  }
}

}  // namespace srf::rotated_cache
